"""A reward model as judge: r(x, y) from any `AutoModelForSequenceClassification`.

A `prefero rm` output, or a hub reward model (`trust_remote_code` only when the user sets
it); a checkpoint without a trained head (a plain causal LM) is refused, not scored with a
random one. Completions are tokenized exactly as the training data reader tokenizes them
(`prefero.scoring.encode_group`: chat template for message lists, prompt and completion
apart, one EOS, the same truncation), so the score of a pair's chosen completion equals
the one `prefero rm` evaluation computes. Plain strings therefore skip the chat template, as
in training; `as_messages: true` sends them through it (a hub chat reward model expects
that). The forward is HF's own, right-padded, batched over all completions of several
prompts, shortest-first so rows in a batch are alike in length and padding costs little.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch

from prefero.data.formats import was_cut
from prefero.data.limits import check_max_length, context_limit, default_of
from prefero.data.tokenize import Encoder, truncate
from prefero.judges.base import Item, compare_by_scores
from prefero.model import load_tokenizer
from prefero.scoring import encode_group, load_reward_model, padded_scores


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class RewardModelJudge:
    """score: r(x, y) per completion; compare: σ(r_i − r_j) (Bradley–Terry)."""

    def __init__(self, cfg, model=None, tokenizer=None):
        self.cfg = cfg
        self.max_length, self.max_prompt_length = self.lengths(cfg)
        self.tokenizer = tokenizer or load_tokenizer(cfg.model, cfg.trust_remote_code, key="judge.model")
        if model is None:
            model = load_reward_model(cfg.model, self.tokenizer, cfg.trust_remote_code, DTYPES[cfg.dtype],
                                      key="judge.model", trained=True)
            model = model.to(resolve_device(cfg.device))
        self.model = model.eval()
        self.pad_id = self.model.config.pad_token_id
        # judge.max_length above the model's positions is a config error, as for `prefero rm`
        check_max_length(self.max_length, context_limit(self.model.config, self.tokenizer), "judge.max_length",
                         default_of(cfg, "max_length"), "judge.model")
        self.encoder = Encoder(self.tokenizer)
        self.batch_size = 8  # sequences per forward; the run sets it from its batch_size
        self.stats: Counter = Counter()

    def lengths(self, cfg) -> tuple[int, int]:
        """(max_length, max_prompt_length) inputs are truncated to."""
        return cfg.max_length, cfg.max_prompt_length

    def tokenize(self, item: Item) -> tuple[list[int], list[list[int]]]:
        """Prompt ids and completion ids of one item, truncated as `prefero rm` truncates
        (max_length, max_prompt_length), truncations counted."""
        fields = [item.column()] + [item.column(k) for k in range(len(item.completions))]
        prompt = item.prompt
        if self.cfg.as_messages and isinstance(prompt, str):
            # one message makes the whole group conversational: completions become assistant turns
            prompt = [{"role": "user", "content": prompt}]
        reasons = item.record.get("finish_reasons")
        cut = [was_cut(r) for r in reasons] if isinstance(reasons, list) else []
        prompt_ids, full = encode_group(self.encoder, prompt, item.completions, item.where, fields, cut)
        cut = truncate(prompt_ids, full, self.max_length, self.max_prompt_length, self.encoder.bos_id)
        self.stats["prompt_truncated"] += cut.prompt_truncated
        self.stats["completion_truncated"] += sum(len(c) < len(f) for c, f in zip(cut.completions, full))
        return cut.prompt_ids, cut.completions

    @torch.no_grad()
    def score(self, items: Sequence[Item]) -> list[list[float | None]]:
        rows, owners = [], []
        out = [[None] * len(item.completions) for item in items]
        for n, item in enumerate(items):
            prompt_ids, completions = self.tokenize(item)
            for k, ids in enumerate(completions):
                if not ids:  # the prompt took the whole budget: nothing of the completion is left
                    self.stats["completion_empty_after_truncation"] += 1
                    continue
                rows.append(prompt_ids + ids)
                owners.append((n, k))
        order = sorted(range(len(rows)), key=lambda r: len(rows[r]))
        for s in range(0, len(order), self.batch_size):
            chunk = order[s:s + self.batch_size]
            values = padded_scores(self.model, [rows[r] for r in chunk], self.pad_id)
            for r, v in zip(chunk, values.tolist()):
                n, k = owners[r]
                out[n][k] = v
        return out

    def compare(self, requests) -> list[float | None]:
        return compare_by_scores(self, requests)
