"""Config validation at load time: ranges, choices, nested blocks, keys a loss does not read.

Every case here was accepted (or crashed with a traceback) before: a wrong number must be
a one-line error naming the key and its valid range, before any model is read.
"""

import re
from dataclasses import dataclass

import pytest

from prefero.config import load_config
from prefero.options import ConfigError, option, option_lines
from prefero.train import TrainConfig

BASE = ["model=m", "train_data=d.jsonl"]


@pytest.mark.parametrize("overrides, message", [
    # silently wrong before: DPO with β ≤ 0 trains toward the rejected answers
    (["beta=0"], "beta must be > 0, got 0.0"),
    (["beta=-0.1"], "beta must be > 0"),
    (["loss=ipo", "beta=0"], "beta must be > 0"),  # was a ZeroDivisionError
    (["label_smoothing=0.5"], r"label_smoothing must be in \[0, 0.5\), got 0.5"),  # reverses the preference
    (["loss=simpo", "label_smoothing=0.7"], r"label_smoothing must be in \[0, 0.5\)"),
    (["loss=robust", "label_smoothing=0.5"], r"label_smoothing must be in \[0, 0.5\)"),
    (["max_grad_norm=-1"], "max_grad_norm must be >= 0"),
    # tracebacks before
    (["learning_rate=-1e-5"], "learning_rate must be > 0"),
    (["weight_decay=-0.1"], "weight_decay must be >= 0"),
    (["adam_betas=[0.9, 1.0]"], r"adam_betas must be in \[0, 1\), got \[0.9, 1.0\]"),
    (["adam_betas=[-0.1, 0.99]"], r"adam_betas must be in \[0, 1\)"),
    (["adam_betas=[0.9]"], "adam_betas must be two numbers"),
    (["lora.r=0"], "lora.r must be >= 1, got 0"),
    (["lora.dropout=1.0"], r"lora.dropout must be in \[0, 1\)"),
    (["lora.rr=4"], "unknown config key 'lora.rr'.*did you mean 'lora.r'"),
    (["warmup_ratio=1"], r"warmup_ratio must be in \[0, 1\)"),
    (["optimizer=adam"], "optimizer: 'adam' is not one of.*did you mean 'adamw'"),
    (["nll_reduction=tokens", "loss=sft"], "nll_reduction: 'tokens' is not one of"),
    (["beta=nan"], "beta must be > 0, got nan"),
    # a setting the loss does not read was dropped without a word
    (["loss=orpo", "beta=0.1"], "beta is not a setting of loss 'orpo'"),
    (["loss=dpo", "gamma_beta_ratio=0.5"], "gamma_beta_ratio is not a setting of loss 'dpo'"),
    (["loss=simpo", "nll_reduction=sequence"], r"nll_reduction is a setting of simpo's NLL term, which cpo_lambda > 0 "
                                                r"adds \(cpo_lambda is 0\)"),
    (["loss=dpo", "nll_reduction=token"], r"nll_reduction is a setting of dpo's NLL term, which rpo_alpha > 0 adds"),
    (["loss=simpo", "rpo_alpha=1"], "rpo_alpha is not a setting of loss 'simpo'"),
    (["loss=kto", "batch_size=1"], "loss 'kto' needs batch_size >= 2"),
    (["max_prompt_length=600", "max_length=512"], r"max_prompt_length \(600\) must be smaller"),
    (["eval_split=train"], "eval would read the training data itself"),
    (["eval_data=d.jsonl"], "eval would read the training data itself"),
])
def test_bad_values_are_one_line_errors_naming_key_and_range(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, BASE + overrides)
    assert "\n" not in str(err.value)


def test_valid_edges_are_accepted():
    cfg = load_config(None, BASE + ["label_smoothing=0.49", "adam_betas=[0, 0.999]", "max_grad_norm=0",
                                    "weight_decay=0", "lora.r=1", "optimizer=rmsprop", "shuffle=false"])
    assert cfg.lora.r == 1 and cfg.optimizer == "rmsprop" and cfg.shuffle is False
    assert load_config(None, BASE + ["loss=cpo", "nll_reduction=sequence"]).nll_reduction == "sequence"
    assert load_config(None, BASE + ["loss=simpo", "cpo_lambda=1", "nll_reduction=sequence"]).cpo_lambda == 1
    assert load_config(None, BASE + ["loss=dpo", "rpo_alpha=1", "nll_reduction=sequence"]).rpo_alpha == 1


@dataclass
class Leaf:
    x: int = option(1, "a number", ge=0)


@dataclass
class Inner:
    leaf: Leaf = option(None, "a nested block")
    name: str = option("a", "a word")


