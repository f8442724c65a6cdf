"""AdamW's step on CPU: torch's per-tensor loop (its CPU default) against its fused kernel.

    python benchmarks/optimizer_step.py [--repeats 5]

The parameters of two models built from a config (random weights, random gradients): the
demo's (hidden 128, 4 layers, ~0.9M parameters) and a wider one (hidden 512, 8 layers, ~36M),
in the two groups prefero's trainer makes (weight decay on matrices only). Printed: ms per
`optimizer.step()` of each (the fastest of `--repeats` runs of 20 steps, interleaved), the
ratio, and the largest difference between the two's parameters after those steps (the
fused kernel rounds in another order, so it is not zero).
"""

from __future__ import annotations

import argparse
import time


def params(hidden: int, layers: int, vocab: int):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                         num_attention_heads=max(1, hidden // 32))
    return list(AutoModelForCausalLM.from_config(config).parameters())


def run(shapes_from, fused: bool, steps: int) -> tuple[float, list]:
    import torch

    from prefero.config import TrainConfig
    from prefero.optim import make_optimizer

    ps = [torch.nn.Parameter(p.detach().clone()) for p in shapes_from]
    optimizer = make_optimizer(TrainConfig(model="m", train_data="d", learning_rate=3e-3), ps, fused)
    g = torch.Generator().manual_seed(1)
    grads = [[torch.randn(p.shape, generator=g) for p in ps] for _ in range(steps)]
    best = float("inf")
    for step in grads:
        for p, grad in zip(ps, step):
            p.grad = grad
        start = time.perf_counter()
        optimizer.step()
        best = min(best, time.perf_counter() - start)
    return 1000 * best, ps


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, fastest step of {args.repeats} x 20, interleaved")
    print("| model | parameters | per-tensor loop: ms | fused: ms | fused vs loop | largest difference |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, shape in (("the demo's (hidden 128, 4 layers)", (128, 4, 335)),
                        ("hidden 512, 8 layers", (512, 8, 8192))):
        ps = params(*shape)
        times, after = {False: [], True: []}, {}
        for _ in range(args.repeats):
            for fused in (False, True):
                ms, after[fused] = run(ps, fused, 20)
                times[fused].append(ms)
        diff = max((a - b).abs().max().item() for a, b in zip(after[True], after[False]))
        loop, fused = min(times[False]), min(times[True])
        print(f"| {name} | {sum(p.numel() for p in ps):,} | {loop:.2f} | {fused:.2f} | {fused / loop:.3f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
