"""PNG plots of training runs and evaluations (matplotlib, no display needed).

Figures are built with matplotlib's object API (`Figure`, no pyplot), so nothing here
touches the global backend or opens a window: it works on a headless server and does
not change how the user's own notebook plots. Each PNG is written to a temporary file and
moved into place, like every other prefero output.

The data extraction (`read_metrics`, `curve`) is separate from the drawing so it can be
tested on numbers; the drawing itself is only checked for producing an image.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from prefero.data.errors import DataError
from prefero.files import atomic_path
from prefero.options import ConfigError

#: Training-curve panels: title, then the metrics.jsonl keys drawn in it (first found wins
#: for alternatives such as the reward model's plain `accuracy`).
PANELS = [
    ("loss", [["loss"]]),
    ("reward margin (r_w − r_l)", [["rewards/margins"]]),
    ("reward accuracy", [["rewards/accuracies", "accuracy"]]),
    ("summed log-prob", [["logps/chosen"], ["logps/rejected"]]),
]
_SKIP_DIRS = {"plots", "checkpoints"}


# --------------------------------------------------------------------------- data


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a run's metrics.jsonl in file order (each has `step`; eval rows have
    `"split": "eval"`, train rows no split). A last line without its newline that is not
    JSON is a write the run had not finished (it is being written, or was killed
    mid-line): it is left out. Any other bad line is a `DataError` naming the line."""
    path = Path(path)
    try:
        data = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(str(path), None, None, f"cannot read metrics: {e}", skippable=False) from None
    lines = data.split("\n")
    rows = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if lineno == len(lines):  # the unterminated last line
                continue
            raise DataError(str(path), lineno, None, "not a JSON object", skippable=False) from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise DataError(str(path), lineno, "step", "a metrics row needs an integer step", skippable=False)
        rows.append(row)
    return rows


def curve(rows: Sequence[dict], key: str, split: str = "train") -> tuple[list[int], list[float]]:
    """(steps, values) of `key` over the rows of `split` that have it (a run of a loss
    without rejected responses has no logps/rejected; those rows are not part of the
    curve). Train rows carry no `split` field."""
    steps, values = [], []
    for row in rows:
        if row.get("split", "train") == split and key in row and row[key] is not None:
            steps.append(row["step"])
            values.append(float(row[key]))
    return steps, values


def splits(rows: Sequence[dict]) -> list[str]:
    """The splits present, train first."""
    found = {row.get("split", "train") for row in rows}
    return sorted(found, key=lambda s: (s != "train", s))


# --------------------------------------------------------------------------- figures


def plot_training_curves(rows: Sequence[dict], path: str | os.PathLike, title: str | None = None) -> Path | None:
    """Loss, reward margin, reward accuracy and the chosen/rejected log-probs against the
    optimizer step; train rows as lines, eval rows as marked lines. Panels with no data
    are left out; None (nothing written) if no panel has any."""
    panels = []
    for name, groups in PANELS:
        series = []
        for alternatives in groups:
            key = next((k for k in alternatives if any(k in r for r in rows)), None)
            if key is not None:
                series += [(key, s, *curve(rows, key, s)) for s in splits(rows)]
        series = [s for s in series if s[2]]
        if series:
            panels.append((name, series))
    if not panels:
        return None
    cols = min(2, len(panels))
    rows_ = (len(panels) + cols - 1) // cols
    fig = _figure(figsize=(5.2 * cols, 3.4 * rows_))
    for k, (name, series) in enumerate(panels):
        ax = fig.add_subplot(rows_, cols, k + 1)
        keys = list(dict.fromkeys(key for key, *_ in series))
        for key, split, steps, values in series:
            # one color per metric, the split told apart by the line style
            label = f"{key.split('/')[-1]} ({split})" if len(keys) > 1 else split
            style = {"linewidth": 1.2} if split == "train" else {"marker": "o", "linestyle": "--", "markersize": 4}
            ax.plot(steps, values, label=label, color=f"C{keys.index(key) * 3}", **style)
        ax.set_title(name)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_lengths(policy_lengths: Sequence[float], baseline_lengths: Sequence[float], path: str | os.PathLike,
                 unit: str = "characters") -> Path:
    """Overlaid histograms (shared bins) of the two sides' response lengths, means marked."""
    import numpy as np

    pol, base = np.asarray(policy_lengths, dtype=float), np.asarray(baseline_lengths, dtype=float)
    both = np.concatenate([pol, base])
    bins = np.histogram_bin_edges(both, bins=min(40, max(5, int(np.sqrt(both.size)))))
    fig = _figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for values, name, color in [(base, "baseline", "tab:gray"), (pol, "policy", "tab:blue")]:
        ax.hist(values, bins=bins, alpha=0.5, color=color, label=f"{name} (mean {values.mean():.0f})")
        ax.axvline(values.mean(), color=color, linestyle="--", linewidth=1)
    ax.set_xlabel(f"response length ({unit})")
    ax.set_ylabel("responses")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


