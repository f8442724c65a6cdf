"""The OpenAI-compatible client against a real local HTTP server (tests/openai_server.py):
replies and log-probabilities parsed exactly, retries that honour Retry-After, timeouts,
malformed replies, bounded concurrency, and the API key never leaving the header."""

import logging
import math
import random
import time
from email.utils import formatdate

import pytest

from openai_server import FakeOpenAIServer
from prefero.openai_client import OpenAIClient, OpenAIError, parse_retry_after, retry_delay
from prefero.options import ConfigError
from prefero.processes import free_port

KEY = "sk-test-9f8e7d6c5b4a"
HI = [{"role": "user", "content": "Say something about the sea."}]


@pytest.fixture
def server():
    with FakeOpenAIServer(api_key=KEY, seed=3) as s:
        yield s


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("PREFERO_TEST_KEY", KEY)
    return "PREFERO_TEST_KEY"


def client_for(server, key_env, **kw):
    options = dict(api_key_env=key_env, timeout=5.0, backoff=0.01, max_backoff=0.05)
    options.update(kw)
    return OpenAIClient(server.base_url, "fake-model", **options)


def test_replies_are_parsed_with_their_logprobs(server, key_env):
    with client_for(server, key_env) as client:
        reply = client.chat(HI, n=3, max_tokens=4, seed=7, top_logprobs=3)
        again = client.chat(HI, n=3, max_tokens=4, seed=7, top_logprobs=3)
    body = server.requests[0].body
    assert body["n"] == 3 and body["logprobs"] is True and body["top_logprobs"] == 3 and body["seed"] == 7
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert reply.parsed and len(reply.choices) == 3
    assert reply.texts == again.texts  # same request, same reply
    assert len(set(reply.texts)) == 3  # the n choices are different samples
    for i, choice in enumerate(reply.choices):
        expected = server.reply_tokens(body, i)
        cut = expected[:4]
        assert choice.text == "".join(t for t, _ in cut).lstrip()
        assert choice.finish_reason == ("length" if len(expected) > 4 else "stop")
        assert [lp.token for lp in choice.logprobs] == [t for t, _ in cut]
        for lp, (token, candidates) in zip(choice.logprobs, cut):
            assert lp.logprob == candidates[token]  # the JSON round trip of a float is exact
            best = sorted(candidates.values(), reverse=True)[:3]
            assert sorted(lp.top.values(), reverse=True) == best
            assert lp.top[token] == max(lp.top.values())  # the emitted token leads
    words = sum(min(len(server.reply_tokens(body, i)), 4) for i in range(3))
    assert reply.completion_tokens == words


def test_exact_logprobs_from_a_responder(key_env):
    """What a judge relies on: the probabilities of candidate tokens come back unchanged."""
    table = [("7", {"7": math.log(0.6), "8": math.log(0.3), "6": math.log(0.1)})]
    with FakeOpenAIServer(api_key=KEY, responder=lambda body, i: table) as server:
        with client_for(server, key_env) as client:
            reply = client.chat(HI, top_logprobs=2)
    (choice,) = reply.choices
    assert choice.text == "7"
    assert choice.logprobs[0].top == {"7": math.log(0.6), "8": math.log(0.3)}


def test_text_completions_endpoint(server, key_env):
    with client_for(server, key_env) as client:
        reply = client.complete("Once upon a time", n=2, max_tokens=3, top_logprobs=2)
    assert server.requests[0].path == "/v1/completions"
    assert server.requests[0].body["logprobs"] == 2
    assert len(reply.choices) == 2 and all(len(c.logprobs) <= 3 for c in reply.choices)
    assert all(len(lp.top) == 2 for c in reply.choices for lp in c.logprobs)


def test_429_waits_as_long_as_retry_after_says(server, key_env):
    server.fail("429", times=1, retry_after=0.2)
    with client_for(server, key_env) as client:
        reply = client.chat(HI)
    assert reply.parsed and reply.attempts == 2
    first, second = server.requests
    assert first.fault == "429" and second.fault is None
    # backoff alone would wait <= 0.05 s (max_backoff): this gap is Retry-After's
    assert second.time - first.time >= 0.2


def test_500_then_success(server, key_env):
    server.fail("500", times=2)
    with client_for(server, key_env) as client:
        reply = client.chat(HI)
    assert reply.attempts == 3 and [r.fault for r in server.requests] == ["500", "500", None]


def test_timeout_then_success(server, key_env):
    server.fail("slow", times=1, delay=3.0)
    start = time.monotonic()
    with client_for(server, key_env, timeout=0.3) as client:
        reply = client.chat(HI)
    assert reply.attempts == 2 and reply.parsed
    assert time.monotonic() - start < 2.0  # did not wait for the slow reply


def test_dropped_connection_is_retried(server, key_env):
    server.fail("disconnect", times=1)
    with client_for(server, key_env) as client:
        assert client.chat(HI).attempts == 2


