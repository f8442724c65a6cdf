"""Batch layouts for completion log-probs: packed, padding-free, prefix-shared.

A *group* is one prompt with the completions scored under it: a preference pair is
(prompt, [chosen, rejected]), an SFT example (prompt, [completion]). Groups are laid out
back to back in a row with no padding between them. With prefix sharing the prompt
appears once:

    [prompt | chosen | rejected]   positions 0..P-1 | P..P+C-1 | P..P+R-1

and each completion attends to the prompt and to itself only, so rejected never sees
chosen. Without prefix sharing every completion gets its own copy of the prompt. Either
way the log-prob of each completion equals what the plain padded computation gives.

A batch is one row, or several rows of at most `row_tokens` tokens each (a group is never
split; rows are right-padded to the longest). One row suits a block-sparse mask, which
skips the other groups' keys; a dense mask costs every row its length squared, so dense
attention runs many short rows instead (`prefero.attention.row_tokens`).

Each completion token y_t is predicted by the hidden state one step before it; the first
completion token of every branch is predicted by the *last prompt token*, which is why
the layout records, per completion token, the index of the hidden state that predicts it
(in the rows laid end to end: row r's token i is index r * width + i).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor


def left_padded_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows, counted from each row's first real token (0 on the
    padding): what `generate` derives from the mask, so a row computes what it would alone."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


@dataclass
class PackedBatch:
    input_ids: Tensor  # [R, W]: R rows of width W
    position_ids: Tensor  # [R, W]
    group_ids: Tensor  # [R * W] which group a token belongs to (-1: padding)
    branch_ids: Tensor  # [R * W] 0 = prompt, k = k-th completion of its group
    source_index: Tensor  # [N] index (rows end to end) of the hidden state predicting each completion token
    targets: Tensor  # [N] the completion token ids
    sequence_index: Tensor  # [N] which output sequence each completion token belongs to
    lengths: Tensor  # [S] completion tokens per output sequence
    num_tokens: int  # tokens of the groups (padding not counted)
    group_starts: tuple = ()  # index (rows end to end) of each group's first token

    @property
    def num_sequences(self) -> int:
        return int(self.lengths.numel())

    def to(self, device) -> "PackedBatch":
        return PackedBatch(
            **{k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        )

    def dense_mask(self, window: int | None = None) -> Tensor:
        """[R, 1, W, W] bool mask (True = attend): causal, within a group, and a completion
        sees only the prompt and itself. With `window`, a token sees only keys fewer than
        `window` *positions* back (a sliding-window layer). Padding sees the padding before
        it and itself (no row of the mask is empty). `prefero.attention` turns it into the
        form each attention implementation reads."""
        rows, width = self.input_ids.shape
        g, b = self.group_ids.view(rows, width), self.branch_ids.view(rows, width)
        causal = torch.ones(width, width, dtype=torch.bool, device=g.device).tril()
        same_group = g[:, :, None] == g[:, None, :]
        visible_branch = (b[:, None, :] == 0) | (b[:, None, :] == b[:, :, None])
        mask = causal & same_group & visible_branch
        if window:
            pos = self.position_ids
            mask &= (pos[:, :, None] - pos[:, None, :]) < window
        return mask[:, None]

    def block_mask(self, window: int | None = None):
        """The same rule as `dense_mask` as a FlexAttention BlockMask: fully masked blocks
        (other groups, chosen seen from rejected) are skipped, not computed."""
        from torch.nn.attention.flex_attention import create_block_mask

        rows, width = self.input_ids.shape
        g, b = self.group_ids.view(rows, width), self.branch_ids.view(rows, width)
        pos = self.position_ids

        def prefix_shared(row, head, q, kv):
            return (kv <= q) & (g[row, q] == g[row, kv]) & ((b[row, kv] == 0) | (b[row, kv] == b[row, q]))

        def windowed(row, head, q, kv):
            return prefix_shared(row, head, q, kv) & (pos[row, q] - pos[row, kv] < window)

        return create_block_mask(windowed if window else prefix_shared, B=rows, H=None, Q_LEN=width,
                                 KV_LEN=width, device=g.device)


def pack_groups(groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
                row_tokens: int | None = None) -> PackedBatch:
    """Lay out (prompt_ids, [completion_ids, ...]) groups, prefix-shared: in one row, or in
    rows of at most `row_tokens` tokens (`rows_of`; a longer group gets a row of its own).

    Output sequences are numbered group by group, completion by completion, whatever row
    a group lands in.
    """
    sizes = [len(p) + sum(len(c) for c in cs) for p, cs in groups]
    if any(len(p) == 0 for p, _ in groups):
        raise ValueError("every group needs at least one prompt token (e.g. BOS)")
    rows = rows_of(sizes, row_tokens)
    width = max((sum(sizes[g] for g in row) for row in rows), default=0)
    starts = [0] * len(groups)
    for r, row in enumerate(rows):
        at = r * width
        for g in row:
            starts[g], at = at, at + sizes[g]
    total = len(rows) * width
    ids, pos, gid, bid = [0] * total, [0] * total, [-1] * total, [0] * total
    src, tgt, seq, lengths = [], [], [], []

    def put(at: int, tokens, first_pos: int, g: int, k: int) -> None:
        ids[at:at + len(tokens)] = tokens
        pos[at:at + len(tokens)] = range(first_pos, first_pos + len(tokens))
        gid[at:at + len(tokens)] = [g] * len(tokens)
        bid[at:at + len(tokens)] = [k] * len(tokens)

    for g, (prompt, completions) in enumerate(groups):
        put(starts[g], prompt, 0, g, 0)
        last_prompt = starts[g] + len(prompt) - 1
        offset = last_prompt + 1
        for k, completion in enumerate(completions, start=1):
            put(offset, completion, len(prompt), g, k)
            # token t is predicted by t-1; the first by the last prompt token
            src += [last_prompt] + list(range(offset, offset + len(completion) - 1))
            tgt += completion
            seq += [len(lengths)] * len(completion)
            lengths.append(len(completion))
            offset += len(completion)
    long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return PackedBatch(
        input_ids=long(ids).view(len(rows), width),
        position_ids=long(pos).view(len(rows), width),
        group_ids=long(gid),
        branch_ids=long(bid),
        source_index=long(src),
        targets=long(tgt),
        sequence_index=long(seq),
        lengths=long(lengths),
        num_tokens=sum(sizes),
        group_starts=tuple(starts),
    )


def rows_of(sizes: Sequence[int], row_tokens: int | None) -> list[list[int]]:
    """Groups (by index) per row: all in one row when `row_tokens` is None, else first fit
    by decreasing size into rows of at most max(row_tokens, largest group) tokens, which
    leaves less padding than filling rows in order."""
    if not sizes:
        return [[]]
    if row_tokens is None:
        return [list(range(len(sizes)))]
    cap = max(row_tokens, max(sizes))
    rows: list[list[int]] = []
    room: list[int] = []
    for g in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = next((r for r, free in enumerate(room) if free >= sizes[g]), None)
        if r is None:
            rows.append([])
            room.append(cap)
            r = len(rows) - 1
        rows[r].append(g)
        room[r] -= sizes[g]
    return [sorted(row) for row in rows]


def pair_groups(pairs, prefix_sharing: bool = True) -> list:
    """Groups for preference pairs; sequence 2i is pair i's chosen, 2i+1 its rejected."""
    if prefix_sharing:
        return [(p.prompt_ids, [p.chosen_ids, p.rejected_ids]) for p in pairs]
    out = []
    for p in pairs:
        out += [(p.prompt_ids, [p.chosen_ids]), (p.prompt_ids, [p.rejected_ids])]
    return out
