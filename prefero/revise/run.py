"""`run_revise`: answer, critique and revise every prompt; write transcripts, SFT rows, pairs.

Per prompt, one conversation per request (Bai et al., 2022, §3.1, as chat turns):

    answer      [prompt…]                                                  -> answer
    critique r  [prompt…, assistant: answer_r, user: critique_request]     -> critique_r
    revision r  [… critique conversation, assistant: critique_r,
                 user: revision_request]                                   -> revision_r

answer_0 is the model's answer (or the row's `response`), answer_{r+1} = revision_r: each
round critiques the latest revision in a fresh conversation, so the context does not grow
with the number of rounds. Work is cut into batches of `generation.batch_size` prompts in
input order; each step of a batch is one sampler call with one completion per prompt.

Seeds: the principle of round r of prompt i is `draw_principle(seed, i, r, n)`; the
sampler seeds each call from the keys it is given (see config.STRIDE), which depend on
the batch and the step only. So the same config gives the same files, whether the run
was killed and resumed or not.

Resume: transcripts are appended to `transcripts.partial.jsonl` after each batch
(prefero.pipeline_io.StageOutput). At the end sft.jsonl, pairs.jsonl and the report are
derived from the transcripts, and only then is transcripts.jsonl written: it is the mark
of a finished run, so a kill at any point before it leaves a run that resumes. The
settings the transcripts depend on (the prompts', answers' and constitution's content, the
sampling keys) are kept beside them: a rerun with others is refused, never mixed in.
One run writes an output_dir at a time (a lock on its transcripts).

Under a launcher (`accelerate launch ... prefero revise`) each process revises its share of
the batches (prefero.processes) into its own partial file, and process 0 derives the files
from everyone's transcripts: the same files as one process writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from prefero.data.errors import DataError
from prefero.data.formats import was_cut
from prefero.data.read import iter_rows
from prefero.files import atomic_write_json, write_jsonl_atomic
from prefero.generate import make_sampler
from prefero.generate.prompts import prompts_sha256
from prefero.generate.sampler import Sample, Sampler
from prefero.options import ConfigError
from prefero.pipeline_io import Prompt, StageOutput, partial_paths, read_jsonl_rows, read_prompts
from prefero.processes import Processes, position_batches, stage_processes
from prefero.revise.config import PAIRS, REPORT, SFT, STRIDE, TRANSCRIPTS, ReviseConfig
from prefero.revise.constitution import (
    Principle,
    constitution_sha256,
    default_constitution_path,
    draw_principle,
    load_constitution,
)
from prefero.stage_files import check_output_dir_path, check_output_file

#: Why a transcript gives no SFT row or no pair; checked in this order, the first that applies.
SFT_DROPS = ("blank_revision", "revision_hit_max_new_tokens")
PAIR_DROPS = SFT_DROPS + ("blank_original", "original_hit_max_new_tokens", "revision_unchanged")


@dataclass(frozen=True)
class Item:
    """One prompt to revise: its position in the input, the prompt as chat messages, and
    the row's own answer to critique (None: the model answers)."""

    index: int
    source: Prompt
    messages: list
    response: str | None


# --------------------------------------------------------------------------- the stage


def run_revise(cfg: ReviseConfig, sampler: Sampler | None = None) -> dict:
    """Write `cfg.output_dir`/{transcripts,sft,pairs}.jsonl and revise_report.json; return the report.

    `sampler` replaces the backend the config names (tests, or a model already loaded).
    """
    cfg.validate()
    check_output_dir_path(cfg.output_dir)
    check_output_file(cfg.path(TRANSCRIPTS), "output_dir", *(cfg.path(name) for name in (SFT, PAIRS, REPORT)))
    principles = load_constitution(cfg.constitution or default_constitution_path())
    items = read_items(cfg.prompts, cfg.prompt_column, cfg.response_column)
    procs = stage_processes(needs_torch=cfg.generation.backend != "openai")
    out = StageOutput(cfg.path(TRANSCRIPTS), _settings(cfg, principles, items), cfg.overwrite, procs.rank,
                      procs.world, procs.barrier, report=cfg.path(REPORT))
    _refuse_finished_outputs(cfg, out)
    done = out.start()
    procs.say(f"prefero revise: {procs.describe()}, {len(items)} prompts ({len(done)} done before), "
              f"backend {cfg.generation.backend}")
    try:
        return _revise(cfg, sampler, principles, items, out, done, procs)
    finally:
        out.close()


