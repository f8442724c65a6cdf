"""`prefero judge`: rows of {prompt, completions} in, the same rows with `scores` out.

    report = run_judge(load_config("judge.yaml", cls=JudgeRunConfig))

Rows keep every input column (generate's `finish_reasons` included, which `prefero label`
reads to drop completions cut at max_new_tokens) and gain `scores` (one per completion,
null where the judge had no usable answer) and, in pairwise mode, `pairwise`: the K×K
matrix P[i][j] = P(y_i ≻ y_j), with `scores` then the win rates P̂(y_i) = mean_j P[i][j].
That is the "scored multi-completion" shape `prefero train` reads, and what `prefero label`
binarizes.

`index`: a row keeps its input row's own `index` when every input row has a distinct
integer one (as `prefero generate` writes: the prompt's position), so filtering or
reordering rows before judging changes no row's identity (label seeds `rejected: random`
with it); otherwise it is the row's position in the input. A judge's score that is not a
finite number (a reward model's NaN) stops the run naming the row, before it is saved.

The output is resumable (`prefero.pipeline_io.StageOutput`): rows are saved batch by batch,
a killed run picks up where it stopped, and the finished file is written atomically in
input order. The report (`NAME.report.json`) is computed from the finished rows, so it
covers the rows of earlier, interrupted runs too. A run resumes only the rows of the same
input content and the same judge (`judge_identity`: its settings, and what they point at:
a callable's source file, a local model's weight files, a server's URL and model name);
otherwise it says what changed and stops, or with `overwrite=true` judges again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import time
from pathlib import Path

from prefero.data.errors import DataError
from prefero.data.formats import Where, text_value
from prefero.data.read import iter_rows
from prefero.files import atomic_write_json, scrub_credentials
from prefero.judges import (
    Item,
    Judge,
    JudgeError,
    build_judge,
    check_unparseable,
    pairwise_matrices,
    process_budget,
    text_key,
    win_rates,
)
from prefero.judges.config import JudgeRunConfig
from prefero.pipeline_io import StageOutput, partial_paths, read_jsonl_rows
from prefero.processes import Processes, position_batches, stage_processes
from prefero.report_stats import finite_mean, finite_pstdev
from prefero.stage_files import rows_sha256


def report_path(output: str) -> Path:
    """`DIR/NAME.jsonl` -> `DIR/NAME.report.json` (as every pipeline stage names it)."""
    return Path(output[: -len(".jsonl")] + ".report.json")


def read_items(path: str, prompt_column: str = "prompt", completions_column: str = "completions") -> list[Item]:
    """Every row of `path` as an `Item`, validated: a `DataError` names file, row and field
    for a missing or malformed prompt or completion list."""
    items = []
    for row, record in iter_rows(path):
        if isinstance(record, DataError):
            raise record
        where = Where(str(path), row)
        prompt = record.get(prompt_column)
        if prompt is None:
            columns = ", ".join(sorted(map(str, record))) or "none"
            raise where.error(prompt_column, f"missing (the row has columns: {columns}); set prompt_column")
        prompt = text_value(prompt, prompt_column, where)
        completions = record.get(completions_column)
        if completions is None:
            raise where.error(completions_column, "missing; expected a list of completions")
        if not isinstance(completions, list) or not completions:
            got = "an empty list" if isinstance(completions, list) else type(completions).__name__
            raise where.error(completions_column, f"expected a non-empty list of completions, got {got}")
        completions = [completion_text(c, f"{completions_column}[{k}]", where) for k, c in enumerate(completions)]
        items.append(Item(prompt, completions, where, record, (prompt_column, completions_column)))
    if not items:
        raise DataError(str(path), None, None, "no rows to judge", skippable=False)
    return items


def completion_text(value, field: str, where: Where):
    """A completion to judge: any string (a policy that answered nothing has still answered,
    and is judged for it) or a valid message list."""
    return value if isinstance(value, str) else text_value(value, field, where)


def row_indices(items: list[Item]) -> list[int]:
    """Each item's output `index` (see the module docstring)."""
    own = [item.record.get("index") for item in items]
    if all(isinstance(i, int) and not isinstance(i, bool) for i in own) and len(set(own)) == len(own):
        return own
    return list(range(len(items)))


def planned_answers(items: list[Item], mode: str) -> int:
    """The answers judging `items` asks for: one per completion, or pairwise both orders of
    every pair of different texts (identical ones are ½ without asking)."""
    if mode != "pairwise":
        return sum(len(item.completions) for item in items)
    distinct = [len({text_key(c) for c in item.completions}) for item in items]
    return sum(d * (d - 1) for d in distinct)