def test_gives_up_after_max_retries(server, key_env):
    server.fail("500")
    with client_for(server, key_env, max_retries=2) as client, pytest.raises(OpenAIError) as e:
        client.chat(HI)
    assert len(server.requests) == 3
    assert "HTTP 500" in str(e.value) and "gave up after 3 attempts" in str(e.value)
    assert e.value.status == 500 and "\n" not in str(e.value)


def test_malformed_json_is_retried_then_a_clear_error_or_returned_raw(server, key_env):
    """A 200 whose body is cut off is retried like a 5xx; still broken after the retries, it
    is an error (or, asked for, the raw reply)."""
    server.fail("malformed", times=1)
    with client_for(server, key_env, max_retries=2) as client:
        reply = client.chat(HI)
    assert reply.parsed and reply.attempts == 2 and [r.fault for r in server.requests] == ["malformed", None]
    server.fail("malformed")
    with client_for(server, key_env, max_retries=1) as client:
        with pytest.raises(OpenAIError, match=r"malformed reply \(invalid JSON.*gave up after 2 attempts"):
            client.chat(HI)
        reply = client.chat(HI, on_malformed="return")
    assert len(server.requests) == 2 + 2 + 2
    assert not reply.parsed and reply.choices == [] and reply.error.startswith("invalid JSON")
    assert reply.raw.startswith('{"id": "x", "choices": [')


def test_missing_fields_are_named(server, key_env):
    server.fail("incomplete", times=2)
    with client_for(server, key_env, max_retries=1) as client, pytest.raises(OpenAIError, match="missing field 'choices'"):
        client.chat(HI)


def test_logprobs_asked_but_absent_leave_the_text(key_env):
    """Some servers never return logprobs: the reply is still a reply, its text readable."""
    with FakeOpenAIServer(api_key=KEY) as server:
        server.serve_logprobs = False
        with client_for(server, key_env) as client:
            reply = client.chat(HI, top_logprobs=2)
    assert reply.parsed and reply.attempts == 1 and reply.choices[0].logprobs is None and reply.texts[0]


def test_retry_after_beyond_the_limit_is_a_server_down_now(server, key_env):
    """Retry-After: 100000 (beyond MAX_RETRY_AFTER) fails at once, saying so, rather than
    sleeping a day or hammering a server that asked for quiet."""
    server.fail("429", retry_after=100000)
    start = time.monotonic()
    with client_for(server, key_env, max_retries=5) as client, pytest.raises(OpenAIError) as e:
        client.chat(HI)
    assert len(server.requests) == 1 and time.monotonic() - start < 2.0
    assert "asks to wait 100000 s (Retry-After), more than 600 s: treated as down" in str(e.value)


def test_unreachable_endpoint_fails_fast():
    port = free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(OpenAIError, match="cannot connect to http://127.0.0.1:.*is the server running"):
        OpenAIClient(f"http://127.0.0.1:{port}/v1", "m", max_retries=5, backoff=1.0).chat(HI)
    assert time.monotonic() - start < 2.0  # not 1 + 2 + 4 + 8 + 16 s of backoff


def test_password_in_base_url_is_not_shown():
    port = free_port()
    with pytest.raises(OpenAIError) as e:
        OpenAIClient(f"http://user:hunter2@127.0.0.1:{port}/v1", "m").chat(HI)
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in str(e.value) and "hunter2" not in str(e.value)


def test_wrong_key_is_not_retried_and_not_shown(server, monkeypatch, caplog):
    monkeypatch.setenv("PREFERO_WRONG_KEY", "sk-wrong-123456")
    caplog.set_level(logging.DEBUG)
    with OpenAIClient(server.base_url, "m", api_key_env="PREFERO_WRONG_KEY") as client:
        with pytest.raises(OpenAIError) as e:
            client.chat(HI)
    assert len(server.requests) == 1 and e.value.status == 401
    assert "$PREFERO_WRONG_KEY" in str(e.value)
    assert "sk-wrong-123456" not in str(e.value) and "sk-wrong-123456" not in caplog.text


def test_key_never_logged_even_when_the_server_echoes_it(key_env, caplog):
    """Error replies are quoted in messages; a server echoing the key must not leak it."""
    with FakeOpenAIServer(api_key=KEY) as server:
        server.fail("500", message=f"bad request with key {KEY}")
        caplog.set_level(logging.DEBUG)  # httpx and httpcore log at DEBUG too
        with client_for(server, key_env, max_retries=1) as client, pytest.raises(OpenAIError) as e:
            client.chat(HI)
    assert "bad request with key ***" in str(e.value)
    assert KEY not in str(e.value) and KEY not in caplog.text
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in server.requests)


