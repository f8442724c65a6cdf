"""The OpenAI-compatible judge against the real local test server (tests/openai_server.py):
one rule for reading an answer, from logprobs and text alike (the answer the reply starts
with); replies without logprobs read from the text; malformed replies retried; a run with too
many unreadable answers stopped quoting one, exit 3; the key written nowhere."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from jsonl_files import write_jsonl
from prefero.cli import main
from prefero.data.formats import Where
from prefero.judges import EXIT_JUDGE, Item, JudgeError, pairwise_matrices
from prefero.judges.config import JudgeConfig, JudgeRunConfig
from prefero.judges.openai import OpenAIJudge, probs_from_logprobs
from prefero.judges.prompts import expected_rating, parse_choice, parse_rating
from prefero.judges.run import run_judge
from prefero.options import load_config
from prefero.processes import free_port


def item(prompt, completions, row=1, record=None):
    return Item(prompt, completions, Where("rows.jsonl", row), record or {"prompt": prompt, "completions": completions})


# --------------------------------------------------------------------------- OpenAI judge


@pytest.fixture()
def server():
    sys.path.insert(0, str(Path(__file__).parent))
    from openai_server import FakeOpenAIServer

    with FakeOpenAIServer() as s:
        yield s


def openai_cfg(server, **kw):
    return JudgeConfig(type="openai", model="fake", base_url=server.base_url, api_key_env="JUDGE_TEST_KEY",
                       max_retries=2, timeout=5.0, **kw).validate()


def test_openai_rating_from_logprobs_text_and_unparseable(server, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-secret-judge-key")
    server.api_key = "sk-secret-judge-key"  # requests without it get 401

    def responder(body, choice):
        text = body["messages"][-1]["content"]
        if "sunny" in text:  # P(7) = .5, P(8) = .3 among the answers; "ok" is not one
            return [("7", {"7": math.log(0.5), " 8": math.log(0.3), "ok": math.log(0.2)})]
        if "cloudy" in text:
            return "Rating: 4/10"
        return "I would rather not say."
    server.responder = responder
    judge = OpenAIJudge(openai_cfg(server))
    got = judge.score([item("Weather?", ["sunny", "cloudy", "foggy"])])
    assert got == [[pytest.approx(7 * 0.5 / 0.8 + 8 * 0.3 / 0.8, rel=1e-12), 4.0, None]]
    assert dict(judge.stats) == {"answers": 3, "answers_from_logprobs": 1, "answers_from_text": 1,
                                 "unparseable_answers": 1}
    body = server.requests[-1].body
    assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["temperature"] == 0.0
    judge.close()


def test_openai_pairwise_removes_a_judge_that_always_says_a(server):
    """P(A) = .8 whatever is shown: the debiased P(i ≻ j) = ½(.8 + .2) = ½ for every pair."""
    server.responder = lambda body, choice: [("A", {"A": math.log(0.8), "B": math.log(0.2)})]
    judge = OpenAIJudge(JudgeConfig(type="openai", model="fake", base_url=server.base_url).validate())
    matrix = pairwise_matrices(judge, [item("p", ["x", "y", "z"])])[0]
    assert matrix == [[0.5] * 3] * 3
    assert len(server.requests) == 6  # 3 pairs, both orders


def tokens_of(text, chosen_logprob=math.log(0.9)):
    """A reply as the fake server's (token, candidates) list: each word a token, sure of itself."""
    words = text.split(" ")
    return [(w if k == 0 else " " + w, {(w if k == 0 else " " + w): chosen_logprob}) for k, w in enumerate(words)]


def test_openai_reads_the_answer_the_reply_starts_with_from_logprobs_and_text_alike(server):
    """One rule for both paths: a rating mentioned later in a sentence is no answer (null and
    counted), whatever the logprobs say; a "Rating:" lead-in is fine; "10" as two tokens
    ("1", "0") is 10, its probability P(1)·P(0 | 1)."""
    replies = {
        "later-a": tokens_of("Out of 10 I give 2"),  # used to score 10
        "later-b": tokens_of("On a scale of 1 to 10, I'd give it 4"),  # used to score 1
        "later-c": tokens_of("I'd rate it 8"),  # used to score 8 from logprobs, null from the text
        "lead-in": [("Rating", {"Rating": 0.0}), (":", {":": 0.0}),
                    (" 7", {" 7": math.log(0.6), " 9": math.log(0.2), " ok": math.log(0.2)})],
        # P(1) = .9, P(7) = .1 at the first token; P(0 | 1) = .75: P(10) = .675, P(1) = .225
        "two-token-ten": [("1", {"1": math.log(0.9), "7": math.log(0.1)}),
                          ("0", {"0": math.log(0.75), "/": math.log(0.25)})],
    }
    server.responder = lambda body, choice: replies[body["messages"][-1]["content"].split("[Response]\n")[1].split("\n")[0]]
    names = list(replies)
    judge = OpenAIJudge(JudgeConfig(type="openai", model="fake", base_url=server.base_url).validate())
    got = judge.score([item("p", names)])[0]
    assert got[:3] == [None, None, None]
    assert got[3] == pytest.approx(7 * 0.6 / 0.8 + 9 * 0.2 / 0.8, rel=1e-12)
    assert got[4] == pytest.approx(10 * 0.675 + 1 * 0.225 + 7 * 0.1, rel=1e-12)
    assert judge.stats["unparseable_answers"] == 3 and judge.stats["answers_from_logprobs"] == 2
    text_only = OpenAIJudge(JudgeConfig(type="openai", model="fake", base_url=server.base_url,
                                        top_logprobs=0).validate())
    assert text_only.score([item("p", names)])[0] == [None, None, None, 7.0, 10.0]
    assert text_only.stats["unparseable_answers"] == 3


