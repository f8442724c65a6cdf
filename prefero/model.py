"""Loading and saving Hugging Face causal LMs: tokenizer, dtype, LoRA, safetensors only."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from prefero.config import LoraConfig
from prefero.errors import first_line
from prefero.options import ConfigError

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9_.-]+)?$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")


def check_model_source(name: str, key: str = "model", tokenizer: bool = True) -> dict:
    """Say plainly what is wrong with a model reference before transformers does it obscurely.

    A local path must exist and hold a config, safetensors weights and (when `tokenizer`)
    tokenizer files; anything that is not a hub id is taken as a path ("not found: PATH").
    A hub id is looked up once, with a short timeout, so an offline machine fails at once
    instead of after a minute of retries; a model already in the local cache is then used
    offline. Returns extra `from_pretrained` keyword arguments.
    """
    path = Path(os.path.expanduser(name))
    if path.exists() or not _HUB_ID.match(name) or name.startswith("."):
        if not path.exists():
            raise ConfigError(f"{key}: not found: {name}")
        if not path.is_dir():
            raise ConfigError(f"{key}: {name} is a file; expected a model directory (HF format) or a hub id")
        _check_model_dir(path, key, tokenizer)
        return {}
    return _hub_access(name, key)


def _check_model_dir(path: Path, key: str, tokenizer: bool) -> None:
    files = {p.name for p in path.iterdir()}
    if "adapter_config.json" in files:  # a LoRA output: peft loads its base model by name
        return
    lacks = []
    if "config.json" not in files:
        lacks.append("config.json")
    if not any(f.endswith(".safetensors") or f == "model.safetensors.index.json" for f in files):
        if any(f.endswith(".bin") or f.endswith(".pt") for f in files):
            raise ConfigError(f"{key}: {path} has only pickle weights (*.bin); prefero loads safetensors only "
                              "(convert with model.save_pretrained(dir, safe_serialization=True))")
        lacks.append("weights (*.safetensors)")
    if tokenizer and not files & set(_TOKENIZER_FILES):
        lacks.append(f"tokenizer files ({', '.join(_TOKENIZER_FILES[:3])})")
    if lacks:
        raise ConfigError(f"{key}: {path} is not a complete Hugging Face model directory: it has no "
                          + ", no ".join(lacks))


@lru_cache(maxsize=None)
def _hub_access(name: str, key: str) -> dict:
    from huggingface_hub import HfApi, try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        if not cached:
            raise ConfigError(f"{key}: {name!r} is not a local directory and not in the hub cache "
                              "(HF_HUB_OFFLINE is set)")
        return {"local_files_only": True}
    try:
        HfApi().model_info(name, timeout=10)
        return {}
    except Exception as e:  # noqa: BLE001 - each failure below gets its own message
        kind = type(e).__name__
        if kind in ("RepositoryNotFoundError", "GatedRepoError", "HfHubHTTPError") or hasattr(e, "response"):
            if cached:
                return {"local_files_only": True}
            raise ConfigError(f"{key}: {name!r} is not a local directory, and the hub answered: "
                              f"{first_line(e)}") from None
        if cached:  # offline, but the model was downloaded before
            return {"local_files_only": True}
        raise ConfigError(f"{key}: {name!r} is not a local directory and the hub cannot be reached "
                          f"({first_line(e)}); download it while online or pass a local directory") from None


def load_tokenizer(name: str, trust_remote_code: bool = False, key: str = "model"):
    from transformers import AutoTokenizer

    extra = check_model_source(name, key, tokenizer=True)
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load tokenizer from {name!r}: {first_line(e)}") from None
    if tok.pad_token_id is None:
        # padding never reaches the loss (layouts are padding-free); generation needs an id
        tok.pad_token = tok.eos_token
    if tok.eos_token_id is None:
        raise ConfigError(f"tokenizer of {name!r} has no EOS token; completions must end with one")
    return tok


def load_model_config(name: str, trust_remote_code: bool = False, key: str = "model"):
    """The model's transformers config, read without its weights."""
    from transformers import AutoConfig

    extra = check_model_source(name, key, tokenizer=False)
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load model config from {name!r}: {first_line(e)}") from None


def resolve_attention(name: str, choice: str, trust_remote_code: bool = False,
                      key: str = "model") -> tuple[str, str]:
    """(attn_implementation, why) for the model at `name`; see `prefero.attention`.

    `choice` is the config's auto|flex|sdpa|eager for the packed engine, or `inference`
    for code that runs transformers' own padded forward or `generate` (judges, sampling,
    eval): SDPA where the family has it, else eager; both read transformers' own masks.
    """
    from prefero.attention import choose_attention

    config = load_model_config(name, trust_remote_code, key)
    if choice == "inference":
        impl, why = choose_attention("auto", config, cuda=False)
        return impl, why
    return choose_attention(choice, config)