def test_missing_key_variable_is_a_config_error(monkeypatch):
    monkeypatch.delenv("PREFERO_NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match="environment variable 'PREFERO_NO_SUCH_KEY' is not set"):
        OpenAIClient("http://127.0.0.1:1/v1", "m", api_key_env="PREFERO_NO_SUCH_KEY")


def test_concurrency_is_bounded_and_order_kept(server, key_env):
    server.fail("slow", delay=0.2)
    prompts = [[{"role": "user", "content": f"prompt {i}"}] for i in range(8)]
    start = time.monotonic()
    with client_for(server, key_env, max_concurrency=3) as client:
        replies = client.map(lambda m: client.chat(m, seed=1), prompts)
    elapsed = time.monotonic() - start
    assert server.max_in_flight == 3  # reached, never exceeded
    assert 0.2 * math.ceil(8 / 3) <= elapsed  # 3 waves of 0.2 s
    by_prompt = {r.body["messages"][0]["content"]: r.body for r in server.requests}
    for m, reply in zip(prompts, replies):  # results in input order
        body = by_prompt[m[0]["content"]]
        assert reply.texts[0] == "".join(t for t, _ in server.reply_tokens(body, 0)).lstrip()


def test_map_raises_the_first_failure(server, key_env):
    server.fail("malformed", match="prompt 2")
    prompts = [[{"role": "user", "content": f"prompt {i}"}] for i in range(5)]
    with client_for(server, key_env) as client, pytest.raises(OpenAIError, match="malformed"):
        client.map(lambda m: client.chat(m), prompts)


def test_retry_delay_worked_values():
    class Fixed(random.Random):
        def __init__(self, x):
            super().__init__()
            self.x = x

        def random(self):
            return self.x

    # backoff 0.5: attempts 1, 2, 3, 4 -> 0.5, 1, 2, 4 s before jitter; cap 3 s
    assert [retry_delay(a, None, 0.5, 3.0, Fixed(1.0)) for a in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]
    assert [retry_delay(a, None, 0.5, 3.0, Fixed(0.0)) for a in (1, 2, 3, 4)] == [0.25, 0.5, 1.0, 1.5]
    assert retry_delay(5, 0.2, 0.5, 3.0, Fixed(0.0)) == 0.2  # Retry-After wins, even under the cap


def test_parse_retry_after():
    assert parse_retry_after("0.2") == 0.2
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("100000") is None  # beyond MAX_RETRY_AFTER: the caller treats the server as down
    assert parse_retry_after("-3") == 0.0
    # HTTP date 5 s ahead; the header has 1 s resolution, so 4..5 s (+ clock drift of the test)
    assert 3.5 <= parse_retry_after(formatdate(time.time() + 5, usegmt=True)) <= 5.5


# --------------------------------------------------------------------------- several endpoints


def closed_port_url() -> str:
    return f"http://user:hunter2@127.0.0.1:{free_port()}/v1"  # nothing listens there


def test_requests_spread_over_endpoints_and_a_dead_one_is_skipped(key_env):
    with FakeOpenAIServer(api_key=KEY, seed=3) as a, FakeOpenAIServer(api_key=KEY, seed=3) as b, \
            FakeOpenAIServer(api_key=KEY, seed=3) as broken:
        broken.fail("500")  # answers, but never well: down after its retries
        dead = closed_port_url()
        urls = [a.base_url, dead, b.base_url, broken.base_url]
        with OpenAIClient(urls, "fake-model", api_key_env=key_env, max_retries=1, backoff=0.01,
                          max_backoff=0.02) as client:
            replies = client.map(lambda k: client.chat(HI, seed=k), range(12))
        assert all(r.parsed for r in replies)
        assert len(a.requests) >= 3 and len(b.requests) >= 3  # both live servers took their share
        report = client.endpoint_report()
        assert client.endpoints_down == 2
        down = {url: state["down"] for url, state in report.items() if state["down"]}
        assert set(down) == {dead.replace("user:hunter2@", ""), broken.base_url}
        assert "hunter2" not in str(report)
        # the same seed gives the same reply whichever server answered (same model, same seed)
        with OpenAIClient(a.base_url, "fake-model", api_key_env=key_env) as one:
            assert [r.texts for r in replies] == [one.chat(HI, seed=k).texts for k in range(12)]


def test_every_endpoint_down_fails_with_one_line(key_env):
    with FakeOpenAIServer(api_key=KEY) as broken:
        broken.fail("500")
        with OpenAIClient([closed_port_url(), broken.base_url], "m", api_key_env=key_env, max_retries=1,
                          backoff=0.01, max_backoff=0.02) as client, pytest.raises(OpenAIError) as e:
            client.chat(HI)
    message = str(e.value)
    assert message.startswith("every endpoint of base_url is down (2); the last: ") and "\n" not in message
    assert "hunter2" not in message


def test_a_request_error_is_not_blamed_on_the_endpoint(key_env):
    """401 (a wrong key) is the request's fault: it fails at once, no endpoint is marked down."""
    with FakeOpenAIServer(api_key="another-key") as a, FakeOpenAIServer(api_key="another-key") as b:
        with OpenAIClient([a.base_url, b.base_url], "m", api_key_env=key_env) as client:
            with pytest.raises(OpenAIError, match="HTTP 401"):
                client.chat(HI)
            assert client.endpoints_down == 0
