"""Where a self-play run keeps each iteration's files and models (docs/pipeline.md)."""

from __future__ import annotations

import os
from pathlib import Path

from prefero.losses import get_loss
from prefero.selfplay.config import SelfPlayConfig


def iteration_dir(cfg: SelfPlayConfig, n: int) -> Path:
    return Path(cfg.output_dir) / f"iter_{n}"


def stage_names(cfg: SelfPlayConfig) -> list[str]:
    return ["generate", "judge", "label", "train"] + (["eval"] if cfg.eval_prompts else [])


def report_path(output: str | Path) -> Path:
    """`DIR/NAME.jsonl` -> `DIR/NAME.report.json`, as generate, judge and label name it."""
    return Path(str(output)[: -len(".jsonl")] + ".report.json")


def policy_path(cfg: SelfPlayConfig, n: int) -> str:
    """π_n: π_0 for n = 0, else the model iteration n trained (its merged weights under LoRA)."""
    if n == 0:
        return cfg.model
    model = iteration_dir(cfg, n) / "model"
    return str(model / "merged" if cfg.train.lora is not None else model)


def reference_path(cfg: SelfPlayConfig, n: int) -> str | None:
    """The reference model of iteration n: π_(n−1) (SPPO; iterative with reference previous),
    π_0 (iterative with reference initial), None for a loss without one (simpo, cpo, orpo)."""
    if not get_loss(cfg.loss).needs_reference:
        return None
    return cfg.model if cfg.reference_is_initial else policy_path(cfg, n - 1)


def relative(cfg: SelfPlayConfig, path: str | os.PathLike) -> str:
    """`path` relative to output_dir when it lies under it (summary.json stays valid when the
    run directory moves), else as given."""
    p, root = Path(path).resolve(), Path(cfg.output_dir).resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else str(path)
