"""The evaluation of a policy against a baseline, and the report files it is written to.

`compare(...)` turns per-prompt responses and judge preferences into an `EvalResult`
(win rate with its bootstrap interval, length-controlled win rate, generation statistics).
`write_report(output_dir, result, pairs)` writes, each file atomically (a temporary file
then `os.replace`, so a kill leaves the previous file or the new one, never half):

- `report.json`   headline numbers at the top level (`win_rate`, `win_rate_ci`,
                  `lc_win_rate`, `mean_length`, `baseline_mean_length`, `repetition_rate`,
                  `distinct_n`, `degenerate` and their `baseline_` twins, and the pair
                  metrics when pairs were given),
                  the details (counts, fitted length model, settings) in nested blocks;
- `report.md`     a table of the same and a few judged examples to read;
- `comparisons.jsonl`  one row per prompt, every prompt: both responses, both orders'
                  preferences, the lengths — the data behind every number above;
- `plots/*.png`   length distributions, repetition and degenerate shares of both
                  sides, and the win rate with its interval.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from prefero.data.errors import DataError
from prefero.evaluate.generation import GenerationStats, generation_stats
from prefero.evaluate.metrics import (
    LengthControlled,
    WinRate,
    bootstrap_ci,
    length_controlled_win_rate,
    policy_preferences,
    win_rate,
)
from prefero.evaluate.pairs import PairMetrics
from prefero.files import atomic_write_text, scrub_credentials
from prefero.options import ConfigError

REPORT_JSON, REPORT_MD, COMPARISONS = "report.json", "report.md", "comparisons.jsonl"
#: Characters of each response shown in report.md; comparisons.jsonl keeps all of them.
EXAMPLE_CHARS = 1500


@dataclass
class EvalResult:
    """Everything `compare` measured; `rows` holds one dict per prompt, in input order."""

    win: WinRate
    lc: LengthControlled
    lc_ci: tuple[float, float] | None
    policy: GenerationStats
    baseline: GenerationStats
    rows: list[dict]
    settings: dict = field(default_factory=dict)

    @property
    def preferences(self) -> np.ndarray:
        return np.array([r["preference"] for r in self.rows])


def compare(prompts: Sequence, policy_responses: Sequence[str], baseline_responses: Sequence[str],
            p_fwd: Sequence, p_rev: Sequence | None = None, *, difficulty: Sequence[float] | None = None,
            tokenizer=None, ngram: int = 3, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
            lc_prior_scale: float = 5.0, lc_resamples: int = 0, source: str | None = None) -> EvalResult:
    """Judge results → win rate, length-controlled win rate and generation statistics.

    `p_fwd[i]` / `p_rev[i]`: P(policy ≻ baseline) on prompt i with the policy's response
    shown first / second, or a verdict win/tie/loss (see `policy_preferences`).
    Lengths for the length control are in characters. `lc_resamples` > 0 also
    bootstraps an interval for the LC win rate (refitting the model each time; off by
    default because each resample is a fit). `source` names the judgments' file in errors.
    """
    n = len(prompts)
    for name, seq in [("policy responses", policy_responses), ("baseline responses", baseline_responses),
                      ("p_fwd", p_fwd), ("p_rev", p_rev), ("difficulty", difficulty)]:
        if seq is not None and len(seq) != n:
            raise DataError(source, None, None, f"{len(seq)} {name} for {n} prompts")
    pref = policy_preferences(p_fwd, p_rev, source=source)
    pol_len = np.array([len(t) for t in policy_responses], dtype=np.float64)
    base_len = np.array([len(t) for t in baseline_responses], dtype=np.float64)
    win = win_rate(pref, p_fwd=p_fwd, p_rev=p_rev, n_resamples=n_resamples, confidence=confidence, seed=seed)
    lc = length_controlled_win_rate(pref, pol_len, base_len, difficulty, prior_scale=lc_prior_scale)
    lc_ci = None
    if lc_resamples > 0:
        cols = [pref, pol_len, base_len] + ([np.asarray(difficulty, dtype=np.float64)] if difficulty is not None else [])
        table = np.stack(cols, axis=1)

        def lc_of(rows):
            return length_controlled_win_rate(rows[:, 0], rows[:, 1], rows[:, 2],
                                              rows[:, 3] if rows.shape[1] > 3 else None,
                                              prior_scale=lc_prior_scale).lc_win_rate

        lc_ci = bootstrap_ci(table, lc_of, n_resamples=lc_resamples, confidence=confidence, seed=seed)
    rows = []
    for i in range(n):
        rows.append({
            "index": i, "prompt": prompts[i], "policy": policy_responses[i], "baseline": baseline_responses[i],
            "p_fwd": p_fwd[i], "p_rev": p_rev[i] if p_rev is not None else None, "preference": float(pref[i]),
            "policy_chars": int(pol_len[i]), "baseline_chars": int(base_len[i]),
            **({"difficulty": float(difficulty[i])} if difficulty is not None else {}),
        })
    settings = {"bootstrap_resamples": n_resamples, "confidence": confidence, "seed": seed, "ngram": ngram,
                "lc_prior_scale": lc_prior_scale, "lc_resamples": lc_resamples,
                "orders": 2 if p_rev is not None else 1}
    return EvalResult(
        win=win, lc=lc, lc_ci=lc_ci,
        policy=generation_stats(policy_responses, tokenizer=tokenizer, ngram=ngram),
        baseline=generation_stats(baseline_responses, tokenizer=tokenizer, ngram=ngram),
        rows=rows, settings=settings,
    )


# --------------------------------------------------------------------------- report.json


def report_dict(result: EvalResult | None = None, pairs: PairMetrics | None = None, meta: dict | None = None) -> dict:
    """The content of report.json (see the module docstring); NaN never reaches it (None)."""
    if result is None and pairs is None:
        raise ValueError("nothing to report: give a comparison result, pair metrics, or both")
    out: dict = {}
    if result is not None:
        win, lc = result.win, result.lc
        out.update({
            "win_rate": win.win_rate,
            "win_rate_ci": list(win.ci),
            "lc_win_rate": lc.lc_win_rate,
            **({"lc_win_rate_ci": list(result.lc_ci)} if result.lc_ci is not None else {}),
            "mean_length": result.policy.mean_chars,
            "baseline_mean_length": result.baseline.mean_chars,
            "mean_tokens": result.policy.mean_tokens,
            "baseline_mean_tokens": result.baseline.mean_tokens,
            "repetition_rate": result.policy.repetition_rate,
            "baseline_repetition_rate": result.baseline.repetition_rate,
            "distinct_n": result.policy.distinct_n,
            "baseline_distinct_n": result.baseline.distinct_n,
            "degenerate": result.policy.degenerate,
            "baseline_degenerate": result.baseline.degenerate,
            "n_prompts": win.n,
            "judgments": {"wins": win.wins, "ties": win.ties, "losses": win.losses,
                          "position_bias": win.position_bias},
            "length_control": asdict(lc),
            "generation": {"policy": asdict(result.policy), "baseline": asdict(result.baseline)},
            "settings": result.settings,
        })
    if pairs is not None:
        p = asdict(pairs)
        out.update({k: p[k] for k in ("reward_accuracy", "likelihood_ranking_accuracy", "spearman_avg_logp_length")})
        out["pairs"] = p
    if meta:
        out["meta"] = meta
    return _finite(out)


def _finite(value):
    """Replace NaN/inf by None recursively: JSON has no spelling for them."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# --------------------------------------------------------------------------- writing


