"""The Quickstart demo (`prefero demo`): the whole pipeline on a synthetic, verifiable task.

    from prefero.demo import DemoConfig, run_demo
    report = run_demo(DemoConfig(output_dir="runs/demo"))      # or run_demo("runs/demo")

A 1M-parameter model is trained from scratch on demonstrations of a task a Python
function can check ("Write N words about TOPIC.": N words of the topic, no word twice),
right only part of the time; its samples are judged by that function, labelled into
pairs and SPPO rows, and DPO, SimPO and SPPO are trained on them and judged against the
SFT model on test prompts whose (topic, N) pairs training never saw — sampled and
greedy. Two ablations ride along: SimPO without length normalisation, and DPO trained by
a judge blind to repetition (reward hacking, on purpose). Modules: `task` (the task, its data and its judge), `model` (the tokenizer and
model builder), `config` (DemoConfig), `run` (the stages in order), `evaluate` (a method
against SFT), `report` (report.json, report.md, the terminal table).
"""

from __future__ import annotations

from prefero.demo.task import asset


def __getattr__(name: str):
    # imported on use: `asset` is what most importers want, and the stages are not cheap to import
    if name == "DemoConfig":
        from prefero.demo.config import DemoConfig

        return DemoConfig
    if name == "run_demo":
        from prefero.demo.run import run_demo

        return run_demo
    raise AttributeError(f"module 'prefero.demo' has no attribute {name!r}")


__all__ = ["DemoConfig", "asset", "run_demo"]
