"""Typed run configuration: a YAML file plus `key=value` overrides, validated at load time.

Every field has a one-line doc (`help`) and, where it is a number, its valid range, both
shown by `prefero COMMAND --help`. A field whose type is a config dataclass is a nested
block (`lora: {r: 8}`); dotted overrides reach into blocks at any depth (`lora.r=8`,
`judge.type=llm`). Unknown keys are errors with a "did you mean" suggestion; values are
type-checked and range-checked before any model or data is read.

This module is the machinery every command's config is built with (`option`, `block`,
`derived_block`, `load_config`); `prefero.config` holds the training schema.
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


def load_config(path: str | Path | None, overrides: list[str] = (), *, cls):
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
