"""`prefero eval`: is the trained policy better? (docs/evaluation.md)

    report = run_eval(load_config("examples/eval.yaml", cls=EvalConfig))
    report["win_rate"], report["win_rate_ci"], report["lc_win_rate"]

Two measurements, either or both:

- **Win rate on held-out prompts.** Each side's responses come from a model (the
  generation stage, one response per prompt, greedy by default) or from a file
  (prefero.evaluate.responses). The judge sees every (policy, baseline) pair in both
  orders (prefero.evaluate.judging), then `compare` and `write_report` make the numbers
  and files (see prefero.evaluate.report).
- **Metrics on held-out pairs** from `model`'s own log-probabilities
  (prefero.evaluate.heldout).

Files in `output_dir`: `policy_responses.jsonl` / `baseline_responses.jsonl` (from a
model; `prefero generate` rows, with their `.report.json`), `judgments.jsonl`,
`pairs_data_report.json`, the run's manifest `stages.json`, and the report: report.json,
report.md, comparisons.jsonl, plots/.

Resumption: generation and judging are the costly stages, and stages of output_dir's run
(`prefero.stages`, manifest output_dir/stages.json): each writes a resumable output
(prefero.pipeline_io.StageOutput), so a killed evaluation picks up where it stopped, and
a finished one with this run's fingerprint is reused. An existing report.json is
replaced only with `overwrite: true`, checked before any work, as are output_dir itself
(not a file, not under one) and the lock that keeps a second evaluation out of it while
this one runs.

Processes: under a launcher (`accelerate launch ... prefero eval`) the processes share
generation and judging batch by batch (prefero.processes) and write the files one process
writes; process 0 computes the held-out pair metrics and writes the report.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefero.evaluate.config import EvalConfig
from prefero.evaluate.heldout import evaluate_pairs, load_eval_pairs
from prefero.evaluate.judging import JUDGMENTS, judge_and_compare
from prefero.evaluate.report import REPORT_JSON, write_report
from prefero.evaluate.responses import (
    generate_config,
    generated_responses,
    match_responses,
    read_outputs,
    responses_path,
)
from prefero.options import ConfigError
from prefero.pipeline_io import Prompt, read_prompts
from prefero.processes import Processes, stage_processes
from prefero.stage_files import check_output_dir_path, check_output_file, make_folder
from prefero.stages import Runner

SIDES = ("policy", "baseline")

# --------------------------------------------------------------------------- the command


def run_eval(cfg: EvalConfig) -> dict:
    """Evaluate as `cfg` says; returns the report (the content of output_dir/report.json).

    Every input is read and checked before any model runs, so a bad row fails in seconds,
    not after an hour of generation.
    """
    cfg.validate()
    out = Path(cfg.output_dir)
    check_output_dir_path(out)
    check_output_file(out / REPORT_JSON, "output_dir", out / JUDGMENTS, responses_path(out, "policy"),
                      responses_path(out, "baseline"))
    if (out / REPORT_JSON).exists() and not cfg.overwrite:
        raise ConfigError(f"{out / REPORT_JSON} exists; set overwrite=true to replace it (responses and "
                          "judgments made with the same settings are reused)")
    make_folder(out.parent, "output_dir", out)
    procs = stage_processes(needs_torch=False)  # the stages load their models themselves
    # one evaluation writes output_dir at a time; its process 0 holds the lock for all of them
    with Runner(out, cfg.overwrite, procs=procs) as runner:
        return _evaluate(cfg, out, procs, runner)


def _evaluate(cfg: EvalConfig, out: Path, procs: Processes, runner: Runner) -> dict:
    meta: dict = {"name": Path(cfg.model or cfg.outputs or "policy").name}

    # 1. read and check the inputs: models, judge, prompts, responses files, pairs
    check_sources(cfg)
    prompts, responses = None, {}
    if cfg.wants_win_rate:
        given = {side: read_outputs(path, cfg.prompt_column, cfg.response_column)
                 for side, path in (("policy", cfg.outputs), ("baseline", cfg.baseline_outputs)) if path}
        prompts = (read_prompts(cfg.prompts, cfg.prompt_column) if cfg.prompts
                   else [Prompt(r.prompt, r.row, r.file) for r in given["policy"]])
        responses = {side: match_responses(prompts, rows, cfg.prompt_column) for side, rows in given.items()}
    pairs_input = load_eval_pairs(cfg) if cfg.pairs and procs.main else None
    procs.say(f"prefero eval: {procs.describe()}" + (f", {len(prompts)} prompts" if prompts else "")
              + (", held-out pairs" if cfg.pairs else ""))

    # 2. win rate: generation and judging, shared by the processes
    result = None
    if cfg.wants_win_rate:
        for side, model in (("policy", cfg.model), ("baseline", cfg.baseline_model)):
            if model:
                responses[side] = generated_responses(cfg, side, model, prompts, runner, procs)
        result, judge_meta = judge_and_compare(cfg, prompts, responses, procs, runner)
        meta.update(describe_sides(cfg, responses))
        meta.update(judge_meta)
    if not procs.main:
        return {}  # its share is saved; process 0 reports

    # 3. held-out pairs (process 0, once the others are done)
    pairs = None
    if pairs_input is not None:
        pairs, pairs_meta = evaluate_pairs(cfg, *pairs_input)
        meta.update(pairs_meta)

    write_report(out, result, pairs, meta=meta, n_examples=cfg.n_examples, overwrite=cfg.overwrite)
    # where it went, for the command's closing line (not in the file: a report stays the same wherever it is)
    return {**json.loads((out / REPORT_JSON).read_text(encoding="utf-8")), "output_dir": str(out)}


def check_sources(cfg: EvalConfig) -> None:
    """Every model path and the judge's function, checked in seconds (ConfigError naming
    the key) rather than found wrong after an hour of generation."""
    from prefero.model import check_model_source

    generating = cfg.generates
    for key, name, tokenizer in [("model", cfg.model, True), ("ref_model", cfg.ref_model, False),
                                 ("baseline_model", cfg.baseline_model if generating else None, True),
                                 ("tokenizer", cfg.tokenizer, True)]:
        if name:
            check_model_source(name, key, tokenizer=tokenizer)
    if generating:
        for side, model in (("policy", cfg.model), ("baseline", cfg.baseline_model)):
            if model:
                generate_config(cfg, side, model).validate()
    judge = cfg.judge if cfg.wants_win_rate else None
    if judge is not None and judge.type == "callable":
        from prefero.judges.callable import load_function

        load_function(judge.function)
    elif judge is not None and judge.type in ("reward_model", "pairwise_model", "llm"):
        check_model_source(judge.model, "judge.model", tokenizer=True)


def describe_sides(cfg: EvalConfig, responses: dict) -> dict:
    """Where each side's responses came from, one line each (report.md shows meta as is)."""
    meta = {"policy": cfg.model or cfg.outputs, "baseline": cfg.baseline_model or cfg.baseline_outputs,
            "prompts": cfg.prompts or f"the prompts of {cfg.outputs}"}
    for side in SIDES:
        r = responses[side]
        notes = ["generated here" if r.matched_by == "index" else "matched to the prompts by prompt text"]
        if r.unused_rows:
            notes.append(f"{r.unused_rows} rows answer none of the prompts")
        if r.hit_max_new_tokens is not None:
            notes.append(f"{r.hit_max_new_tokens} of {len(r.texts)} cut at max_new_tokens")
        meta[f"{side}_responses"] = f"{r.source} ({'; '.join(notes)})"
    if cfg.generates:
        g = cfg.generation
        sampling = ("greedy" if g.temperature == 0 else
                    f"temperature {g.temperature:g}, top_p {g.top_p:g}, top_k {g.top_k}, seed {g.seed}")
        meta["generation"] = f"{sampling}, max_new_tokens {g.max_new_tokens}, backend {g.backend}"
    return meta


