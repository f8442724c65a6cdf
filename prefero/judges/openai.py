"""An OpenAI-compatible endpoint as judge: the `llm` judge's prompts, sent over HTTP.

Which answer a reply gives follows one rule (`prefero.judges.prompts.answer_span`): the
rating or choice the reply starts with, after at most a short lead-in ("Rating:",
"Score:", "Answer:"; for choices "Answer:", "Choice:", "Response", "Option") and markdown
decoration. How sure the judge was of it, best first:
1. Token log-probabilities (`top_logprobs` candidates per generated token): the rule is
   applied to the reply's tokens, and at the token where the answer starts, the candidates
   that are answers give P(answer) by a softmax restricted to them, as the local `llm`
   judge computes it. Answers outside the top candidates count as probability 0 (with 20
   candidates that is mass the server itself rounds away).
2. Otherwise (no logprobs in the reply, or an answer token that also carries other text,
   such as ":7") the answer text, read by the same rule, counts as certain.
3. A reply the rule finds no answer in is unparseable: its score is left null and counted
   in the report, never guessed, and `prefero label` drops the row. A run whose share of
   unparseable answers (malformed replies included, after their retries) passes
   `judge.max_unparseable` fails, quoting one of them (`check_unparseable`).

"10" written as two tokens ("1", "0"): when the reply's answer starts with the token "1",
the next token's candidates give P("0" | "1"), and P("10") = P("1")·P("0" | "1"),
P("1") = P("1")·(1 − P("0" | "1")), as the `llm` judge's answer trie does. Known limit:
when the reply rates something else ("7") on such a tokenizer, the candidate "1" is read
as the rating 1, since nothing in the reply says how much of it would have gone on to "10".
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from typing import Sequence

from prefero.judges.base import Item, JudgeError, ordered, unorder
from prefero.judges.prompts import (
    CHOICES,
    RATINGS,
    answer_span,
    expected_rating,
    judge_messages,
    pairwise_prompt,
    parse_answer,
    pointwise_prompt,
)
from prefero.openai_client import OpenAIClient, OpenAIError

#: Tokens a reply may spend: enough for "Rating: 7" or "**B**", not for an essay.
MAX_ANSWER_TOKENS = 10


def probs_from_logprobs(tokens, answers: list[str]) -> list[float] | None:
    """P(answer) from a reply's per-token candidates (`TokenLogprob`s), or None when the
    reply's tokens start with no answer (the module docstring's rule) or its answer token
    also carries other text. Candidates that differ only in surrounding spaces (" 7", "7")
    are the same answer: their probabilities add."""
    tokens = list(tokens or [])
    text = "".join(t.token for t in tokens)
    span = answer_span(text, answers)
    if span is None:
        return None
    start, end = span
    offset = 0
    for k, tok in enumerate(tokens):
        if offset + len(tok.token) > start:
            break
        offset += len(tok.token)
    else:
        return None
    if text[offset:start].strip():  # the token mixes the lead-in with the answer: no alternatives to read
        return None
    piece = text[start:offset + len(tok.token)]
    two_token_ten = piece == "1" and text[start:end] == "10" and k + 1 < len(tokens) and tokens[k + 1].token == "0"
    if piece != text[start:end] and not two_token_ten:
        return None
    mass = _answer_mass(tok, answers)
    if answers == RATINGS and piece == "1" and k + 1 < len(tokens):
        # "1" may be the first half of "10": the next token's candidates split it
        following = dict(tokens[k + 1].top) or {tokens[k + 1].token: tokens[k + 1].logprob}
        zero = min(1.0, sum(math.exp(lp) for t, lp in following.items() if t == "0"))
        mass[9] += mass[0] * zero
        mass[0] *= 1.0 - zero
    total = sum(mass)
    return [m / total for m in mass] if total > 0 else None


def _answer_mass(tok, answers: list[str]) -> list[float]:
    candidates = dict(tok.top) or {tok.token: tok.logprob}
    return [sum(math.exp(lp) for t, lp in candidates.items() if t.strip() == a) for a in answers]


def probs_from_text(text: str, answers: list[str]) -> list[float] | None:
    """A one-hot distribution on the answer the text starts with, or None."""
    answer = parse_answer(text, answers)
    if answer is None:
        return None
    return [1.0 if a == answer else 0.0 for a in answers]


class OpenAIJudge:
    """score: the expected rating 1–10; compare: P(i ≻ j) from both orders (None: unparseable)."""

    def __init__(self, cfg, client: OpenAIClient | None = None):
        self.cfg = cfg
        self.client = client or OpenAIClient(cfg.base_url, cfg.model, cfg.api_key_env, cfg.max_concurrency,
                                             cfg.timeout, cfg.max_retries, url_key="judge.base_url")
        self.stats: Counter = Counter()
        self.unreadable_example: str | None = None  # one unreadable reply, quoted when the run fails
        self._lock = threading.Lock()  # `ask` runs in the client's threads

    def _count(self, key: str, example: str | None = None) -> None:
        with self._lock:
            self.stats[key] += 1
            if example is not None and self.unreadable_example is None:
                self.unreadable_example = example

    def ask(self, text: str, answers: list[str]) -> list[float] | None:
        """P(answer) for one judge prompt, from logprobs or the text; None if unreadable."""
        try:
            reply = self.client.chat(
                judge_messages(self.cfg.system_prompt, text), temperature=0.0, max_tokens=MAX_ANSWER_TOKENS,
                top_logprobs=self.cfg.top_logprobs or None, on_malformed="return")
        except OpenAIError as e:
            raise JudgeError(f"judge: {e}") from None
        self._count("answers")
        if len(self.client.endpoints) > 1:
            with self._lock:  # a fleet: how many servers were taken out of the rotation
                self.stats["endpoints_down"] = self.client.endpoints_down
        if not reply.parsed or not reply.choices:
            self._count("malformed_replies")
            self._count("unparseable_answers", f"malformed reply ({reply.error}): {self.client.snippet(reply.raw)}")
            return None
        choice = reply.choices[0]
        if self.cfg.top_logprobs and choice.logprobs is None:
            self._count("replies_without_logprobs")
        if parse_answer(choice.text, answers) is None:
            self._count("unparseable_answers", self.client.snippet(choice.text))
            return None
        probs = probs_from_logprobs(choice.logprobs, answers)
        if probs is not None:
            self._count("answers_from_logprobs")
            return probs
        self._count("answers_from_text")
        return probs_from_text(choice.text, answers)

    def check_answers(self, planned: int, resumed: int = 0) -> None:
        """See `prefero.judges.check_unparseable`."""
        bad, limit = self.stats["unparseable_answers"] + resumed, self.cfg.max_unparseable
        if bad > limit * planned:
            raise JudgeError(f"judge: {bad} of the {planned} answers could not be read ({self.stats['answers']} asked "
                             f"so far), more than judge.max_unparseable = {limit:g}; one reply: "
                             f"{self.unreadable_example!r} (the rating or choice must start the reply; see "
                             f"docs/pipeline.md)")

    def score(self, items: Sequence[Item]) -> list[list[float | None]]:
        texts = [pointwise_prompt(self.cfg.pointwise_template, item.prompt, c)
                 for item in items for c in item.completions]
        answers = iter(self.client.map(lambda t: self.ask(t, RATINGS), texts))
        out = []
        for item in items:
            probs = [next(answers) for _ in item.completions]
            out.append([None if p is None else expected_rating(p) for p in probs])
        return out

    def compare(self, requests) -> list[float | None]:
        canonical, flipped = ordered(requests)
        texts = []
        for item, i, j in canonical:
            c = item.completions
            texts += [pairwise_prompt(self.cfg.pairwise_template, item.prompt, c[i], c[j]),
                      pairwise_prompt(self.cfg.pairwise_template, item.prompt, c[j], c[i])]
        answers = self.client.map(lambda t: self.ask(t, CHOICES), texts)
        values = []
        for forward, backward in zip(answers[0::2], answers[1::2]):
            # both orders or nothing: one order alone would bring the position bias back
            values.append(None if forward is None or backward is None else 0.5 * (forward[0] + backward[1]))
        return unorder(values, flipped)

    def close(self) -> None:
        self.client.close()
