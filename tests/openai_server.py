"""A real OpenAI-compatible HTTP server for tests: deterministic replies, faults on demand.

    from openai_server import FakeOpenAIServer   # tests/ is on sys.path under pytest

    with FakeOpenAIServer(api_key="sk-test", seed=0) as server:
        server.fail(kind="429", times=2, retry_after=0.2)    # the first 2 requests get 429
        server.fail(kind="malformed", match="broken prompt")  # every request mentioning it
        client = OpenAIClient(server.base_url, model="fake", ...)
        ...
        server.requests      # every request received: path, headers, body, time

It listens on 127.0.0.1 on a free port (stdlib `ThreadingHTTPServer` in a thread), so the
client under test goes through real sockets, real HTTP and real timeouts.

Endpoints: POST /v1/chat/completions and POST /v1/completions, with `n`, `max_tokens`,
`seed`, `logprobs`/`top_logprobs` (chat: `logprobs: true, top_logprobs: N`; completions:
`logprobs: N`). GET /v1/models lists the one model.

Replies: a "token" is a word with its leading space. By default the reply to a request
is a few words drawn by a random generator seeded from (server seed, request seed,
model, prompt, choice number), so the same request always gets the same reply and the
`n` choices differ. `max_tokens` cuts the reply (finish_reason "length"); otherwise it
ends with "stop". Token log-probabilities come from a softmax over a fixed vocabulary
with seeded logits, the emitted token made the most likely, so the top list is sorted
and its first entry is the emitted token. `responder(body, choice)` overrides the reply:
it returns the text, or a list of `(token, {candidate: logprob, ...})` when a test
needs exact log-probabilities (a judge reading the probability of "7").

Faults (`fail`): "429" (with a Retry-After header in seconds), "500", "slow" (the reply
comes after `delay` seconds, e.g. beyond the client's timeout), "malformed" (a 200 with a
truncated JSON body), "incomplete" (valid JSON without `choices`), "disconnect" (the
connection is closed without a reply). A rule applies to the first `times` requests it
matches (all of them when `times` is None); `match` is a substring of the request's
prompt text, or a predicate over the parsed body.

With `api_key` set, a request without `Authorization: Bearer <api_key>` gets 401.
`serve_logprobs = False` answers without logprobs even when asked, as some servers do.
`max_choices` caps the choices per reply, as servers that ignore `n` do.
`max_in_flight` is the most requests the server was handling at one moment.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

FAULTS = ("429", "500", "slow", "malformed", "incomplete", "disconnect")

#: Words replies are made of; each is one token (with its leading space).
VOCAB = [" the", " a", " sea", " sky", " is", " blue", " calm", " and", " wide", " today",
         " birds", " fly", " over", " waves", " light", " falls", " on", " stone", " quiet", " wind"]


@dataclass
class Fault:
    kind: str
    times: int | None = None  # how many matching requests it hits; None = all
    match: str | Callable[[dict], bool] | None = None
    retry_after: float | None = None  # "429": the Retry-After header, seconds
    delay: float = 0.0  # "slow": seconds before replying
    message: str | None = None  # "429"/"500": the error message in the body
    hits: int = 0

    def applies(self, body: dict) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.match is None:
            return True
        if callable(self.match):
            return bool(self.match(body))
        return self.match in prompt_text(body)


@dataclass
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict  # header names lower-cased
    body: dict | None  # parsed JSON; None when not JSON
    raw: bytes
    time: float  # time.monotonic() at arrival
    fault: str | None = None  # the fault served, if any


def prompt_text(body: dict) -> str:
    """The text of a request's prompt: the chat messages' contents, or the completion prompt."""
    if "messages" in body:
        return "\n".join(str(m.get("content", "")) for m in body.get("messages") or [])
    return str(body.get("prompt", ""))


class FakeOpenAIServer:
    """An OpenAI-compatible server on 127.0.0.1 for tests (see the module docstring).

    seed: varies every default reply. model: the name served (requests may name any).
    api_key: when set, required as a Bearer token. responder: replaces the default
    replies. max_words: longest default reply, in words (tokens). max_choices: answer at
    most this many of the `n` choices asked for (None = all).
    """

    def __init__(self, seed: int = 0, model: str = "fake-model", api_key: str | None = None,
                 responder: Callable[[dict, int], str | list] | None = None, max_words: int = 12,
                 max_choices: int | None = None):
        self.seed = seed
        self.model = model
        self.api_key = api_key
        self.responder = responder
        self.max_words = max_words
        self.max_choices = max_choices
        self.serve_logprobs = True
        self.requests: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "FakeOpenAIServer":
        handler = type("Handler", (_Handler,), {"server_state": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True  # a slow reply must not block shutdown
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes slow replies
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """What a client takes as `base_url` (ends in /v1, like OpenAI's)."""
        return f"http://127.0.0.1:{self.port}/v1"

    # ------------------------------------------------------------------ faults

    def fail(self, kind: str, times: int | None = None, match=None, retry_after: float | None = None,
             delay: float = 0.0, message: str | None = None) -> Fault:
        """Misbehave on matching requests (see the module docstring). Rules are tried in
        the order they were added; the first that applies is served."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {FAULTS}")
        rule = Fault(kind, times, match, retry_after, delay, message)
        with self._lock:
            self._faults.append(rule)
        return rule

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, body: dict | None) -> Fault | None:
        with self._lock:
            for rule in self._faults:
                if rule.applies(body or {}):
                    rule.hits += 1
                    return rule
        return None

    def _record(self, received: Received) -> None:
        with self._lock:
            self.requests.append(received)

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    # ------------------------------------------------------------------ replies

    def reply_tokens(self, body: dict, choice: int) -> list[tuple[str, dict[str, float]]]:
        """The reply's tokens for one choice, each with its candidates' log-probabilities."""
        if self.responder is not None:
            given = self.responder(body, choice)
            if not isinstance(given, str):
                return [(tok, dict(top)) for tok, top in given]
            words = _split_words(given)
        else:
            rng = self._rng(body, choice, "words")
            words = [rng.choice(VOCAB) for _ in range(rng.randint(3, self.max_words))]
        rng = self._rng(body, choice, "logprobs")
        out = []
        for w in words:
            logits = {v: rng.gauss(0.0, 1.0) for v in VOCAB}
            logits[w] = max(logits.values()) + 1.0 + rng.random()  # the emitted token leads
            log_z = math.log(sum(math.exp(x) for x in logits.values()))
            out.append((w, {v: x - log_z for v, x in logits.items()}))
        return out

    def _rng(self, body: dict, choice: int, purpose: str) -> random.Random:
        key = json.dumps([self.seed, body.get("seed"), body.get("model"), body.get("messages"),
                          body.get("prompt"), choice, purpose], sort_keys=True)
        return random.Random(hashlib.sha256(key.encode()).hexdigest())

    def completion_body(self, body: dict, chat: bool) -> dict:
        n = int(body.get("n") or 1)
        if self.max_choices is not None:
            n = min(n, self.max_choices)
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        top_n = int(body.get("top_logprobs") or 0) if chat else int(body.get("logprobs") or 0)
        want_logprobs = self.serve_logprobs and (bool(body.get("logprobs")) if chat else body.get("logprobs") is not None)
        choices, used = [], 0
        for i in range(n):
            tokens = self.reply_tokens(body, i)
            finish = "stop"
            if max_tokens is not None and len(tokens) > max_tokens:
                tokens, finish = tokens[:max_tokens], "length"
            used += len(tokens)
            text = "".join(t for t, _ in tokens).lstrip()
            item = {"index": i, "finish_reason": finish}
            if chat:
                item["message"] = {"role": "assistant", "content": text}
            else:
                item["text"] = text
            if want_logprobs:
                item["logprobs"] = _chat_logprobs(tokens, top_n) if chat else _completion_logprobs(tokens, top_n)
            choices.append(item)
        prompt_tokens = len(prompt_text(body).split())
        return {
            "id": f"cmpl-{len(self.requests)}",
            "object": "chat.completion" if chat else "text_completion",
            "created": 0,
            "model": body.get("model", self.model),
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": used, "total_tokens": prompt_tokens + used},
        }


def _split_words(text: str) -> list[str]:
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]] if words else []


def _top(candidates: dict[str, float], n: int) -> list[tuple[str, float]]:
    return sorted(candidates.items(), key=lambda kv: -kv[1])[:n]


def _chat_logprobs(tokens, top_n: int) -> dict:
    content = []
    for tok, cands in tokens:
        content.append({
            "token": tok, "logprob": cands[tok], "bytes": list(tok.encode()),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in _top(cands, top_n)],
        })
    return {"content": content}


def _completion_logprobs(tokens, top_n: int) -> dict:
    return {
        "tokens": [t for t, _ in tokens],
        "token_logprobs": [c[t] for t, c in tokens],
        "top_logprobs": [dict(_top(c, top_n)) for _, c in tokens],
    }


class _Handler(BaseHTTPRequestHandler):
    server_state: FakeOpenAIServer
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

    def log_message(self, *args) -> None:  # quiet: tests read server.requests instead
        pass

    def do_GET(self) -> None:
        state = self.server_state
        state._record(Received("GET", self.path, _headers(self), None, b"", time.monotonic()))
        if self.path.rstrip("/") == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": state.model, "object": "model"}]})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        self.server_state._enter()
        try:
            self._post()
        finally:
            self.server_state._leave()

    def _post(self) -> None:
        state = self.server_state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        received = Received("POST", self.path, _headers(self), body, raw, time.monotonic())
        state._record(received)
        if state.api_key is not None and self.headers.get("Authorization") != f"Bearer {state.api_key}":
            self._json(401, {"error": {"message": "invalid or missing API key", "type": "invalid_request_error"}})
            return
        route = self.path.rstrip("/")
        if route not in ("/v1/chat/completions", "/v1/completions"):
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        if not isinstance(body, dict):
            self._json(400, {"error": {"message": "body is not a JSON object"}})
            return
        fault = state._take_fault(body)
        received.fault = fault.kind if fault else None
        if fault is not None and fault.kind != "slow":
            self._serve_fault(fault)
            return
        if fault is not None:
            state._stopping.wait(fault.delay)
        try:
            self._json(200, state.completion_body(body, chat=route.endswith("chat/completions")))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (a timeout test): nothing to answer

    def _serve_fault(self, fault: Fault) -> None:
        if fault.kind == "429":
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            self._json(429, {"error": {"message": fault.message or "rate limited", "type": "rate_limit_error"}}, headers)
        elif fault.kind == "500":
            self._json(500, {"error": {"message": fault.message or "internal error", "type": "server_error"}})
        elif fault.kind == "malformed":
            self._send(200, b'{"id": "x", "choices": [{"index": 0, "message": {"content": "cut', "application/json")
        elif fault.kind == "incomplete":
            self._json(200, {"id": "x", "object": "chat.completion", "model": "m"})
        elif fault.kind == "disconnect":
            self.close_connection = True
            self.connection.close()

    def _json(self, status: int, value: dict, headers: dict | None = None) -> None:
        self._send(status, json.dumps(value).encode(), "application/json", headers)

    def _send(self, status: int, data: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


def _headers(handler: BaseHTTPRequestHandler) -> dict:
    return {k.lower(): v for k, v in handler.headers.items()}