def null_answers(out: StageOutput, indices: set[int]) -> int:
    """The unanswered scores (pointwise) or comparisons (pairwise, each from ≥ 1 unreadable
    answer) in the saved rows of `indices`: at least the unreadable answers behind them."""
    count = 0
    for path in partial_paths(out.output):
        for _, row in read_jsonl_rows(path):
            if row.get("index") not in indices:
                continue
            matrix = row.get("pairwise")
            if matrix is not None:
                count += sum(matrix[i][j] is None for i in range(len(matrix)) for j in range(i + 1, len(matrix)))
            else:
                count += sum(s is None for s in row.get("scores") or [])
    return count


def check_finite(item: Item, scores: list, matrix: list | None) -> None:
    """A judge's number that is NaN or infinite is refused, naming the row: it would be
    written as a token no JSON reader accepts, and poison every mean taken over it."""
    for k, s in enumerate(scores):
        if s is not None and not math.isfinite(s):
            raise JudgeError(str(item.where.error(item.column(k), f"the judge gave the score {s}; expected a "
                                                  "finite number (nothing of this batch was saved)")))
    for row in matrix or []:
        for p in row:
            if p is not None and not math.isfinite(p):
                raise JudgeError(str(item.where.error(item.column(), f"the judge gave the probability {p}")))


def judge_identity(judge) -> dict:
    """What decides a judge's answers, for a resumable stage's settings: the block's keys
    (`JudgeConfig.identity`; a server's URL and model name among them) and what they point at,
    which can change under the same name: a callable's source file (sha256; the whole file, so
    an edited helper of the function counts too) and a local model's weight files
    (`prefero.reference.model_identity`: config.json, and each weight file's size and time)."""
    identity = judge.identity()
    if judge.type == "callable":
        from prefero.judges.callable import load_function

        fn = load_function(judge.function)
        try:
            source = Path(inspect.getsourcefile(fn)).read_bytes()
        except (TypeError, OSError):  # a builtin or a function made at run time: its text if any
            try:
                source = inspect.getsource(fn).encode()
            except (TypeError, OSError):
                source = repr(fn).encode()
        identity["function_source_sha256"] = hashlib.sha256(source).hexdigest()
    elif judge.type in ("reward_model", "pairwise_model", "llm") and os.path.isdir(os.path.expanduser(judge.model)):
        from prefero.reference import model_identity

        identity["model_files"] = model_identity(os.path.expanduser(judge.model))
    return identity


def judge_rows(judge: Judge, items: list[Item], mode: str, indices: list[int]) -> list[dict]:
    """The output rows of `items` (input columns + scores [+ pairwise] + index)."""
    if mode == "pairwise":
        matrices = pairwise_matrices(judge, items)
        scores = [win_rates(m) for m in matrices]
    else:
        matrices, scores = None, judge.score(items)
    rows = []
    for n, (item, index) in enumerate(zip(items, indices)):
        if len(scores[n]) != len(item.completions):  # a judge's bug, not the data's
            raise RuntimeError(f"the judge returned {len(scores[n])} scores for {len(item.completions)} completions")
        check_finite(item, scores[n], matrices[n] if matrices is not None else None)
        row = {**item.record, "scores": scores[n], "index": index}
        if matrices is not None:
            row["pairwise"] = matrices[n]
        else:
            row.pop("pairwise", None)  # an earlier pairwise judgement of these rows is not ours
        rows.append(row)
    return rows


def run_judge(cfg: JudgeRunConfig) -> dict:
    """Judge `cfg.input` into `cfg.output` (resuming a partial run); returns the report ({}
    on processes other than 0). Under a launcher each process judges its share of the
    batches (prefero.processes); the file is the one a single process writes."""
    started = time.monotonic()
    items = read_items(cfg.input, cfg.prompt_column, cfg.completions_column)
    indices = row_indices(items)
    settings = {"input_sha256": rows_sha256(item.record for item in items), "judge": judge_identity(cfg.judge),
                "mode": cfg.mode, "prompt_column": cfg.prompt_column, "completions_column": cfg.completions_column}
    procs = stage_processes(needs_torch=False)  # the judge places its model itself (judge.device)
    out = StageOutput(cfg.output, settings, cfg.overwrite, procs.rank, procs.world, procs.barrier,
                      report=report_path(cfg.output))
    done = out.start()
    procs.say(f"prefero judge: {procs.describe()}, {cfg.judge.type} judge, {len(items)} rows "
              f"({len(done)} done before)")
    try:
        return _judge(cfg, items, indices, out, done, procs, started)
    finally:
        out.close()