#: The repetition panel's bars: (GenerationStats field, label).
REPETITION_BARS = [("repetition_rate", "repeat a word"), ("degenerate", "degenerate (looped)"),
                   ("distinct_1", "distinct-1")]


def plot_repetition(sides: dict, path: str | os.PathLike) -> Path:
    """Grouped bars, one group per measure (`REPETITION_BARS`: the share of responses that
    repeat a word, the degenerate share, distinct-1), one bar per side ({name: generation
    statistics as a dict}, e.g. policy and baseline), each bar labelled with its value.
    A measure a side lacks (None) is left out of that side."""
    if not sides:
        raise ValueError("no repetition statistics to plot")
    fig = _figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(sides)
    for k, (name, stats) in enumerate(sides.items()):
        xs, ys = [], []
        for i, (key, _) in enumerate(REPETITION_BARS):
            if stats.get(key) is not None:
                xs.append(i - 0.4 + width * (k + 0.5))
                ys.append(100 * stats[key])
        bars = ax.bar(xs, ys, width=width, label=name, color=f"C{k}")
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(REPETITION_BARS)), [label for _, label in REPETITION_BARS])
    ax.set_ylim(0, 110)
    ax.set_ylabel("% of responses (distinct-1: mean %)")
    ax.set_title("repetition within a response")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_win_rates(entries: Sequence[dict], path: str | os.PathLike) -> Path:
    """Win rate with its interval (and the length-controlled win rate when given) for
    one or several policies — methods or iterations — on one chart. Each entry:
    {"label", "win_rate", "ci": [lo, hi], "lc_win_rate" (optional), "degenerate"
    (optional: the policy's share of degenerate responses, drawn as a red ×, so a win
    rate bought with looped answers shows)}; rates in [0, 1]."""
    if not entries:
        raise ValueError("no win rates to plot")
    fig = _figure(figsize=(max(4.0, 1.2 * len(entries) + 2), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    x = list(range(len(entries)))
    wr = [100 * e["win_rate"] for e in entries]
    err = [[100 * (e["win_rate"] - e["ci"][0]) for e in entries], [100 * (e["ci"][1] - e["win_rate"]) for e in entries]]
    lc = [(i, 100 * e["lc_win_rate"]) for i, e in zip(x, entries) if e.get("lc_win_rate") is not None]
    shift = 0.08 if lc else 0.0  # side by side, so neither marker hides the other
    ax.errorbar([i - shift for i in x], wr, yerr=err, fmt="o", capsize=5, label="win rate (bootstrap interval)")
    if lc:
        ax.plot([i + shift for i, _ in lc], [v for _, v in lc], "D", color="tab:orange", label="length-controlled")
    degenerate = [(i, 100 * e["degenerate"]) for i, e in zip(x, entries) if e.get("degenerate") is not None]
    if degenerate:
        ax.plot([i for i, _ in degenerate], [v for _, v in degenerate], "x", color="tab:red", markersize=8,
                label="degenerate responses (%)")
    ax.axhline(50, color="gray", linestyle=":", linewidth=1)
    ax.set_xticks(x, [str(e["label"]) for e in entries], rotation=20 if len(entries) > 4 else 0)
    ax.set_ylim(0, 100)
    ax.set_xlim(-0.6, len(entries) - 0.4)
    ax.set_ylabel("% against the baseline")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _figure(figsize):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=100)


def _save(fig, path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


# --------------------------------------------------------------------------- a run directory


def plot_run(run_dir: str | os.PathLike) -> list[Path]:
    """Every plot a run directory's files allow, written to RUN_DIR/plots/:

    - `training_curves.png` from RUN_DIR/metrics.jsonl, and
      `training_curves_<sub>.png` for each sub-directory run (iterations, stages);
    - `lengths.png` from an evaluation's comparisons.jsonl, and `repetition.png` from its
      report.json's generation statistics (both sides);
    - `win_rates.png`: every report.json under RUN_DIR (itself and sub-directories, in
      natural order: iter_2 before iter_10) with its interval, on one chart.

    Raises `ConfigError` if RUN_DIR does not exist or holds none of those files.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise ConfigError(f"run directory {root} does not exist")
    out = root / "plots"
    written = []
    for metrics in _find(root, "metrics.jsonl"):
        rel = metrics.parent.relative_to(root)
        name = "training_curves.png" if rel == Path(".") else f"training_curves_{_slug(rel)}.png"
        p = plot_training_curves(read_metrics(metrics), out / name, title=None if rel == Path(".") else str(rel))
        if p is not None:
            written.append(p)
    comparisons = root / "comparisons.jsonl"
    if comparisons.exists():
        rows = _read_comparisons(comparisons)
        written.append(plot_lengths([r["policy_chars"] for r in rows], [r["baseline_chars"] for r in rows],
                                    out / "lengths.png"))
    report = root / "report.json"
    if report.exists():
        generation = _read_json(report).get("generation")
        if isinstance(generation, dict) and generation:
            written.append(plot_repetition(generation, out / "repetition.png"))
    entries = collect_win_rates(root)
    if entries:
        written.append(plot_win_rates(entries, out / "win_rates.png"))
    if not written:
        raise ConfigError(f"{root}: nothing to plot (no metrics.jsonl with curves, comparisons.jsonl or "
                          f"report.json with a win rate)")
    return written


def collect_win_rates(root: str | os.PathLike) -> list[dict]:
    """Win-rate entries (for `plot_win_rates`) from every report.json under `root` that has
    one: root's own first (labelled with root's name), then sub-directories in natural
    order, each labelled with its path relative to root."""
    root = Path(root)
    entries = []
    for report in _find(root, "report.json"):
        data = _read_json(report)
        if "win_rate" in data:
            rel = report.parent.relative_to(root)
            entries.append({"label": root.name if rel == Path(".") else str(rel), "win_rate": data["win_rate"],
                            "ci": data["win_rate_ci"], "lc_win_rate": data.get("lc_win_rate"),
                            "degenerate": data.get("degenerate")})
    return entries


def _find(root: Path, name: str, max_depth: int = 3) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".") and depth < max_depth]
        if name in filenames:
            found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: _natural(p.parent.relative_to(root)))


def _natural(path: Path) -> list:
    """Sort key: digit runs compare as numbers; the root (no parts) comes first."""
    return [(0, int(t)) if t.isdigit() else (1, t) for part in path.parts for t in re.split(r"(\d+)", part) if t]


def _slug(rel: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(rel))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(str(path), None, None, f"cannot read report: {e}", skippable=False) from None
    if not isinstance(data, dict):
        raise DataError(str(path), None, None, "a report must be a JSON object", skippable=False)
    if "win_rate" in data and not (isinstance(data.get("win_rate_ci"), list) and len(data["win_rate_ci"]) == 2):
        raise DataError(str(path), None, "win_rate_ci", "expected [lo, hi] next to win_rate", skippable=False)
    return data


def _read_comparisons(path: Path) -> list[dict]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(str(path), lineno, None, "not a JSON object", skippable=False) from None
        for field in ("policy_chars", "baseline_chars"):
            if not isinstance(row.get(field), int):
                raise DataError(str(path), lineno, field, "expected an integer length", skippable=False)
        rows.append(row)
    return rows
