"""Which attention implementation a model runs with, and the mask each one reads.

The engine runs packed, prefix-shared rows (see `batching`), so it hands the backbone a
ready 4-D mask, which transformers passes to the attention function untouched. Each
implementation reads that mask differently, and each family has its own extras; this
module is where both are made right by construction:

- SDPA takes a boolean mask (True = attend); eager attention *adds* its mask to the
  scores, so it gets 0 / dtype-min floats; FlexAttention takes a `BlockMask`.
- Sliding-window layers (Mistral, Phi-3, Gemma-2/3, Qwen2 with windows, ...) see only
  keys less than `sliding_window` positions back. Families that mix full and sliding
  layers (`config.layer_types`) get one mask per layer type, as their own forward builds.
- Distances are measured in positions, not row indices, so a rejected completion packed
  after its chosen sibling keeps the window it has in the plain computation.

`auto` picks, per family: FlexAttention on CUDA where the family supports it, else SDPA,
else eager — each exact. Families whose attention cannot take a packed row are refused at
load with what to do instead.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prefero.options import ConfigError

# model_type -> why prefero will not run it. Checked before any weight is read.
REFUSED = {
    "bloom": "its ALiBi position bias is computed from a 2-D padding mask, not from position ids, "
             "so packed and prefix-shared rows would get wrong biases (and this transformers has no SDPA "
             "for it); no prefero layout can be exact for it",
}

# layer types prefero can build a mask for
_KNOWN_LAYER_TYPES = {"full_attention", "sliding_attention"}


def _model_class(config):
    """The transformers CausalLM class `from_pretrained` would build (None when remote code)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        return None


def choose_attention(choice: str, config, cuda: bool | None = None) -> tuple[str, str]:
    """(transformers attn_implementation, why) for `choice` in auto|flex|sdpa|eager.

    A family that cannot run prefero's layout, or an implementation the family lacks,
    is a one-line `ConfigError` naming what to set instead.
    """
    model_type = getattr(config, "model_type", "?")
    if model_type in REFUSED:
        raise ConfigError(f"model: {model_type} models are not supported: {REFUSED[model_type]}")
    layer_types = set(getattr(config, "layer_types", None) or [])
    if layer_types - _KNOWN_LAYER_TYPES:
        raise ConfigError(f"model: {model_type} has attention layers of type "
                          f"{', '.join(sorted(layer_types - _KNOWN_LAYER_TYPES))}, which prefero's packed "
                          "layout does not reproduce; it is refused rather than trained on wrong numbers")
    cls = _model_class(config)
    supports = {
        "flex_attention": bool(getattr(cls, "_supports_flex_attn", False)),
        "sdpa": bool(getattr(cls, "_supports_sdpa", False)),
        "eager": True,
    }
    if cuda is None:
        cuda = torch.cuda.is_available()
    if choice == "auto":
        if cls is None:  # remote code: its own default, masks still built per implementation
            return "sdpa", "remote-code model: sdpa"
        if cuda and supports["flex_attention"]:
            return "flex_attention", f"{model_type} supports FlexAttention on CUDA (block-sparse prefix sharing)"
        if supports["sdpa"]:
            why = "no CUDA" if not cuda else f"{model_type} has no FlexAttention in transformers"
            return "sdpa", f"sdpa ({why})"
        return "eager", f"eager ({model_type} has no SDPA{'' if not cuda else ' or FlexAttention'} in transformers)"
    impl = {"flex": "flex_attention", "sdpa": "sdpa", "eager": "eager"}[choice]
    if cls is not None and not supports[impl]:
        have = [k for k in ("sdpa", "eager") if supports[k]]
        raise ConfigError(f"attention: {choice} is not available for {model_type} in this transformers; "
                          f"set attention: auto (or {' or '.join(have)})")
    if impl == "flex_attention" and not cuda:
        raise ConfigError("attention: flex needs a CUDA GPU (FlexAttention has no CPU backward); "
                          "set attention: auto or sdpa")
    return impl, f"{choice} (set in the config)"


def layer_windows(config) -> dict[str, int | None]:
    """{layer type: sliding window or None} for the model's attention layers. A family
    without `layer_types` has one type, windowed when `config.sliding_window` is set
    (Mistral, Phi-3): its forward applies that window to every layer."""
    window = getattr(config, "sliding_window", None) or None
    layer_types = set(getattr(config, "layer_types", None) or [])
    if not layer_types:
        return {"": window}
    return {t: (window if t == "sliding_attention" else None) for t in sorted(layer_types)}


