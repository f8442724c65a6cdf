"""`run_selfplay`: the order of the self-play stages — the one place that knows it.

Iteration n (1-based) starts from π_(n−1) (π_0 = `model`) and trains π_n. Each stage is the
pipeline's own function called with a config built here, reading the previous stage's file
from `output_dir/iter_n/` and writing its own there:

    prompts.jsonl                   the iteration's slice of the prompt pool
    generated.jsonl  (+.report.json) K completions per prompt from π_(n−1)     run_generate
    judged.jsonl     (+.report.json) scores (pairwise: P[i][j] matrices)        run_judge
    pairs.jsonl      (+.report.json) SPPO rows or pairs; drops by reason        run_label
    model/                          π_n (data_report.json, metrics.jsonl)      prefero.train.train
    eval/                           π_n against π_0 on eval_prompts: report.json,  prefero.evaluate.run_eval
                                    report.md, comparisons.jsonl, judgments.jsonl

`output_dir/stages.json` is the run's manifest (`prefero.stages`): each stage (`iter_n/generate`,
...) with the fingerprint it ran with (its config, the content of the file it reads, the
policy it starts from) and whether it finished.

π_0's answers to eval_prompts are generated once, into `output_dir/baseline/`, with the
settings `prefero eval` generates the policy's with. After each iteration `summary.json`
and `plots/` at the top are rewritten from the files above.

Resumption. A stage the manifest records as finished, with the same fingerprint, is never
run again; one recorded with another fingerprint is refused (or, with overwrite, redone). A
stage not finished is run and resumes by its own means: generate, judge and the evaluation keep their finished rows
(partial files), label is redone (it is quick and atomic), the trainer is called with
`resume=true` (from its newest checkpoint, with `train.save_steps`; otherwise from step 0
over its own unfinished directory). A kill between a stage's last write and its marker is
recognised by the file the stage writes last (generate, judge, label: their report; the
evaluation: report.json): such a stage is recorded as finished without running again. The trainer
writes no such file, so a kill in that window (after its final save) repeats its training
from the newest checkpoint.

Before anything is created, every source is checked (the model, the judges' models or
functions, the prompt files, output_dir), so a wrong path costs no directory that a
corrected rerun would refuse. One run holds output_dir at a time (a lock beside it), and a
run resumes only with the same config and the same inputs: the prompt files' content and
the judge's identity (a callable's source, a local judge model's files) are recorded with
the config in the manifest (`run` in stages.json, under `inputs`), and a change is refused,
never mixed with the iterations already done.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path
from typing import Callable

from prefero.config import TrainConfig
from prefero.data.errors import DataError
from prefero.evaluate.config import EvalConfig
from prefero.evaluate.responses import generate_config as eval_generate_config
from prefero.evaluate.run import run_eval
from prefero.files import write_jsonl_atomic
from prefero.generate import GenerateConfig, run_generate
from prefero.judges.config import JudgeRunConfig
from prefero.judges.run import judge_identity, run_judge
from prefero.label import LabelConfig, run_label
from prefero.log import get_logger
from prefero.options import ConfigError, block_values, to_dict
from prefero.outputs import check_output_dir, claim_output_dir
from prefero.pipeline_io import Prompt, read_prompts
from prefero.selfplay.config import RESUMABLE_KEYS, SelfPlayConfig
from prefero.selfplay.paths import iteration_dir, policy_path, reference_path, report_path, stage_names
from prefero.selfplay.summary import iteration_line, write_summary
from prefero.stage_files import check_output_dir_path, join_changes, make_folder, rows_sha256
from prefero.stages import Runner, Stage, finished_stages
from prefero.train import train

log = get_logger(__name__)

COMMAND = "selfplay"


def prompt_slices(total: int, iterations: int, per_iteration: int, source: str = "prompts") -> list[range]:
    """Iteration n's prompts: the n-th disjoint slice of `per_iteration` prompts in file order
    (as SPPO splits UltraFeedback), or all of them when `per_iteration` is 0."""
    if per_iteration == 0:
        return [range(total)] * iterations
    if iterations * per_iteration > total:
        raise ConfigError(f"prompts: {source} has {total} prompts; {iterations} iterations x "
                          f"prompts_per_iteration {per_iteration} need {iterations * per_iteration} (a disjoint "
                          f"slice per iteration); lower prompts_per_iteration or iterations")
    return [range(k * per_iteration, (k + 1) * per_iteration) for k in range(iterations)]


# --------------------------------------------------------------------------- the stages' configs


def generate_config(cfg: SelfPlayConfig, n: int) -> GenerateConfig:
    d = iteration_dir(cfg, n)
    values = block_values(cfg.generation)
    # another seed per iteration: with the same prompts every iteration, one seed would
    # draw the same random numbers for every policy
    values["seed"] = cfg.generation.seed + n - 1
    return GenerateConfig(**values, model=policy_path(cfg, n - 1), prompts=str(d / "prompts.jsonl"),
                          output=str(d / "generated.jsonl"))


def judge_config(cfg: SelfPlayConfig, n: int) -> JudgeRunConfig:
    d = iteration_dir(cfg, n)
    return JudgeRunConfig(input=str(d / "generated.jsonl"), output=str(d / "judged.jsonl"), judge=cfg.judge,
                          mode=cfg.judge_mode, batch_size=cfg.judge_batch_size)


def label_config(cfg: SelfPlayConfig, n: int) -> LabelConfig:
    d = iteration_dir(cfg, n)
    sppo = cfg.method == "sppo"
    return LabelConfig(input=str(d / "judged.jsonl"), output=str(d / "pairs.jsonl"),
                       format="sppo" if sppo else "pairs", rejected="worst" if sppo else cfg.rejected,
                       seed=cfg.generation.seed + n - 1, keep_truncated=cfg.keep_truncated)


def train_config(cfg: SelfPlayConfig, n: int) -> TrainConfig:
    """π_n from π_(n−1) on iteration n's training rows. An existing model directory is a
    training run a kill interrupted: `resume=true` continues it from its newest checkpoint
    (or from step 0 when it has none, replacing what it had written)."""
    d = iteration_dir(cfg, n)
    values = block_values(cfg.train)
    values["loss"] = cfg.loss
    return TrainConfig(**values, model=policy_path(cfg, n - 1), ref_model=reference_path(cfg, n),
                       train_data=str(d / "pairs.jsonl"), output_dir=str(d / "model"),
                       resume=(d / "model").exists())


# --------------------------------------------------------------------------- running a stage


def stage(name: str, work: Callable[[Stage], object], stage_cfg, reads: list) -> Stage:
    """A stage for the run's manifest: its fingerprint is its own config (`stage_cfg`, less
    the keys that say how to resume) and the content of what it reads. `work` is given the
    stage (its `resuming` says whether the files it finds are its own)."""
    settings = {k: v for k, v in to_dict(stage_cfg).items() if k not in ("resume", "overwrite")}

    def run() -> None:
        work(this)
        _free_memory()

    # absolute: the runner reads a relative path as one in the run directory, and these are
    # the cwd's (a relative output_dir's iter_n/generated.jsonl would be looked for twice nested)
    this = Stage(name, run, inputs=[os.path.abspath(p) for p in reads if p], settings=settings)
    return this


def _free_memory() -> None:
    """Hand back the memory the stage's models held: the next stage loads its own (the
    policy to train after the one that sampled, the judge after the policy)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _resumable(this: Stage, step: Callable, step_cfg) -> None:
    """Run a pipeline step (generate, judge, label) unless this stage is resuming (a kill
    left it unrecorded, same fingerprint) and its output and report are both there; the
    step itself resumes its partial rows, or writes the report a kill between its two
    writes left missing without redoing the work."""
    if this.resuming and report_path(step_cfg.output).exists() and Path(step_cfg.output).exists():
        return
    step(step_cfg)


