"""`prefero label`: judged rows -> the preference data `prefero train` reads (docs/pipeline.md).

    report = run_label(load_config("label.yaml", cls=LabelConfig))

Input: rows {prompt, completions, scores} (+ `pairwise`, the K×K matrix of a pairwise
judge), as `prefero judge` writes them. Output, one row per usable input row:

- `format: pairs` — {prompt, chosen, rejected}: chosen the best-scored completion (the
  first on ties), rejected the worst (`rejected: worst`, the first of the worst) or a
  random completion scored strictly below the best (`rejected: random`: a completion tied
  with the best expresses no preference). UltraFeedback-binarized takes the random one,
  SimPO's on-policy data the worst; both are here.
- `format: sppo` — {prompt, chosen, rejected, p_chosen, p_rejected} for SPPO (Wu et al.,
  2024, "Self-Play Preference Optimization for Language Model Alignment", Alg. 1):
  P[i][j] = P(y_i ≻ y_j) from the pairwise matrix when the judge gave one, else
  σ(s_i − s_j) from the scores (Bradley–Terry); P̂(y_i) = mean over all j, j = i included
  with P[i][i] = ½, as the authors' code computes it; chosen = argmax P̂, rejected =
  argmin P̂ (the first on ties); p_chosen, p_rejected = their P̂.

Rows that give no preference are dropped and counted by reason in the report (never
silently): `fewer_than_two_completions`, `null_scores` (the judge had no usable answer for
a completion: binarizing around it would be a guess), `tied_scores` (all completions
equal), `identical_chosen_rejected` (different completions, the same text),
`blank_completion` (chosen or rejected is empty text, which training data may not hold:
a policy that answered nothing was judged for it, but cannot be trained on), `truncated`
(chosen or rejected stopped at max_new_tokens, see below). Every row read is either kept
or counted: read == kept + Σ dropped. A run that keeps no row fails, naming the most
common reasons, and writes no output (its report is written, to look at).

Cut completions. A completion whose `finish_reasons` entry (as `prefero generate` writes
it, and `prefero judge` carries it) is "length" stopped at the token limit: it is not a
finished answer, and training on it as chosen or rejected would teach the model to stop
mid-sentence (README.md#data). Such a pair or SPPO row is dropped (`truncated`); with
`keep_truncated: true` it is kept and marked `chosen_truncated: true` /
`rejected_truncated: true` (written only when true), so `prefero train` appends no EOS to
the cut side. `was_cut` is the one rule; revise and self-play use it too.

The random choice is seeded by (seed, the row's `index`) — the id `prefero judge` keeps
from its input (generate's prompt position), not the position in this file — so filtering
or shuffling rows, before or after judging, does not change it.
The output is written atomically: it is complete or absent, and written after its report,
so a finished output always has its report (a run killed between the two leaves only the
report, and a rerun labels again). One run writes an output at a time (a lock). Report
numbers are finite: a mean gap too large for a float (scores of ±1e308) is null.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from prefero.data.errors import DataError
from prefero.data.formats import Dropped, Where, text_value, was_cut
from prefero.data.read import iter_rows
from prefero.files import atomic_write_json, write_jsonl_atomic
from prefero.judges import sigmoid, win_rates
from prefero.judges.run import completion_text
from prefero.options import ConfigError, option
from prefero.report_stats import finite_mean
from prefero.stage_files import OutputLock, check_output_file, make_folder

FORMATS = ("pairs", "sppo")
REJECTED = ("worst", "random")


@dataclass
class LabelConfig:
    """Everything `prefero label` reads."""

    input: str = option("", "judged rows {prompt, completions, scores[, pairwise]} (e.g. `prefero judge` output)")
    output: str = option("", "where the preference rows go (.jsonl); a report is written next to it")
    format: str = option("pairs", "pairs: {prompt, chosen, rejected} | sppo: the same + p_chosen, p_rejected",
                     choices=list(FORMATS))
    rejected: str = option("worst", "pairs: the worst completion, or a random one scored below the best",
                       choices=list(REJECTED))
    seed: int = option(0, "seed of rejected=random (combined with each row's index)", ge=0)
    keep_truncated: bool = option(False, "keep pairs whose chosen or rejected stopped at max_new_tokens (finish "
                                     "reason 'length'), marked chosen_truncated/rejected_truncated; false = "
                                     "drop them (counted as truncated)")
    prompt_column: str = option("prompt", "column holding the prompt")
    completions_column: str = option("completions", "column holding the list of completions")
    overwrite: bool = option(False, "replace an existing output")

    def validate(self) -> "LabelConfig":
        if not self.input:
            raise ConfigError("`input` is required (judged rows with completions and scores)")
        if not self.output:
            raise ConfigError("`output` is required (a .jsonl file)")
        if not self.output.endswith(".jsonl"):
            raise ConfigError(f"output: {self.output!r} must end in .jsonl")
        if self.format == "sppo" and self.rejected != "worst":
            raise ConfigError("rejected: 'random' is a setting of format 'pairs'; SPPO takes argmin P̂ as rejected")
        return self


# --------------------------------------------------------------------------- choosing


def choose_pair(scores: list[float], rejected: str = "worst", rng: random.Random | None = None) -> tuple[int, int]:
    """(chosen, rejected) indices: the best (first on ties), and the worst (first of the
    worst) or a random one scored strictly below the best. Raises Dropped("tied_scores")
    when every score equals the best."""
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    lower = [i for i in range(len(scores)) if scores[i] < scores[best]]
    if not lower:
        raise Dropped("tied_scores")
    if rejected == "worst":
        return best, min(lower, key=lambda i: (scores[i], i))
    return best, (rng or random.Random()).choice(lower)


def bradley_terry_matrix(scores: list[float]) -> list[list[float]]:
    """P[i][j] = σ(s_i − s_j); P[i][i] = σ(0) = ½ exactly."""
    return [[sigmoid(si - sj) for sj in scores] for si in scores]


def choose_sppo(matrix: list[list[float]]) -> tuple[int, int, list[float]]:
    """(chosen, rejected, P̂): argmax and argmin of P̂(y_i) = mean_j P[i][j] (the first on
    ties). Raises Dropped("tied_scores") when all P̂ are equal."""
    phat = win_rates(matrix)
    hi = max(range(len(phat)), key=lambda i: (phat[i], -i))
    lo = min(range(len(phat)), key=lambda i: (phat[i], i))
    if phat[hi] == phat[lo]:
        raise Dropped("tied_scores")
    return hi, lo, phat


# --------------------------------------------------------------------------- reading


@dataclass
class Judged:
    prompt: object  # Text
    completions: list
    scores: list  # float | None
    pairwise: list | None
    index: int  # the row's id (its `index`, else its line), seeds rejected=random
    where: Where
    finish_reasons: list | None = None  # per completion, when the row has them


def _number_or_null(value, field: str, what: str, where: Where, lo=-math.inf, hi=math.inf):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise where.error(field, f"{what} is {value!r}; expected a finite number or null")
    if not lo <= value <= hi:
        raise where.error(field, f"{what} is {value!r}; expected a probability in [0, 1]")
    return float(value)


def parse_judged(record: dict, where: Where, cfg: LabelConfig) -> Judged:
    """One judged row, validated (a `DataError` names file, row and field)."""
    p_col, c_col = cfg.prompt_column, cfg.completions_column
    if record.get(p_col) is None:
        raise where.error(p_col, "missing")
    prompt = text_value(record[p_col], p_col, where)
    completions = record.get(c_col)
    if not isinstance(completions, list):
        raise where.error(c_col, "missing" if completions is None else
                          f"expected a list of completions, got {type(completions).__name__}")
    completions = [completion_text(c, f"{c_col}[{k}]", where) for k, c in enumerate(completions)]
    scores = record.get("scores")
    if not isinstance(scores, list):
        raise where.error("scores", "missing (judge the rows first: prefero judge)" if scores is None else
                          f"expected a list of numbers, got {type(scores).__name__}")
    if len(scores) != len(completions):
        raise where.error("scores", f"has {len(scores)} scores for {len(completions)} completions")
    scores = [_number_or_null(s, "scores", f"score {k}", where) for k, s in enumerate(scores)]
    matrix = record.get("pairwise")
    if matrix is not None:
        k = len(completions)
        if not isinstance(matrix, list) or len(matrix) != k or any(not isinstance(r, list) or len(r) != k for r in matrix):
            raise where.error("pairwise", f"expected a {k}×{k} matrix (one row and column per completion)")
        matrix = [[_number_or_null(p, "pairwise", f"P[{i}][{j}]", where, 0.0, 1.0) for j, p in enumerate(r)]
                  for i, r in enumerate(matrix)]
    index = record.get("index")
    index = index if isinstance(index, int) and not isinstance(index, bool) else where.row
    reasons = record.get("finish_reasons")
    if reasons is not None:
        if not isinstance(reasons, list) or len(reasons) != len(completions) or \
                any(r is not None and not isinstance(r, str) for r in reasons):
            raise where.error("finish_reasons", f"expected a list of {len(completions)} strings (one per "
                                                "completion, e.g. \"stop\" or \"length\")")
    return Judged(prompt, completions, scores, matrix, index, where, reasons)


# --------------------------------------------------------------------------- labelling


def label_row(j: Judged, cfg: LabelConfig) -> dict:
    """The output row of one judged row, or `Dropped(reason)`."""
    if len(j.completions) < 2:
        raise Dropped("fewer_than_two_completions")
    row = {"prompt": j.prompt}
    if cfg.format == "sppo":
        if j.pairwise is not None:
            if any(p is None for r in j.pairwise for p in r):
                raise Dropped("null_scores")
            matrix = j.pairwise
        elif None in j.scores:
            raise Dropped("null_scores")
        else:
            matrix = bradley_terry_matrix(j.scores)
        chosen, rejected, phat = choose_sppo(matrix)
        extra = {"p_chosen": phat[chosen], "p_rejected": phat[rejected]}
    else:
        if None in j.scores:
            raise Dropped("null_scores")
        rng = random.Random(f"{cfg.seed}:{j.index}")
        chosen, rejected = choose_pair(j.scores, cfg.rejected, rng)
        extra = {}
    if j.completions[chosen] == j.completions[rejected]:
        raise Dropped("identical_chosen_rejected")
    if any(isinstance(t, str) and not t.strip() for t in (j.completions[chosen], j.completions[rejected])):
        raise Dropped("blank_completion")  # the training reader refuses a blank chosen or rejected
    cut = [bool(j.finish_reasons) and was_cut(j.finish_reasons[k]) for k in (chosen, rejected)]
    if any(cut) and not cfg.keep_truncated:
        raise Dropped("truncated")
    row.update(chosen=j.completions[chosen], rejected=j.completions[rejected], **extra,
               score_chosen=j.scores[chosen], score_rejected=j.scores[rejected], index=j.index)
    for side, flag in zip(("chosen", "rejected"), cut):
        if flag:
            row[f"{side}_truncated"] = True
    return row


def run_label(cfg: LabelConfig) -> dict:
    """Label `cfg.input` into `cfg.output`; returns the report (also written next to it)."""
    out = Path(cfg.output)
    report_file = cfg.output[: -len(".jsonl")] + ".report.json"
    check_output_file(out, "output", report_file)
    if out.exists() and not cfg.overwrite:
        raise ConfigError(f"output {cfg.output!r} already exists; set overwrite=true to replace it")
    make_folder(out.parent, "output", out)
    with OutputLock(out):
        if out.exists() and not cfg.overwrite:  # finished by a run that held the lock until now
            raise ConfigError(f"output {cfg.output!r} already exists; set overwrite=true to replace it")
        return _label(cfg, out, report_file)


def _label(cfg: LabelConfig, out: Path, report_file: str) -> dict:
    rows, dropped, read = [], Counter(), 0
    for line, record in iter_rows(cfg.input):
        if isinstance(record, DataError):
            raise record
        read += 1
        judged = parse_judged(record, Where(str(cfg.input), line), cfg)
        try:
            rows.append(label_row(judged, cfg))
        except Dropped as d:
            dropped[d.reason] += 1
    report = label_report(cfg, read, rows, dropped)
    if not rows:
        # an empty training file would only fail later, in train, far from the reason
        atomic_write_json(report_file, report)
        why = ", ".join(f"{reason}: {n}" for reason, n in dropped.most_common(3)) or "the input has no rows"
        raise DataError(str(cfg.input), None, None, f"no row kept of {read} read ({why}); nothing written to "
                        f"{cfg.output}, see {report_file}", skippable=False)
    atomic_write_json(report_file, report)
    write_jsonl_atomic(out, rows)  # last: a finished output means its report is there
    return report


def label_report(cfg: LabelConfig, read: int, rows: list[dict], dropped: Counter) -> dict:
    # half-gaps cannot overflow (|s/2| <= 0.9e308); twice their mean can, and is then null
    half = finite_mean(r["score_chosen"] / 2 - r["score_rejected"] / 2 for r in rows
                       if r["score_chosen"] is not None and r["score_rejected"] is not None)
    gap = None if half is None else 2 * half
    report = {
        "input": cfg.input, "output": cfg.output, "format": cfg.format, "rejected": cfg.rejected, "seed": cfg.seed,
        "keep_truncated": cfg.keep_truncated, "read": read, "kept": len(rows), "dropped": dict(sorted(dropped.items())),
        "truncated_kept": sum(bool(r.get("chosen_truncated") or r.get("rejected_truncated")) for r in rows),
        "mean_score_gap": gap if gap is not None and math.isfinite(gap) else None,
    }
    if cfg.format == "sppo":
        report["mean_p_gap"] = finite_mean(r["p_chosen"] - r["p_rejected"] for r in rows)
    return report
