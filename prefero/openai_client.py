"""A small client for OpenAI-compatible servers (OpenAI, vLLM, SGLang, llama.cpp, TGI...).

    client = OpenAIClient("http://localhost:8000/v1", model="Qwen/Qwen2-7B-Instruct",
                          api_key_env="OPENAI_API_KEY", max_concurrency=8)
    reply = client.chat([{"role": "user", "content": "Hi"}], n=4, temperature=0.8, seed=1)
    reply.texts                      # the 4 completions
    replies = client.map(lambda m: client.chat(m, top_logprobs=5), conversations)

What it promises, and why:
- The API key is read from the environment variable named by `api_key_env` and lives
  only in the Authorization header: it is never logged, never part of an error message
  (server replies quoted in errors are scrubbed of it) and never returned.
- At most `max_concurrency` requests are in flight at once, across all threads.
- Transient failures are retried: HTTP 408/409/429/5xx, timeouts and dropped
  connections, up to `max_retries` times, waiting as the server asks (`Retry-After`,
  in seconds or as an HTTP date) or else exponentially longer (`backoff` · 2^attempt,
  with jitter so concurrent requests do not retry in lockstep, capped at `max_backoff`).
  Then an `OpenAIError` says what happened and how many attempts were made.
- A refused connection before the server has ever answered is not retried: it is a
  wrong `base_url` or a server that is not running, and the user should hear that now
  rather than after a minute of backoff.
- A 200 reply that is not the expected JSON (invalid or truncated JSON, no `choices`, no
  text) is retried like a 5xx: a proxy that cut the body off, or a server that answered
  mid-restart, usually answers properly the next time. After the retries it is an
  `OpenAIError`; with `on_malformed="return"` it comes back as a `Reply` with
  `parsed=False`, its raw text and the reason, so a judge can count unusable replies.
- Logprobs asked for but absent are not malformed: the choice's `logprobs` is None and the
  caller reads the text (some servers never return them).
- A `Retry-After` longer than MAX_RETRY_AFTER means the server is down for longer than a
  run should wait: the request fails now, saying so, instead of sleeping or retrying early.
- Several servers: `base_url` may be a list (a fleet of vLLM/SGLang servers serving the
  same model). Requests go round-robin over the endpoints that are up. An endpoint whose
  request failed for good (its retries spent, or a refused connection) is marked down,
  counted in `endpoint_report()`, and the request moves to the next endpoint; the run
  fails only when every endpoint is down. A 4xx other than 408/409/429 is the request's
  fault, not the endpoint's, and fails at once as with one URL.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Iterable, TypeVar
from urllib.parse import urlsplit, urlunsplit

from prefero.errors import PreferoError, first_line
from prefero.openai_replies import Reply, malformed_reason, parse_chat, parse_completion
from prefero.options import ConfigError

log = logging.getLogger("prefero.openai")
T = TypeVar("T")
R = TypeVar("R")

#: Statuses worth retrying: timeouts, conflicts, rate limits and server errors.
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
#: Longest Retry-After honoured; a server asking for more is treated as down.
MAX_RETRY_AFTER = 600.0


class OpenAIError(PreferoError, RuntimeError):
    """A request that failed for good: one line naming the URL, the status and the attempts."""

    def __init__(self, message: str, status: int | None = None, attempts: int = 1):
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class OpenAIClient:
    """Chat and text completions against one model of an OpenAI-compatible server.

    base_url: up to and including the version, e.g. "http://localhost:8000/v1".
    api_key_env: name of the environment variable holding the key (None or "" = no key,
    as local servers need none). timeout: seconds per request attempt.
    """

    def __init__(self, base_url: str | list[str], model: str, api_key_env: str | None = None, max_concurrency: int = 8,
                 timeout: float = 60.0, max_retries: int = 5, backoff: float = 0.5, max_backoff: float = 30.0,
                 url_key: str = "base_url"):
        import httpx

        self.url_key = url_key  # the config key messages name, e.g. judge.base_url
        check_base_urls(base_url or "", url_key)
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if not timeout > 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout}")
        if max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {max_retries}")
        self.endpoints = [_Endpoint(url.rstrip("/"), public_url(url.rstrip("/"))) for url in urls]
        self.base_url = self.endpoints[0].url
        self._shown_url = self.endpoints[0].shown  # for messages: no user:password part
        self._next = 0
        self._endpoint_lock = threading.Lock()
        self.model = model
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        headers = {"Content-Type": "application/json"}
        self._key = _read_key(api_key_env)
        self._key_env = api_key_env
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=max_concurrency * len(urls),
                                max_keepalive_connections=max_concurrency * len(urls)),
        )
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._rng = random.Random()  # jitter only; never affects what is generated

    def endpoint_report(self) -> dict:
        """Per endpoint (credentials stripped): requests answered, and why it is down if it is."""
        return {e.shown: {"answered": e.answered, "down": e.down} for e in self.endpoints}

    @property
    def endpoints_down(self) -> int:
        return sum(e.down is not None for e in self.endpoints)

    def _pick(self) -> "_Endpoint | None":
        """The next endpoint that is up, round-robin; None when every one is down."""
        with self._endpoint_lock:
            for _ in range(len(self.endpoints)):
                e = self.endpoints[self._next % len(self.endpoints)]
                self._next += 1
                if e.down is None:
                    return e
        return None

    def _mark_down(self, endpoint: "_Endpoint", error: "OpenAIError") -> None:
        with self._endpoint_lock:
            if endpoint.down is None:
                endpoint.down = str(error)
        if len(self.endpoints) > 1:
            log.warning("%s is down (%s); %d of %d endpoints left", endpoint.shown, error,
                        len(self.endpoints) - self.endpoints_down, len(self.endpoints))

    # ------------------------------------------------------------------ requests

    def chat(self, messages: list[dict], *, n: int = 1, temperature: float | None = None, top_p: float | None = None,
             max_tokens: int | None = None, seed: int | None = None, top_logprobs: int | None = None,
             stop: list[str] | None = None, extra_body: dict | None = None, on_malformed: str = "raise") -> Reply:
        """POST /chat/completions. `top_logprobs=N` asks for each generated token's
        log-probability and its N most likely alternatives (`logprobs: true`)."""
        body = {"model": self.model, "messages": messages, "n": n}
        body.update(_sampling(temperature, top_p, max_tokens, seed, stop))
        if top_logprobs is not None:
            body.update(logprobs=True, top_logprobs=top_logprobs)
        body.update(extra_body or {})
        return self._post("/chat/completions", body, parse_chat, top_logprobs is not None, on_malformed)

    def complete(self, prompt: str, *, n: int = 1, temperature: float | None = None, top_p: float | None = None,
                 max_tokens: int | None = None, seed: int | None = None, top_logprobs: int | None = None,
                 stop: list[str] | None = None, extra_body: dict | None = None, on_malformed: str = "raise") -> Reply:
        """POST /completions (raw text in, no chat template applied by the server)."""
        body = {"model": self.model, "prompt": prompt, "n": n}
        body.update(_sampling(temperature, top_p, max_tokens, seed, stop))
        if top_logprobs is not None:
            body["logprobs"] = top_logprobs
        body.update(extra_body or {})
        return self._post("/completions", body, parse_completion, top_logprobs is not None, on_malformed)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """`[fn(x) for x in items]`, run concurrently (at most `max_concurrency` requests
        in flight), results in input order. The first exception cancels what has not
        started, waits for what has, and is raised."""
        items = list(items)
        if not items:
            return []
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="prefero-openai")
        futures = [self._pool.submit(fn, x) for x in items]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f in done and f.exception() is not None]
        if failed:
            for f in pending:
                f.cancel()
            wait(pending)
            raise failed[0].exception()
        return [f.result() for f in futures]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._http.close()

    def __enter__(self) -> "OpenAIClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ the retry loop

    def _post(self, path: str, body: dict, parse, want_logprobs: bool, on_malformed: str) -> Reply:
        """One request, on the endpoints in turn: an endpoint that fails it for good is
        marked down and the request goes to the next one that is up."""
        if on_malformed not in ("raise", "return"):
            raise ValueError(f"on_malformed must be 'raise' or 'return', got {on_malformed!r}")
        last = None
        while True:
            endpoint = self._pick()
            if endpoint is None:
                if len(self.endpoints) == 1:
                    raise last
                raise OpenAIError(f"every endpoint of {self.url_key} is down ({len(self.endpoints)}); the last: {last}",
                                  last.status, last.attempts) from None
            try:
                return self._post_to(endpoint, path, body, parse, want_logprobs, on_malformed)
            except _EndpointDown as e:
                last = e.error
                self._mark_down(endpoint, e.error)

    def _post_to(self, endpoint: "_Endpoint", path: str, body: dict, parse, want_logprobs: bool,
                 on_malformed: str) -> Reply:
        import httpx

        url, shown = endpoint.url + path, endpoint.shown + path
        attempts = 0
        while True:
            attempts += 1
            retry_after = None
            try:
                with self._slots:
                    response = self._http.post(url, json=body)
                endpoint.answered += 1
            except httpx.TimeoutException:
                problem, status = f"no reply within the {self.timeout:g} s timeout", None
            except httpx.TransportError as e:
                if isinstance(e, httpx.ConnectError) and not endpoint.answered:
                    raise _EndpointDown(OpenAIError(
                        f"cannot connect to {shown}: {self._scrub(first_line(e))}; "
                        f"is the server running, and is {self.url_key} right?", None, attempts)) from None
                problem, status = f"connection failed ({type(e).__name__}: {self._scrub(first_line(e))})", None
            else:
                status = response.status_code
                if 200 <= status < 300:
                    reply = self._parse(response.text, parse, want_logprobs, attempts)
                    if reply.parsed:
                        return reply
                    problem = f"malformed reply ({reply.error}): {self._snippet(response.text)}"
                    if attempts > self.max_retries:
                        if on_malformed == "return":
                            return reply
                        raise OpenAIError(f"{shown}: {problem}; gave up after {attempts} attempts", status, attempts)
                else:
                    problem = f"HTTP {status}: {self._snippet(response.text)}"
                    if status not in RETRY_STATUSES:
                        hint = f" (check the key in ${self._key_env})" if status in (401, 403) and self._key_env else ""
                        raise OpenAIError(f"{shown}: {problem}{hint}", status, attempts)
                    header = response.headers.get("retry-after")
                    retry_after = parse_retry_after(header)
                    if retry_after is None and retry_seconds(header) is not None:
                        raise _EndpointDown(OpenAIError(
                            f"{shown}: {problem}; the server asks to wait {retry_seconds(header):.0f} s "
                            f"(Retry-After), more than {MAX_RETRY_AFTER:.0f} s: treated as down", status, attempts))
            if attempts > self.max_retries:
                raise _EndpointDown(OpenAIError(f"{shown}: {problem}; gave up after {attempts} attempts",
                                                status, attempts))
            delay = retry_delay(attempts, retry_after, self.backoff, self.max_backoff, self._rng)
            log.warning("%s: %s; retry %d/%d in %.2g s", shown, problem, attempts, self.max_retries, delay)
            time.sleep(delay)

    def _parse(self, text, parse, want_logprobs, attempts) -> Reply:
        try:
            data = json.loads(text)
            choices, usage = parse(data, want_logprobs)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            return Reply(raw=text, parsed=False, error=malformed_reason(e), attempts=attempts)
        return Reply(raw=text, parsed=True, choices=choices, usage=usage, attempts=attempts)

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def snippet(self, text: str, limit: int = 200) -> str:
        """`text` on one line, cut to `limit` characters, the API key scrubbed: fit to quote."""
        return self._snippet(text, limit)

    def _snippet(self, text: str, limit: int = 200) -> str:
        text = " ".join(self._scrub(text).split())
        return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class _Endpoint:
    url: str
    shown: str  # without user:password
    answered: int = 0  # replies received (any status): a server that has answered is up
    down: str | None = None  # why it was taken out of the rotation


class _EndpointDown(Exception):
    """An endpoint failed a request for good (not the request's own fault)."""

    def __init__(self, error: OpenAIError):
        super().__init__(str(error))
        self.error = error


# --------------------------------------------------------------------------- pure helpers


def retry_delay(attempt: int, retry_after: float | None, backoff: float, max_backoff: float,
                rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number `attempt` (1-based).

    The server's Retry-After wins when given (it knows when it will have capacity);
    otherwise backoff · 2^(attempt-1), capped at max_backoff, scaled by a jitter in
    [0.5, 1] so that requests failing together do not come back together.
    """
    if retry_after is not None:
        return retry_after
    base = min(max_backoff, backoff * 2 ** (attempt - 1))
    return base * (0.5 + 0.5 * (rng or random).random())


def retry_seconds(value: str | None) -> float | None:
    """The Retry-After header as seconds from now: a number, or an HTTP date (RFC 9110
    §10.2.3); None when absent or unreadable."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return None if seconds != seconds else max(0.0, seconds)  # NaN: unreadable


def parse_retry_after(value: str | None) -> float | None:
    """The seconds to wait as Retry-After asks; None when absent, unreadable or longer than
    MAX_RETRY_AFTER (the caller then treats the server as down)."""
    seconds = retry_seconds(value)
    return None if seconds is None or seconds > MAX_RETRY_AFTER else seconds


def check_base_urls(value, key: str) -> None:
    """`value` is an http(s) URL or a non-empty list of them: a one-line `ConfigError` naming
    `key` otherwise, with no password shown."""
    urls = [value] if isinstance(value, str) else value
    if not urls:
        raise ConfigError(f"{key}: expected an http(s) URL or a list of them, got an empty list")
    for url in urls:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"{key}: expected an http(s) URL such as http://localhost:8000/v1, "
                              f"got {public_url(url) if isinstance(url, str) else url!r}")


def public_url(url: str) -> str:
    """`url` without any user:password part, fit for a report or a message."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _sampling(temperature, top_p, max_tokens, seed, stop) -> dict:
    values = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "seed": seed, "stop": stop}
    return {k: v for k, v in values.items() if v is not None}


def _read_key(env: str | None) -> str | None:
    if not env:
        return None
    key = os.environ.get(env, "").strip()
    if not key:
        raise ConfigError(f"api_key_env: environment variable {env!r} is not set (or empty); "
                          "export the key there, or set api_key_env to '' for a server without keys")
    return key
