"""What an LLM judge is asked, and how its answer is read (shared by `llm` and `openai`).

Pointwise: rate one response 1–10; the score is the expected rating Σ r·P(r) under the
judge's probabilities of the answers "1".."10" (finer than the most likely rating, and a
judge torn between 6 and 8 scores 7). Pairwise: pick A or B; P(A ≻ B) is the probability
of "A" among {"A", "B"}. Both templates are configurable; these are the defaults.

An answer read from a reply (the `openai` judge) follows one rule, written out above
`answer_span` below, whether it is read from the reply's text or its token probabilities:
a reply that does not start with a rating or a choice is unparseable and left None —
never guessed.
"""

from __future__ import annotations

import re

from prefero.data.formats import Text

RATINGS = [str(r) for r in range(1, 11)]
CHOICES = ["A", "B"]

POINTWISE_TEMPLATE = """\
Rate how good the response below is as an answer to the request, on a scale from 1 to 10:
1 means useless, wrong or harmful; 10 means correct, complete, clear and honest.

[Request]
{prompt}

[Response]
{completion}

Reply with the rating only: one whole number from 1 to 10."""

PAIRWISE_TEMPLATE = """\
Compare two responses to the same request. Which one answers it better: more correct,
more helpful, clearer and more honest? Judge the content only, not the length or which
one comes first.

[Request]
{prompt}

[Response A]
{a}

[Response B]
{b}

Reply with one letter only: A or B."""


def as_text(text: Text) -> str:
    """A prompt or completion as plain text for a judge prompt: a string as is; a single
    message as its content; a conversation as "Role: content" paragraphs."""
    if isinstance(text, str):
        return text
    if len(text) == 1:
        return text[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in text)


def pointwise_prompt(template: str | None, prompt: Text, completion: Text) -> str:
    return (template or POINTWISE_TEMPLATE).format(prompt=as_text(prompt), completion=as_text(completion))


def pairwise_prompt(template: str | None, prompt: Text, a: Text, b: Text) -> str:
    return (template or PAIRWISE_TEMPLATE).format(prompt=as_text(prompt), a=as_text(a), b=as_text(b))


def judge_messages(system_prompt: str | None, text: str) -> list[dict]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": text}]


def expected_rating(probs: list[float]) -> float:
    """Σ r·P(r) over the ratings 1..10 (`probs` in that order, summing to 1)."""
    return sum(int(r) * p for r, p in zip(RATINGS, probs))


# --------------------------------------------------------------------------- reading an answer
#
# The one rule, for the text of a reply and for its tokens alike: the answer is the rating
# or choice the reply STARTS with. Before it may come only
#   - spaces, newlines and the decoration  " ' * # [ (   (quotes, markdown bold/headings);
#   - one lead-in word, any case, optionally followed by ':' or '=' and more decoration:
#     ratings: Rating, Score, Answer; choices: Answer, Choice, Response, Option.
# A rating is 1..10, not followed by a digit or by '.'/',' and a digit ("7.5" is not 7),
# optionally written "/10". A bare letter A or B must end the reply or be followed by
# punctuation or a newline ("A good one is B" starts with the article); after a lead-in
# word it only needs to end as a word ("Response A is better"). Anything else, a rating
# mentioned later in a sentence included ("Out of 10 I give 2", "I'd rate it 8"), is
# unparseable: null and counted, never guessed.

RATING_LEAD_INS = ("rating", "score", "answer")
CHOICE_LEAD_INS = ("answer", "choice", "response", "option")
_DECOR = r"[\s\"'*#\[(]*"
_RATING = re.compile(rf"^{_DECOR}(?:(?:{'|'.join(RATING_LEAD_INS)})\s*[:=]?{_DECOR})?"
                     r"(10|[1-9])(?![\d.,]\d|\d)(?:\s*/\s*10)?\b", re.IGNORECASE)
_CHOICE = re.compile(rf"^{_DECOR}(?:(?:{'|'.join(CHOICE_LEAD_INS)})\s*[:=]?{_DECOR}([AB])\b"
                     r"|([AB])(?=\s*$|\s*\n|[.,:;!)*\]\"']))", re.IGNORECASE)


def answer_span(text: str, answers: list[str]) -> tuple[int, int] | None:
    """Where in `text` the answer it starts with lies, as (start, end) character offsets,
    by the rule above; `answers` is RATINGS or CHOICES. None: no such answer."""
    m = (_RATING if answers == RATINGS else _CHOICE).match(text or "")
    if not m:
        return None
    group = next(g for g in range(1, (m.lastindex or 0) + 1) if m.group(g) is not None)
    if m.group(group) not in answers:  # "a"/"b" lower-case are words, not choices
        return None
    return m.start(group), m.end(group)


def parse_answer(text: str, answers: list[str]) -> str | None:
    """The answer `text` starts with (one of `answers`), else None."""
    span = answer_span(text, answers)
    return None if span is None else text[span[0]:span[1]]


def parse_rating(text: str) -> int | None:
    """The rating a free-text answer starts with ("7", "Rating: 7", "**7/10**"), else None."""
    answer = parse_answer(text, RATINGS)
    return None if answer is None else int(answer)


def parse_choice(text: str) -> str | None:
    """"A" or "B" when the answer starts with it ("B", "Response A", "**A**"), else None."""
    return parse_answer(text, CHOICES)