def _revise(cfg: ReviseConfig, sampler: Sampler | None, principles: list[Principle], items: list[Item],
            out: StageOutput, done: set[int], procs: Processes) -> dict:
    gen = cfg.generate_config()
    if done and not out.complete:
        procs.say(f"prefero revise: resuming, {len(done)} of {len(items)} prompts already done in {out.partial}")
    batches = [[items[n] for n in batch] for batch in position_batches(len(items), gen.batch_size)]
    todo = procs.pending(batches, done, key=lambda it: it.index)

    own = sampler is None and bool(todo)
    if own:
        sampler = make_sampler(gen, procs.device if gen.backend == "transformers" else None)
    if sampler is not None:
        # a prompt the sampler cannot render fails now, not hours in
        sampler.check([_prompt(it, it.messages) for b in todo for it in batches[b]])
    start = time.perf_counter()
    try:
        for b in _progress(todo) if procs.main else todo:
            rows = revise_batch(sampler, batches[b], b, principles, cfg.rounds, cfg.seed)
            # a batch cut short by a kill is redone whole (same seeds, same rows); only its missing rows are added
            out.append([row for row in rows if row["index"] not in done])
    finally:
        if own:
            sampler.close()
    seconds = time.perf_counter() - start
    if not procs.main:
        out.finish(len(items))  # its rows are in; process 0 derives the files from everyone's
        return {}
    out.wait_for_others()

    transcripts, duplicates = read_transcripts(out, len(items))
    sft, pairs, dropped = derive_rows(transcripts, cfg.drop_truncated)
    write_jsonl_atomic(Path(cfg.path(SFT)), sft)
    write_jsonl_atomic(Path(cfg.path(PAIRS)), pairs)
    report = revise_report(cfg, principles, transcripts, sft, pairs, dropped, resumed=len(done),
                           duplicates=duplicates, seconds=seconds)
    atomic_write_json(cfg.path(REPORT), report)
    out.finish(len(items))  # last: a finished transcripts.jsonl means every output is there
    return report


def revise_batch(sampler: Sampler, batch: list[Item], b: int, principles: list[Principle], rounds: int,
                 seed: int) -> list[dict]:
    """The transcripts of one batch: its answers, then `rounds` critique-revision rounds."""
    rows = [{"index": it.index, "prompt": it.messages, "response": it.response, "response_source": "input",
             "response_finish_reason": None, "response_tokens": 0, "rounds": []} for it in batch]
    need = [k for k, it in enumerate(batch) if it.response is None]
    if need:
        samples = _ask(sampler, [batch[k] for k in need], [batch[k].messages for k in need], b, call=0)
        for k, s in zip(need, samples):
            rows[k].update(response=s.completions[0], response_source="model",
                           response_finish_reason=s.finish_reasons[0], response_tokens=s.tokens)
    answers = [row["response"] for row in rows]
    for r in range(rounds):
        drawn = [principles[draw_principle(seed, it.index, r, len(principles))] for it in batch]
        critique_chats = [critique_conversation(it.messages, a, p) for it, a, p in zip(batch, answers, drawn)]
        critiques = _ask(sampler, batch, critique_chats, b, call=1 + 2 * r)
        revision_chats = [revision_conversation(chat, c.completions[0], p)
                          for chat, c, p in zip(critique_chats, critiques, drawn)]
        revisions = _ask(sampler, batch, revision_chats, b, call=2 + 2 * r)
        for row, p, c, v in zip(rows, drawn, critiques, revisions):
            row["rounds"].append({
                "principle": p.name,
                "critique_request": p.critique_request, "critique": c.completions[0],
                "critique_finish_reason": c.finish_reasons[0], "critique_tokens": c.tokens,
                "revision_request": p.revision_request, "revision": v.completions[0],
                "revision_finish_reason": v.finish_reasons[0], "revision_tokens": v.tokens,
            })
        answers = [v.completions[0] for v in revisions]
    return rows


def critique_conversation(prompt: list, answer: str, principle: Principle) -> list:
    """The prompt, the answer under review, and the principle's critique request."""
    return [*prompt, {"role": "assistant", "content": answer}, {"role": "user", "content": principle.critique_request}]


def revision_conversation(critique_chat: list, critique: str, principle: Principle) -> list:
    """The critique conversation, the model's critique, and the principle's revision request."""
    return [*critique_chat, {"role": "assistant", "content": critique},
            {"role": "user", "content": principle.revision_request}]