def _generate(this: Stage, cfg: SelfPlayConfig, n: int, pool: list[Prompt], indices: range) -> None:
    prompts = iteration_dir(cfg, n) / "prompts.jsonl"
    if not prompts.exists():  # written atomically, the same bytes every time
        write_jsonl_atomic(prompts, [{"prompt": pool[i].text, "pool_index": i} for i in indices])
    _resumable(this, run_generate, generate_config(cfg, n))


def _label(this: Stage, cfg: SelfPlayConfig, n: int) -> None:
    lcfg = label_config(cfg, n)
    try:
        _resumable(this, run_label, lcfg)
    except DataError:
        if not report_path(lcfg.output).exists():
            raise
    report = json.loads(report_path(lcfg.output).read_text(encoding="utf-8"))
    if report["kept"] == 0:  # label refused to write an empty file; say which iteration
        raise DataError(lcfg.input, None, "scores", f"no row gives a preference ({report['read']} read, dropped: "
                                                    f"{report['dropped']}); iteration {n} has nothing to train on")


def _eval_config(cfg: SelfPlayConfig, model: str, output_dir: Path, **sides) -> EvalConfig:
    values = block_values(cfg.eval)
    values["judge"] = cfg.eval.judge or cfg.judge
    return EvalConfig(**values, **sides, model=model, prompts=cfg.eval_prompts, prompt_column=cfg.prompt_column,
                      trust_remote_code=cfg.generation.trust_remote_code, output_dir=str(output_dir))


