"""`prefero` command line: one entry point, one table of subcommands.

Every command but `demo` reads `CONFIG.yaml key=value ...` into its config dataclass
(prefero/config.py) and calls one function with it; `--help` lists every key, its default,
range and doc. Config classes and runners are imported only when a command runs (or its
help is shown), so `prefero --help` stays instant.

Exit status: 0 done; 1 a run that failed (a server that kept failing generate, training
that diverged, a full disk: rerun to resume); 2 a config or data error (an output another
run is writing, too), reported before work starts where it can be
(fix the config or the file); 3 the judge failed (its server kept failing, or more of its
answers than judge.max_unparseable could not be read: the config may be right); 130
interrupted. Errors are one line on stderr, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass

from prefero.errors import PreferoError
from prefero.options import option_lines


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    description: str
    config: str  # "module:ConfigClass"
    run: str  # "module:function", called with the config; returns a report dict
    summary: str | None = None  # format of the closing line, filled from the report


def _report_line(template: str, report) -> str:
    class Missing(dict):
        def __missing__(self, key):
            return "?"

    flat = Missing()
    for k, v in (report or {}).items():
        flat[k] = v
        if isinstance(v, dict):
            flat.update({f"{k}_{kk}": vv for kk, vv in v.items()})
    try:
        return template.format_map(flat)
    except (ValueError, TypeError):  # a figure the report could not give (e.g. no timing)
        where = flat.get("output") or flat.get("output_dir") or "?"
        return f"{template.split(':')[0]}: done -> {where}"


COMMANDS = [
    Command("train", "train a causal LM with a preference or SFT loss",
            "Train with CONFIG.yaml; key=value arguments override its keys (dotted keys reach into "
            "blocks, e.g. lora.r=8).",
            "prefero.config:TrainConfig", "prefero.train:train"),
    Command("rm", "train a Bradley-Terry reward model (a scalar head on a causal LM)",
            "Train a reward model with CONFIG.yaml; key=value arguments override its keys. Loss "
            "-log sigmoid(r_w - r_l - m) + c*(r_w + r_l)^2; the result is an HF sequence classifier "
            "(num_labels=1) in output_dir.",
            "prefero.reward_model:RewardConfig", "prefero.reward_model:train_reward_model"),
    Command("pm", "train a pairwise preference model P(A > B | x) (a cross-encoder reading both answers)",
            "Train a pairwise preference model with CONFIG.yaml; key=value arguments override its keys. "
            "P(A > B) = sigmoid(s(x, A+B) - s(x, B+A)), antisymmetric by construction; loss "
            "-log P(chosen > rejected). The result is an HF sequence classifier in output_dir that "
            "`judge.type: pairwise_model` reads.",
            "prefero.preference_model:PreferenceModelConfig", "prefero.preference_model:train_preference_model"),
    Command("generate", "sample K completions per prompt (transformers, vllm or an OpenAI-compatible server)",
            "Sample num_completions completions for every prompt; writes {prompt, completions} rows and a "
            "report. Same config, same completions (also under accelerate launch); resumes an interrupted run.",
            "prefero.generate.config:GenerateConfig", "prefero.generate:run_generate",
            "prefero generate: {prompts} prompts x {num_completions} completions -> {output} "
            "({tokens_per_second:.1f} tokens/s this run; {hit_max_new_tokens} hit max_new_tokens)"),
    Command("judge", "score K completions per prompt with a judge (reward model, LLM, HTTP, callable)",
            "Judge {prompt, completions} rows (prefero generate's output) with the judge: block; writes "
            "{prompt, completions, scores} rows (+ pairwise, the K x K P(y_i > y_j) matrix) and a report. "
            "Resumes an interrupted run.",
            "prefero.judges.config:JudgeRunConfig", "prefero.judges.run:run_judge",
            "prefero judge: {rows} rows, {completions} completions scored into {output} "
            "({null_scores} null scores, {ties_rows_all_tied} rows all tied)"),
    Command("revise", "constitutional critique and revision: SFT rows and (revision > original) pairs",
            "Per prompt: the model's answer, then `rounds` times a critique under a principle drawn from "
            "the constitution and a revision (Bai et al. 2022). Writes sft.jsonl, pairs.jsonl, "
            "transcripts.jsonl and a report; any generation backend; resumes an interrupted run.",
            "prefero.revise:ReviseConfig", "prefero.revise:run_revise",
            "prefero revise: {prompts} prompts x {rounds} rounds -> {sft_rows} sft rows, {pair_rows} pairs "
            "in {output_dir} (dropped: {dropped})"),
    Command("eval", "win rate against a baseline (both judge orders, bootstrap CI, length-controlled) "
                    "and metrics on held-out pairs",
            "Evaluate with CONFIG.yaml: generate or read both sides' responses, judge every prompt in both "
            "orders, write report.json, report.md and plots; resumes an interrupted run.",
            "prefero.evaluate.config:EvalConfig", "prefero.evaluate.run:run_eval",
            "prefero eval: win rate {win_rate:.3f} (95% CI {win_rate_ci}), length-controlled {lc_win_rate:.3f} "
            "-> {output_dir}/report.json"),
    Command("selfplay", "SPPO or iterative DPO/SimPO self-play: generate -> judge -> label -> train, T iterations",
            "Each iteration samples K completions from the current policy, has the judge rank them, labels "
            "them (SPPO win probabilities or best-vs-worst pairs) and trains against the current (or initial) "
            "model, in its own directory; after each, the win rate against the starting model on held-out "
            "prompts. Resumes at the first unfinished stage.",
            "prefero.selfplay.config:SelfPlayConfig", "prefero.selfplay:run_selfplay",
            "prefero selfplay: {iterations_done} of {iterations_planned} iterations done; final model "
            "{final_model} (summary.json, plots/win_rates.png in its output_dir)"),
    Command("label", "turn judged rows into training data: best-vs-worst/random pairs or SPPO rows",
            "Judged rows -> {prompt, chosen, rejected} pairs (format: pairs) or SPPO rows with "
            "p_chosen/p_rejected (format: sppo), which prefero train reads as they are.",
            "prefero.label:LabelConfig", "prefero.label:run_label",
            "prefero label: {kept} of {read} rows kept in {output}; dropped {dropped}"),
]


def _load(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


class _LazyEpilogFormatter(argparse.RawDescriptionHelpFormatter):
    """Accepts a callable epilog, built only when help is shown (config classes import torch)."""

    def _format_text(self, text):
        return super()._format_text(text() if callable(text) else text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefero",
        description="Align causal language models with preference data (DPO, SimPO, SPPO, ...).",
        epilog="Every option of a command, its default, valid range and what it does: "
               "prefero COMMAND --help (e.g. prefero train --help).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS:
        p = sub.add_parser(
            cmd.name, help=cmd.help, description=cmd.description,
            epilog=lambda cmd=cmd: "options (key, default, meaning):\n" + "\n".join(option_lines(_load(cmd.config))),
            formatter_class=_LazyEpilogFormatter,
        )
        p.add_argument("config", nargs="?", help="YAML config file (optional if every key is given inline)")
        p.add_argument("overrides", nargs="*", help="key=value overrides")
    demo = sub.add_parser(
        "demo",
        help="the whole loop on a synthetic task: SFT from scratch -> sample -> judge -> label -> "
             "DPO, SimPO, SPPO -> win rates against SFT",
        description="Runs on CPU in a few minutes; needs no download. key=value arguments override the "
                    "demo's settings (e.g. quick=true, dpo.beta=0.5).",
        epilog=lambda: "options (key, default, meaning):\n" + "\n".join(option_lines(_load("prefero.demo.config:DemoConfig"))),
        formatter_class=_LazyEpilogFormatter,
    )
    demo.add_argument("overrides", nargs="*", help="key=value overrides")
    demo.add_argument("--output-dir", default=None,
                      help="where the demo writes (default runs/demo; replaced only if an earlier demo made it)")
    demo.add_argument("--steps", type=int, default=None, help="a smoke run: every stage this many steps (quick mode)")
    plot = sub.add_parser(
        "plot", help="draw a run's curves (loss, margins, accuracies, log-probs) and win rates as PNGs",
        description="Reads RUN_DIR/metrics.jsonl (and those of its sub-directory runs), report.json files "
                    "and comparisons.jsonl; writes RUN_DIR/plots/*.png.",
    )
    plot.add_argument("run_dir", help="a prefero run or evaluation directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "demo":
            from prefero.demo import DemoConfig, run_demo
            from prefero.options import load_config

            overrides = list(args.overrides)
            if args.output_dir:
                overrides.append(f"output_dir={args.output_dir}")
            if args.steps is not None:
                overrides += [f"max_steps={args.steps}", "quick=true"]
            run_demo(load_config(None, overrides, cls=DemoConfig))
            return 0
        if args.command == "plot":
            from prefero.evaluate.plots import plot_run

            for path in plot_run(args.run_dir):
                print(path)
            return 0
        cmd = next(c for c in COMMANDS if c.name == args.command)
        from prefero.judges.config import type_switch_overrides
        from prefero.options import load_config, read_yaml

        config, overrides = _config_args(args)
        if config is not None:  # judge.type=... on the command line replaces the file's judge type
            overrides = type_switch_overrides(read_yaml(config), overrides) + overrides
        cfg = load_config(config, overrides, cls=_load(cmd.config))
        report = _load(cmd.run)(cfg)
        if cmd.summary and report:
            print(_report_line(cmd.summary, report))
        return 0
    except PreferoError as e:  # a config, data, judge, server, disk or training problem: one line
        print(f"prefero: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("prefero: interrupted", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """Our own progress bar is the one to watch; hide the per-file loading bars."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _config_args(args) -> tuple[str | None, list[str]]:
    """(config path, overrides); a first argument that is key=value is an override."""
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config] + overrides
    return config, overrides


if __name__ == "__main__":
    sys.exit(main())