def write_report(output_dir: str | os.PathLike, result: EvalResult | None = None, pairs: PairMetrics | None = None,
                 *, meta: dict | None = None, n_examples: int = 4, plots: bool = True,
                 overwrite: bool = False) -> dict[str, Path]:
    """Write report.json, report.md, comparisons.jsonl (with a result) and plots/ into
    `output_dir`; returns {name: path} of what was written. An existing report.json is
    replaced only with `overwrite=True` (README.md#checkpoints-resume-safety: outputs are never overwritten without
    asking). `meta` (model names, judge, data files) is copied into both reports."""
    out = Path(output_dir)
    if (out / REPORT_JSON).exists() and not overwrite:
        raise ConfigError(f"{out / REPORT_JSON} exists; pass overwrite=true to replace it")
    out.mkdir(parents=True, exist_ok=True)
    report = scrub_credentials(report_dict(result, pairs, meta))  # no password of a judge URL in a report
    written: dict[str, Path] = {}
    if result is not None:
        written["comparisons"] = out / COMPARISONS
        atomic_write_text(written["comparisons"],
                      "".join(json.dumps(_finite(r), ensure_ascii=False) + "\n" for r in result.rows))
        if plots:
            from prefero.evaluate.plots import plot_lengths, plot_repetition, plot_win_rates

            written["lengths_plot"] = plot_lengths(
                [r["policy_chars"] for r in result.rows], [r["baseline_chars"] for r in result.rows],
                out / "plots" / "lengths.png")
            written["repetition_plot"] = plot_repetition(
                {"policy": asdict(result.policy), "baseline": asdict(result.baseline)}, out / "plots" / "repetition.png")
            written["win_rates_plot"] = plot_win_rates(
                [{"label": (meta or {}).get("name", "policy"), "win_rate": result.win.win_rate,
                  "ci": result.win.ci, "lc_win_rate": result.lc.lc_win_rate,
                  "degenerate": result.policy.degenerate}],
                out / "plots" / "win_rates.png")
    written["markdown"] = out / REPORT_MD
    atomic_write_text(written["markdown"], render_markdown(report, result, n_examples=n_examples,
                                                       plots=[p for k, p in written.items() if k.endswith("_plot")],
                                                       root=out))
    # report.json last: its presence means the whole report is there
    written["json"] = out / REPORT_JSON
    atomic_write_text(written["json"], json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return written


# --------------------------------------------------------------------------- report.md


def render_markdown(report: dict, result: EvalResult | None = None, *, n_examples: int = 4,
                    plots: Sequence[Path] = (), root: Path | None = None) -> str:
    """report.md: the headline table, generation statistics, pair metrics, plots, examples."""
    lines = ["# Evaluation report", ""]
    meta = report.get("meta") or {}
    lines += [f"- **{key}**: {value}" for key, value in meta.items()] + ([""] if meta else [])
    if "win_rate" in report:
        lines += _win_rate_table(report) + [""] + _generation_table(report)
    if "pairs" in report:
        lines += [""] + _pairs_table(report["pairs"])
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(p).stem}]({Path(p).relative_to(root) if root else p})" for p in plots]
    if result is not None and n_examples > 0:
        lines += ["", "## Examples", "",
                  "The clearest losses and the clearest wins, alternating (all prompts are in comparisons.jsonl).", ""]
        for k, i in enumerate(pick_examples(result.preferences, n_examples), start=1):
            lines += _example(k, result.rows[i])
    return "\n".join(lines).rstrip() + "\n"


