"""Typed run configuration: a YAML file plus `key=value` overrides, validated at load time.

Every field has a one-line doc (`help`) and, where it is a number, its valid range, both
shown by `prefero COMMAND --help`. A field whose type is a config dataclass is a nested
block (`lora: {r: 8}`); dotted overrides reach into blocks at any depth (`lora.r=8`,
`judge.type=llm`). Unknown keys are errors with a "did you mean" suggestion; values are
type-checked and range-checked before any model or data is read.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from prefero.errors import PreferoError


class ConfigError(PreferoError, ValueError):
    """A configuration mistake the user can fix; the CLI prints it without a traceback."""

    exit_code = 2


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric key (each optional); a list value is checked element-wise."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def contains(self, v: float) -> bool:
        if isinstance(v, float) and math.isnan(v):
            return False
        return ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))

    def __str__(self) -> str:
        lo = self.ge if self.ge is not None else self.gt
        hi = self.le if self.le is not None else self.lt
        if lo is not None and hi is not None:
            return f"{'[' if self.ge is not None else '('}{lo:g}, {hi:g}{']' if self.le is not None else ')'}"
        if lo is not None:
            return f"{'>=' if self.ge is not None else '>'} {lo:g}"
        return f"{'<=' if self.le is not None else '<'} {hi:g}"


def option(default, help: str, *, ge=None, gt=None, le=None, lt=None, choices=None, **kw):
    """A config field: default, one line of doc, and optionally its numeric range or choices."""
    meta = {"help": help}
    if any(b is not None for b in (ge, gt, le, lt)):
        meta["range"] = Range(ge, gt, le, lt)
    if choices is not None:
        meta["choices"] = list(choices)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def block(cls, help: str):
    """A nested block field whose default is `cls()`: `generation.seed=3` changes one key and
    keeps the block's other defaults."""
    return field(default_factory=cls, metadata={"help": help})


def require(cfg, *keys: str) -> None:
    """Refuse a config whose required keys (each non-empty) are missing, naming the first."""
    for key in keys:
        if not getattr(cfg, key):
            raise ConfigError(f"`{key}` is required")


def check_shorter(cfg, short: str = "max_prompt_length", long: str = "max_length", prefix: str = "") -> None:
    """Refuse `short` >= `long` (a prompt budget that leaves no room for a completion)."""
    a, b = getattr(cfg, short), getattr(cfg, long)
    if a >= b:
        raise ConfigError(f"{prefix}{short} ({a}) must be smaller than {prefix}{long} ({b})")


