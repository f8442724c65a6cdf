"""One packed row per batch against rows of `row_tokens` tokens, under a dense (SDPA) mask.

    python benchmarks/packed_rows.py [--repeats 5]

The engine's forward + backward (completion log-probs of every completion, summed) on the
same groups laid out two ways: the whole micro-batch in one row, and rows of at most half
the hidden size (what `prefero.attention.row_tokens` picks for SDPA and eager), filled
largest group first and right-padded. Two shapes: the demo's model (hidden 128, 4 layers,
SFT batches of 32 short examples, DPO batches of 16 pairs) and a wider one (hidden 512, 8
layers, 16 pairs of 40-200 token completions). Random weights and token ids, built from a
config. Printed: ms per step of each layout (best of `--repeats`, interleaved) and the
ratio; both layouts' log-probs are checked equal first.
"""

from __future__ import annotations

import argparse
import time


def model(hidden: int, layers: int, vocab: int):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                         num_attention_heads=max(1, hidden // 32), max_position_embeddings=1024)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def groups(n: int, prompt: tuple[int, int], completion: tuple[int, int], k: int, vocab: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        return torch.randint(3, vocab, (int(torch.randint(lo, hi + 1, (1,), generator=g)),), generator=g).tolist()

    return [(ids(*prompt), [ids(*completion) for _ in range(k)]) for _ in range(n)]


def step_ms(engine, batch) -> float:
    start = time.perf_counter()
    sums, _ = engine(batch)
    sums.sum().backward()
    return 1000 * (time.perf_counter() - start)


def main() -> None:
    import torch

    from prefero.attention import row_tokens
    from prefero.batching import pack_groups
    from prefero.logprobs import CompletionLogProbs

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = [
        ("demo model, SFT batch (32 examples)", (128, 4, 231), (32, (6, 12), (4, 12), 1)),
        ("demo model, DPO batch (16 pairs)", (128, 4, 231), (16, (6, 12), (4, 12), 2)),
        ("hidden 512, 8 layers, 16 pairs", (512, 8, 8192), (16, (32, 128), (40, 200), 2)),
    ]
    print(f"torch {torch.__version__}, 1 thread, best of {args.repeats}")
    print("| case | tokens | one row: ms | rows: layout | rows: ms | rows vs one row |")
    print("|---|---:|---:|---|---:|---:|")
    for name, shape, spec in cases:
        lm = model(*shape)
        engine = CompletionLogProbs(lm)
        batch = groups(*spec, vocab=shape[2], seed=1)
        one, rows = pack_groups(batch), pack_groups(batch, row_tokens(lm))
        with torch.no_grad():
            a, _ = engine(one)
            b, _ = engine(rows)
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-4), (a - b).abs().max()
        times = {"one": [], "rows": []}
        for _ in range(args.repeats):
            for key, layout in (("one", one), ("rows", rows)):
                lm.zero_grad(set_to_none=True)
                times[key].append(step_ms(engine, layout))
        t_one, t_rows = min(times["one"]), min(times["rows"])
        r, w = rows.input_ids.shape
        print(f"| {name} | {one.num_tokens} | {t_one:.1f} | {r} × {w} | {t_rows:.1f} | {t_rows / t_one:.3f} |")


if __name__ == "__main__":
    main()
