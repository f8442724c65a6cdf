"""Statistics of generated responses: length and repetition within each response (a degeneration check).

Preference optimization is known to lengthen responses (Singhal et al. 2023, "A Long Way
to Go") and, pushed too far, to make them repeat themselves; both show up here before
they show up in a win rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def ngram_repetition(tokens: Sequence, n: int = 3) -> float | None:
    """Share of a response's n-gram occurrences that repeat an n-gram seen earlier in it.

    With T tokens there are T − n + 1 n-gram occurrences (consecutive windows); the rate is
    1 − (distinct n-grams) / (occurrences). 0 means no n-gram occurs twice; it approaches
    1 for a response that loops on one phrase. None when T < n (no n-gram at all).

    "a b a b a b", n=3: windows aba, bab, aba, bab → 4 occurrences, 2 distinct → 0.5.
    Same text, n=2: ab, ba, ab, ba, ab → 5 occurrences, 2 distinct → 0.6.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    count = len(tokens) - n + 1
    if count < 1:
        return None
    distinct = {tuple(tokens[i:i + n]) for i in range(count)}
    return 1.0 - len(distinct) / count


@dataclass(frozen=True)
class GenerationStats:
    """Length and repetition of a set of responses.

    The repetition fields are `prefero.evaluate.metrics.RepetitionStats`'s (see there and
    docs/evaluation.md): `repetition_rate` is the share of responses that repeat a word,
    `distinct_1` / `distinct_n` the mean share of distinct words / `ngram`-grams (`too_short`
    counts the responses under `ngram` words, left out of distinct_n), `degenerate` the
    share that loop one word, token or short n-gram. `mean_tokens` is None without a
    tokenizer. `empty` counts responses that are blank after stripping.
    """

    n: int
    mean_chars: float
    mean_tokens: float | None
    repetition_rate: float
    distinct_1: float | None
    distinct_n: float | None
    degenerate: float
    ngram: int
    too_short: int
    empty: int


def generation_stats(texts: Sequence[str], *, tokenizer=None, ngram: int = 3) -> GenerationStats:
    """Mean length in characters (Unicode code points, as the length control counts
    them) and, given a tokenizer (anything with `encode(text, add_special_tokens=False)`),
    in tokens; the repetition measures of `repetition_stats` (words as `response_words`
    reads them, so they read the same for any model; tokens only for `degenerate`)."""
    from prefero.evaluate.metrics import repetition_stats

    if not texts:
        raise ValueError("generation statistics of zero responses")
    tokens = None
    if tokenizer is not None:
        tokens = sum(len(tokenizer.encode(t, add_special_tokens=False)) for t in texts) / len(texts)
    rep = repetition_stats(texts, ngram=ngram, tokenizer=tokenizer)
    return GenerationStats(
        n=len(texts),
        mean_chars=sum(len(t) for t in texts) / len(texts),
        mean_tokens=tokens,
        repetition_rate=rep.repetition_rate,
        distinct_1=rep.distinct_1,
        distinct_n=rep.distinct_n,
        degenerate=rep.degenerate,
        ngram=ngram,
        too_short=rep.too_short,
        empty=sum(1 for t in texts if not t.strip()),
    )
