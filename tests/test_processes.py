"""Judge, revise and eval under `accelerate launch` with 2 CPU processes write the bytes one
process writes, and each run's first line says how many processes it runs on.

Batches are cut by input position whatever the number of processes (prefero.processes), and
a batch is what the judge or the sampler sees at once, so the files are equal byte for byte,
not within a tolerance. The 1-process side runs in this process (same thread count as the
launched ones: one) and the 2-process side under the launcher.
"""

import json
import math

import pytest

from jsonl_files import write_jsonl
from launching import launch
from prefero.cli import main
from prefero.tiny import demo_records, save_tiny_scorer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # slow: see pyproject.toml


@pytest.fixture(scope="module")
def scorers(tmp_path_factory):
    root = tmp_path_factory.mktemp("scorers")
    return save_tiny_scorer(root / "rm", seed=1), save_tiny_scorer(root / "pm", pairwise=True, seed=2)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """10 rows of 3 completions (different lengths), in `prefero generate`'s shape: with
    batch_size=4, batches {0..3}, {4..7}, {8, 9}: 2 on process 0, 1 on process 1."""
    records = demo_records()
    rows = [{"index": i, "prompt": records[i]["prompt"],
             "completions": [records[i]["chosen"], records[i + 1]["rejected"], records[i]["chosen"] * 2],
             "finish_reasons": ["stop", "stop", "length"]} for i in range(10)]
    return write_jsonl(tmp_path_factory.mktemp("gen") / "gen.jsonl", rows)


def first_line(stdout: str) -> str:
    return stdout.splitlines()[0]


@pytest.mark.parametrize("kind, mode", [("reward_model", "pointwise"), ("pairwise_model", "pairwise")])
def test_judge_on_two_processes_writes_the_one_process_bytes(kind, mode, scorers, generated, tmp_path, capsys):
    model = scorers[0] if kind == "reward_model" else scorers[1]
    args = lambda out: [f"input={generated}", f"output={out}", f"judge.type={kind}", f"judge.model={model}",  # noqa: E731
                        f"mode={mode}", "batch_size=4"]
    one = tmp_path / "one.jsonl"
    assert main(["judge", *args(one)]) == 0
    assert first_line(capsys.readouterr().out) == f"prefero judge: 1 process, {kind} judge, 10 rows (0 done before)"
    two = tmp_path / "two" / "judged.jsonl"
    r = launch("judge", args(two))
    assert first_line(r.stdout) == f"prefero judge: 2 processes on cpu, {kind} judge, 10 rows (0 done before)"
    assert two.read_bytes() == one.read_bytes()
    rows = [json.loads(line) for line in one.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(10))
    if mode == "pairwise":  # P(A≻B) + P(B≻A) = 1 on every pair, whichever process judged it
        for row in rows:
            m = row["pairwise"]
            assert all(math.isclose(m[i][j] + m[j][i], 1.0, rel_tol=1e-12) for i in range(3) for j in range(3) if i != j)
    report = json.loads((tmp_path / "two" / "judged.report.json").read_text())
    one_report = json.loads((tmp_path / "one.report.json").read_text())
    assert report["this_run"]["processes"] == 2 and report["this_run"]["rows_judged"] == 10
    # the truncation tallies of both processes are summed into the report
    counted = {k: v for k, v in one_report["this_run"].items() if k.endswith("truncated")}
    assert {k: report["this_run"].get(k) for k in counted} == counted
    assert report["scores"] == one_report["scores"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["judged.jsonl", "judged.report.json"]


def test_revise_on_two_processes_writes_the_one_process_files(tiny_model_dir, tmp_path, capsys):
    rows = [{"prompt": r["prompt"]} for r in demo_records()[:7]]
    rows[3]["response"] = "The moon is a rock that circles the Earth."
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    args = lambda out: [f"prompts={prompts}", f"output_dir={out}", "rounds=1", "seed=0",  # noqa: E731
                        f"generation.model={tiny_model_dir}", "generation.max_new_tokens=8",
                        "generation.batch_size=3", "drop_truncated=false"]
    assert main(["revise", *args(tmp_path / "one")]) == 0
    assert first_line(capsys.readouterr().out).startswith("prefero revise: 1 process on cpu, 7 prompts")
    r = launch("revise", args(tmp_path / "two"))
    assert first_line(r.stdout) == "prefero revise: 2 processes on cpu, 7 prompts (0 done before), backend transformers"
    for name in ("transcripts.jsonl", "sft.jsonl", "pairs.jsonl"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    one, two = (json.loads((tmp_path / d / "revise_report.json").read_text()) for d in ("one", "two"))
    assert {k: v for k, v in two.items() if k not in ("output_dir", "seconds_this_run")} == \
        {k: v for k, v in one.items() if k not in ("output_dir", "seconds_this_run")}
    assert not list((tmp_path / "two").glob("*partial*"))


def test_eval_on_two_processes_writes_the_one_process_files(tiny_model_dir, tiny_qwen_dir, scorers, tmp_path,
                                                            capsys):
    """Both sides generated and a reward model judging, shared by 2 processes; process 0 reports."""
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["prompt"]} for r in demo_records()[:9]])
    args = lambda out: [f"model={tiny_model_dir}", f"baseline_model={tiny_qwen_dir}", f"prompts={prompts}",  # noqa: E731
                        "judge.type=reward_model", f"judge.model={scorers[0]}", "generation.max_new_tokens=8",
                        "generation.batch_size=2", "batch_size=2", f"output_dir={out}", "bootstrap_resamples=200",
                        "lc_resamples=20"]
    assert main(["eval", *args(tmp_path / "one")]) == 0
    assert first_line(capsys.readouterr().out) == "prefero eval: 1 process, 9 prompts"
    r = launch("eval", args(tmp_path / "two"))
    assert first_line(r.stdout) == "prefero eval: 2 processes on cpu, 9 prompts"
    for name in ("policy_responses.jsonl", "baseline_responses.jsonl", "judgments.jsonl", "comparisons.jsonl"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    one, two = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two"))
    assert two["win_rate"] == one["win_rate"] and two["win_rate_ci"] == one["win_rate_ci"]

    # again, on 2 processes: both read the same manifest and reuse every stage (none regenerated)
    stages = ("policy_responses.jsonl", "baseline_responses.jsonl", "judgments.jsonl")
    written = {name: (tmp_path / "two" / name).stat().st_mtime_ns for name in stages}
    launch("eval", [*args(tmp_path / "two"), "overwrite=true"])
    assert {name: (tmp_path / "two" / name).stat().st_mtime_ns for name in stages} == written
    assert json.loads((tmp_path / "two" / "report.json").read_text())["win_rate"] == one["win_rate"]