def eval_config(cfg: SelfPlayConfig, n: int) -> EvalConfig:
    """π_n against π_0's answers (generated once, `baseline_config`) on eval_prompts."""
    return _eval_config(cfg, policy_path(cfg, n), iteration_dir(cfg, n) / "eval",
                        baseline_outputs=baseline_config(cfg).output)


def baseline_config(cfg: SelfPlayConfig) -> GenerateConfig:
    """π_0's answers to eval_prompts, made exactly as `prefero eval` makes the policy's (by
    its own generate config), into output_dir/baseline/, once for every iteration."""
    ecfg = _eval_config(cfg, cfg.model, Path(cfg.output_dir) / "baseline")
    return eval_generate_config(ecfg, "baseline", cfg.model)


def _evaluate(cfg: SelfPlayConfig, n: int) -> None:
    ecfg = eval_config(cfg, n)
    if not (Path(ecfg.output_dir) / "report.json").exists():  # written last: the evaluation is complete
        run_eval(ecfg)  # resumes its own generation and judging after a kill


def _local(model: str) -> str | None:
    """A model folder a stage reads, or None for a hub id (its name is in the settings)."""
    return model if os.path.isdir(model) else None


def iteration_stages(cfg: SelfPlayConfig, n: int, pool: list[Prompt], indices: range) -> list[Stage]:
    """Iteration n's stages, in order."""
    d = iteration_dir(cfg, n)
    start = _local(policy_path(cfg, n - 1))
    baseline = baseline_config(cfg) if cfg.eval_prompts else None
    judging = judge_config(cfg, n)
    stages = [
        stage(f"iter_{n}/generate", lambda this: _generate(this, cfg, n, pool, indices), generate_config(cfg, n),
              [start]),
        stage(f"iter_{n}/judge", lambda this: _resumable(this, run_judge, judging), judging, [d / "generated.jsonl"]),
        stage(f"iter_{n}/label", lambda this: _label(this, cfg, n), label_config(cfg, n), [d / "judged.jsonl"]),
        # the trainer's config is made again when it runs: `resume` follows what is on disk then
        stage(f"iter_{n}/train", lambda this: train(train_config(cfg, n)), train_config(cfg, n),
              [d / "pairs.jsonl", start]),
    ]
    if "eval" in stage_names(cfg):
        stages += [
            # π_0's answers, once for every iteration (then skipped: finished, same fingerprint)
            stage("baseline/generate", lambda this: _resumable(this, run_generate, baseline), baseline, [_local(cfg.model)]),
            stage(f"iter_{n}/eval", lambda this: _evaluate(cfg, n), eval_config(cfg, n), [d / "model"]),
        ]
    return stages


# --------------------------------------------------------------------------- the run


