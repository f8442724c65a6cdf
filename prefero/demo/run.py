"""`prefero demo`: SFT from scratch → sample K → judge → label → DPO, SimPO, SPPO → evaluate → report.

The one module that wires the whole loop, each stage by its own public function with a
config it builds (`prefero.train.train`, `run_generate`, `run_judge`, `run_label`,
`run_selfplay`, `run_eval`), each writing the files the next reads:

    OUTPUT_DIR/
      base/                    the untrained ~1M-parameter model and the task's tokenizer
      sft/                     SFT on the demonstrations (the reference and the baseline)
      sppo/                    `prefero selfplay`: iter_N/ {prompts, generated, judged, pairs}.jsonl
                               and model/ (SPPO's models); iteration 1's judged samples of the
                               SFT model are also DPO's and SimPO's data
      data/                    pairs.jsonl (and lax_pairs.jsonl: the hacking ablation's), the
                               held-out pairs, the evaluation prompts, SFT's answers to them
      dpo/ simpo/ simpo_summed/ dpo_lax/   the other aligned models (HF format)
      eval/NAME/ eval/NAME_greedy/   `prefero eval` of each model against SFT's answers, sampled
                               and greedy: its answers, judgments, report.json, report.md,
                               comparisons.jsonl, plots/
      logs/STAGE.log           what each stage printed
      report.json report.md    the comparison

After SPPO's first iteration the trainings (DPO, SimPO, the ablations, SPPO's next iteration)
read only what is above them, and the evaluations only the models: each group runs side by
side on `processes` worker processes (`prefero.stages.Runner.run_side_by_side`), one torch
thread each, making the same models and numbers as one process does. The stages before
(SFT, SPPO's first iteration) run alone, on `processes` torch threads (`torch_threads`).

A finished stage is recorded in `stages.json` (`prefero.stages`: with what it measured; the
settings and task files the demo ran with are recorded there once, as the run's); with
`resume=true` an interrupted demo skips those (refusing other settings before any stage) and
reruns the unfinished one (self-play,
generation, judging and evaluation pick up their own partial work; a training stage
restarts: none takes a minute). Without it, an earlier demo's directory is replaced and nothing else is ever
touched (`prefero.outputs`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from prefero.demo.config import DemoConfig
from prefero.demo.pipeline import Pipeline
from prefero.demo.task import FILES, asset
from prefero.options import ConfigError, load_config
from prefero.outputs import check_output_dir, claim_output_dir, owner
from prefero.stage_files import join_changes
from prefero.stages import Runner, Stage, content_id, finished_stages

WIDTH = 56  # of a stage's line on the terminal


class _Redirect:
    """Where a stage's prints and progress bars go: its log file while it runs, the terminal
    otherwise. One object for the whole process, not one per stage: a library that creates
    its logging handler while a stage runs (transformers does) keeps a reference to the
    stream it found, and must not be left writing to a closed log file."""

    def __init__(self):
        self.target = None

    def write(self, text: str) -> int:
        return (self.target or sys.__stderr__).write(text)

    def flush(self) -> None:
        (self.target or sys.__stderr__).flush()

    def isatty(self) -> bool:
        return False

    @contextlib.contextmanager
    def to(self, stream):
        before, terminal = self.target, sys.stderr
        self.target = stream
        try:
            with contextlib.redirect_stdout(self), contextlib.redirect_stderr(self):
                yield
        finally:
            self.target = before if before is not None else terminal


_STAGE_OUTPUT = _Redirect()


class DemoStage(Stage):
    """One of the demo's stages: a `Pipeline` method, its prints and progress bars in
    logs/NAME.log, on `threads` torch threads. It pickles (its settings, not a closure), so it
    may run side by side with others in a process of its own."""

    def __init__(self, name: str, what: str, cfg: DemoConfig, out: Path, method: str, *args, threads: int = 1):
        super().__init__(name)
        self.what, self.cfg, self.out, self.method, self.args = what, cfg, out, method, args
        self.threads = threads

    def run(self):
        log = self.out / "logs" / f"{self.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w", encoding="utf-8") as f, _STAGE_OUTPUT.to(f), torch_threads(self.threads):
            return getattr(Pipeline(self.cfg, self.out), self.method)(*self.args)


class Stages:
    """The demo's stages through the run directory's stage runner (`prefero.stages`): one
    line on the terminal each, with its time. Every stage depends on the whole config (the
    model each trains from, the data each reads), so the config is the run's (`_claim`),
    checked before any stage runs, not each stage's. Stages that do not read each other's
    output run side by side on `processes` processes, one torch thread each; a stage that runs
    alone has the `processes` cores to itself, as torch threads (no more than the machine has)."""

    def __init__(self, runner: Runner, cfg: DemoConfig, processes: int):
        self.runner, self.cfg, self.processes = runner, cfg, processes
        self.out = runner.dir
        self.seconds: dict[str, float] = {}
        self.seconds_this_run = 0.0

    def run(self, name: str, what: str, method: str, *args):
        print(f"  {what:<{WIDTH}} ", end="", flush=True)
        stage = DemoStage(name, what, self.cfg, self.out, method, *args, threads=min(self.processes, _cores()))
        result = self.runner.run(stage)
        self._timed(stage)
        return result

    def side_by_side(self, stages: list[tuple], after: dict) -> list:
        """(name, what, method, *args) each, each starting once the stages `after[name]` are
        finished; their results in order, a line each as it ends."""
        stages = [DemoStage(name, what, self.cfg, self.out, method, *args) for name, what, method, *args in stages]
        return self.runner.run_side_by_side(
            stages, self.processes, after=after,
            done=lambda stage: (print(f"  {stage.what:<{WIDTH}} ", end=""), self._timed(stage)))

    def _timed(self, stage: DemoStage) -> None:
        self.seconds[stage.name] = self.runner.seconds(stage.name)
        if stage.name in self.runner.skipped:
            print("(done earlier)", flush=True)
        else:
            self.seconds_this_run += self.seconds[stage.name]
            print(f"{self.seconds[stage.name]:5.0f} s", flush=True)


def run_demo(cfg: DemoConfig | str | os.PathLike = "runs/demo", steps: int | None = None) -> dict:
    """Run the demo; returns the report (also in OUTPUT_DIR/report.json).

    `cfg` may be just the output directory. `steps` trains every stage for that many
    steps in the reduced (`quick`) setting: a smoke run, not a demo.
    """
    if not isinstance(cfg, DemoConfig):
        overrides = [f"output_dir={os.fspath(cfg)}"]
        if steps is not None:
            overrides += [f"max_steps={steps}", "quick=true"]
        cfg = load_config(None, overrides, cls=DemoConfig)
    out = Path(cfg.output_dir)
    # what the results depend on: not where they go, nor how many processes make them
    settings = {"config": {k: v for k, v in asdict(cfg).items() if k not in ("resume", "output_dir", "processes")},
                "task_files": {name: content_id(Path(asset(name))) for name in FILES}}
    # the lock first (it lies beside output_dir): a second demo on the same directory fails
    # before it can clear what the first is writing
    with Runner(out, redo="run without resume=true to start over") as runner:
        _claim(out, cfg, runner, settings)
        started = time.perf_counter()
        print(f"prefero demo: a tiny Llama trained from scratch on a task a verifier can judge, then DPO, SimPO "
              f"and SPPO; {'the reduced demo; ' if cfg.quick else ''}writing to {out}", flush=True)
        effective = cfg.effective()
        if cfg.processes > 1:
            runner.processes(cfg.processes, warm=_import_libraries)  # they import while SFT trains here
        stages = Stages(runner, effective, cfg.processes)
        with torch_threads(1):
            results = Pipeline(effective, out, stages).run()
        from prefero.demo.report import build_report, print_summary, write_demo_report

        # the whole demo's time: stages an earlier (interrupted) run finished count at their recorded times
        total = time.perf_counter() - started - stages.seconds_this_run + sum(stages.seconds.values())
        report = build_report(cfg.effective(), results, stages.seconds, total)
        write_demo_report(out, report)
    print_summary(report, out)
    return report


def _import_libraries() -> None:
    """What a worker process of the demo imports before its first stage."""
    import prefero.generate  # noqa: F401
    import prefero.train  # noqa: F401


def _cores() -> int:
    """The cores this process may run on: more torch threads than that only wait on each other."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def torch_threads(n: int):
    """Torch on `n` CPU threads while a stage runs. Stages side by side take one each: the
    model's matrices (128 wide) are too small to split between processes that share the cores
    (20 DPO steps took 2 s on one thread and 54 s on two while other processes ran: the two
    OpenMP threads wait on each other whenever either is descheduled). A stage alone (SFT,
    SPPO's first iteration) takes the `processes` cores: on the 2-core machine 2 threads ran
    SFT's steps 1.3x faster and sampled 1.4x faster, and gave the same bytes as one (a GEMM
    splits its rows and columns between threads, not the sums; the demo's 1-process == 2-process
    test checks this)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _claim(out: Path, cfg: DemoConfig, runner: Runner, settings: dict) -> None:
    """Replace an earlier demo (never anything else), or keep a resumed one made with these
    `settings` (the config and the task files), refusing one made with others."""
    if cfg.resume and out.exists() and any(out.iterdir()):
        who = owner(out)
        if who != "demo":
            whose = f"was written by `prefero {who}`" if who else "holds files prefero did not write"
            raise ConfigError(f"output_dir {out} {whose}; resume=true continues a demo only")
        changes = runner.earlier_config(settings)
        if changes or (changes is None and finished_stages(out)):
            what = join_changes(changes) if changes else "they are not recorded"
            raise ConfigError(f"output_dir {out} holds a demo made with other settings ({what}); rerun with those "
                              "to resume it, or run without resume=true to start over")
        claim_output_dir(out, "demo", clear=False)
    else:
        clear = check_output_dir(out, overwrite=True, resume=False, key="--output-dir",
                                 may_replace=lambda who: who == "demo")
        claim_output_dir(out, "demo", clear)
        if clear:
            runner.forget()
    runner.record_config(settings)