def _row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _interval(ci) -> str:
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def _win_rate_table(report: dict) -> list[str]:
    s, j = report["settings"], report["judgments"]
    lc = _pct(report["lc_win_rate"])
    if "lc_win_rate_ci" in report:
        lc += " " + _interval(report["lc_win_rate_ci"])
    lines = ["## Win rate against the baseline", "", _row("metric", "value"), _row("---", "---"),
             _row("win rate", f"{_pct(report['win_rate'])} {_interval(report['win_rate_ci'])} "
                              f"({s['confidence']:.0%} bootstrap interval, {s['bootstrap_resamples']} resamples)"),
             _row("length-controlled win rate", lc),
             _row("wins / ties / losses", f"{j['wins']} / {j['ties']} / {j['losses']} of {report['n_prompts']} prompts")]
    if j["position_bias"] is not None:
        lines.append(_row("judge position bias", f"{100 * j['position_bias']:+.1f} points for the response shown first"))
    return lines + [_row("orders judged per prompt", s["orders"])]


def _generation_table(report: dict) -> list[str]:
    pol, base, n = report["generation"]["policy"], report["generation"]["baseline"], report["settings"]["ngram"]
    lines = ["## Generations", "", _row("", "policy", "baseline"), _row("---", "---", "---"),
             _row("mean length (characters)", _num(pol["mean_chars"]), _num(base["mean_chars"]))]
    if pol["mean_tokens"] is not None:
        lines.append(_row("mean length (tokens)", _num(pol["mean_tokens"]), _num(base["mean_tokens"])))
    return lines + [
        _row("repetition rate (responses that repeat a word)", _pct(pol["repetition_rate"]),
             _pct(base["repetition_rate"])),
        _row("distinct-1 (distinct words / words)", _num(pol["distinct_1"], 3), _num(base["distinct_1"], 3)),
        _row(f"distinct-{n} (distinct {n}-grams / {n}-grams)", _num(pol["distinct_n"], 3),
             _num(base["distinct_n"], 3)),
        _row("degenerate (one word, token or n-gram looped)", _pct(pol["degenerate"]), _pct(base["degenerate"])),
        _row(f"responses under {n} words (not in distinct-{n})", pol["too_short"], base["too_short"]),
        _row("empty responses", pol["empty"], base["empty"]),
    ]