def block_values(cfg) -> dict:
    """A config's keys and values, one level deep (nested blocks kept as objects): what
    builds another command's config from a derived block."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def derived_block(name: str, source, exclude: set[str], doc: str, module: str, own: dict | None = None):
    """A config block class with `source`'s fields (types, defaults, docs, ranges) minus
    `exclude`; `own` maps a field name to (type, field) replacing or adding one. How one
    command's block is built from another command's config, so a key means the same thing,
    with the same default and range, in both. `module`: the caller's `__name__`, where the
    class is said to live (for reprs and pickling)."""
    hints = typing.get_type_hints(source)
    own = dict(own or {})
    specs = []
    for f in dataclasses.fields(source):
        if f.name in exclude:
            continue
        if f.name in own:
            specs.append((f.name, *own.pop(f.name)))
            continue
        default = ({"default": f.default} if f.default is not dataclasses.MISSING
                   else {"default_factory": f.default_factory})
        specs.append((f.name, hints[f.name], field(metadata=f.metadata, **default)))
    specs += [(k, *v) for k, v in own.items()]
    made = dataclasses.make_dataclass(name, specs, namespace={"__doc__": doc})
    made.__module__ = module
    return made


@dataclass
class LoraConfig:
    """PEFT LoRA adapter settings (the `lora:` block)."""

    r: int = option(16, "LoRA rank", ge=1)
    alpha: float = option(32, "LoRA scaling alpha", gt=0)
    dropout: float = option(0.0, "dropout on the LoRA input", ge=0, lt=1)
    target_modules: list = option("auto", "module names to adapt; auto = every projection of the family's attention "
                                      "blocks (q/k/v/o, GPT-2's c_attn/c_proj, ...); all-linear = every linear layer")
    merge: bool = option(False, "also save the merged full model in output_dir/merged")

    def validate(self) -> "LoraConfig":
        if not self.target_modules:
            raise ConfigError("lora.target_modules must name at least one module (or 'all-linear')")
        return self


@dataclass
class DataConfig:
    """How records are read (the `data:` block): column names and how scored records are paired."""

    prompt_column: str = option("prompt", "column holding the prompt")
    chosen_column: str = option("chosen", "column holding the preferred completion")
    rejected_column: str = option("rejected", "column holding the dispreferred completion")
    completion_column: str = option("completion", "SFT / unpaired (KTO): column holding the completion")
    label_column: str = option("label", "unpaired (KTO): column holding true (desirable) / false")
    messages_column: str = option("messages", "SFT: column holding a whole conversation")
    completions_column: str = option("completions", "scored records: column holding the list of completions")
    scores_column: str = option("scores", "scored records: column holding one score per completion")
    p_chosen_column: str = option("p_chosen", "SPPO: column holding the chosen completion's win probability")
    p_rejected_column: str = option("p_rejected", "SPPO: column holding the rejected completion's win probability")
    binarize: str = option("worst", "scored records: rejected = the worst or a random lower-scored completion",
                       choices=["worst", "random"])


#: Keys a resumed run may change: they do not change what the optimizer steps compute.
RESUMABLE_KEYS = {
    "max_steps", "epochs", "eval_steps", "save_steps", "keep_last", "resume", "overwrite",
    "max_bad_steps", "eval_data", "eval_split", "reference_cache", "gradient_checkpointing",
    "attention", "compile", "logprob_chunk_size", "report_to",
}


@dataclass
class LoopConfig:
    """What every training command reads: model, data, optimisation, checkpoints (the loop's knobs)."""

    # model and data
    model: str = option("", "model: hub id or local directory (HF format)")
    train_data: str = option("", "training data file (.jsonl/.json/.parquet/.csv), save_to_disk folder or hub name")
    train_split: str = option("train", "split of train_data to train on (hub datasets and save_to_disk folders)")
    eval_data: str | None = option(None, "held-out data evaluated every eval_steps and at the end")
    eval_split: str | None = option(
        None, "split of eval_data; with no eval_data, a held-out split of train_data (e.g. test_prefs)")
    output_dir: str = option("runs/prefero", "where metrics, data report and the trained model go")
    overwrite: bool = option(False, "replace an earlier prefero run in output_dir (all of it)")
    trust_remote_code: bool = option(False, "run model code from the hub (only if you trust it)")
    # optimisation
    optimizer: str = option("adamw", "adamw | rmsprop (the DPO paper's and the SPPO recipe's optimizer)",
                        choices=["adamw", "rmsprop"])
    learning_rate: float = option(5e-7, "peak learning rate", gt=0)
    weight_decay: float = option(0.0, "weight decay (decoupled for adamw, L2 for rmsprop); 1-D params exempt", ge=0)
    adam_betas: list = option([0.9, 0.999], "AdamW (β1, β2)", ge=0, lt=1)
    rmsprop_alpha: float = option(0.99, "RMSprop smoothing constant α", ge=0, lt=1)
    lr_scheduler: str = option("cosine", "cosine | linear | constant (after warmup)",
                           choices=["cosine", "linear", "constant"])
    warmup_ratio: float = option(0.1, "fraction of the steps spent warming up linearly", ge=0, lt=1)
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 = off)", ge=0)
    batch_size: int = option(8, "pairs per micro-step per process", ge=1)
    grad_accum: int = option(1, "micro-steps per optimizer step", ge=1)
    max_steps: int = option(0, "optimizer steps (0 = derive from epochs)", ge=0)
    epochs: float = option(1.0, "passes over train_data when max_steps is 0", ge=0)
    shuffle: bool = option(True, "seeded shuffling of the data order (false = file order, e.g. curricula)")
    max_bad_steps: int = option(5, "consecutive non-finite steps before the run stops (0 = never stop)", ge=0)
    seed: int = option(42, "seed for initialisation, data order and dropout", ge=0)
    # sequences
    max_length: int = option(1024, "prompt + completion tokens per sequence", ge=2)
    max_prompt_length: int = option(512, "prompt tokens kept (from the end)", ge=1)
    on_bad_record: str = option("error", "error | skip: what a malformed record does", choices=["error", "skip"])
    data: DataConfig | None = option(None, "data block: column names (prompt_column, chosen_column, ...) and binarize")
    dtype: str = option("float32", "float32 | bfloat16 (autocast on float32 master weights)",
                    choices=["float32", "bfloat16"])
    # logging and saving
    eval_steps: int = option(0, "evaluate every N optimizer steps (0 = only at start and end)", ge=0)
    save_steps: int = option(0, "checkpoint every N optimizer steps (0 = only the final model)", ge=0)
    keep_last: int = option(0, "keep only the newest N checkpoints (0 = keep all)", ge=0)
    resume: bool = option(False, "continue from the newest complete checkpoint in output_dir")
    report_to: str = option("none", "none | tensorboard | wandb: also log metrics there (metrics.jsonl always)",
                        choices=["none", "tensorboard", "wandb"])
    lora: LoraConfig | None = option(None, "LoRA adapter block (r, alpha, dropout, target_modules, merge); none = full fine-tune")

    def validate(self):
        if not self.model:
            raise ConfigError("`model` is required (hub id or local directory)")
        if not self.train_data:
            raise ConfigError("`train_data` is required")
        if self.max_steps == 0 and self.epochs <= 0:
            raise ConfigError("set max_steps > 0 or epochs > 0")
        check_shorter(self)
        if len(self.adam_betas) != 2:
            raise ConfigError(f"adam_betas must be two numbers (β1, β2) in [0, 1), got {self.adam_betas}")
        same_data = (self.eval_data or self.train_data) == self.train_data
        if same_data and (self.eval_data or self.eval_split) and (self.eval_split or "train") == self.train_split:
            raise ConfigError(
                f"eval would read the training data itself (split {self.train_split!r} of {self.train_data}); "
                "set eval_split to a held-out split or eval_data to another file")
        return self


