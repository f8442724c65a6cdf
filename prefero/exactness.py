"""The load-time check for a model family outside the tested matrix (docs/models.md): the
engine's packed numbers against the plain padded forward, and a refusal when they differ."""

from __future__ import annotations

import torch
from torch import Tensor

from prefero.attention import row_tokens, unwrap_causal_lm
from prefero.batching import pack_groups
from prefero.logprobs import CompletionLogProbs, padded_completion_logps
from prefero.options import ConfigError
from prefero.tiny import TINY_FAMILIES


def check_untested_family(model, pad_id: int = 0) -> str | None:
    """For a family outside the tested matrix (docs/models.md): score two short prefix-shared
    groups with the engine and with the plain padded forward, and refuse the model when
    they differ. Tolerance, relative: 1e-4 in fp32 (a right layout measures ~1e-7; a wrong
    mask or logit transform 1e-3 and up), 3e-2 in 16-bit weights, where rounding alone
    reaches 1e-2 and only gross faults show. Inputs are shorter than any sliding window, so
    a window rule is not probed. Returns a note for the run's first line, or None for a
    tested family."""
    lm = unwrap_causal_lm(model)
    model_type = getattr(lm.config, "model_type", "?")
    if model_type in TINY_FAMILIES:
        return None
    vocab = lm.get_output_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()  # noqa: E731
    groups = [(ids(9), [ids(7), ids(5)]), (ids(4), [ids(8), ids(3)])]
    device = next(lm.parameters()).device
    was_training = lm.training
    lm.eval()
    try:
        with torch.no_grad():
            packed, _ = CompletionLogProbs(lm)(pack_groups(groups, row_tokens(lm)).to(device))
            plain = padded_completion_logps(lm, [p for p, cs in groups for _ in cs],
                                            [c for _, cs in groups for c in cs], pad_id=pad_id)
    finally:
        lm.train(was_training)
    err = refuse_if_inexact(packed, plain, lm, "log-probs")
    return f"{model_type} is outside the tested families; packed == plain checked at load ({err:.0e})"


def refuse_if_inexact(packed: Tensor, plain: Tensor, model, what: str) -> float:
    """The relative error of `packed` against `plain` for an untested family's load-time
    check; a `ConfigError` when it passes the tolerance of the model's dtype (see
    `check_untested_family`)."""
    err = ((packed - plain).abs().max() / plain.abs().max().clamp(min=1e-12)).item()
    tolerance = 1e-4 if next(model.parameters()).dtype == torch.float32 else 3e-2
    if not err <= tolerance:
        model_type = getattr(model.config, "model_type", "?")
        raise ConfigError(f"model: {model_type} is not in prefero's tested families, and its packed {what} differ "
                          f"from its plain forward by {err:.1e} (relative) on a check at load; it is refused rather "
                          "than trained on wrong numbers (docs/models.md)")
    return err
