"""A local causal LM as judge: rate 1–10 (pointwise) or pick A or B (pairwise).

The answer is read from the model's next-token probabilities, not from generated text: the
judge prompt (through the model's chat template when it has one) is run once and the
probabilities of the allowed answers are taken from its last position. Restricting the
softmax to the allowed answers is the model's distribution conditioned on answering
validly; the rating is its expectation, Σ r·P(r), as G-Eval scores (Liu et al., 2023,
"G-Eval: NLG Evaluation using GPT-4 with Better Human Alignment").

Position bias: LLM judges prefer the response shown first (Zheng et al., 2023, "Judging
LLM-as-a-Judge with MT-Bench and Chatbot Arena", §3.3). Pairwise, every pair is asked in
both orders and P(a ≻ b) = ½[P(A | a, b) + P(B | b, a)], so a judge that always says "A"
gives ½, not a preference.

Answers of several tokens. A tokenizer may split "10" into "1", "0", making "1" a prefix
of "10". The answers then form a trie over token ids, and P(answer) is the product of its
tokens' probabilities along the trie: restricted to the tokens that continue some answer
where no answer ends, and unrestricted where one may end, the rest of the mass (everything
that does not continue) counting as stopping there. So P("10") = P(1)·P(0 | 1) and
P("1") = P(1)·(1 − P(0 | 1)), and the answers' probabilities still sum to 1. With
single-token answers (A/B; 1–9) this is the plain restricted softmax.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import torch

from prefero.batching import left_padded_positions
from prefero.data.limits import context_limit
from prefero.judges.base import Item, ordered, unorder
from prefero.judges.prompts import (
    CHOICES,
    RATINGS,
    expected_rating,
    judge_messages,
    pairwise_prompt,
    pointwise_prompt,
)
from prefero.judges.reward_model import DTYPES, resolve_device
from prefero.model import load_causal_lm, load_tokenizer
from prefero.options import ConfigError

#: Appended to the judge prompt of a model without a chat template, which then answers
#: after it (" 7", " A": the labels carry the leading space such a model writes).
PLAIN_ANSWER_CUE = "\nAnswer:"

Labels = list  # list[tuple[int, ...]]: each answer's token ids


# --------------------------------------------------------------------------- answer probabilities


def children(labels: Labels, prefix: tuple) -> list[int]:
    """The tokens that continue `prefix` towards some answer."""
    n = len(prefix)
    return sorted({ids[n] for ids in labels if len(ids) > n and ids[:n] == prefix})


def needed_prefixes(labels: Labels) -> list[tuple]:
    """The prefixes whose next-token distribution the answers' probabilities need: the
    empty one (the first answer token) and every proper prefix of an answer."""
    return sorted({ids[:k] for ids in labels for k in range(len(ids))}, key=lambda p: (len(p), p))


def label_probabilities(next_logprobs: dict, labels: Labels) -> list[float]:
    """P(answer) for each answer in `labels` (see the module docstring).

    next_logprobs[prefix][token]: log P(token | judge prompt + prefix) under the full
    vocabulary, for every prefix of `needed_prefixes(labels)` and token of
    `children(labels, prefix)`.
    """
    ends = set(labels)
    out = []
    for ids in labels:
        p = 1.0
        for k, token in enumerate(ids):
            prefix = ids[:k]
            lp = next_logprobs[prefix]
            if prefix in ends:  # an answer may stop here: the full distribution decides
                p *= math.exp(lp[token])
            else:  # restricted to the tokens that continue an answer
                p *= math.exp(lp[token] - _logsumexp([lp[c] for c in children(labels, prefix)]))
        longer = children(labels, ids)
        if longer:  # it is also the prefix of a longer answer: P(stop here)
            p *= max(0.0, 1.0 - sum(math.exp(next_logprobs[ids][c]) for c in longer))
        out.append(p)
    return out


def _logsumexp(values: list[float]) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


@torch.no_grad()
def last_logprobs(model, rows: Sequence[Sequence[int]], pad_id: int, keep: int) -> torch.Tensor:
    """log-softmax of the next-token logits at the last `keep` positions of each row
    ([B, keep, V] float32, CPU): rows left-padded so their ends align, positions counted
    from each row's first real token, so every row computes what it would alone."""
    device = next(model.parameters()).device
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
        attn[i, width - len(r):] = 1
    position_ids = left_padded_positions(attn)
    inputs = dict(input_ids=ids.to(device), attention_mask=attn.to(device),
                  position_ids=position_ids.to(device), use_cache=False)
    try:
        logits = model(**inputs, logits_to_keep=keep).logits
    except TypeError:  # remote code without logits_to_keep: full logits, then the slice
        logits = model(**inputs).logits
    return torch.log_softmax(logits[:, -keep:].float(), dim=-1).cpu()


# --------------------------------------------------------------------------- the judge