@dataclass
class TrainConfig(LoopConfig):
    """Everything `prefero train` reads: the loop's keys, then the loss and the engine."""

    model: str = option("", "policy model: hub id or local directory (HF format)")
    ref_model: str | None = option(None, "reference model; DPO-family losses default to `model`")
    # the loss
    loss: str = option("dpo", "dpo | robust | ipo | hinge | rdpo | nca_pair | simpo | cpo | orpo | sppo | sppo_hard | kto | sft")
    beta: float | None = option(None, "β; default per loss (dpo 0.1, simpo 2.0, sppo 1/η = 0.001)", gt=0)
    gamma_beta_ratio: float | None = option(None, "SimPO γ/β (default 0.5)", ge=0)
    simpo_length_normalize: bool | None = option(
        None, "SimPO on average log-probs (default true); false = summed, the paper's ablation")
    label_smoothing: float | None = option(
        None, "ε: cDPO/SimPO label smoothing (default 0), rDPO flip rate (default 0.1)", ge=0, lt=0.5)
    rdpo_alpha: float | None = option(None, "length-regularized DPO α (default 0.01)", ge=0)
    cpo_lambda: float | None = option(None, "CPO weight of the chosen NLL term (default 1.0)", ge=0)
    orpo_lambda: float | None = option(None, "ORPO weight of the odds-ratio term (default 0.1)", ge=0)
    ipo_average: bool | None = option(None, "IPO on length-averaged log-ratios (default true)")
    kto_desirable_weight: float | None = option(None, "KTO λ_D (default 1.0)", ge=0)
    kto_undesirable_weight: float | None = option(None, "KTO λ_U (default 1.0)", ge=0)
    nll_reduction: str | None = option(
        None, "sft/cpo/orpo NLL: token (mean over the step's completion tokens, default) | sequence",
        choices=["token", "sequence"])
    # numerics and engine
    gradient_checkpointing: bool = option(False, "recompute activations in backward to save memory")
    attention: str = option("auto", "auto (per family: flex on CUDA where it has it, else sdpa, else eager) | flex | sdpa | eager",
                        choices=["auto", "flex", "sdpa", "eager"])
    compile: bool = option(False, "torch.compile the transformer body (dynamic shapes; first step compiles)")
    logprob_chunk_size: int = option(0, "completion tokens per log-prob chunk (0 = auto: ~32M logits per chunk)", ge=0)
    reference_cache: str = option("auto", "reference log-prob cache: auto (~/.cache/prefero or $PREFERO_CACHE), a directory, or off")

    @property
    def reference_cache_dir(self) -> Path | None:
        if self.reference_cache.lower() in ("off", "false", "none", "no"):
            return None
        if self.reference_cache == "auto":
            from prefero.reference import default_cache_dir

            return default_cache_dir()
        return Path(self.reference_cache)

    def loss_hyperparameters(self) -> dict:
        """The loss keys set in this config (None = the loss's own default)."""
        return {k: getattr(self, k) for k in LOSS_KEYS if getattr(self, k) is not None}

    def validate(self) -> "TrainConfig":
        from prefero.losses import get_loss

        super().validate()
        try:
            spec = get_loss(self.loss)
        except ValueError as e:
            raise ConfigError(f"loss: {e}") from None
        takes = spec.hyperparameters()
        for key in self.loss_hyperparameters():
            if key not in takes:
                # a key the loss does not read would otherwise be dropped without a word
                raise ConfigError(f"{key} is not a setting of loss {self.loss!r} "
                                  f"(it takes: {', '.join(takes) or 'none'})")
        if spec.data == "unpaired" and self.batch_size < 2:
            raise ConfigError("loss 'kto' needs batch_size >= 2: its KL estimate pairs each prompt "
                              "with another item's completion in the micro-batch")
        return self


#: TrainConfig keys that are loss hyperparameters (passed to the loss function by name).
LOSS_KEYS = ("beta", "gamma_beta_ratio", "simpo_length_normalize", "label_smoothing", "rdpo_alpha", "cpo_lambda", "orpo_lambda",
             "ipo_average", "kto_desirable_weight", "kto_undesirable_weight", "nll_reduction")