def run_selfplay(cfg: SelfPlayConfig) -> dict:
    """Run (or resume) every iteration; returns the summary (also `output_dir/summary.json`)."""
    cfg.validate()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # every process would judge, label and write the same files at once
        raise ConfigError("prefero selfplay runs as one process (it is not started with accelerate launch or "
                          "torchrun); its stages use the accelerator that process sees")
    check_sources(cfg)
    pool = read_prompts(cfg.prompts, cfg.prompt_column)
    slices = prompt_slices(len(pool), cfg.iterations, cfg.prompts_per_iteration, cfg.prompts)
    held_out = read_prompts(cfg.eval_prompts, cfg.prompt_column) if cfg.eval_prompts else []  # fails now, not later
    inputs = {"prompts_sha256": rows_sha256(p.text for p in pool),
              "eval_prompts_sha256": rows_sha256(p.text for p in held_out) if held_out else None,
              "judge": judge_files(cfg.judge), "eval_judge": judge_files(cfg.eval.judge)}
    out = Path(cfg.output_dir)
    make_folder(out.parent, "output_dir", out)
    with Runner(out, cfg.overwrite) as runner:
        prepare_output_dir(cfg, runner, inputs)
        return _iterations(cfg, pool, slices, runner)


def _iterations(cfg: SelfPlayConfig, pool: list[Prompt], slices: list[range], runner: Runner) -> dict:
    summary = None
    for n in range(1, cfg.iterations + 1):
        before = len(runner.ran)
        for s in iteration_stages(cfg, n, pool, slices[n - 1]):
            runner.run(s)
        ran = len(runner.ran) > before
        summary = write_summary(cfg)
        log.info(iteration_line(summary["per_iteration"][n - 1], cfg.iterations, earlier=not ran))
    return summary


def judge_files(judge) -> dict | None:
    """What a judge's keys point at (a function's source, a model's files): its keys
    themselves are in the config already."""
    if judge is None:
        return None
    keys = judge.identity()
    return {k: v for k, v in judge_identity(judge).items() if k not in keys}


def check_sources(cfg: SelfPlayConfig) -> None:
    """What a stage would find wrong hours in, found now and before anything is created: the
    model, the judges' models or functions, and output_dir's place (ConfigError naming the key)."""
    from prefero.judges.callable import load_function
    from prefero.model import check_model_source

    check_output_dir_path(cfg.output_dir)
    check_model_source(cfg.model, "model")
    for key, judge in (("judge", cfg.judge), ("eval.judge", cfg.eval.judge)):
        if judge is None:
            continue
        if judge.type == "callable":
            load_function(judge.function, f"{key}.function")
        elif judge.type in ("reward_model", "llm"):
            check_model_source(judge.model, f"{key}.model")


def prepare_output_dir(cfg: SelfPlayConfig, runner: Runner, inputs: dict | None = None) -> None:
    """Resume a run with this config (and these `inputs`' fingerprints), or refuse (or, with
    overwrite, clear) what else is there; then record the config in the run's manifest. A run
    counts as finished when its last stage is."""
    out = Path(cfg.output_dir)
    current = {**to_dict(cfg), **({"inputs": inputs} if inputs is not None else {})}
    changes = runner.earlier_config(current, ignore=RESUMABLE_KEYS)
    if changes is not None:
        if not changes and not (cfg.overwrite and finished(cfg)):
            runner.record_config(current)  # e.g. more iterations than before
            return
        if not cfg.overwrite:
            raise ConfigError(f"output_dir {out} holds a self-play run with another config ({join_changes(changes)}); "
                              f"rerun with its config (`run` in {runner.path}) to resume it, or set overwrite=true "
                              "to replace it")
    clear = check_output_dir(out, overwrite=cfg.overwrite, resume=False, may_replace=lambda who: who == COMMAND)
    claim_output_dir(out, COMMAND, clear)
    if clear:
        runner.forget()
    runner.record_config(current)


def finished(cfg: SelfPlayConfig) -> bool:
    return f"iter_{cfg.iterations}/{stage_names(cfg)[-1]}" in finished_stages(cfg.output_dir)