def _pairs_table(p: dict) -> list[str]:
    lines = [f"## Held-out pairs ({p['n_pairs']})", "", _row("metric", "value"), _row("---", "---")]
    if p["reward_accuracy"] is not None:
        lines += [_row("reward accuracy (implicit reward)", _pct(p["reward_accuracy"])),
                  _row("mean reward margin", _num(p["reward_margin"], 4))]
    return lines + [_row("likelihood-ranking accuracy (A(y_w) > A(y_l))", _pct(p["likelihood_ranking_accuracy"])),
                    _row("Spearman ρ(A(y), \\|y\\|)", _num(p["spearman_avg_logp_length"], 3))]


def pick_examples(preferences: Sequence[float], k: int) -> list[int]:
    """Indices of the k prompts to show: the lowest preference, the highest, the second
    lowest, ... (ties in prompt order) — the verdicts most worth a human look."""
    order = sorted(range(len(preferences)), key=lambda i: (preferences[i], i))
    picked, lo, hi = [], 0, len(order) - 1
    while len(picked) < min(k, len(order)):
        if len(picked) % 2 == 0:
            picked.append(order[lo])
            lo += 1
        else:
            picked.append(order[hi])
            hi -= 1
    return picked


def _example(k: int, row: dict) -> list[str]:
    p = row["preference"]
    verdict = "policy won" if p > 0.5 else "policy lost" if p < 0.5 else "tie"
    orders = (f"; policy shown first: {_judgment(row['p_fwd'])}, baseline shown first: {_judgment(row['p_rev'])}"
              if row["p_rev"] is not None else "")
    return [f"### {k}. Prompt {row['index']} — {verdict} (P(policy ≻ baseline) = {p:.2f}{orders})", "",
            "**Prompt**", "", *_fenced(_prompt_text(row["prompt"])), "",
            f"**Policy** ({row['policy_chars']} characters)", "", *_fenced(row["policy"]), "",
            f"**Baseline** ({row['baseline_chars']} characters)", "", *_fenced(row["baseline"]), ""]


def _judgment(v) -> str:
    return v if isinstance(v, str) else f"{float(v):.2f}"


def _prompt_text(prompt) -> str:
    if isinstance(prompt, list):  # a conversation: show every turn with its role
        return "\n\n".join(f"[{m.get('role')}] {m.get('content')}" for m in prompt)
    return str(prompt)


def _fenced(text: str) -> list[str]:
    """A code fence longer than any backtick run inside, so the response cannot close it."""
    if len(text) > EXAMPLE_CHARS:
        text = text[:EXAMPLE_CHARS] + f"\n… ({len(text) - EXAMPLE_CHARS} more characters)"
    run = longest = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return [fence, text, fence]


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"
