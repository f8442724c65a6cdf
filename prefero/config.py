"""Typed run configuration: a YAML file plus `key=value` overrides, validated at load time.

Every field has a one-line doc (`help`), shown by `prefero train --help`. Unknown keys
are errors with a "did you mean" suggestion; values are type-checked.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A configuration mistake the user can fix; the CLI prints it without a traceback."""


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class LoraConfig:
    """PEFT LoRA adapter settings (the `lora:` block)."""

    r: int = _f(16, "LoRA rank")
    alpha: int = _f(32, "LoRA scaling alpha")
    dropout: float = _f(0.0, "dropout on the LoRA input")
    target_modules: list = _f(["q_proj", "k_proj", "v_proj", "o_proj"], "module names to adapt ('all-linear' for all)")
    merge: bool = _f(False, "also save the merged full model in output_dir/merged")


@dataclass
class LoopConfig:
    """What every training command reads: model, data, optimisation, checkpoints (the loop's knobs)."""

    # model and data
    model: str = _f("", "model: hub id or local directory (HF format)")
    train_data: str = _f("", "training data file (.jsonl/.json/.parquet/.csv), save_to_disk folder or hub name")
    eval_data: str | None = _f(None, "held-out data evaluated every eval_steps and at the end")
    output_dir: str = _f("runs/prefero", "where metrics, data report and the trained model go")
    overwrite: bool = _f(False, "allow writing into a non-empty output_dir")
    trust_remote_code: bool = _f(False, "run model code from the hub (only if you trust it)")
    # optimisation
    learning_rate: float = _f(5e-7, "peak AdamW learning rate")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    adam_betas: list = _f([0.9, 0.999], "AdamW (β1, β2)")
    lr_scheduler: str = _f("cosine", "cosine | linear | constant (after warmup)")
    warmup_ratio: float = _f(0.1, "fraction of the steps spent warming up linearly")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 = off)")
    batch_size: int = _f(8, "pairs per micro-step per process")
    grad_accum: int = _f(1, "micro-steps per optimizer step")
    max_steps: int = _f(0, "optimizer steps (0 = derive from epochs)")
    epochs: float = _f(1.0, "passes over train_data when max_steps is 0")
    max_bad_steps: int = _f(5, "consecutive non-finite steps before the run stops")
    seed: int = _f(42, "seed for initialisation, data order and dropout")
    # sequences
    max_length: int = _f(1024, "prompt + completion tokens per sequence")
    max_prompt_length: int = _f(512, "prompt tokens kept (from the end)")
    on_bad_record: str = _f("error", "error | skip: what a malformed record does")
    dtype: str = _f("float32", "float32 | bfloat16 (autocast on float32 master weights)")
    # logging and saving
    eval_steps: int = _f(0, "evaluate every N optimizer steps (0 = only at start and end)")
    save_steps: int = _f(0, "checkpoint every N optimizer steps (0 = only the final model)")
    keep_last: int = _f(0, "keep only the newest N checkpoints (0 = keep all)")
    resume: bool = _f(False, "continue from the newest complete checkpoint in output_dir")
    lora: LoraConfig | None = _f(None, "LoRA adapter block (r, alpha, dropout, target_modules, merge); none = full fine-tune")

    def validate(self):
        if not self.model:
            raise ConfigError("`model` is required (hub id or local directory)")
        if not self.train_data:
            raise ConfigError("`train_data` is required")
        _choice("dtype", self.dtype, ["float32", "bfloat16"])
        _choice("lr_scheduler", self.lr_scheduler, ["cosine", "linear", "constant"])
        _choice("on_bad_record", self.on_bad_record, ["error", "skip"])
        for name in ["batch_size", "grad_accum", "max_length", "max_prompt_length"]:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ["max_steps", "eval_steps", "save_steps", "keep_last", "max_bad_steps"]:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps == 0 and self.epochs <= 0:
            raise ConfigError("set max_steps > 0 or epochs > 0")
        if self.max_prompt_length >= self.max_length:
            raise ConfigError("max_prompt_length must be smaller than max_length")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        return self