def _ask(sampler: Sampler, items: list[Item], chats: list[list], batch: int, call: int) -> list[Sample]:
    """One sampler call: one completion per chat. The keys the sampler seeds from are
    (position, call) pairs made into one number (config.STRIDE)."""
    samples = sampler.sample([_prompt(it, chat) for it, chat in zip(items, chats)],
                             [it.index * STRIDE + call for it in items], batch * STRIDE + call)
    if len(samples) != len(items) or any(len(s.completions) != 1 for s in samples):
        raise RuntimeError(f"the sampler returned {[len(s.completions) for s in samples]} completions for "
                           f"{len(items)} prompts, expected one each")
    return samples


def _prompt(item: Item, chat: list) -> Prompt:
    # the source row travels with every request, so an error names the row it came from
    return Prompt(chat, item.source.row, item.source.file)


# --------------------------------------------------------------------------- input


def read_items(path: str, prompt_column: str = "prompt", response_column: str = "response") -> list[Item]:
    """The prompts of `path` as chat messages, with each row's `response_column` answer if
    it has one (a non-blank string; anything else is a DataError naming file, row, field)."""
    prompts = read_prompts(path, prompt_column)
    responses: list[str | None] = [None] * len(prompts)
    if response_column:
        # read_prompts returns prompts only; the answers are a second pass over the same rows
        for k, (row, record) in enumerate(iter_rows(path)):
            value = record.get(response_column)
            if value is None:
                continue
            if not isinstance(value, str):
                raise DataError(path, row, response_column, f"expected a string (an answer to critique), got "
                                                            f"{type(value).__name__}")
            if not value.strip():
                raise DataError(path, row, response_column, "empty (blank string); drop the column from this row "
                                                            "to have the model answer")
            responses[k] = value
    return [Item(k, p, [{"role": "user", "content": p.text}] if isinstance(p.text, str) else p.text, responses[k])
            for k, p in enumerate(prompts)]


def _settings(cfg: ReviseConfig, principles: list[Principle], items: list[Item]) -> dict:
    """What the transcripts depend on (a resumed run must agree; no secret is in it)."""
    settings = cfg.generate_config().settings(prompts_sha256([it.source for it in items]))
    responses = hashlib.sha256(json.dumps([it.response for it in items], ensure_ascii=False).encode()).hexdigest()
    settings.update(stage="revise", rounds=cfg.rounds, response_column=cfg.response_column,
                    responses_sha256=responses, constitution_sha256=constitution_sha256(principles))
    gen = cfg.generation
    if gen.backend != "openai" and gen.model and os.path.isdir(gen.model):
        from prefero.reference import model_identity

        settings["model_files"] = model_identity(gen.model)  # a model retrained in place is another model
    return settings


def _refuse_finished_outputs(cfg: ReviseConfig, out: StageOutput) -> None:
    """sft/pairs/report without unfinished transcripts belong to a finished run: replaced
    only when asked (StageOutput guards transcripts.jsonl itself)."""
    if cfg.overwrite or partial_paths(out.output):
        return
    for name in (REPORT, SFT, PAIRS):
        if os.path.exists(cfg.path(name)):
            raise ConfigError(f"output_dir {cfg.output_dir!r} holds a finished revise run ({name}); "
                              "set overwrite=true to replace it")


def _progress(batches: list[int]):
    if not batches:
        return batches
    from tqdm.auto import tqdm

    return tqdm(batches, desc="revise", unit="batch", dynamic_ncols=True)


# --------------------------------------------------------------------------- outputs


def read_transcripts(out: StageOutput, total: int) -> tuple[list[dict], int]:
    """Every finished transcript from the partial files, in index order, and the number of
    duplicated rows left out (the first row of an index is kept, as StageOutput.finish does)."""
    rows: dict[int, dict] = {}
    duplicates = 0
    for path in partial_paths(out.output) or ([out.output] if out.complete else []):
        for _, row in read_jsonl_rows(path):
            if row["index"] in rows:
                duplicates += 1
            else:
                rows[row["index"]] = row
    missing = [i for i in range(total) if i not in rows]
    if missing or len(rows) != total:
        raise RuntimeError(f"{out.partial}: {len(missing)} prompts have no transcript (first: {missing[:5]}); "
                           "rerun to resume")
    return [rows[i] for i in range(total)], duplicates