def field_docs(cls) -> list[tuple[str, str, object, str]]:
    """(name, type, default, help) for each field of a config dataclass; the help states the
    valid range or choices."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help = f.metadata.get("help", "")
        if "range" in f.metadata:
            help += f" [valid: {f.metadata['range']}]"
        out.append((f.name, _type_name(f.type), default, help))
    return out


def option_lines(cls, prefix: str = "") -> list[str]:
    """`--help` lines (key, default, doc) for every key of `cls`, nested blocks as dotted keys."""
    hints = typing.get_type_hints(cls)
    lines = []
    for name, _, default, doc in field_docs(cls):
        block = _block_type(hints[name])
        if block is not None:
            lines.append(f"  {prefix + name:<26} {'(block)':<12} {doc}")
            lines += option_lines(block, prefix + name + ".")
        else:
            lines.append(f"  {prefix + name:<26} {default!s:<12} {doc}")
    return lines


def _type_name(t) -> str:
    return str(t).replace("typing.", "")


def _union_args(t) -> tuple:
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
        return typing.get_args(t)
    return (t,)


def _block_type(t):
    """The config dataclass a field's annotation holds, if it is a nested block."""
    return next((a for a in _union_args(t) if dataclasses.is_dataclass(a)), None)


def _unknown_key(key: str, known, where: str) -> ConfigError:
    hint = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    msg = f"unknown config key {key!r} in {where}"
    return ConfigError(msg + (f"; did you mean {hint[0]!r}?" if hint else ""))


def _coerce(name: str, value, t, where: str):
    """Check `value` against the annotation `t`, converting what YAML would (ints to floats)."""
    args = _union_args(t)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{name} cannot be null")
    for a in args:
        if a is type(None):
            continue
        if dataclasses.is_dataclass(a):
            if value is False and type(None) in args:
                return None
            if value is True:
                return build_dataclass(a, {}, where, prefix=name + ".")
            if isinstance(value, dict):
                return build_dataclass(a, value, where, prefix=name + ".")
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
                if value in ("all-linear", "auto"):
                    return value
                return [v.strip() for v in value.split(",") if v.strip()]
            continue
    raise ConfigError(f"{name}: expected {_type_name(t)}, got {value!r}")


def _check_field(name: str, value, meta) -> None:
    """The field's choices and numeric range, stated in the message."""
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        hint = difflib.get_close_matches(str(value), choices, n=1)
        raise ConfigError(f"{name}: {value!r} is not one of {choices}"
                          + (f"; did you mean {hint[0]!r}?" if hint else ""))
    rng = meta.get("range")
    if rng is None or isinstance(value, bool):
        return
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{name}: expected numbers in {rng}, got {value!r}")
        if not rng.contains(v):
            raise ConfigError(f"{name} must be {'in ' if str(rng)[0] in '[(' else ''}{rng}, got {value!r}")


def check_fields(obj, prefix: str = "") -> None:
    """Each field's declared choices and range (`option(..., ge=, choices=)`); also for a config
    built in Python rather than by `load_config`."""
    for f in dataclasses.fields(obj):
        _check_field(prefix + f.name, getattr(obj, f.name), f.metadata)


def build_dataclass(cls, values: dict, where: str, prefix: str = ""):
    """`cls` from a mapping: unknown keys suggested, values coerced and range-checked; a nested
    block is validated here, the top level by `load_config`."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown_key(prefix + key, [prefix + k for k in fields], where)
        kwargs[key] = _coerce(prefix + key, value, hints[key], where)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field without default
        raise ConfigError(f"{where}: {prefix.rstrip('.') or cls.__name__}: {e}") from None
    check_fields(obj, prefix)
    if prefix and hasattr(obj, "validate"):
        obj.validate()
    return obj


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


def read_yaml(path: str | Path) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return loaded


def set_dotted(values: dict, key: str, value) -> None:
    """values[a][b][c] = value for key "a.b.c", making (or copying) the blocks on the way."""
    *outer, last = key.split(".")
    node = values
    for part in outer:
        block = node.get(part)
        node[part] = dict(block) if isinstance(block, dict) else {}
        node = node[part]
    node[last] = value


def load_config(path: str | Path | None, overrides: list[str] = (), cls=TrainConfig):
    """Read YAML `path` (may be None), apply `key=value` overrides (dotted keys reach into
    nested blocks at any depth, e.g. lora.r=8), build and validate the dataclass."""
    values: dict = read_yaml(path) if path is not None else {}
    where = str(path) if path is not None else "the overrides"
    for item in overrides:
        set_dotted(values, *parse_override(item))
    cfg = build_dataclass(cls, values, where)
    return cfg.validate() if hasattr(cfg, "validate") else cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