@dataclass
class Outer:
    inner: Inner | None = option(None, "a block of blocks")
    top: float = option(0.5, "a fraction", ge=0, le=1)


def test_nested_blocks_and_dotted_overrides_at_any_depth(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  name: b\n  leaf:\n    x: 2\n")
    cfg = load_config(path, ["inner.leaf.x=7", "top=1"], cls=Outer)
    assert cfg.inner.leaf.x == 7 and cfg.inner.name == "b" and cfg.top == 1.0
    cfg = load_config(None, ["inner.leaf.x=3"], cls=Outer)  # blocks created on the way
    assert cfg.inner.leaf.x == 3 and cfg.inner.name == "a"
    with pytest.raises(ConfigError, match="unknown config key 'inner.leaf.y'.*did you mean 'inner.leaf.x'"):
        load_config(None, ["inner.leaf.y=3"], cls=Outer)
    with pytest.raises(ConfigError, match="inner.leaf.x must be >= 0, got -1"):
        load_config(None, ["inner.leaf.x=-1"], cls=Outer)
    with pytest.raises(ConfigError, match=r"top must be in \[0, 1\]"):
        load_config(None, ["top=2"], cls=Outer)


def test_help_states_ranges_and_nested_keys():
    lines = "\n".join(option_lines(TrainConfig))
    assert "[valid: > 0]" in next(line for line in lines.splitlines() if line.strip().startswith("beta "))
    assert "[valid: [0, 0.5)]" in next(line for line in lines.splitlines() if "label_smoothing" in line)
    assert "lora.r" in lines and "[valid: >= 1]" in next(line for line in lines.splitlines() if "lora.r " in line)
    assert "\n".join(option_lines(Outer)).count("inner.leaf.x") == 1


def test_data_block_sets_columns_and_binarization(tiny_model_dir, tmp_path):
    """Column names and binarization from the config: {question, good, bad} and scored rows."""
    import json

    from prefero.train import Trainer

    data = tmp_path / "renamed.jsonl"
    rows = [{"question": f"Q{i}?", "good": f"Yes {i}.", "bad": "No."} for i in range(4)]
    rows.append({"question": "Pick one.", "outs": ["a", "b", "c"], "marks": [1, 3, 2]})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [
        f"model={tiny_model_dir}", f"train_data={data}", f"output_dir={tmp_path / 'o'}", "max_steps=1",
        "max_length=64", "max_prompt_length=32", "data.prompt_column=question", "data.chosen_column=good",
        "data.rejected_column=bad", "data.completions_column=outs", "data.scores_column=marks",
        "data.binarize=worst"])
    trainer = Trainer(cfg)
    tok = trainer.tokenizer
    assert len(trainer.train_ds) == 5
    scored = trainer.train_ds.items[-1]
    assert tok.decode(scored.chosen_ids).startswith("b") and tok.decode(scored.rejected_ids).startswith("a")
    with pytest.raises(ConfigError, match="data.binarize: 'best' is not one of"):
        load_config(None, BASE + ["data.binarize=best"])


def _numeric_keys_without_range(cls, prefix=""):
    import dataclasses
    import types
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        union = isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union
        args = typing.get_args(t) if union else (t,)
        for a in args:
            if dataclasses.is_dataclass(a):
                yield from _numeric_keys_without_range(a, prefix + f.name + ".")
        if any(a in (int, float) for a in args) and "range" not in f.metadata and "choices" not in f.metadata:
            yield prefix + f.name


def test_every_numeric_key_of_every_command_declares_its_range():
    """`prefero rm learning_rate=0` once saved an untrained head: every number a command
    reads is range-checked at load and its range shown in --help."""
    import importlib

    from prefero.cli import COMMANDS
    from prefero.demo import DemoConfig

    classes = [getattr(importlib.import_module(c.config.split(":")[0]), c.config.split(":")[1]) for c in COMMANDS]
    missing = {cls.__name__: keys for cls in classes + [DemoConfig]
               if (keys := list(_numeric_keys_without_range(cls)))}
    assert missing == {}


@pytest.mark.parametrize("override, message", [
    ("learning_rate=-1", "learning_rate must be > 0, got -1.0"),
    ("learning_rate=0", "learning_rate must be > 0, got 0.0"),
    ("warmup_ratio=1", r"warmup_ratio must be in \[0, 1\)"),
    ("center_weight=-1", "center_weight must be >= 0"),
])
def test_rm_ranges_are_checked_at_load(override, message, capsys):
    from prefero.cli import main

    assert main(["rm", "model=m", "train_data=d", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err
