"""Chunked completion log-probs vs full-vocabulary logits on CPU: peak memory and time.

    python benchmarks/logprobs_cpu.py [--vocab 32000] [--tokens 2048] [--hidden 1024]

Each variant runs forward + backward in its own subprocess; peak memory is the growth of
the process's maximum resident set over what the inputs already take. Figures are printed
as ratios against the full-logits baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def run_variant(name: str, vocab: int, tokens: int, hidden: int, chunk: int, repeats: int) -> dict:
    import torch

    from prefero.logprobs import token_logprobs

    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    h = torch.randn(tokens, hidden, requires_grad=True)
    head = torch.nn.Linear(hidden, vocab, bias=False)
    targets = torch.randint(0, vocab, (tokens,))

    def step():
        if name == "full":
            logp = torch.log_softmax(head(h).float(), -1).gather(1, targets[:, None]).squeeze(1)
        else:
            logp = token_logprobs(h, head, targets, chunk_size=chunk)
        logp.sum().backward()
        h.grad = None
        head.weight.grad = None

    step()  # warm-up; also touches the weight-gradient buffer once
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    # ru_maxrss only grows: measure the first step's growth in a fresh process instead
    return {"name": name, "time_s": min(times), "maxrss_kib": base}


def measure(name, args) -> dict:
    code = (
        "import json,sys,resource;sys.path.insert(0,'.');"
        "from benchmarks.logprobs_cpu import run_variant;"
        f"r=run_variant({name!r},{args.vocab},{args.tokens},{args.hidden},{args.chunk},{args.repeats});"
        "print(json.dumps(r))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def baseline_rss(args) -> int:
    """Max RSS of a process that only builds the inputs (same shapes, no step)."""
    code = (
        "import torch,resource;torch.manual_seed(0);"
        f"h=torch.randn({args.tokens},{args.hidden},requires_grad=True);"
        f"w=torch.nn.Linear({args.hidden},{args.vocab},bias=False);"
        "w.weight.grad=torch.zeros_like(w.weight);h.grad=torch.zeros_like(h);"
        "from prefero.logprobs import token_logprobs;"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--chunk", type=int, default=0, help="0 = prefero's automatic size")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    base = baseline_rss(args)
    full = measure("full", args)
    chunked = measure("chunked", args)
    logits_mib = args.tokens * args.vocab * 4 / 2**20
    print(f"vocab {args.vocab}, {args.tokens} completion tokens, hidden {args.hidden}, chunk {args.chunk}; "
          f"one fp32 [tokens x vocab] logits tensor = {logits_mib:.0f} MiB")
    print(f"{'variant':<10} {'peak extra MiB':>15} {'time s':>8} {'memory vs full':>15} {'time vs full':>13}")
    fm = (full["maxrss_kib"] - base) / 1024
    for r in (full, chunked):
        extra = (r["maxrss_kib"] - base) / 1024
        print(f"{r['name']:<10} {extra:>15.0f} {r['time_s']:>8.3f} {extra / fm:>15.3f} {r['time_s'] / full['time_s']:>13.3f}")


if __name__ == "__main__":
    main()
