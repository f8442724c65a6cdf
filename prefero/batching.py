"""Batch layouts for completion log-probs: packed, padding-free, prefix-shared.

A *group* is one prompt with the completions scored under it: a preference pair is
(prompt, [chosen, rejected]), an SFT example (prompt, [completion]). Groups are laid out
back to back in one row with no padding. With prefix sharing the prompt appears once:

    [prompt | chosen | rejected]   positions 0..P-1 | P..P+C-1 | P..P+R-1

and each completion attends to the prompt and to itself only, so rejected never sees
chosen. Without prefix sharing every completion gets its own copy of the prompt. Either
way the log-prob of each completion equals what the plain padded computation gives.

Each completion token y_t is predicted by the hidden state one step before it; the first
completion token of every branch is predicted by the *last prompt token*, which is why
the layout records, per completion token, the index of the hidden state that predicts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor


@dataclass
class PackedBatch:
    input_ids: Tensor  # [1, T]
    position_ids: Tensor  # [1, T]
    group_ids: Tensor  # [T] which group a token belongs to
    branch_ids: Tensor  # [T] 0 = prompt, k = k-th completion of its group
    source_index: Tensor  # [N] hidden-state index predicting each completion token
    targets: Tensor  # [N] the completion token ids
    sequence_index: Tensor  # [N] which output sequence each completion token belongs to
    lengths: Tensor  # [S] completion tokens per output sequence
    num_tokens: int  # tokens actually run through the model

    @property
    def num_sequences(self) -> int:
        return int(self.lengths.numel())

    def to(self, device) -> "PackedBatch":
        return PackedBatch(
            **{k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        )

    def dense_mask(self, window: int | None = None) -> Tensor:
        """[1, 1, T, T] bool mask (True = attend): causal, within a group, and a completion
        sees only the prompt and itself. With `window`, a token sees only keys fewer than
        `window` *positions* back (a sliding-window layer). `prefero.attention` turns it
        into the form each attention implementation reads."""
        g, b = self.group_ids, self.branch_ids
        t = g.numel()
        causal = torch.ones(t, t, dtype=torch.bool, device=g.device).tril()
        same_group = g[:, None] == g[None, :]
        visible_branch = (b[None, :] == 0) | (b[None, :] == b[:, None])
        mask = causal & same_group & visible_branch
        if window:
            pos = self.position_ids[0]
            mask &= (pos[:, None] - pos[None, :]) < window
        return mask[None, None]

    def block_mask(self, window: int | None = None):
        """The same rule as `dense_mask` as a FlexAttention BlockMask: fully masked blocks
        (other groups, chosen seen from rejected) are skipped, not computed."""
        from torch.nn.attention.flex_attention import create_block_mask

        g, b, pos = self.group_ids, self.branch_ids, self.position_ids[0]

        def prefix_shared(batch, head, q, kv):
            return (kv <= q) & (g[q] == g[kv]) & ((b[kv] == 0) | (b[kv] == b[q]))

        def windowed(batch, head, q, kv):
            return prefix_shared(batch, head, q, kv) & (pos[q] - pos[kv] < window)

        t = self.num_tokens
        return create_block_mask(windowed if window else prefix_shared, B=None, H=None, Q_LEN=t, KV_LEN=t,
                                 device=g.device)


def pack_groups(groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]]) -> PackedBatch:
    """Lay out (prompt_ids, [completion_ids, ...]) groups, prefix-shared, in one row.

    Output sequences are numbered group by group, completion by completion.
    """
    ids, pos, gid, bid = [], [], [], []
    src, tgt, seq, lengths = [], [], [], []
    for g, (prompt, completions) in enumerate(groups):
        if len(prompt) == 0:
            raise ValueError("every group needs at least one prompt token (e.g. BOS)")
        start = len(ids)
        last_prompt = start + len(prompt) - 1
        ids += prompt
        pos += range(len(prompt))
        gid += [g] * len(prompt)
        bid += [0] * len(prompt)
        for k, completion in enumerate(completions, start=1):
            offset = len(ids)
            ids += completion
            pos += range(len(prompt), len(prompt) + len(completion))
            gid += [g] * len(completion)
            bid += [k] * len(completion)
            # token t is predicted by t-1; the first by the last prompt token
            src += [last_prompt] + list(range(offset, offset + len(completion) - 1))
            tgt += completion
            seq += [len(lengths)] * len(completion)
            lengths.append(len(completion))
    long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return PackedBatch(
        input_ids=long(ids)[None],
        position_ids=long(pos)[None],
        group_ids=long(gid),
        branch_ids=long(bid),
        source_index=long(src),
        targets=long(tgt),
        sequence_index=long(seq),
        lengths=long(lengths),
        num_tokens=len(ids),
    )


def pair_groups(pairs, prefix_sharing: bool = True) -> list:
    """Groups for preference pairs; sequence 2i is pair i's chosen, 2i+1 its rejected."""
    if prefix_sharing:
        return [(p.prompt_ids, [p.chosen_ids, p.rejected_ids]) for p in pairs]
    out = []
    for p in pairs:
        out += [(p.prompt_ids, [p.chosen_ids]), (p.prompt_ids, [p.rejected_ids])]
    return out
