"""`summary.json` and `plots/` of a self-play run, rebuilt from its files after each iteration.

Everything here is read back from what the stages wrote (reports, metrics.jsonl, the
evaluation's report.json), never from memory, so a resumed run writes the same summary as
an uninterrupted one. Paths are relative to output_dir.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefero.files import atomic_write_json
from prefero.selfplay.config import SelfPlayConfig
from prefero.selfplay.paths import (
    iteration_dir,
    policy_path,
    reference_path,
    relative,
    report_path,
    stage_names,
)
from prefero.stages import finished_stages

SUMMARY = "summary.json"
#: Headline numbers copied from an iteration's eval/report.json.
EVAL_KEYS = ("win_rate", "win_rate_ci", "lc_win_rate", "mean_length", "baseline_mean_length", "mean_tokens",
             "repetition_rate", "n_prompts")


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def iteration_entry(cfg: SelfPlayConfig, n: int) -> dict:
    """What iteration n did, from its files: the stages marked done and their numbers."""
    from prefero.evaluate.plots import curve, read_metrics

    d = iteration_dir(cfg, n)
    finished = finished_stages(cfg.output_dir)
    done = [s for s in stage_names(cfg) if f"iter_{n}/{s}" in finished]
    ref = reference_path(cfg, n)
    entry = {
        "iteration": n, "stages_done": done, "loss": cfg.loss,
        "start_model": relative(cfg, policy_path(cfg, n - 1)), "model": relative(cfg, policy_path(cfg, n)),
        "reference_model": relative(cfg, ref) if ref else None,
    }
    files = {"prompts": d / "prompts.jsonl", "generated": d / "generated.jsonl", "judged": d / "judged.jsonl",
             "training_data": d / "pairs.jsonl", "data_report": d / "model" / "data_report.json",
             "metrics": d / "model" / "metrics.jsonl", "eval_report": d / "eval" / "report.json"}
    entry["files"] = {k: relative(cfg, p) for k, p in files.items() if p.exists()}
    if "generate" in done:
        gen = _read(report_path(files["generated"]))
        entry.update(prompts=gen["prompts"], completions=gen["completions"],
                     mean_completion_chars=gen["mean_completion_chars"], hit_max_new_tokens=gen["hit_max_new_tokens"])
    if "label" in done:
        lab = _read(report_path(files["training_data"]))
        entry.update(training_rows=lab["kept"], dropped=lab["dropped"])
        if "mean_p_gap" in lab:
            entry["mean_p_gap"] = lab["mean_p_gap"]
    if "train" in done:
        steps, losses = curve(read_metrics(files["metrics"]), "loss")
        entry.update(train_steps=steps[-1] if steps else 0, train_loss_first=losses[0] if losses else None,
                     train_loss_last=losses[-1] if losses else None)
    if "eval" in done:
        report = _read(files["eval_report"])
        entry.update({k: report.get(k) for k in EVAL_KEYS})
    return entry


def build_summary(cfg: SelfPlayConfig) -> dict:
    entries = [iteration_entry(cfg, n) for n in range(1, cfg.iterations + 1)]
    complete = [e for e in entries if len(e["stages_done"]) == len(stage_names(cfg))]
    return {
        "method": cfg.method, "loss": cfg.loss, "start_model": cfg.model,
        "reference": "π_0" if cfg.reference_is_initial else "π_t (the iteration's start model)",
        "iterations_planned": cfg.iterations, "iterations_done": len(complete),
        "final_model": complete[-1]["model"] if complete else None,
        "win_rate_baseline": cfg.model if cfg.eval_prompts else None,
        "per_iteration": entries,
    }


def write_summary(cfg: SelfPlayConfig) -> dict:
    """summary.json and the plots (win rate across iterations, each iteration's training
    curves), each redrawn only when what it shows has changed since the last summary."""
    from prefero.evaluate.plots import plot_training_curves, plot_win_rates, read_metrics

    summary = build_summary(cfg)
    out = Path(cfg.output_dir)
    path = out / SUMMARY
    old = _read(path) if path.exists() else {}
    if old == summary:
        return summary
    before = {e["iteration"]: e for e in old.get("per_iteration", [])}
    plots = out / "plots"
    rates = _win_rates(summary)
    if rates and (rates != _win_rates(old) or not (plots / "win_rates.png").exists()):
        plot_win_rates(rates, plots / "win_rates.png")
    for e in summary["per_iteration"]:
        png = plots / f"training_iter_{e['iteration']}.png"
        if "train" in e["stages_done"] and (before.get(e["iteration"]) != e or not png.exists()):
            metrics = iteration_dir(cfg, e["iteration"]) / "model" / "metrics.jsonl"
            plot_training_curves(read_metrics(metrics), png, title=f"iteration {e['iteration']} ({cfg.loss})")
    atomic_write_json(path, summary)  # last: a kill before it redraws next time
    return summary


def _win_rates(summary: dict) -> list[dict]:
    """The entries of the win-rate chart, one per evaluated iteration."""
    return [{"label": f"iter {e['iteration']}", "win_rate": e["win_rate"], "ci": e["win_rate_ci"],
             "lc_win_rate": e["lc_win_rate"]}
            for e in summary.get("per_iteration", []) if e.get("win_rate") is not None]


def iteration_line(e: dict, total: int, earlier: bool = False) -> str:
    """One line per iteration: data, training, win rate."""
    parts = [f"prefero selfplay: iteration {e['iteration']}/{total}" + (" (done earlier)" if earlier else "")]
    if "training_rows" in e:
        dropped = sum(e["dropped"].values())
        parts.append(f"{e['prompts']} prompts x {e['completions'] // max(e['prompts'], 1)} completions -> "
                     f"{e['training_rows']} training rows ({dropped} dropped)")
    if e.get("train_loss_last") is not None:
        parts.append(f"{e['loss']} loss {e['train_loss_first']:.4f} -> {e['train_loss_last']:.4f} "
                     f"over {e['train_steps']} steps")
    if e.get("win_rate") is not None:
        lo, hi = e["win_rate_ci"]
        lc = f"{100 * e['lc_win_rate']:.1f}%" if e.get("lc_win_rate") is not None else "n/a"
        parts.append(f"win rate vs π_0 {100 * e['win_rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}], LC {lc}, "
                     f"mean length {e['mean_length']:.0f} chars (π_0 {e['baseline_mean_length']:.0f})")
    return "; ".join(parts) + f" -> {e['model']}"
