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
thread each, making the same models and numbers as one process does.

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
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from prefero.demo.config import QUICK_EVAL_PROMPTS, DemoConfig
from prefero.demo.task import EVAL_PROMPT_FILES, FILES, JUDGE_FUNCTION, LAX_JUDGE_FUNCTION, asset
from prefero.files import atomic_write_text
from prefero.options import ConfigError, load_config
from prefero.outputs import check_output_dir, claim_output_dir, owner
from prefero.stage_files import join_changes
from prefero.stages import Runner, Stage, content_id, finished_result, finished_stages

#: Longest answer: 10 words and a period are 11 tokens; more is an answer that ran on.
MAX_NEW_TOKENS = 16
SEQUENCE = ["max_length=48", "max_prompt_length=16"]
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
    logs/NAME.log, on one torch thread. It pickles (its settings, not a closure), so it may run
    side by side with others in a process of its own."""

    def __init__(self, name: str, what: str, cfg: DemoConfig, out: Path, method: str, *args):
        super().__init__(name)
        self.what, self.cfg, self.out, self.method, self.args = what, cfg, out, method, args

    def run(self):
        log = self.out / "logs" / f"{self.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w", encoding="utf-8") as f, _STAGE_OUTPUT.to(f), one_thread():
            return getattr(Pipeline(self.cfg, self.out), self.method)(*self.args)


class Stages:
    """The demo's stages through the run directory's stage runner (`prefero.stages`): one
    line on the terminal each, with its time. Every stage depends on the whole config (the
    model each trains from, the data each reads), so the config is the run's (`_claim`),
    checked before any stage runs, not each stage's. Stages that do not read each other's
    output run side by side on `processes` processes."""

    def __init__(self, runner: Runner, cfg: DemoConfig, processes: int):
        self.runner, self.cfg, self.processes = runner, cfg, processes
        self.out = runner.dir
        self.seconds: dict[str, float] = {}
        self.seconds_this_run = 0.0

    def run(self, name: str, what: str, method: str, *args):
        print(f"  {what:<{WIDTH}} ", end="", flush=True)
        stage = DemoStage(name, what, self.cfg, self.out, method, *args)
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
        with one_thread():
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


@contextlib.contextmanager
def one_thread():
    """Torch on one CPU thread while the demo runs. The model's matrices (128 wide) are too
    small to split: measured on the 2-core machine, 20 DPO steps took 2 s on one thread and
    54 s on two while other processes were running (the two OpenMP threads wait on each
    other whenever either is descheduled)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
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


