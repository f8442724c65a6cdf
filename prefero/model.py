"""Loading and saving Hugging Face causal LMs: tokenizer, dtype, LoRA, safetensors only."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from prefero.config import ConfigError, LoraConfig


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load tokenizer from {name!r}: {_first_line(e)}") from None
    if tok.pad_token_id is None:
        # padding never reaches the loss (layouts are padding-free); generation needs an id
        tok.pad_token = tok.eos_token
    if tok.eos_token_id is None:
        raise ConfigError(f"tokenizer of {name!r} has no EOS token; completions must end with one")
    return tok


def attn_implementation(choice: str) -> str:
    """`auto`: FlexAttention on CUDA (block-sparse prefix-shared masks), SDPA elsewhere
    (FlexAttention has no CPU backward)."""
    if choice == "auto":
        return "flex_attention" if torch.cuda.is_available() else "sdpa"
    return {"flex": "flex_attention", "sdpa": "sdpa", "eager": "eager"}[choice]


def load_causal_lm(name: str, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32,
                   attention: str = "auto"):
    """A causal LM in `dtype`, weights from safetensors only (no pickle)."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True,
            attn_implementation=attn_implementation(attention),
        )
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load model from {name!r}: {_first_line(e)}") from None
    model.config.use_cache = False
    return model


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer in backward (non-reentrant, so it composes with
    our direct backbone call, LoRA and FSDP)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def apply_lora(model: nn.Module, lora: LoraConfig, task_type: str = "CAUSAL_LM") -> nn.Module:
    try:
        from peft import LoraConfig as PeftLoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("the lora block needs peft: pip install 'prefero[lora]'") from None
    cfg = PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora.target_modules, task_type=task_type,
    )
    return get_peft_model(model, cfg)


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


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
