"""The two entry points: `load_pairs` (preference pairs) and `load_examples` (SFT, KTO).

Both read records, detect each record's shape, validate, tokenize and truncate, and
account for every record in a `DataReport`: each one read is either kept or dropped
under a named reason, so `report.read == report.kept + sum(report.dropped.values())`.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

from prefero.data.errors import DataError
from prefero.data.formats import Dropped, Where, parse_examples, parse_pair
from prefero.data.options import DataOptions, TokenizedExample, TokenizedPair
from prefero.data.read import iter_rows
from prefero.data.report import DataReport
from prefero.data.tokenize import Encoder, Truncation, truncate

T = TypeVar("T")

KINDS = ("sft", "unpaired")


def load_pairs(
    path: str | os.PathLike,
    tokenizer,
    opts: DataOptions | None = None,
    report: DataReport | None = None,
) -> tuple[list[TokenizedPair], DataReport]:
    """Read preference pairs from `path` and tokenize them (README.md#data).

    Counts go into `report` when given (so several files can share one report),
    otherwise into a new one; the report used is returned.
    """
    opts = opts or DataOptions()
    encoder = Encoder(tokenizer)

    def build(record: dict, where: Where, report: DataReport) -> list[TokenizedPair]:
        raw = parse_pair(record, opts, where)
        prompt_ids, (chosen, rejected) = encoder.encode(
            raw.prompt, [(opts.chosen_column, raw.chosen), (opts.rejected_column, raw.rejected)], where,
            cut=[raw.chosen_cut, raw.rejected_cut],
        )
        cut = _truncate(prompt_ids, [chosen, rejected], opts, encoder)
        if cut.completions[0] == cut.completions[1]:
            # Equal after truncation: the pair's gradient would be zero for every loss.
            raise Dropped("identical_after_truncation")
        _count_truncation(cut, report, raw.chosen_cut or raw.rejected_cut)
        return [TokenizedPair(cut.prompt_ids, cut.completions[0], cut.completions[1], raw.p_chosen, raw.p_rejected, where.row)]

    return _load(path, opts, report, build)


def load_examples(
    path: str | os.PathLike,
    tokenizer,
    opts: DataOptions | None = None,
    kind: str = "sft",
    report: DataReport | None = None,
) -> tuple[list[TokenizedExample], DataReport]:
    """Read SFT (`kind="sft"`) or unpaired KTO (`kind="unpaired"`) examples and tokenize them.

    A paired record gives one example for SFT (its chosen completion) and two for
    unpaired training ((chosen, True), (rejected, False)); `report.kept` counts records,
    so `len(examples)` can exceed it.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    opts = opts or DataOptions()
    encoder = Encoder(tokenizer)
    completion_field = opts.completion_column

    def build(record: dict, where: Where, report: DataReport) -> list[TokenizedExample]:
        examples = parse_examples(record, opts, kind, where)
        # All examples of one record share its prompt (parse_examples guarantees it).
        prompt_ids, completions = encoder.encode(
            examples[0].prompt, [(completion_field, e.completion) for e in examples], where,
            cut=[e.cut for e in examples],
        )
        cut = _truncate(prompt_ids, completions, opts, encoder)
        _count_truncation(cut, report, any(e.cut for e in examples))
        return [
            TokenizedExample(cut.prompt_ids, ids, e.label, where.row)
            for e, ids in zip(examples, cut.completions)
        ]

    return _load(path, opts, report, build)


def _load(
    path: str | os.PathLike,
    opts: DataOptions,
    report: DataReport | None,
    build: Callable[[dict, Where, DataReport], list[T]],
) -> tuple[list[T], DataReport]:
    opts.validate()
    report = report if report is not None else DataReport()
    file = os.fspath(path)
    items: list[T] = []
    for row, record in iter_rows(path, opts.split):
        report.read += 1
        try:
            if isinstance(record, DataError):
                raise record
            built = build(record, Where(file, row), report)
        except Dropped as d:
            report.count_dropped(d.reason)
            continue
        except DataError as e:
            if opts.on_bad_record == "skip" and e.skippable:
                report.count_skipped(e)
                continue
            raise
        items.extend(built)
        report.kept += 1
    return items, report


def _truncate(prompt_ids: list[int], completions: list[list[int]], opts: DataOptions, encoder: Encoder) -> Truncation:
    cut = truncate(prompt_ids, completions, opts.max_length, opts.max_prompt_length, encoder.bos_id)
    if cut.empty:
        raise Dropped("completion_empty_after_truncation")
    return cut


def _count_truncation(cut: Truncation, report: DataReport, generation_cut: bool = False) -> None:
    # Counted only for records that are kept: a dropped record is counted once, under
    # the reason it was dropped.
    if generation_cut:  # a completion marked as cut at generation: trained without a stop token
        report.count_truncated("no_eos_cut_completion")
    if cut.prompt_truncated:
        report.count_truncated("prompt_truncated")
    if cut.completion_truncated:
        report.count_truncated("completion_truncated")
