"""The demo's stages, in order, and the work of each: `Pipeline` (the runner, the terminal
lines and the processes are `prefero.demo.run`'s).

Each stage is a method that builds the config of one of prefero's public functions
(`prefero.train.train`, `run_generate`, `run_judge`, `run_label`, `run_selfplay`, `run_eval`)
and returns the JSON-able numbers the report is built from; `Pipeline.run` lists the stages and
what each waits for.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from prefero.demo.config import QUICK_EVAL_PROMPTS, DemoConfig
from prefero.demo.task import EVAL_PROMPT_FILES, JUDGE_FUNCTION, LAX_JUDGE_FUNCTION, asset
from prefero.files import atomic_write_text
from prefero.options import load_config
from prefero.stages import finished_result

#: Longest answer: 10 words and a period are 11 tokens; more is an answer that ran on.
MAX_NEW_TOKENS = 16
SEQUENCE = ["max_length=48", "max_prompt_length=16"]


class Pipeline:
    """The stages in order; each returns JSON-able numbers the report is built from.
    `stages` (`prefero.demo.run.Stages`) runs them for `run`; a stage's own work, in a worker
    process, needs none."""

    def __init__(self, cfg: DemoConfig, out: Path, stages=None):
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
            ("simpo", f"SimPO (β {cfg.simpo.beta:g}, ε {cfg.simpo.label_smoothing:g}, λ {cfg.simpo.cpo_lambda:g}, "
                      f"{cfg.simpo.max_steps} steps)",
             "train_pair_loss", "simpo", "simpo", pairs)]
        if cfg.simpo.ablation:
            graph.append(("simpo_summed", f"SimPO on summed log-probs (λ {cfg.simpo.cpo_lambda:g}, the ablation)", "train_pair_loss",
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
                      f"cpo_lambda={block.cpo_lambda}",
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