@dataclass
class TrainConfig(LoopConfig):
    """Everything `prefero train` reads: the loop's keys, then the loss and the engine."""

    model: str = _f("", "policy model: hub id or local directory (HF format)")
    ref_model: str | None = _f(None, "reference model; DPO-family losses default to `model`")
    # the loss
    loss: str = _f("dpo", "dpo | robust | ipo | hinge | rdpo | nca_pair | simpo | cpo | orpo | sppo | sppo_hard | kto | sft")
    beta: float | None = _f(None, "β; default per loss (dpo 0.1, simpo 2.0, sppo 1/η = 0.001)")
    gamma_beta_ratio: float | None = _f(None, "SimPO γ/β (default 0.5)")
    label_smoothing: float | None = _f(None, "ε: cDPO/SimPO label smoothing (default 0), rDPO flip rate (default 0.1)")
    rdpo_alpha: float | None = _f(None, "length-regularized DPO α (default 0.01)")
    cpo_lambda: float | None = _f(None, "CPO weight of the chosen NLL term (default 1.0)")
    orpo_lambda: float | None = _f(None, "ORPO weight of the odds-ratio term (default 0.1)")
    ipo_average: bool | None = _f(None, "IPO on length-averaged log-ratios (default true)")
    kto_desirable_weight: float | None = _f(None, "KTO λ_D (default 1.0)")
    kto_undesirable_weight: float | None = _f(None, "KTO λ_U (default 1.0)")
    # numerics and engine
    gradient_checkpointing: bool = _f(False, "recompute activations in backward to save memory")
    attention: str = _f("auto", "auto (flex on GPU, sdpa on CPU) | flex | sdpa | eager")
    compile: bool = _f(False, "torch.compile the transformer body (dynamic shapes; first step compiles)")
    logprob_chunk_size: int = _f(0, "completion tokens per log-prob chunk (0 = auto: ~32M logits per chunk)")
    reference_cache: str = _f("auto", "reference log-prob cache: auto (~/.cache/prefero or $PREFERO_CACHE), a directory, or off")

    @property
    def reference_cache_dir(self) -> Path | None:
        if self.reference_cache.lower() in ("off", "false", "none", "no"):
            return None
        if self.reference_cache == "auto":
            from prefero.reference import default_cache_dir

            return default_cache_dir()
        return Path(self.reference_cache)

    def validate(self) -> "TrainConfig":
        from prefero.losses import get_loss

        super().validate()
        try:
            get_loss(self.loss)
        except ValueError as e:
            raise ConfigError(f"loss: {e}") from None
        _choice("attention", self.attention, ["auto", "flex", "sdpa", "eager"])
        if self.logprob_chunk_size < 0:
            raise ConfigError(f"logprob_chunk_size must be >= 0, got {self.logprob_chunk_size}")
        return self


def _choice(name, value, options):
    if value not in options:
        hint = difflib.get_close_matches(str(value), options, n=1)
        raise ConfigError(
            f"{name}: {value!r} is not one of {options}" + (f"; did you mean {hint[0]!r}?" if hint else "")
        )


def field_docs(cls) -> list[tuple[str, str, object, str]]:
    """(name, type, default, help) for each field of a config dataclass."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append((f.name, _type_name(f.type), default, f.metadata.get("help", "")))
    return out


def _type_name(t) -> str:
    return str(t).replace("typing.", "")


def _unknown_key(key: str, known, where: str) -> ConfigError:
    hint = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    msg = f"unknown config key {key!r} in {where}"
    return ConfigError(msg + (f"; did you mean {hint[0]!r}?" if hint else ""))


def _coerce(name: str, value, cls):
    """Check `value` against the field's annotation, converting what YAML would (ints to floats)."""
    hints = typing.get_type_hints(cls)
    t = hints[name]
    args = typing.get_args(t) if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union else (t,)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{name} cannot be null")
    for a in args:
        if a is type(None):
            continue
        if a is LoraConfig:
            if value is False:
                return None
            if value is True:
                return LoraConfig()
            if isinstance(value, dict):
                return build_dataclass(LoraConfig, value, where=f"{name}:")
            continue
        if a is bool:
            if isinstance(value, bool):
                return value
            continue
        if a is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if a is float and isinstance(value, str):
            try:  # YAML 1.1 reads "1e-6" (no dot) as a string
                return float(value)
            except ValueError:
                pass
        if a is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if a is str and isinstance(value, (str, int, float)):
            # YAML 1.1 reads off/no/false as False: keep the user's intent as a word
            return str(value).lower() if isinstance(value, bool) else str(value)
        if a is list:
            if isinstance(value, list):
                return value
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()] if value != "all-linear" else value
            continue
    raise ConfigError(f"{name}: expected {_type_name(t)}, got {value!r}")


def build_dataclass(cls, values: dict, where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise _unknown_key(key, known, where)
        kwargs[key] = _coerce(key, value, cls)
    return cls(**kwargs)


def parse_override(item: str) -> tuple[str, object]:
    """`key=value` with the value parsed as YAML (so 1e-6, true, [a, b] work)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(path: str | Path | None, overrides: list[str] = (), cls=TrainConfig):
    """Read YAML `path` (may be None), apply `key=value` overrides (dotted keys reach into
    nested blocks, e.g. lora.r=8), build and validate the dataclass."""
    values: dict = {}
    where = "the overrides"
    if path is not None:
        where = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
        values.update(loaded)
    for item in overrides:
        key, value = parse_override(item)
        if "." in key:
            outer, inner = key.split(".", 1)
            block = values.get(outer)
            block = dict(block) if isinstance(block, dict) else {}
            block[inner] = value
            values[outer] = block
        else:
            values[key] = value
    cfg = build_dataclass(cls, values, where)
    return cfg.validate() if hasattr(cfg, "validate") else cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
