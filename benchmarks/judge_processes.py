"""`prefero judge` on 2 CPU processes against 1: rows/s of the reward-model and pairwise judges.

    python benchmarks/judge_processes.py [--hidden 256] [--layers 4] [--rows 96] [--k 4] [--repeats 2]

Both sides run the command as a user does, on the same generate-shaped file with the same
random scorer built by prefero.tiny (nothing is downloaded): 1 process (`python -m prefero
judge`) and 2 processes (`accelerate launch --multi_gpu --num_processes 2`, gloo on CPU),
one intra-op thread per process. Two figures per side: the whole command's wall time (start-up
of Python, torch and each process's model included: what a user waits for) and the judging
rate the report records (`this_run.rows_per_second`: from the judge loaded to every process's
rows merged, so without the loading). The two outputs are checked to be the same bytes. Best of `--repeats` runs,
interleaved, so both sides see the same machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prefero.processes import launch_command


def rows_file(path: Path, n: int, k: int) -> Path:
    from prefero.tiny import demo_records

    records = demo_records()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            comps = [records[(i + j) % len(records)][("chosen", "rejected")[j % 2]] * (1 + j % 3) for j in range(k)]
            f.write(json.dumps({"index": i, "prompt": records[i % len(records)]["prompt"], "completions": comps}) + "\n")
    return path


def run(processes: int, args: list[str], output: Path) -> tuple[float, float]:
    """(wall seconds, report rows/s) of one `prefero judge` run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = args + [f"output={output}", "overwrite=true"]
    cmd = [sys.executable, "-m", "prefero", "judge", *args] if processes == 1 else launch_command("judge", args, processes)
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    report = json.loads(output.with_name(output.stem + ".report.json").read_text())
    return wall, report["this_run"]["rows_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch

    from prefero.tiny import save_tiny_scorer

    print(f"torch {torch.__version__}, {os.cpu_count()} cores, 1 thread per process, hidden {args.hidden}, "
          f"{args.layers} layers, {args.rows} rows x K={args.k}, batch {args.batch}")
    print("| judge | mode | 1 process: wall s | 2 processes: wall s | wall ratio | 1 process rows/s | "
          "2 processes rows/s | rows/s ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = rows_file(tmp / "gen.jsonl", args.rows, args.k)
        for kind, mode in (("reward_model", "pointwise"), ("pairwise_model", "pairwise")):
            model = save_tiny_scorer(tmp / kind, kind == "pairwise_model", hidden_size=args.hidden, layers=args.layers)
            cmd = [f"input={data}", f"judge.type={kind}", f"judge.model={model}", f"mode={mode}",
                   f"batch_size={args.batch}"]
            best = {1: (float("inf"), 0.0), 2: (float("inf"), 0.0)}
            for _ in range(args.repeats):
                for n in (1, 2):
                    wall, rate = run(n, cmd, tmp / f"{kind}-{n}.jsonl")
                    best[n] = (min(best[n][0], wall), max(best[n][1], rate))
            same = (tmp / f"{kind}-1.jsonl").read_bytes() == (tmp / f"{kind}-2.jsonl").read_bytes()
            if not same:
                raise SystemExit(f"{kind}: 2 processes wrote other bytes than 1")
            (w1, r1), (w2, r2) = best[1], best[2]
            print(f"| {kind} | {mode} | {w1:.1f} | {w2:.1f} | {w1 / w2:.2f}× | {r1:.1f} | {r2:.1f} | {r2 / r1:.2f}× |")


if __name__ == "__main__":
    main()