def derive_rows(transcripts: list[dict], drop_truncated: bool) -> tuple[list[dict], list[dict], dict]:
    """sft rows {index, prompt, completion, principles}, pair rows {index, prompt, chosen,
    rejected, principles} and the drops of each by reason. Every transcript is either a row
    or one count: len(sft) + Σ dropped["sft"] = len(pairs) + Σ dropped["pairs"] = len(transcripts).

    A text cut at max_new_tokens (`prefero.label.was_cut`, the rule label uses) is dropped with
    `drop_truncated`, else kept and marked as label marks it (completion_truncated,
    chosen_truncated, rejected_truncated: true), so training appends no EOS to it."""
    sft, pairs = [], []
    dropped = {"sft": Counter(), "pairs": Counter()}
    for t in transcripts:
        original, final = t["response"], t["rounds"][-1]
        principles = [r["principle"] for r in t["rounds"]]
        revision_cut = was_cut(final["revision_finish_reason"])
        original_cut = was_cut(t.get("response_finish_reason"))  # a given answer has no finish reason
        problems = {
            "blank_revision": not final["revision"].strip(),  # the training reader refuses a blank completion
            "revision_hit_max_new_tokens": drop_truncated and revision_cut,
            "blank_original": not original.strip(),
            "original_hit_max_new_tokens": drop_truncated and original_cut,
            "revision_unchanged": final["revision"].strip() == original.strip(),  # no preference to learn
        }
        reason = next((r for r in SFT_DROPS if problems[r]), None)
        if reason:
            dropped["sft"][reason] += 1
        else:
            sft.append({"index": t["index"], "prompt": t["prompt"], "completion": final["revision"],
                        "principles": principles, **({"completion_truncated": True} if revision_cut else {})})
        reason = next((r for r in PAIR_DROPS if problems[r]), None)
        if reason:
            dropped["pairs"][reason] += 1
        else:
            pairs.append({"index": t["index"], "prompt": t["prompt"], "chosen": final["revision"],
                          "rejected": original, "principles": principles,
                          **({"chosen_truncated": True} if revision_cut else {}),
                          **({"rejected_truncated": True} if original_cut else {})})
    return sft, pairs, {k: dict(sorted(v.items())) for k, v in dropped.items()}


def revise_report(cfg: ReviseConfig, principles: list[Principle], transcripts: list[dict], sft: list[dict],
                  pairs: list[dict], dropped: dict, resumed: int, duplicates: int, seconds: float) -> dict:
    """Counts over every transcript (earlier runs' included) and this run's time."""
    usage = Counter(r["principle"] for t in transcripts for r in t["rounds"])
    tokens = Counter()
    hit_max = Counter()
    unknown = 0
    for t in transcripts:
        steps = [("response", t["response_finish_reason"], t["response_tokens"])] if t["response_source"] == "model" else []
        steps += [(kind, r[f"{kind}_finish_reason"], r[f"{kind}_tokens"]) for r in t["rounds"]
                  for kind in ("critique", "revision")]
        for kind, finish, used in steps:
            hit_max[kind] += was_cut(finish)
            if used is None:
                unknown += 1  # the server reported no usage
            else:
                tokens[kind] += used
    gen = cfg.generation
    return {
        "stage": "revise",
        "output_dir": cfg.output_dir,
        "prompts_file": cfg.prompts,
        "constitution": cfg.constitution or default_constitution_path(),
        "constitution_sha256": constitution_sha256(principles),
        "model": gen.model,
        "backend": gen.backend,
        "seed": cfg.seed,
        "rounds": cfg.rounds,
        "temperature": gen.temperature,
        "max_new_tokens": gen.max_new_tokens,
        "prompts": len(transcripts),
        "responses_from_input": sum(t["response_source"] == "input" for t in transcripts),
        "responses_from_model": sum(t["response_source"] == "model" for t in transcripts),
        "principle_usage": {p.name: usage[p.name] for p in principles},
        "sft_rows": len(sft),
        "pair_rows": len(pairs),
        "dropped": dropped,
        "drop_truncated": cfg.drop_truncated,
        "hit_max_new_tokens": {k: hit_max[k] for k in ("response", "critique", "revision")},
        "tokens": {**{k: tokens[k] for k in ("response", "critique", "revision")}, "total": sum(tokens.values()),
                   "samples_without_token_count": unknown},
        "resumed_prompts": resumed,
        "prompts_this_run": len(transcripts) - resumed,
        "seconds_this_run": round(seconds, 3),
        "duplicate_rows_dropped": duplicates,
    }


# --------------------------------------------------------------------------- command line
