"""A constitution: the principles a model critiques and revises its answers against, and
the seeded draw that picks one per round (Bai et al., 2022, "Constitutional AI:
Harmlessness from AI Feedback", §3.1: a principle sampled at random for each
critique-revision step).

File format (.yaml, or .json with the same shape):

    description: what the constitution is for      # optional
    principles:
      - name: honesty
        critique_request: Check your last answer for claims that may be false ...
        revision_request: Rewrite your answer so that every claim ...

Every principle needs all three fields as non-blank strings, and names are unique (the
report counts usage by name). A mistake is one `ConfigError` line naming the file, the
principle (its 1-based position and name) and the field.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import yaml

from prefero.options import ConfigError

FIELDS = ("name", "critique_request", "revision_request")
TOP_KEYS = ("principles", "description")


@dataclass(frozen=True)
class Principle:
    name: str
    critique_request: str  # asked after the answer; the model's reply is the critique
    revision_request: str  # asked after the critique; the model's reply is the revision


def default_constitution_path() -> str:
    """The example constitution shipped with prefero."""
    return str(resources.files("prefero") / "assets" / "constitution.yaml")


def load_constitution(path: str | Path) -> list[Principle]:
    """The principles of `path`, in file order, validated (see the module docstring)."""
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"constitution: cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        doc = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: invalid {'JSON' if path.endswith('.json') else 'YAML'}: {' '.join(str(e).split())}") from None
    if not isinstance(doc, dict) or "principles" not in doc:
        raise ConfigError(f"{path}: expected a mapping with a `principles:` list of {{{', '.join(FIELDS)}}}")
    for key in doc:
        if key not in TOP_KEYS:
            raise _unknown(path, key, TOP_KEYS, "top-level key")
    items = doc["principles"]
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}: `principles` must be a non-empty list, got {_kind(items)}")
    principles, seen = [], {}
    for number, item in enumerate(items, start=1):
        principle = _principle(path, number, item)
        if principle.name in seen:
            raise ConfigError(f"{path}: principle {number} '{principle.name}', field 'name': "
                              f"the same name as principle {seen[principle.name]} (names must be unique)")
        seen[principle.name] = number
        principles.append(principle)
    return principles


def _principle(path: str, number: int, item) -> Principle:
    if not isinstance(item, dict):
        raise ConfigError(f"{path}: principle {number}: expected a mapping of {', '.join(FIELDS)}, got {_kind(item)}")
    name = item.get("name")
    label = f"principle {number}" + (f" '{name}'" if isinstance(name, str) and name.strip() else "")
    for key in item:
        if key not in FIELDS:
            raise _unknown(path, key, FIELDS, f"{label}: field")
    for field in FIELDS:
        value = item.get(field)
        if value is None:
            raise ConfigError(f"{path}: {label}, field '{field}': missing")
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {label}, field '{field}': expected a string, got {_kind(value)}")
        if not value.strip():
            raise ConfigError(f"{path}: {label}, field '{field}': empty")
    return Principle(name.strip(), item["critique_request"].strip(), item["revision_request"].strip())


def _unknown(path: str, key, known, what: str) -> ConfigError:
    hint = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
    return ConfigError(f"{path}: unknown {what} {str(key)!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                       + f" (expected: {', '.join(known)})")


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def constitution_sha256(principles: list[Principle]) -> str:
    """Fingerprint of the principles' content (not of the file's formatting): a resumed
    run must draw from the same constitution."""
    return hashlib.sha256(json.dumps([asdict(p) for p in principles], sort_keys=True).encode()).hexdigest()


def draw_principle(seed: int, index: int, round_: int, count: int) -> int:
    """Position (0-based) of the principle used in round `round_` (0-based) of prompt
    `index`, among `count` principles, uniformly.

    A function of (seed, index, round) alone, so the draw does not depend on batching,
    on the order prompts are processed in, or on resumption. The first 8 bytes of a
    SHA-256 digest are taken modulo `count`: the modulo bias is at most count / 2**64.
    """
    digest = hashlib.sha256(f"prefero-revise:{seed}:{index}:{round_}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % count