def test_openai_without_logprobs_reads_the_text_and_retries_malformed_replies(server):
    server.serve_logprobs = False  # asked for, never given
    server.responder = lambda body, choice: "8"
    server.fail("malformed", times=1, match="broken")  # cut-off JSON once, then a good reply
    judge = OpenAIJudge(JudgeConfig(type="openai", model="fake", base_url=server.base_url).validate())
    judge.client.backoff = 0.01
    assert judge.score([item("p", ["fine", "broken"])]) == [[8.0, 8.0]]
    assert judge.stats["replies_without_logprobs"] == 2 and judge.stats["answers_from_text"] == 2
    assert "unparseable_answers" not in judge.stats and len(server.requests) == 3


def test_openai_unreachable_is_one_line_with_the_judge_exit_code(server, tmp_path, capsys):
    port = server.port
    server.stop()
    dead = OpenAIJudge(JudgeConfig(type="openai", model="fake", base_url=f"http://127.0.0.1:{port}/v1").validate())
    with pytest.raises(JudgeError, match=r"^judge: cannot connect to http://127\.0\.0\.1:\d+/v1/chat.*is "
                                         r"judge\.base_url right\?"):
        dead.score([item("p", ["x"])])
    write_jsonl(tmp_path / "gen.jsonl", [{"prompt": "p", "completions": ["a", "b"]}])
    code = main(["judge", f"input={tmp_path / 'gen.jsonl'}", f"output={tmp_path / 'j.jsonl'}", "judge.type=openai",
                 "judge.model=fake", f"judge.base_url=http://127.0.0.1:{port}/v1"])
    err = capsys.readouterr().err
    assert code == EXIT_JUDGE == 3 and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.slow
def test_too_many_unreadable_answers_fail_the_run_quoting_one(server, tmp_path, capsys):
    """A server that answers in sentences: over judge.max_unparseable the run fails at the
    batch that passes it, before saving that batch, quoting a reply; under it, nulls are
    counted. Raising the limit resumes the saved rows."""
    server.responder = lambda body, choice: "I'd rate it 8" if "bad" in body["messages"][-1]["content"] else "7"

    def judge(bad_row, name, *extra):
        write_jsonl(tmp_path / f"{name}.in.jsonl", [{"prompt": f"p{i}", "completions": ["good", "bad" if i == bad_row
                                                                                         else "ok"]} for i in range(10)])
        return main(["judge", f"input={tmp_path / name}.in.jsonl", f"output={tmp_path / name}.jsonl",
                     "judge.type=openai", "judge.model=fake", f"judge.base_url={server.base_url}", "batch_size=4",
                     *extra])

    # 1 unreadable of the run's 20 answers is 5 %: over 0.04 × 20, at the first batch's 8 answers
    assert judge(0, "j", "judge.max_unparseable=0.04") == 3
    err = capsys.readouterr().err
    assert "1 of the 20 answers could not be read (8 asked so far)" in err and "\"I'd rate it 8\"" in err
    assert err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.glob("*j.*")) == ["j.in.jsonl"]  # no settings beside nothing saved
    # at the second batch: the first stays saved, and a rerun with the default 0.05 resumes it
    assert judge(5, "k", "judge.max_unparseable=0.04") == 3
    assert "(16 asked so far)" in capsys.readouterr().err
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f".k.jsonl.tmp-{dead.pid}").write_text("left by a killed run")
    assert judge(5, "k") == 0  # 1 ≤ 0.05 × 20
    assert not list(tmp_path.glob(".k.*"))
    # "null scores", not "unparseable": not every null is a parse failure
    assert "(1 null scores, 9 rows all tied)" in capsys.readouterr().out
    report = json.loads((tmp_path / "k.report.json").read_text())
    assert report["null_scores"] == 1 and report["this_run"]["unparseable_answers"] == 1
    assert report["this_run"]["rows_resumed"] == 4


