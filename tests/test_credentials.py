"""No password of a URL is written anywhere (README.md#checkpoints-resume-safety): `judge.base_url` with user:password@
runs `prefero judge` (finished, and failed with its partial files left), `prefero eval` and
`prefero selfplay` against the real local test server, then every file under the output
directories is searched for the password, byte for byte."""

import hashlib
import json
from pathlib import Path

import pytest

from jsonl_files import write_jsonl
from openai_server import FakeOpenAIServer
from prefero.cli import main
from prefero.files import scrub_credentials

PASSWORD = "hunter2-Zq9"


def rating(body, choice):
    """A rating from the response's text (1..10), so completions differ in score."""
    text = body["messages"][-1]["content"]
    if "[Response A]" in text:
        return "A" if hashlib.sha256(text.encode()).digest()[0] % 2 else "B"
    return f"Rating: {1 + hashlib.sha256(text.encode()).digest()[0] % 10}"


@pytest.fixture
def server():
    with FakeOpenAIServer() as s:
        s.responder = rating
        yield s


def secret_url(server) -> str:
    return server.base_url.replace("http://", f"http://judge-user:{PASSWORD}@")


def files_holding_the_password(root: Path) -> list[Path]:
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files
    return [p for p in files if PASSWORD.encode() in p.read_bytes()]


def test_scrub_credentials():
    assert scrub_credentials({"u": "https://a:b@h:8/v1", "l": ["see http://x:y@z/p and ftp://q", "a@b.c"], "n": 3}) \
        == {"u": "https://h:8/v1", "l": ["see http://z/p and ftp://q", "a@b.c"], "n": 3}


def test_no_file_of_judge_eval_or_selfplay_holds_the_password(server, tmp_path, tiny_model_dir, capsys):
    url = secret_url(server)
    (tmp_path / "in").mkdir()
    judge = ["judge.type=openai", "judge.model=fake", f"judge.base_url={url}", "judge.max_retries=0"]
    gen = write_jsonl(tmp_path / "in" / "gen.jsonl", [{"prompt": f"p{i}", "completions": ["a", f"b{i}", "cc"]}
                                                      for i in range(4)])
    # judge: a finished run, then one that fails at its second batch and leaves partial files
    assert main(["judge", f"input={gen}", f"output={tmp_path / 'judge' / 'j.jsonl'}", *judge]) == 0
    assert json.loads((tmp_path / "judge" / "j.report.json").read_text())["judge"]["base_url"] == server.base_url
    server.fail("500", match="p3")
    assert main(["judge", f"input={gen}", f"output={tmp_path / 'judge' / 'failed.jsonl'}", "batch_size=2",
                 *judge, "mode=pairwise"]) == 3
    assert PASSWORD not in capsys.readouterr().err
    assert (tmp_path / "judge" / "failed.partial.meta.json").exists()
    server.clear_faults()
    # eval: responses from files, the judge over HTTP
    prompts = write_jsonl(tmp_path / "in" / "prompts.jsonl", [{"prompt": f"q{i}"} for i in range(3)])
    policy = write_jsonl(tmp_path / "in" / "policy.jsonl", [{"prompt": f"q{i}", "response": f"yes {i}"}
                                                            for i in range(3)])
    baseline = write_jsonl(tmp_path / "in" / "base.jsonl", [{"prompt": f"q{i}", "response": "no"} for i in range(3)])
    assert main(["eval", f"prompts={prompts}", f"outputs={policy}", f"baseline_outputs={baseline}",
                 f"output_dir={tmp_path / 'eval'}", "bootstrap_resamples=50", *judge]) == 0
    assert f"-> {tmp_path / 'eval'}/report.json" in capsys.readouterr().out  # not "-> ?/report.json"
    # selfplay: one iteration of a tiny model, judged over HTTP, with a win rate over HTTP
    held = write_jsonl(tmp_path / "in" / "held.jsonl", [{"prompt": "Describe the wind."}])
    pool = write_jsonl(tmp_path / "in" / "pool.jsonl", [{"prompt": p} for p in ("Tell me of the sea.", "A hill?")])
    assert main(["selfplay", f"model={tiny_model_dir}", f"prompts={pool}", f"eval_prompts={held}",
                 f"output_dir={tmp_path / 'selfplay'}", "iterations=1", "method=iterative", "keep_truncated=true",
                 *judge, "generation.num_completions=3", "generation.max_new_tokens=4", "train.batch_size=2",
                 "train.max_steps=1", "train.max_length=48", "train.max_prompt_length=24",
                 "train.reference_cache=off", "eval.generation.max_new_tokens=4", "eval.bootstrap_resamples=50"]) == 0
    assert "run" in json.loads((tmp_path / "selfplay" / "stages.json").read_text())  # the config, recorded
    assert files_holding_the_password(tmp_path) == []
    assert len(list(tmp_path.rglob("*.json"))) >= 10  # reports, settings, configs: all of them were searched
