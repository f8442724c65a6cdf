"""Completion log-probs straight from the last hidden states (README.md#how-it-is-fast-and-lean).

The [tokens × vocab] logits are the largest tensor of preference training. Here they are
never held whole: only the hidden states at positions that predict a completion token
are gathered, and their log-probs are computed chunk by chunk against the output
embedding. The backward pass recomputes each chunk's logits instead of storing them, so
peak extra memory is one [chunk × vocab] block whatever the sequence length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prefero.attention import completion_hidden, output_logit_transform, unwrap_causal_lm
from prefero.batching import PackedBatch


class _ChunkedTokenLogProbs(torch.autograd.Function):
    """log softmax(h W^T)[target] per row, chunked, recomputing logits in backward.

    Matmuls run in `hidden`'s dtype (bf16 under autocast), softmax and sums in fp32.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int) -> Tensor:
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        w = weight.to(hidden.dtype)
        for s in range(0, hidden.shape[0], chunk_size):
            logits = (hidden[s : s + chunk_size] @ w.T).float()
            tgt = targets[s : s + chunk_size, None]
            out[s : s + chunk_size] = logits.gather(1, tgt).squeeze(1) - logits.logsumexp(-1)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        hidden, weight, targets = ctx.saved_tensors
        w = weight.to(hidden.dtype)
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        c = ctx.chunk_size
        for s in range(0, hidden.shape[0], c):
            h = hidden[s : s + c]
            logits = (h @ w.T).float()
            # d/dlogits of log p[target] = onehot(target) − softmax(logits); softmax in place
            g = logits.sub_(logits.logsumexp(-1, keepdim=True)).exp_().mul_(-grad_out[s : s + c, None])
            g.scatter_add_(1, targets[s : s + c, None], grad_out[s : s + c, None])
            g = g.to(hidden.dtype)
            if grad_h is not None:
                grad_h[s : s + c] = g @ w
            if grad_w is not None and h.dtype == grad_w.dtype:
                grad_w.addmm_(g.T, h)  # in place: no [vocab × hidden] temporary
            elif grad_w is not None:  # bf16 matmul, fp32 sum
                grad_w.add_(g.T @ h)
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None


CHUNK_ELEMENTS = 1 << 25  # logits per chunk when chunk_size is 0 (auto): 128 MiB in fp32


def auto_chunk_size(vocab_size: int) -> int:
    return max(16, CHUNK_ELEMENTS // vocab_size)


def token_logprobs(hidden: Tensor, head: nn.Module, targets: Tensor, chunk_size: int = 0,
                   softcap: float | None = None, logit_scale: float | None = None) -> Tensor:
    """log π(target | hidden) for each row of `hidden` ([N, H]) without full logits.

    `chunk_size` rows at a time; 0 picks it from the vocabulary size so that one chunk of
    logits is about CHUNK_ELEMENTS values (1024 rows at a 32k vocabulary, 220 at 152k).

    A plain bias-free Linear head takes the fused chunked path; any other head (bias,
    logit soft-capping, scaling) runs chunk by chunk under activation checkpointing,
    which has the same memory profile at some extra cost.
    """
    device_type = hidden.device.type
    if chunk_size <= 0:
        chunk_size = auto_chunk_size(head.weight.shape[0])
    plain = isinstance(head, nn.Linear) and head.bias is None and not softcap and not logit_scale
    if plain:
        if torch.is_autocast_enabled(device_type):
            # what autocast would do to the head's matmul, done explicitly: the output
            # embedding is a large share of a small model's FLOPs
            hidden = hidden.to(torch.get_autocast_dtype(device_type))
            with torch.autocast(device_type, enabled=False):
                return _ChunkedTokenLogProbs.apply(hidden, head.weight, targets, chunk_size)
        return _ChunkedTokenLogProbs.apply(hidden, head.weight, targets, chunk_size)
    parts = []
    for s in range(0, hidden.shape[0], chunk_size):
        parts.append(torch.utils.checkpoint.checkpoint(
            _head_logprobs, hidden[s : s + chunk_size], targets[s : s + chunk_size], head,
            softcap, logit_scale, use_reentrant=False,
        ))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def _head_logprobs(h, tgt, head, softcap, logit_scale):
    logits = head(h).float()
    if logit_scale:
        logits = logits * logit_scale
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.gather(1, tgt[:, None]).squeeze(1) - logits.logsumexp(-1)


class CompletionLogProbs(nn.Module):
    """Wraps a causal LM; forward(batch) gives the summed log-prob of each completion.

    It is a Module of its own so that DDP/FSDP wrap it and see every parameter used.
    """

    def __init__(self, model: nn.Module, chunk_size: int = 0):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    def forward(self, batch: PackedBatch) -> tuple[Tensor, Tensor]:
        """Returns (sums [S] float32, token log-probs [N] float32)."""

        lm = unwrap_causal_lm(self.model)
        hidden = completion_hidden(self.model, batch)
        softcap, scale = output_logit_transform(lm.config)
        logps = token_logprobs(hidden[batch.source_index], lm.get_output_embeddings(), batch.targets,
                               self.chunk_size, softcap=softcap, logit_scale=scale)
        sums = torch.zeros(batch.num_sequences, dtype=torch.float32, device=logps.device)
        sums = sums.index_add(0, batch.sequence_index, logps)
        return sums, logps


def padded_completion_logps(model: nn.Module, prompts, completions, pad_id: int = 0) -> Tensor:
    """The plain computation: right-padded [prompt, completion] rows, full logits, sum over
    completion tokens. The reference every optimised layout is tested against."""
    rows = [list(p) + list(c) for p, c in zip(prompts, completions)]
    width = max(len(r) for r in rows)
    device = next(model.parameters()).device
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    attn = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    labels_mask = torch.zeros((len(rows), width), dtype=torch.bool, device=device)
    for i, (p, r) in enumerate(zip(prompts, rows)):
        ids[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
        labels_mask[i, len(p) : len(r)] = True
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits.float()
    logp = F.log_softmax(logits[:, :-1], dim=-1).gather(2, ids[:, 1:, None]).squeeze(2)
    return (logp * labels_mask[:, 1:]).sum(-1)