class Pipeline:
    """The stages in order; each returns JSON-able numbers the report is built from."""

    def __init__(self, cfg: DemoConfig, out: Path, stages: Stages | None = None):
        self.cfg, self.out, self.stages = cfg, out, stages
        self.data = out / "data"

    # ---------------------------------------------------------------- the order

    def run(self) -> dict:
        cfg, s = self.cfg, self.stages
        results: dict = {"methods": {}, "models": {"sft": str(self.out / "sft")}}
        results["base"] = s.run("base", "build a tiny Llama and the task's tokenizer", "build_base")
        results["sft"] = s.run("sft", f"SFT from scratch ({cfg.sft.max_steps} steps)", "train_sft")
        split = cfg.split
        # SPPO's first iteration samples the SFT model and judges the samples; DPO and SimPO
        # train on best-vs-worst pairs of those same judged samples
        results["methods"]["sppo_1"] = s.run(
            "sppo_1", f"SPPO 1: sample SFT ({cfg.num_samples} x {cfg.rounds} per prompt), judge, train", "sppo", 1)
        results["labels"] = s.run("pairs", "pairs: best vs worst of those judged samples", "label_pairs")
        if cfg.hacking_ablation:
            results["lax_labels"] = s.run("lax_pairs", "pairs by a judge blind to repetition (the ablation)",
                                          "label_lax_pairs")
        # from here on every stage reads only what is above it and what the stages it waits for
        # write: side by side, each starting once those are finished
        pairs = str(self.data / "pairs.jsonl")
        graph = [
            ("dpo", f"DPO (β {cfg.dpo.beta:g}, {cfg.dpo.max_steps} steps)", "train_pair_loss", "dpo", "dpo", pairs),
            ("simpo", f"SimPO (β {cfg.simpo.beta:g}, ε {cfg.simpo.label_smoothing:g}, {cfg.simpo.max_steps} steps)",
             "train_pair_loss", "simpo", "simpo", pairs)]
        if cfg.simpo.ablation:
            graph.append(("simpo_summed", "SimPO on summed log-probs (the ablation)", "train_pair_loss",
                          "simpo_summed", "simpo", pairs, False))
        if cfg.hacking_ablation:
            graph.append(("dpo_lax", "DPO on those pairs (reward hacking, the ablation)", "train_pair_loss",
                          "dpo_lax", "dpo", str(self.data / "lax_pairs.jsonl")))
        after = {}
        for t in range(2, cfg.sppo.iterations + 1):
            # the longest stages first: the others fill the other processes meanwhile
            graph.insert(t - 2, (f"sppo_{t}", f"SPPO {t}: sample SPPO {t - 1}, judge, train", "sppo", t))
            after[f"sppo_{t}"] = [f"sppo_{t - 1}"]
        methods = ["sppo_1"] + [g[0] for g in graph if not g[0].startswith("sppo_")] + \
            [f"sppo_{t}" for t in range(2, cfg.sppo.iterations + 1)]
        prompts = self.eval_prompts()
        results["split"] = {"name": split, "prompts": self.n_eval_prompts()}
        graph.append(("heldout_pairs", f"held-out pairs: SFT samples of {split} prompts, judged", "heldout_pairs"))
        graph.append(("answer_sft", f"SFT: answer the {self.n_eval_prompts()} {split} prompts", "answer_sft"))
        graph.append(("eval_sft", f"SFT: likelihood ranking on the {split} pairs", "evaluate", "sft", None, prompts))
        after["eval_sft"] = ["answer_sft", "heldout_pairs"]
        if cfg.greedy:
            graph.append(("answer_sft_greedy", "SFT: greedy answers", "answer_sft", True))
        for name in methods:
            graph.append((f"eval_{name}", f"{_label(name)} vs SFT: answer, judge both orders", "evaluate_trained",
                          name, prompts))
            after[f"eval_{name}"] = [name, "answer_sft", "heldout_pairs"]
            if cfg.greedy:
                graph.append((f"eval_{name}_greedy", f"{_label(name)} vs SFT, greedy", "evaluate_trained", name,
                              prompts, True))
                after[f"eval_{name}_greedy"] = [name, "answer_sft_greedy"]
        done = dict(zip([g[0] for g in graph], s.side_by_side(graph, after)))
        results["methods"].update((name, done[name]) for name in methods[1:])
        results["final_sppo"] = f"sppo_{cfg.sppo.iterations}"
        for name, method in results["methods"].items():
            results["models"][name] = method["model"]
            method["eval"] = done[f"eval_{name}"]
            if cfg.greedy:
                method["greedy_eval"] = done[f"eval_{name}_greedy"]
        results["sft_answers"], results["sft_eval"] = done["answer_sft"], done["eval_sft"]
        if cfg.greedy:
            results["sft_greedy_answers"] = done["answer_sft_greedy"]
        return results

    # ---------------------------------------------------------------- inputs

    def preference_prompts(self) -> str:
        """The training prompts, `rounds` times over (each round one pair per prompt)."""
        rows = [json.loads(line)["prompt"] for line in open(asset("demo_task_prompts.jsonl"), encoding="utf-8")]
        path = self.data / "preference_prompts.jsonl"
        _write_prompts(path, rows * self.cfg.rounds)
        return str(path)

    def n_eval_prompts(self) -> int:
        return len(_read_prompt_texts(self.eval_prompts()))

    def eval_prompts(self) -> str:
        """The evaluation split's prompts, test or validation (the first QUICK_EVAL_PROMPTS
        of them in the reduced demo)."""
        rows = _read_prompt_texts(asset(EVAL_PROMPT_FILES[self.cfg.split]))
        path = self.data / "eval_prompts.jsonl"
        _write_prompts(path, rows[:QUICK_EVAL_PROMPTS] if self.cfg.quick else rows)
        return str(path)

    def generation(self, greedy: bool = False):
        """How every model answers the evaluation prompts: sampled as in training (the policy
        as it is, not its mode), with the same seed for every model, so two models' answers
        differ only where the models do; or greedy (the mode, reported beside)."""
        from prefero.evaluate.config import EvalGenerationConfig

        return EvalGenerationConfig(temperature=0.0 if greedy else self.cfg.temperature, max_new_tokens=MAX_NEW_TOKENS,
                                    seed=self.cfg.seed + 100, batch_size=64, dtype="float32")

    # ---------------------------------------------------------------- stages

    def build_base(self) -> dict:
        from prefero.demo.model import parameter_count, save_task_model

        directory = save_task_model(self.out / "base", seed=self.cfg.seed)
        return {"parameters": parameter_count(directory)}

    def train_config(self, output: str, loss: str, model: Path, data: str, block, extra: list[str]):
        from prefero.config import TrainConfig

        return load_config(None, [
            f"model={model}", f"train_data={data}", f"output_dir={self.out / output}", "overwrite=true",
            f"loss={loss}", f"learning_rate={block.learning_rate}", f"batch_size={block.batch_size}",
            f"max_steps={block.max_steps}", "warmup_ratio=0.1", f"seed={self.cfg.seed}",
            "reference_cache=off", *SEQUENCE, *extra], cls=TrainConfig)

    def train_sft(self) -> dict:
        from prefero.train import train

        cfg = self.train_config("sft", "sft", self.out / "base", asset("demo_task_sft.jsonl"), self.cfg.sft, [])
        history = train(cfg)
        return {"train_loss": history["train_last"].get("loss"), "steps": cfg.max_steps}

    def heldout_pairs(self) -> dict:
        """The SFT model's best and worst answer to each held-out prompt: the pairs the
        likelihood-ranking accuracy is measured on."""
        from prefero.generate import GenerateConfig, run_generate
        from prefero.judges.config import JudgeRunConfig
        from prefero.judges.run import run_judge

        run_generate(load_config(None, [
            f"model={self.out / 'sft'}", f"prompts={self.eval_prompts()}", f"output={self.data}/heldout_samples.jsonl",
            f"num_completions={self.cfg.num_samples}", f"temperature={self.cfg.temperature}",
            f"max_new_tokens={MAX_NEW_TOKENS}", "batch_size=64", f"seed={self.cfg.seed + 1}", "overwrite=true",
            "dtype=float32"], cls=GenerateConfig))
        run_judge(load_config(None, [f"input={self.data}/heldout_samples.jsonl",
                                     f"output={self.data}/heldout_judged.jsonl", "judge.type=callable",
                                     f"judge.function={JUDGE_FUNCTION}", "batch_size=64", "overwrite=true"],
                              cls=JudgeRunConfig))
        return self.label(self.data / "heldout_judged.jsonl", self.data / "heldout_pairs.jsonl")

    def label_lax_pairs(self) -> dict:
        """SPPO iteration 1's samples of the SFT model (DPO's data) judged again by
        `lax_judge`, which does not check repetition, and labelled best vs worst."""
        from prefero.judges.config import JudgeRunConfig
        from prefero.judges.run import run_judge

        run_judge(load_config(None, [f"input={self.out / 'sppo' / 'iter_1' / 'generated.jsonl'}",
                                     f"output={self.data}/lax_judged.jsonl", "judge.type=callable",
                                     f"judge.function={LAX_JUDGE_FUNCTION}", "batch_size=64", "overwrite=true"],
                              cls=JudgeRunConfig))
        return self.label(self.data / "lax_judged.jsonl", self.data / "lax_pairs.jsonl")

    def label(self, judged: Path, output: Path) -> dict:
        from prefero.label import LabelConfig, run_label

        report = run_label(load_config(None, [f"input={judged}", f"output={output}", "format=pairs",
                                              "rejected=worst", "overwrite=true"], cls=LabelConfig))
        return {k: report[k] for k in ("read", "kept", "dropped")}

    def selfplay_config(self, iterations: int):
        """SPPO as `prefero selfplay` runs it, in OUTPUT_DIR/sppo (iter_1/, iter_2/, ...)."""
        from prefero.selfplay import SelfPlayConfig

        b = self.cfg.sppo
        return load_config(None, [
            f"model={self.out / 'sft'}", f"prompts={self.preference_prompts()}", f"iterations={iterations}",
            "method=sppo", f"output_dir={self.out / 'sppo'}",
            f"generation.num_completions={self.cfg.num_samples}", f"generation.temperature={self.cfg.temperature}",
            f"generation.max_new_tokens={MAX_NEW_TOKENS}", "generation.batch_size=64",
            f"generation.seed={self.cfg.seed}", "generation.dtype=float32",
            "judge.type=callable", f"judge.function={JUDGE_FUNCTION}", "judge_batch_size=64",
            f"train.learning_rate={b.learning_rate}", f"train.beta={b.beta}", f"train.batch_size={b.batch_size}",
            f"train.max_steps={b.max_steps}", "train.warmup_ratio=0.1", f"train.seed={self.cfg.seed}",
            "train.reference_cache=off", *[f"train.{x}" for x in SEQUENCE]], cls=SelfPlayConfig)

    def sppo(self, t: int) -> dict:
        """SPPO up to iteration t (`prefero selfplay` resumes: earlier iterations are not redone)."""
        from prefero.selfplay import run_selfplay

        summary = run_selfplay(self.selfplay_config(t))
        it = summary["per_iteration"][t - 1]
        model = self.out / "sppo" / it["model"]
        reference = self.out / "sppo" / it["reference_model"] if t > 1 else self.out / "sft"
        return {"loss": "sppo", "length_normalize": None, "settings": _settings(self.cfg.sppo),
                "steps": it.get("train_steps"), "model": str(model), "reference": str(reference),
                "train_loss": it.get("train_loss_last"), "training_rows": it.get("training_rows"),
                "dropped": it.get("dropped")}

    def label_pairs(self) -> dict:
        return self.label(self.out / "sppo" / "iter_1" / "judged.jsonl", self.data / "pairs.jsonl")

    def train_pair_loss(self, output: str, loss: str, data: str, normalize: bool = True) -> dict:
        from prefero.train import train

        block = getattr(self.cfg, loss)
        extra = [f"beta={block.beta}"]
        if loss == "simpo":
            extra += [f"gamma_beta_ratio={block.gamma_beta_ratio}", f"label_smoothing={block.label_smoothing}",
                      f"simpo_length_normalize={str(normalize).lower()}"]
        cfg = self.train_config(output, loss, self.out / "sft", data, block, extra)
        history = train(cfg)
        return {"loss": loss, "length_normalize": normalize if loss == "simpo" else None,
                "settings": _settings(block), "steps": cfg.max_steps, "model": str(cfg.output_dir),
                "reference": str(self.out / "sft") if loss == "dpo" else None,
                "train_loss": history["train_last"].get("loss")}

    def answer_sft(self, greedy: bool = False) -> dict:
        """SFT's answers, made with exactly the generation settings `prefero eval` gives each
        method's model (`generation()`), once for every comparison."""
        import dataclasses

        from prefero.generate import GenerateConfig, run_generate

        path = self.data / ("answers_sft_greedy.jsonl" if greedy else "answers_sft.jsonl")
        run_generate(GenerateConfig(model=str(self.out / "sft"), prompts=self.eval_prompts(), output=str(path),
                                    num_completions=1, overwrite=True,
                                    **dataclasses.asdict(self.generation(greedy))))
        return {"answers": str(path)}

    def evaluate_trained(self, name: str, prompts: str, greedy: bool = False) -> dict:
        """`evaluate` of the model the stage `name` trained, as the run's manifest records it."""
        return self.evaluate(name, finished_result(self.out, name), prompts, greedy)

    def evaluate(self, name: str, method: dict | None, prompts: str, greedy: bool = False) -> dict:
        """`prefero eval` of a method's model against SFT (sampled: with the held-out pairs'
        metrics; greedy: the win rate and the task's numbers only)."""
        from prefero.demo.evaluate import evaluate_against_sft

        sft_answers = self.data / ("answers_sft_greedy.jsonl" if greedy else "answers_sft.jsonl")
        return evaluate_against_sft(
            name, self.out / "eval" / (f"{name}_greedy" if greedy else name),
            model=method["model"] if method else str(self.out / "sft"), sft_answers=sft_answers, prompts=prompts,
            generation=self.generation(greedy), pairs=None if greedy else self.data / "heldout_pairs.jsonl",
            method=method)


def _label(name: str) -> str:
    from prefero.demo.report import display_name

    return display_name(name)


def _settings(block) -> dict:
    return {k: v for k, v in asdict(block).items() if k not in ("ablation", "iterations")}


def _read_prompt_texts(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["prompt"] for line in f if line.strip()]


def _write_prompts(path: Path, prompts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps({"prompt": p}) + "\n" for p in prompts)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
