"""Reference log-probs, computed once before training so no reference model is held
while the policy trains (SPEC §6)."""

from __future__ import annotations

import torch
from torch import Tensor

from prefero.batching import pack_groups
from prefero.logprobs import CompletionLogProbs


@torch.no_grad()
def precompute_logps(model, groups: list, batch_groups: int, chunk_size: int, device) -> Tensor:
    """Summed log-prob of every completion of every group under `model`, in order.

    Returns a float32 tensor of shape [len(groups), completions per group].
    """
    engine = CompletionLogProbs(model, chunk_size).to(device).eval()
    width = len(groups[0][1]) if groups else 0
    out = torch.empty(len(groups), width, dtype=torch.float32)
    for s in range(0, len(groups), batch_groups):
        chunk = groups[s : s + batch_groups]
        sums, _ = engine(pack_groups(chunk).to(device))
        out[s : s + len(chunk)] = sums.view(len(chunk), width).float().cpu()
    return out