def packed_attention_mask(batch, config, implementation: str, dtype: torch.dtype):
    """The mask for `batch` (a PackedBatch) in the form `implementation` reads: a tensor,
    or {layer type: mask} for families that mix full and sliding layers."""
    windows = layer_windows(config)
    if not any(windows.values()):  # one mask for every layer
        windows = {"": None}
    masks = {}
    for layer_type, window in windows.items():
        if implementation == "flex_attention":
            masks[layer_type] = batch.block_mask(window)
            continue
        allowed = batch.dense_mask(window)
        if implementation == "eager":
            # eager adds the mask to the scores: 0 where allowed, the dtype's minimum elsewhere
            additive = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
            masks[layer_type] = additive.masked_fill_(~allowed, torch.finfo(dtype).min)
        else:
            masks[layer_type] = allowed
    if "" in masks:
        return masks[""]
    return masks


def model_dtype(model) -> torch.dtype:
    """The dtype attention scores are computed in (autocast's when it is on)."""
    p = next(model.parameters())
    device_type = p.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return p.dtype if p.is_floating_point() else torch.float32


def disable_dropout(model) -> int:
    """Set every dropout in `model` to 0; returns how many were non-zero.

    Preference losses compare the policy with a reference computed without dropout, so
    at step 1 (policy == reference) the DPO loss must be exactly ln 2; with dropout on it
    is not, and the implicit rewards are noise. GPT-2, OPT, GPTBigCode and others ship
    with dropout 0.1. Attention dropout lives in plain float attributes as well as in
    `nn.Dropout` modules, so both are cleared.
    """
    n = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            n += module.p > 0
            module.p = 0.0
        for name in ("attention_dropout", "attn_dropout", "dropout", "attn_pdrop", "resid_pdrop"):
            value = getattr(module, name, None)
            if isinstance(value, float) and not isinstance(value, bool):
                n += value > 0
                setattr(module, name, 0.0)
    config = getattr(model, "config", None)
    for name in ("attention_dropout", "attn_pdrop", "resid_pdrop", "embd_pdrop", "hidden_dropout",
                 "attention_probs_dropout_prob", "hidden_dropout_prob", "dropout", "activation_dropout"):
        if isinstance(getattr(config, name, None), float):
            setattr(config, name, 0.0)
    return n


def output_logit_transform(config) -> tuple[float | None, float | None]:
    """(soft-cap, multiplier) the family's CausalLM applies to its logits: Gemma-2's
    `final_logit_softcapping`, Cohere's `logit_scale`, Granite's 1/`logits_scaling`."""
    softcap = getattr(config, "final_logit_softcapping", None) or None
    scale = getattr(config, "logit_scale", None)
    scaling = getattr(config, "logits_scaling", None)
    if scaling not in (None, 1, 1.0):
        scale = (scale or 1.0) / scaling
    return softcap, (scale if scale not in (None, 1, 1.0) else None)


def unwrap_causal_lm(model: nn.Module) -> nn.Module:
    """The transformers CausalLM under DDP/FSDP/PEFT wrappers."""
    m = model
    while True:
        if hasattr(m, "module") and isinstance(m.module, nn.Module):  # DDP
            m = m.module
        elif hasattr(m, "get_base_model") and callable(m.get_base_model):  # PEFT
            m = m.get_base_model()
        else:
            return m



def row_tokens(model) -> int | None:
    """Tokens per packed row for `model`'s attention (`batching.pack_groups`): None (the
    whole batch in one row) for FlexAttention, whose block mask skips the blocks other
    groups would cost. A dense mask (SDPA, eager) costs each row its length squared: one
    row of a whole batch's T tokens spends ~T/(6.5·hidden) of the layers' linear work on
    attention (T = 1,000 at hidden 128: more than the layers themselves). Rows of half the
    hidden size keep that under 8%, for a few pad tokens per row."""
    config = unwrap_causal_lm(model).config
    hidden = getattr(config, "hidden_size", None)
    if getattr(config, "_attn_implementation", None) == "flex_attention" or not hidden:
        return None
    return max(1, hidden // 2)


def completion_hidden(model, batch) -> Tensor:
    """The backbone's last hidden states over a packed batch, its rows end to end
    ([R·W, H]), with the mask its attention implementation reads."""
    lm = unwrap_causal_lm(model)
    config = lm.config
    mask = packed_attention_mask(batch, config, getattr(config, "_attn_implementation", "sdpa") or "sdpa",
                                 model_dtype(lm))
    backbone = getattr(lm, lm.base_model_prefix)
    return backbone(input_ids=batch.input_ids, position_ids=batch.position_ids,
                    attention_mask=mask, use_cache=False).last_hidden_state.flatten(0, 1)
