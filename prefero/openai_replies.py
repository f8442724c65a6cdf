"""What an OpenAI-compatible server's reply holds, and how its body is read.

`/chat/completions` and `/completions` bodies become `Reply`s of `Choice`s (text, finish
reason, per-token log-probabilities when asked). A body that is not a usable completion
(invalid or cut-off JSON, an error object, no text) raises `Malformed` with a one-line
reason (`malformed_reason`), which the client retries like a 5xx and then reports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class TokenLogprob:
    """One generated token, its log-probability, and the top candidates at its position."""

    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)


@dataclass
class Choice:
    text: str
    finish_reason: str | None  # "stop", "length" (hit max_tokens), ...
    logprobs: list[TokenLogprob] | None = None  # None: not asked for, or the server gave none


@dataclass
class Reply:
    """A server's answer. `parsed` is False when the body was not a usable completion:
    then `error` says why, `choices` is empty, and `raw` holds the body as received."""

    raw: str
    parsed: bool
    choices: list[Choice] = field(default_factory=list)
    usage: dict | None = None
    error: str | None = None
    attempts: int = 1

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.choices]

    @property
    def completion_tokens(self) -> int | None:
        value = (self.usage or {}).get("completion_tokens")
        return value if isinstance(value, int) else None


class Malformed(ValueError):
    """A reply body that is not a usable completion."""


def malformed_reason(e: Exception) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"invalid JSON: {e.msg} (character {e.pos})"
    if isinstance(e, Malformed):
        return str(e)
    if isinstance(e, KeyError):
        return f"missing field {e.args[0]!r}"
    return f"unexpected shape: {e}"


def _choices(data) -> list[dict]:
    if not isinstance(data, dict):
        raise Malformed(f"expected a JSON object, got {type(data).__name__}")
    if "choices" not in data and isinstance(data.get("error"), (dict, str)):
        error = data["error"]
        raise Malformed(f"the server reported an error: {error.get('message') if isinstance(error, dict) else error}")
    choices = data["choices"]
    if not isinstance(choices, list) or not choices:
        raise Malformed("'choices' is empty or not a list")
    # Servers may answer the n choices out of order; `index` says which is which.
    return sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)


def _usage(data: dict) -> dict | None:
    usage = data.get("usage")
    return usage if isinstance(usage, dict) else None


def parse_chat(data, want_logprobs: bool) -> tuple[list[Choice], dict | None]:
    out = []
    for c in _choices(data):
        content = c["message"]["content"]
        if not isinstance(content, str):
            raise Malformed(f"choice {c.get('index', 0)} has no text content (got {type(content).__name__})")
        logprobs = None
        if want_logprobs:
            entries = (c.get("logprobs") or {}).get("content")
            if isinstance(entries, list):
                logprobs = [TokenLogprob(e["token"], float(e["logprob"]),
                                         {t["token"]: float(t["logprob"]) for t in e.get("top_logprobs") or []})
                            for e in entries]
        out.append(Choice(content, c.get("finish_reason"), logprobs))
    return out, _usage(data)


def parse_completion(data, want_logprobs: bool) -> tuple[list[Choice], dict | None]:
    out = []
    for c in _choices(data):
        text = c["text"]
        if not isinstance(text, str):
            raise Malformed(f"choice {c.get('index', 0)} has no text (got {type(text).__name__})")
        logprobs = None
        if want_logprobs:
            lp = c.get("logprobs")
            if isinstance(lp, dict) and isinstance(lp.get("tokens"), list):
                tops = lp.get("top_logprobs") or [{}] * len(lp["tokens"])
                logprobs = [TokenLogprob(t, float(v), {k: float(x) for k, x in (top or {}).items()})
                            for t, v, top in zip(lp["tokens"], lp["token_logprobs"], tops)]
        out.append(Choice(text, c.get("finish_reason"), logprobs))
    return out, _usage(data)


