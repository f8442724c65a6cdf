"""Judged rows/s of the reward-model and pairwise-model judges against a plain batched forward.

    python benchmarks/judge_rows.py [--hidden 256] [--layers 4] [--rows 64] [--k 4] [--repeats 3]

Both sides score the same rows with the same model: a random causal LM built by
prefero.tiny with a fresh scalar head (nothing is downloaded). The baseline is what one
writes by hand: every sequence (pointwise: prompt + completion; pairwise: prompt + A + B in
both orders) tokenized once beforehand, sorted by length, right-padded into batches of the
judge's batch size and put through the sequence classifier's own forward. prefero's side is
the judge's `score` / `compare` on the rows as they come from `prefero generate`, so its
figure includes tokenizing (chat template, stop tokens, truncation) and the bookkeeping.
Model loading is excluded from both. Printed: rows/s of each and the ratio; best of
`--repeats` runs each, interleaved, so both sides see the same machine load.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def items(n: int, k: int):
    from prefero.data.formats import Where
    from prefero.judges import Item
    from prefero.tiny import demo_records

    records = demo_records()
    out = []
    for i in range(n):
        comps = [records[(i + j) % len(records)][("chosen", "rejected")[j % 2]] * (1 + j % 3) for j in range(k)]
        out.append(Item(records[i % len(records)]["prompt"], comps, Where("rows.jsonl", i + 1)))
    return out


def plain(model, rows: list[list[int]], pad: int, batch: int) -> None:
    from prefero.scoring import padded_scores

    order = sorted(range(len(rows)), key=lambda r: len(rows[r]))
    for s in range(0, len(order), batch):
        padded_scores(model, [rows[r] for r in order[s:s + batch]], pad)


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from prefero.judges import pairwise_matrices
    from prefero.judges.config import JudgeConfig
    from prefero.judges.pairwise_model import PairwiseModelJudge
    from prefero.judges.reward_model import RewardModelJudge
    from prefero.scoring import pairwise_group
    from prefero.tiny import save_tiny_scorer

    work = items(args.rows, args.k)
    results = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for kind, judge_class in (("reward_model", RewardModelJudge), ("pairwise_model", PairwiseModelJudge)):
            d = save_tiny_scorer(Path(tmp) / kind, kind == "pairwise_model", hidden_size=args.hidden,
                                 layers=args.layers)
            judge = judge_class(JudgeConfig(type=kind, model=str(d)).validate())
            judge.batch_size = args.batch
            tokens = [judge.tokenize(it) for it in work]
            if kind == "reward_model":
                rows = [p + c for p, cs in tokens for c in cs]
                ours = lambda: judge.score(work)  # noqa: E731
            else:
                rows = []
                for p, cs in tokens:
                    for i in range(len(cs)):
                        for j in range(i + 1, len(cs)):
                            prompt, (ab, ba) = pairwise_group(p, cs[i], cs[j], judge.max_length)
                            rows += [prompt + ab, prompt + ba]
                ours = lambda: pairwise_matrices(judge, work)  # noqa: E731
            base = lambda: plain(judge.model, rows, judge.pad_id, args.batch)  # noqa: E731
            base(), ours()  # warm-up
            t_plain, t_ours = float("inf"), float("inf")
            for _ in range(args.repeats):  # interleaved
                t_plain = min(t_plain, best(base, 1))
                t_ours = min(t_ours, best(ours, 1))
            results.append({"judge": kind, "rows": len(work), "sequences": len(rows),
                            "plain_rows_per_s": len(work) / t_plain, "prefero_rows_per_s": len(work) / t_ours,
                            "ratio": t_plain / t_ours})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, hidden {args.hidden}, {args.layers} layers, "
          f"{args.rows} rows x K={args.k}, batch {args.batch}")
    print("| judge | sequences | plain rows/s | prefero rows/s | prefero vs plain |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['judge']} | {r['sequences']} | {r['plain_rows_per_s']:.1f} | {r['prefero_rows_per_s']:.1f} | "
              f"{r['ratio']:.2f}× |")


if __name__ == "__main__":
    main()
