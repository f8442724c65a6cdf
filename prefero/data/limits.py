"""How many positions a model attends over, and the checks that keep sequences inside it.

A model fed past its positions does not fail: it reads position ids it never saw in
training (or wraps a learned position table) and writes garbage with a clean exit. So
every stage that feeds a model checks against one number, found here:

1. the model config's own limit: `max_position_embeddings`, or what GPT-2-like configs
   call it (`n_positions`, `n_ctx`, `seq_length`);
2. else the tokenizer's `model_max_length`, when it is a real number: transformers puts
   1e30 there when nobody set it, which means "unknown", not "unlimited";
3. else no limit is known and nothing is checked.

What each stage does at the limit (docs/models.md, "Context limits"): `train`, `rm` and
the reward-model judge refuse a `max_length` above it at load; `generate` and the LLM
judge refuse a prompt that does not fit, naming file and row.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

#: Config attributes that hold the position limit, in the order they are trusted.
POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")
#: A tokenizer's model_max_length at or above this is transformers' "not set" placeholder.
UNSET_TOKENIZER_LIMIT = 10**9


@dataclass(frozen=True)
class ContextLimit:
    """The most tokens (prompt + completion) the model can take, and where that was read."""

    tokens: int
    source: str  # e.g. "config.max_position_embeddings", for messages

    def __str__(self) -> str:
        return f"{self.tokens} positions ({self.source})"


def context_limit(model_config=None, tokenizer=None) -> ContextLimit | None:
    """The limit of a model from its config (a `PretrainedConfig`) and/or its tokenizer."""
    if model_config is not None:
        # multimodal wrappers (Gemma 3, Llava...) keep the decoder's limit in text_config
        text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
        for config in (text, model_config):
            for key in POSITION_KEYS:
                value = getattr(config, key, None)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return ContextLimit(value, f"config.{key}")
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < UNSET_TOKENIZER_LIMIT:
        return ContextLimit(value, "tokenizer.model_max_length")
    return None


def model_context_limit(name: str, tokenizer=None, trust_remote_code: bool = False,
                        key: str = "model") -> ContextLimit | None:
    """`context_limit` of the model `name` (a directory or hub id) without loading its weights.

    A LoRA output directory has no model config of its own: its base model's is read. A
    config that cannot be read at all gives the tokenizer's limit; loading the model later
    reports what is wrong with it.
    """
    from transformers import AutoConfig

    from prefero.model import check_model_source

    adapter = os.path.join(os.path.expanduser(name), "adapter_config.json")
    if os.path.isfile(adapter):
        try:
            with open(adapter, encoding="utf-8") as f:
                base = json.load(f).get("base_model_name_or_path")
        except (OSError, ValueError):
            base = None
        if isinstance(base, str) and base and base != name:
            return model_context_limit(base, tokenizer, trust_remote_code, key)
        return context_limit(None, tokenizer)
    extra = check_model_source(name, key, tokenizer=False)
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError):
        config = None
    return context_limit(config, tokenizer)


def check_max_length(max_length: int, limit: ContextLimit | None, key: str = "max_length",
                     default: int | None = None, model_key: str = "model") -> None:
    """A `max_length` above the model's limit is a config error (one line: key, value, limit).

    Not clamped, defaults included: a run's saved config is then the config it used, and
    a resumed run or a reference cache key never disagrees with it.
    """
    from prefero.options import ConfigError

    if limit is None or max_length <= limit.tokens:
        return
    why = " (the default)" if default is not None and max_length == default else ""
    prompt_key = key.replace("max_length", "max_prompt_length")
    raise ConfigError(f"{key}: {max_length}{why} is above the limit of {model_key}, {limit}; "
                      f"set {key}={limit.tokens} or less (and {prompt_key} below it)")


def check_run_lengths(cfg, tokenizer, model_keys: tuple[str, ...] = ("model",)) -> None:
    """`train` / `rm`: the config's max_length against each model it names (policy, reference)."""
    default = default_of(cfg, "max_length")
    for model_key in model_keys:
        name = getattr(cfg, model_key, None)
        if name:
            limit = model_context_limit(name, tokenizer, cfg.trust_remote_code, model_key)
            check_max_length(cfg.max_length, limit, default=default, model_key=model_key)


def default_of(cfg, key: str):
    """The declared default of a config dataclass field (None for other objects), so a
    message can say a value nobody set is the default."""
    field = getattr(type(cfg), "__dataclass_fields__", {}).get(key)
    return getattr(field, "default", None)