class LLMJudge:
    """score: the expected rating 1–10; compare: P(i ≻ j) from both orders."""

    def __init__(self, cfg, model=None, tokenizer=None):
        self.cfg = cfg
        self.tokenizer = tokenizer or load_tokenizer(cfg.model, cfg.trust_remote_code, key="judge.model")
        if model is None:
            model = load_causal_lm(cfg.model, cfg.trust_remote_code, DTYPES[cfg.dtype], attention="inference",
                                   key="judge.model")
            model = model.to(resolve_device(cfg.device))
        self.model = model.eval()
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))
        # the one rule every stage uses (prefero.data.limits): GPT-2-like configs and the tokenizer count too
        limit = context_limit(self.model.config, self.tokenizer)
        self.max_tokens = limit.tokens if limit is not None else None
        self.rating_labels = self.label_ids(RATINGS, pointwise_prompt(cfg.pointwise_template, "x", "y"))
        self.choice_labels = self.label_ids(CHOICES, pairwise_prompt(cfg.pairwise_template, "x", "y", "z"))
        self.batch_size = 8  # sequences per forward; the run sets it from its batch_size
        self.stats: Counter = Counter()

    # ---------------------------------------------------------------- prompts

    def render_text(self, text: str) -> str:
        """The judge prompt as the model reads it, up to where its answer starts."""
        if not self.chat:
            return text + PLAIN_ANSWER_CUE
        try:
            return self.tokenizer.apply_chat_template(
                judge_messages(self.cfg.system_prompt, text), add_generation_prompt=True, tokenize=False)
        except Exception as e:  # jinja's TemplateError; templates raise_exception() on a system turn
            key = "judge.system_prompt" if self.cfg.system_prompt else "judge.model"
            raise ConfigError(f"{key}: the judge model's chat template failed: {' '.join(str(e).split())}") from None

    def encode(self, text: str) -> list[int]:
        # A chat template's text carries its own BOS; a plain prompt gets the tokenizer's.
        return self.tokenizer.encode(self.render_text(text), add_special_tokens=not self.chat)

    def label_ids(self, answers: list[str], example: str) -> Labels:
        """Each answer's token ids as the model would write them after the judge prompt:
        encode(prompt + answer) minus encode(prompt), so a leading space or a merge with
        the template's last characters comes out as the model sees it."""
        text = self.render_text(example)
        base = self.tokenizer.encode(text, add_special_tokens=not self.chat)
        out = []
        for answer in answers:
            spoken = answer if self.chat else " " + answer
            full = self.tokenizer.encode(text + spoken, add_special_tokens=not self.chat)
            if full[:len(base)] != base or len(full) == len(base):
                raise ConfigError(f"judge.model: its tokenizer merges the answer {answer!r} into the end of the "
                                  "judge prompt; end the template with a newline or punctuation")
            out.append(tuple(full[len(base):]))
        if len(set(out)) != len(out):
            raise ConfigError(f"judge.model: its tokenizer cannot tell the answers {answers} apart")
        return out

    # ---------------------------------------------------------------- probabilities

    def answer_probs(self, contexts: list[list[int]], labels: Labels, items: Sequence[Item]) -> list[list[float]]:
        """For each context (a judge prompt's ids), P(answer) for each answer of `labels`.
        `items[c]` is where context c came from, to name it if it does not fit the model."""
        for ids, item in zip(contexts, items):
            if self.max_tokens and len(ids) + max(map(len, labels)) > self.max_tokens:
                raise item.where.error(item.columns[1], f"the judge prompt has {len(ids)} tokens, more than the "
                                       f"judge model's context of {self.max_tokens}")
        queries = needed_prefixes(labels)
        # one sequence per longest needed prefix; the shorter ones are read off its positions
        chains = [q for q in queries if not any(len(o) > len(q) and o[:len(q)] == q for o in queries)]
        seqs = [(c, chain) for c in range(len(contexts)) for chain in chains]
        found: list[dict] = [{} for _ in contexts]
        order = sorted(range(len(seqs)), key=lambda s: len(contexts[seqs[s][0]]) + len(seqs[s][1]))
        for start in range(0, len(order), self.batch_size):
            chunk = [seqs[s] for s in order[start:start + self.batch_size]]
            keep = max(len(chain) for _, chain in chunk) + 1
            logps = last_logprobs(self.model, [contexts[c] + list(chain) for c, chain in chunk],
                                  self.tokenizer.pad_token_id, keep)
            for row, (c, chain) in enumerate(chunk):
                for q in queries:
                    if chain[:len(q)] == q:
                        position = keep - 1 - (len(chain) - len(q))
                        found[c][q] = {t: logps[row, position, t].item() for t in children(labels, q)}
        return [label_probabilities(f, labels) for f in found]

    def choice_probs(self, items: Sequence[Item], firsts: Sequence[int], seconds: Sequence[int]) -> list[list[float]]:
        """[P(A), P(B)] with completion firsts[n] shown as A and seconds[n] as B (one order)."""
        contexts = [self.encode(pairwise_prompt(self.cfg.pairwise_template, item.prompt,
                                                item.completions[a], item.completions[b]))
                    for item, a, b in zip(items, firsts, seconds)]
        return self.answer_probs(contexts, self.choice_labels, items)

    # ---------------------------------------------------------------- the interface

    def score(self, items: Sequence[Item]) -> list[list[float | None]]:
        flat = [(item, c) for item in items for c in item.completions]
        contexts = [self.encode(pointwise_prompt(self.cfg.pointwise_template, item.prompt, c)) for item, c in flat]
        ratings = iter(expected_rating(p) for p in self.answer_probs(contexts, self.rating_labels,
                                                                     [item for item, _ in flat]))
        return [[next(ratings) for _ in item.completions] for item in items]

    def compare(self, requests) -> list[float | None]:
        canonical, flipped = ordered(requests)
        if not canonical:
            return unorder([], flipped)
        items = [item for item, _, _ in canonical]
        firsts = [i for _, i, _ in canonical]
        seconds = [j for _, _, j in canonical]
        both = self.choice_probs(items + items, firsts + seconds, seconds + firsts)
        forward, backward = both[:len(items)], both[len(items):]
        # P(i ≻ j) = ½[P(A | i first) + P(B | j first)]
        values = [0.5 * (f[0] + b[1]) for f, b in zip(forward, backward)]
        return unorder(values, flipped)