def load_causal_lm(name: str, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32,
                   attention: str = "inference", key: str = "model", dropout: bool = False):
    """A causal LM in `dtype`, weights from safetensors only (no pickle), with the attention
    implementation `resolve_attention` picks (`model.prefero_attention` says why). Dropout
    is off unless `dropout` (see `prefero.attention.disable_dropout`). For the packed engine
    (`attention` other than `inference`), a family outside the tested matrix is checked
    against its plain forward at load and refused when it differs."""
    from transformers import AutoModelForCausalLM

    from prefero.attention import disable_dropout
    from prefero.exactness import check_untested_family

    impl, why = resolve_attention(name, attention, trust_remote_code, key)
    extra = check_model_source(name, key, tokenizer=False)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True,
            attn_implementation=impl, **extra,
        )
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load model from {name!r}: {first_line(e)}") from None
    model.config.use_cache = False
    if not dropout:
        disable_dropout(model)
    model.prefero_attention = why
    if attention != "inference":  # the packed engine will run it: a family outside the matrix is checked
        note = check_untested_family(model, model.config.pad_token_id or 0)
        if note:
            model.prefero_attention = f"{why}; {note}"
    return model


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer in backward (non-reentrant, so it composes with
    our direct backbone call, LoRA and FSDP)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def apply_lora(model: nn.Module, lora: LoraConfig, task_type: str = "CAUSAL_LM") -> nn.Module:
    """Wrap `model` with a LoRA adapter. `target_modules: auto` adapts every projection of the
    family's attention blocks (`attention_projections`), so each family gets the same
    choice whatever its layers are called; `all-linear` is peft's every-linear-layer rule."""
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model
    except ImportError:
        raise ConfigError("the lora block needs peft: pip install 'prefero[lora]'") from None
    targets = lora.target_modules
    if targets == "auto":
        targets = attention_projections(model)
    elif targets != "all-linear":
        _check_target_modules(model, targets)
    cfg = PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=targets, task_type=task_type,
        # GPT-2-era Conv1D layers store their weight transposed
        fan_in_fan_out=any(type(m).__name__ == "Conv1D" for m in model.modules()),
    )
    return get_peft_model(model, cfg)


def _adaptable(module: nn.Module) -> bool:
    """A layer peft's LoRA can adapt: nn.Linear, or the Conv1D GPT-2-era models use."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def attention_projections(model: nn.Module) -> str:
    """A peft `target_modules` pattern for the projections inside the model's attention
    blocks (modules whose class name contains "Attention"): q/k/v/o in Llama-style models,
    c_attn/c_proj in GPT-2, query_key_value/dense in GPT-NeoX and Falcon, ... The pattern
    matches whole module names, so GPT-2's MLP `c_proj` is not taken with its attention's."""
    pairs = set()
    for parent_name, parent in model.named_modules():
        if "Attention" not in type(parent).__name__:
            continue
        for leaf, child in parent.named_children():
            if _adaptable(child):
                pairs.add((parent_name.rsplit(".", 1)[-1], leaf))
    if not pairs:
        raise ConfigError(f"lora.target_modules: found no attention projections in {type(model).__name__}; "
                          f"name them (adaptable layers: {', '.join(_adaptable_names(model))}) or use all-linear")
    parents = "|".join(sorted({re.escape(p) for p, _ in pairs}))
    leaves = "|".join(sorted({re.escape(c) for _, c in pairs}))
    return rf".*\.({parents})\.({leaves})"


def _adaptable_names(model: nn.Module) -> list[str]:
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and _adaptable(m)})


def _check_target_modules(model: nn.Module, targets: list) -> None:
    """Each lora.target_modules name must match a module of the model (peft matches the
    last name component), else a one-line error with the closest names."""
    import difflib

    leaves = _adaptable_names(model)
    for t in targets:
        if t not in leaves and not any(n == t or n.endswith("." + t) for n, _ in model.named_modules()):
            hint = difflib.get_close_matches(t, leaves, n=1)
            raise ConfigError(f"lora.target_modules: the model has no module {t!r}"
                              + (f"; did you mean {hint[0]!r}?" if hint else "")
                              + f" (layers LoRA can adapt: {', '.join(leaves)}; or use auto / all-linear)")


def save_model(model: nn.Module, tokenizer, directory: str | Path, merge_lora: bool = False,
               state_dict: dict | None = None) -> None:
    """Save in HF format (safetensors + config + tokenizer); LoRA saves its adapter and,
    with merge_lora, the merged full model under `directory/merged`. `state_dict`
    replaces the model's own (the gathered full state of a sharded model)."""
    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(directory)
    if merge_lora and hasattr(model, "merge_and_unload"):
        import copy

        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(directory / "merged", safe_serialization=True)
        tokenizer.save_pretrained(directory / "merged")