def test_probs_from_logprobs_skips_formatting_tokens():
    from prefero.openai_replies import TokenLogprob

    tokens = [TokenLogprob("**", -0.1, {"**": -0.1}), TokenLogprob("B", math.log(0.6), {"B": math.log(0.6), " A": math.log(0.2)})]
    assert probs_from_logprobs(tokens, ["A", "B"]) == pytest.approx([0.25, 0.75], rel=1e-12)
    assert probs_from_logprobs([TokenLogprob("Sure", -0.1, {})], ["A", "B"]) is None
    # "I think B": B is not where the reply starts
    assert probs_from_logprobs([TokenLogprob("I", 0.0), TokenLogprob(" think", 0.0), TokenLogprob(" B", 0.0)],
                               ["A", "B"]) is None


def test_parsers_take_only_an_answer_the_reply_starts_with():
    assert [parse_rating(t) for t in ["7", "Rating: 9", "**10/10**", "7.5", "11", "I'd say 7", "Score = 3",
                                      "Answer: 10", "Out of 10 I give 2", "On a scale of 1 to 10, I'd give it 4",
                                      "I'd rate it 8", "## Rating: 6/10"]] == \
        [7, 9, 10, None, None, None, 3, 10, None, None, None, 6]
    assert [parse_choice(t) for t in ["A", "**B**", "Response A is better", "A good one is B", "b", "C",
                                      "Answer: B", "The answer is A"]] == ["A", "B", "A", None, None, None, "B", None]
    assert expected_rating([0.0] * 6 + [0.5, 0.5, 0.0, 0.0]) == 7.5


def test_run_judge_pairwise_rows_carry_the_matrix(tmp_path, server, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-secret-judge-key")
    server.api_key = "sk-secret-judge-key"
    server.responder = lambda body, choice: "A" if "[Response A]\nlong" in body["messages"][-1]["content"] else "B"
    write_jsonl(tmp_path / "gen.jsonl", [{"prompt": "p", "completions": ["long", "short", "short"]}])
    cfg = load_config(None, [f"input={tmp_path / 'gen.jsonl'}", f"output={tmp_path / 'j.jsonl'}", "mode=pairwise",
                             "judge.type=openai", "judge.model=fake", f"judge.base_url={server.base_url}",
                             "judge.top_logprobs=0", "judge.api_key_env=JUDGE_TEST_KEY"], cls=JudgeRunConfig)
    report = run_judge(cfg)
    for path in tmp_path.iterdir():  # the key is sent, and written nowhere
        assert "sk-secret" not in path.read_text(), path
    row = json.loads((tmp_path / "j.jsonl").read_text())
    # "long" wins both orders; short vs short is the same text: ½ without asking
    assert row["pairwise"] == [[0.5, 1.0, 1.0], [0.0, 0.5, 0.5], [0.0, 0.5, 0.5]]
    assert row["scores"] == pytest.approx([2.5 / 3, 1 / 3, 1 / 3], rel=1e-12)
    assert report["null_comparisons"] == 0 and report["ties"]["rows_best_tied"] == 0


def test_a_list_of_endpoints_with_one_dead_judges_every_row(server, tmp_path):
    """`judge.base_url` as a YAML list: a dead server is skipped after its retries and counted
    in the report; the scores are those one live server gives."""
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    server.responder = lambda body, k: str(3 + len(json.dumps(body)) % 7)  # a rating that varies per prompt
    rows = [{"prompt": f"p{i}", "completions": ["a", "bb"]} for i in range(4)]
    write_jsonl(tmp_path / "gen.jsonl", rows)
    (tmp_path / "judge.yaml").write_text(
        f"input: {tmp_path / 'gen.jsonl'}\noutput: {tmp_path / 'j.jsonl'}\n"
        f"judge:\n  type: openai\n  model: fake\n  base_url: [{dead}, {server.base_url}]\n  max_retries: 1\n")
    assert main(["judge", str(tmp_path / "judge.yaml")]) == 0
    report = json.loads((tmp_path / "j.report.json").read_text())
    assert report["this_run"]["endpoints_down"] == 1
    one = run_judge(load_config(None, [f"input={tmp_path / 'gen.jsonl'}", f"output={tmp_path / 'one.jsonl'}",
                                       "judge.type=openai", "judge.model=fake", f"judge.base_url={server.base_url}"],
                                cls=JudgeRunConfig))
    assert one["rows"] == 4
    scores = lambda name: [json.loads(line)["scores"] for line in (tmp_path / name).read_text().splitlines()]  # noqa: E731
    assert scores("j.jsonl") == scores("one.jsonl")