def _judge(cfg: JudgeRunConfig, items: list[Item], indices: list[int], out: StageOutput, done: set[int],
           procs: Processes, started: float) -> dict:
    # Batches by input position, the same for any number of processes and across resumptions:
    # a batch is what the judge sees at once, so its rows' numbers do not depend on either.
    batches = position_batches(len(items), cfg.batch_size)
    mine = procs.pending(batches, done, key=lambda n: indices[n])
    todo = [n for n in range(len(items)) if indices[n] not in done]
    stats = {}
    loaded = time.monotonic()
    if mine:
        judge = build_judge(cfg.judge)
        loaded = time.monotonic()
        if hasattr(judge, "batch_size"):
            judge.batch_size = cfg.batch_size
        planned, resumed = process_budget(
            procs.main, planned_answers([items[n] for b in mine for n in batches[b]], cfg.mode), bool(done),
            lambda: planned_answers([items[n] for n in range(len(items)) if indices[n] in done], cfg.mode),
            lambda: null_answers(out, done))
        try:
            from tqdm.auto import tqdm

            share = sum(indices[n] not in done for b in mine for n in batches[b])
            bar = tqdm(total=share, desc="judge", unit="row", disable=None if procs.main else True)
            for b in mine:
                rows = judge_rows(judge, [items[n] for n in batches[b]], cfg.mode, [indices[n] for n in batches[b]])
                # before saving: a run over its budget fails at the latest at its last batch,
                # so a rerun never finds every row saved and publishes them
                check_unparseable(judge, planned, resumed)
                # a batch cut short by a kill is judged again whole, and only its missing rows saved
                new = [row for row in rows if row["index"] not in done]
                out.append(new)
                bar.update(len(new))
            bar.close()
        except BaseException:
            out.abandon()  # no settings file left beside nothing to resume
            raise
        finally:
            if hasattr(judge, "close"):
                judge.close()
        stats = {k: v for k, v in sorted(judge.stats.items()) if v}
    merged = out.finish(total=len(items), indices=indices, counts=stats)
    if not procs.main:
        return {}
    now = time.monotonic()
    judging = now - loaded  # from the judge loaded (on process 0) to every process's rows merged
    report = judge_report(cfg, read_output(cfg.output))
    report["this_run"] = {"rows_judged": len(todo), "rows_resumed": len(items) - len(todo),
                          "processes": procs.world, "seconds": round(now - started, 3),
                          "load_seconds": round(loaded - started, 3),
                          "rows_per_second": round(len(todo) / judging, 3) if judging > 0 else None,
                          **merged["counts"]}
    atomic_write_json(report_path(cfg.output), report)
    return report


def read_output(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def judge_report(cfg: JudgeRunConfig, rows: list[dict]) -> dict:
    """Counts and score statistics of the judged rows (nulls counted, never averaged in)."""
    values = [s for r in rows for s in r["scores"] if s is not None]
    full = [r["scores"] for r in rows if None not in r["scores"] and len(r["scores"]) >= 2]
    judge = {"type": cfg.judge.type}
    judge.update({k: getattr(cfg.judge, k) for k in ("model", "function") if getattr(cfg.judge, k)})
    if cfg.judge.base_url:
        judge["base_url"] = scrub_credentials(cfg.judge.base_url)
    report = {
        "input": cfg.input, "output": cfg.output, "judge": judge, "mode": cfg.mode,
        "rows": len(rows), "completions": sum(len(r["scores"]) for r in rows),
        "scores": {
            "mean": finite_mean(values), "std": finite_pstdev(values),
            "min": min(values, default=None), "max": max(values, default=None),
        },
        "null_scores": sum(s is None for r in rows for s in r["scores"]),
        "rows_with_null_scores": sum(None in r["scores"] for r in rows),
        "ties": {
            # all equal: no preference at all (label drops these rows)
            "rows_all_tied": sum(len(set(s)) == 1 for s in full),
            # the best shared by some but not all: chosen is the first of them
            "rows_best_tied": sum(len(set(s)) > 1 and s.count(max(s)) > 1 for s in full),
        },
    }
    if cfg.mode == "pairwise":
        report["null_comparisons"] = sum(
            r["pairwise"][i][j] is None for r in rows for i in range(len(r["pairwise"]))
            for j in range(i + 1, len(r["pairwise"])))
    return report
