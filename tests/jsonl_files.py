"""Small helpers the test modules share (a module, not a test file): JSON-lines files, a
run's metrics, relative errors."""

import json
from pathlib import Path


def write_jsonl(path, rows) -> Path:
    """`rows` as JSON lines at `path`; returns the path."""
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def metrics(run_dir) -> list[dict]:
    """Every row of a training run's metrics.jsonl (train steps, and eval rows with "split")."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


def rel_err(a, b) -> float:
    """max |a − b| / max |b| of two tensors (b all zero counts as 1e-12)."""
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()
