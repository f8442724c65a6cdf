"""`prefero` command line: one entry point, subcommands."""

from __future__ import annotations

import argparse
import os
import sys

from prefero.config import ConfigError, LoraConfig, TrainConfig, field_docs


def _options_help(cls, prefix: str = "") -> str:
    lines = []
    for name, typ, default, doc in field_docs(cls):
        if name == "lora":  # TrainConfig and RewardConfig share the LoRA block
            lines.append(f"  {'lora':<24} block, default none: {doc}")
            lines += [f"  {'lora.' + n:<24} {d!s:<12} {h}" for n, _, d, h in field_docs(LoraConfig)]
            continue
        lines.append(f"  {prefix + name:<24} {default!s:<12} {doc}")
    return "\n".join(lines)


class _LazyEpilogFormatter(argparse.RawDescriptionHelpFormatter):
    """Accepts a callable epilog, built only when help is shown: `rm`'s options live in
    prefero.reward_model, which imports torch, and `prefero --help` should stay instant."""

    def _format_text(self, text):
        return super()._format_text(text() if callable(text) else text)


def _reward_config():
    from prefero.reward_model import RewardConfig

    return RewardConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefero",
        description="Align causal language models with preference data (DPO, SimPO, SPPO, ...).",
        epilog="Every option of a command, its default and what it does: prefero COMMAND --help "
               "(e.g. prefero train --help).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = sub.add_parser(
        "train",
        help="train a causal LM with a preference or SFT loss",
        description="Train with CONFIG.yaml; key=value arguments override its keys "
                    "(dotted keys reach into blocks, e.g. lora.r=8).",
        epilog="options (key, default, meaning):\n" + _options_help(TrainConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("config", nargs="?", help="YAML config file (optional if every key is given inline)")
    train.add_argument("overrides", nargs="*", help="key=value overrides")
    rm = sub.add_parser(
        "rm",
        help="train a Bradley-Terry reward model (a scalar head on a causal LM)",
        description="Train a reward model with CONFIG.yaml; key=value arguments override its keys. "
                    "Loss -log sigmoid(r_w - r_l - m) + c*(r_w + r_l)^2; the result is an HF "
                    "sequence classifier (num_labels=1) in output_dir.",
        epilog=lambda: "options (key, default, meaning):\n" + _options_help(_reward_config()),
        formatter_class=_LazyEpilogFormatter,
    )
    rm.add_argument("config", nargs="?", help="YAML config file (optional if every key is given inline)")
    rm.add_argument("overrides", nargs="*", help="key=value overrides")
    demo = sub.add_parser(
        "demo",
        help="build a tiny model, train DPO on the packaged data, print before/after",
        description="Runs on CPU in a few minutes; needs no download.",
    )
    demo.add_argument("--output-dir", default="runs/demo", help="where the demo writes (default runs/demo)")
    demo.add_argument("--steps", type=int, default=60, help="optimizer steps (default 60)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from prefero.data import DataError

    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "rm":
            return _rm(args)
        if args.command == "demo":
            from prefero.demo import run_demo

            run_demo(args.output_dir, steps=args.steps)
            return 0
    except (ConfigError, DataError) as e:
        print(f"prefero: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prefero: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a failed run still exits non-zero with one clear line
        from prefero.train import TrainingError

        if isinstance(e, TrainingError):
            print(f"prefero: error: {e}", file=sys.stderr)
            return 1
        raise
    return 0


def _quiet_libraries() -> None:
    """Our own progress bar is the one to watch; hide the per-file loading bars."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _config_args(args) -> tuple[str | None, list[str]]:
    """(config path, overrides); a first argument that is key=value is an override."""
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config] + overrides
    return config, overrides


def _train(args) -> int:
    from prefero.config import load_config
    from prefero.train import train

    cfg = load_config(*_config_args(args))
    train(cfg)
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per process
        print(f"saved to {cfg.output_dir}")
    return 0


def _rm(args) -> int:
    from prefero.config import load_config
    from prefero.reward_model import RewardConfig, train_reward_model

    cfg = load_config(*_config_args(args), cls=RewardConfig)
    history = train_reward_model(cfg)
    if "eval_end" in history:
        print(f"pairwise accuracy (eval): {history['eval_end']['accuracy']:.3f}")
    print(f"saved to {cfg.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
