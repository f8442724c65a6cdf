"""A stage output is one run's, whole, and made from what the settings say (issue 16: 6, 7, 8, 11, 13).

- resume refuses rows made from other input content or by another judge (item 6);
- one run per output: a second run fails at once naming the holder's PID, a killed holder's
  lock is taken over (item 7, with real processes);
- a kill between a stage's output and its report loses nothing (item 8);
- bad output paths and a full disk are one line, before any work where they can be (item 11);
- self-play checks its model before it creates anything (item 13).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from prefero import pipeline_io
from prefero.cli import main
from prefero.judges import run as judge_run
from prefero.judges.config import JudgeRunConfig
from prefero.judges.run import run_judge
from prefero.label import LabelConfig, run_label
from prefero.options import ConfigError, load_config
from prefero.selfplay import run as sp_run
from prefero.selfplay.config import SelfPlayConfig
from prefero.stages import MANIFEST, Runner, Stage, content_id


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_judge(path: Path, fail_on: str | None = None, offset: int = 0) -> str:
    """A verifier file scoring completions by length (+ offset), raising on one prompt (a kill)."""
    path.write_text(textwrap.dedent(f"""
        def score(prompt, completions):
            if prompt == {fail_on!r}:
                raise RuntimeError("killed")
            return [len(c) + {offset} for c in completions]
    """))
    return f"{path}:score"


def judged_input(path: Path, version: str = "a", n: int = 6) -> Path:
    return write_jsonl(path, [{"prompt": f"p{i}", "completions": [f"{version}{i}", "x" * (i + 1)]} for i in range(n)])


def judge_cfg(src: Path, out: Path, function: str, *extra: str) -> JudgeRunConfig:
    return load_config(None, [f"input={src}", f"output={out}", "judge.type=callable", f"judge.function={function}",
                              "batch_size=2", *extra], cls=JudgeRunConfig)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- item 6


def test_judge_resume_refuses_changed_input_content_and_redoes_with_overwrite(tmp_path):
    src, out = judged_input(tmp_path / "gen.jsonl"), tmp_path / "judged.jsonl"
    fn = write_judge(tmp_path / "verifier.py", fail_on="p4")
    with pytest.raises(Exception, match="killed"):
        run_judge(judge_cfg(src, out, fn))  # rows 0-3 saved, then "killed"
    judged_input(src, version="b")  # the input regenerated in place, same path
    with pytest.raises(ConfigError, match=r"judged.partial.jsonl holds rows of an unfinished run with different "
                                          r"settings \(input content changed\)"):
        run_judge(judge_cfg(src, out, fn))
    fn = write_judge(tmp_path / "verifier.py")
    run_judge(judge_cfg(src, out, fn, "overwrite=true"))
    assert [r["completions"][0] for r in rows(out)] == [f"b{i}" for i in range(6)]  # no stale row kept


def test_judge_resume_refuses_an_edited_verifier(tmp_path):
    src, out = judged_input(tmp_path / "gen.jsonl"), tmp_path / "judged.jsonl"
    fn = write_judge(tmp_path / "verifier.py", fail_on="p4")
    with pytest.raises(Exception, match="killed"):
        run_judge(judge_cfg(src, out, fn))
    write_judge(tmp_path / "verifier.py", fail_on="p4", offset=100)  # same name, other scores
    with pytest.raises(ConfigError, match=r"\(judge: function's source changed\)"):
        run_judge(judge_cfg(src, out, fn))
    write_judge(tmp_path / "verifier.py", fail_on="p4")  # the verifier the rows were made with: resumed
    with pytest.raises(Exception, match="killed"):
        run_judge(judge_cfg(src, out, fn))
    write_judge(tmp_path / "verifier.py")
    report = run_judge(judge_cfg(src, out, fn, "overwrite=true"))  # the fixed one: judged again, whole
    assert report["this_run"]["rows_judged"] == 6


def test_selfplay_refuses_a_changed_prompt_pool(tmp_path):
    cfg = load_config(None, ["model=m", "prompts=p.jsonl", f"output_dir={tmp_path / 'run'}", "judge.type=callable",
                             "judge.function=m:f"], cls=SelfPlayConfig)
    inputs = {"prompts_sha256": "0" * 64, "eval_prompts_sha256": None, "judge": {}, "eval_judge": None}

    def prepare(inputs):
        with Runner(cfg.output_dir) as runner:
            sp_run.prepare_output_dir(cfg, runner, inputs)

    prepare(inputs)
    prepare(inputs)  # the same: resumed
    with pytest.raises(ConfigError, match=r"another config \(inputs: prompts content changed\)"):
        prepare({**inputs, "prompts_sha256": "1" * 64})
    with pytest.raises(ConfigError, match=r"\(inputs.judge: function's source changed\)"):
        prepare({**inputs, "judge": {"function_source_sha256": "2" * 64}})


def test_selfplay_reads_its_inputs_where_they_are_under_a_relative_output_dir(tmp_path, monkeypatch,
                                                                              tiny_model_dir):
    # the runner reads a relative stage path in the run directory: the cwd-relative
    # run/iter_1/generated.jsonl was looked for at run/run/iter_1/..., its content read as
    # None, and a changed input went unnoticed on resume
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Tell me a story."}])
    cfg = load_config(None, [f"model={tiny_model_dir}", "prompts=p.jsonl", "output_dir=run", "iterations=1",
                             "judge.type=callable", "judge.function=m:f"], cls=SelfPlayConfig)
    stages = {s.name: s for s in sp_run.iteration_stages(cfg, 1, pipeline_io.read_prompts("p.jsonl"), range(1))}
    generated = write_jsonl(tmp_path / "run" / "iter_1" / "generated.jsonl", [{"prompt": "a", "completions": ["b"]}])

    def read(name):  # what the runner of output_dir reads for a stage's inputs
        return list(stages[name].fingerprint(Path(cfg.output_dir))["inputs"].values())

    assert read("iter_1/judge") == [content_id(generated)]
    assert read("iter_1/generate") == [content_id(Path(tiny_model_dir))]  # the starting model's files
    before = read("iter_1/judge")
    write_jsonl(generated, [{"prompt": "a", "completions": ["c"]}])
    assert read("iter_1/judge") != before


# --------------------------------------------------------------------------- item 7

HOLDER = """
import sys, time
from prefero.stage_files import OutputLock
locks = [OutputLock(p) for p in sys.argv[1:]]
for lock in locks:
    lock.acquire()
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_a_second_run_fails_at_once_naming_the_holder_and_a_killed_holder_is_taken_over(tmp_path, capsys,
                                                                                         tiny_model_dir):
    src = judged_input(tmp_path / "gen.jsonl")
    fn = write_judge(tmp_path / "verifier.py")
    run_judge(judge_cfg(src, tmp_path / "judged.jsonl", fn))
    judged, pairs, run_dir = tmp_path / "j2.jsonl", tmp_path / "pairs.jsonl", tmp_path / "sp"
    gen, revised, evaluated = tmp_path / "gen2.jsonl", tmp_path / "rev", tmp_path / "ev"
    revised.mkdir()
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "hi"}])
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(judged), str(pairs), str(run_dir), str(gen),
                               str(revised / "transcripts.jsonl"), str(evaluated)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        judge_args = ["judge", f"input={src}", f"output={judged}", "judge.type=callable", f"judge.function={fn}"]
        label_args = ["label", f"input={tmp_path / 'judged.jsonl'}", f"output={pairs}"]
        others = [["generate", f"model={tiny_model_dir}", f"prompts={prompts}", f"output={gen}"],
                  ["revise", f"prompts={prompts}", f"output_dir={revised}", f"generation.model={tiny_model_dir}"],
                  ["eval", f"outputs={src}", f"baseline_outputs={src}", f"output_dir={evaluated}",
                   "judge.type=callable", f"judge.function={fn}"]]
        for args in (judge_args, label_args, *others):
            assert main(args) == 2
            err = capsys.readouterr().err
            assert f"is being written by another prefero run (PID {holder.pid})" in err
            assert err.count("\n") == 1
        assert not judged.exists() and not pairs.exists() and not gen.exists() and not evaluated.exists()
        assert [p.name for p in revised.iterdir()] == [".transcripts.jsonl.lock"]
        cfg = load_config(None, [f"model={tiny_model_dir}", f"prompts={src}", f"output_dir={run_dir}",
                                 "judge.type=callable", f"judge.function={fn}"], cls=SelfPlayConfig)
        with pytest.raises(ConfigError, match=rf"output_dir {run_dir} is being written .*PID {holder.pid}"):
            sp_run.run_selfplay(cfg)
        assert not run_dir.exists()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        # the lock files are still there, their flock gone with the process: taken over
        assert (tmp_path / ".j2.jsonl.lock").exists()
        assert main(judge_args) == 0 and main(label_args) == 0
        assert judged.exists() and pairs.exists()
        assert not (tmp_path / ".j2.jsonl.lock").exists() and not (tmp_path / ".pairs.jsonl.lock").exists()
    finally:
        holder.kill()
        holder.wait()


# --------------------------------------------------------------------------- item 8


class Killed(BaseException):
    pass


def test_a_kill_between_output_and_report_is_finished_by_the_rerun(tmp_path, monkeypatch):
    src, out = judged_input(tmp_path / "gen.jsonl"), tmp_path / "judged.jsonl"
    fn = write_judge(tmp_path / "verifier.py")

    def killed(*args):
        raise Killed()

    monkeypatch.setattr(judge_run, "atomic_write_json", killed)
    with pytest.raises(Killed):
        run_judge(judge_cfg(src, out, fn))
    monkeypatch.undo()
    finished = out.read_bytes()
    assert not out.with_name("judged.report.json").exists()
    report = run_judge(judge_cfg(src, out, fn))  # not "already exists": the report is written, nothing judged
    assert report["rows"] == 6 and report["this_run"]["rows_judged"] == 0
    assert out.read_bytes() == finished
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen.jsonl", "judged.jsonl", "judged.report.json",
                                                          "verifier.py"]
    with pytest.raises(ConfigError, match="already exists"):  # finished now, whole
        run_judge(judge_cfg(src, out, fn))


class EchoSampler:
    """K completions per prompt without a model; counts its calls."""

    def __init__(self):
        self.calls = 0

    def check(self, prompts):
        pass

    def sample(self, prompts, indices, batch):
        from prefero.generate.sampler import Sample

        self.calls += 1
        return [Sample(p.text, [f"{p.text}!", f"{p.text}?"], ["stop", "length"], 4) for p in prompts]

    def close(self):
        pass


def test_generate_killed_before_its_report_writes_it_without_sampling(tmp_path, monkeypatch):
    from prefero.generate import GenerateConfig
    from prefero.generate import run as gen_run

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"q{i}"} for i in range(3)])
    cfg = lambda: load_config(None, ["model=m", f"prompts={prompts}", f"output={tmp_path / 'gen.jsonl'}",  # noqa: E731
                                     "backend=openai", "base_url=http://localhost:1/v1", "num_completions=2"],
                              cls=GenerateConfig)

    def killed(*args):
        raise Killed()

    monkeypatch.setattr(gen_run, "atomic_write_json", killed)
    with pytest.raises(Killed):
        gen_run.run_generate(cfg(), sampler=EchoSampler())
    monkeypatch.undo()
    assert not (tmp_path / "gen.report.json").exists()
    sampler = EchoSampler()
    report = gen_run.run_generate(cfg(), sampler=sampler)
    assert sampler.calls == 0 and report["prompts"] == 3 and report["prompts_this_run"] == 0
    assert report["hit_max_new_tokens"] == 3
    assert json.loads((tmp_path / "gen.report.json").read_text()) == report


def test_label_writes_its_report_before_its_output(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "judged.jsonl", [{"prompt": "p", "completions": ["a", "bb"], "scores": [0, 1]}])
    cfg = LabelConfig(input=str(src), output=str(tmp_path / "pairs.jsonl"))

    def killed(*args):
        raise Killed()

    monkeypatch.setattr("prefero.label.atomic_write_json", killed)  # killed as the report is written
    with pytest.raises(Killed):
        run_label(cfg)
    monkeypatch.undo()
    assert not (tmp_path / "pairs.jsonl").exists()  # no output without its report: the rerun is not refused
    assert run_label(cfg)["kept"] == 1
    assert (tmp_path / "pairs.report.json").exists()


# --------------------------------------------------------------------------- item 11


def test_bad_output_paths_are_one_line_before_any_work(tmp_path, capsys, tiny_model_dir):
    src = judged_input(tmp_path / "gen.jsonl")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "hi"}])
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    (tmp_path / "dir.jsonl").mkdir()
    judge = ["judge.type=callable", f"judge.function={write_judge(tmp_path / 'verifier.py')}"]
    cases = [
        (["judge", f"input={src}", f"output={tmp_path / 'dir.jsonl'}", "overwrite=true", *judge], "is a directory"),
        (["label", f"input={src}", f"output={tmp_path / 'dir.jsonl'}", "overwrite=true"], "is a directory"),
        (["generate", f"model={tiny_model_dir}", f"prompts={prompts}", f"output={tmp_path / 'dir.jsonl'}",
          "overwrite=true"], "is a directory"),
        (["judge", f"input={src}", f"output={a_file / 'j.jsonl'}", *judge], "which is a file"),
        (["revise", f"prompts={prompts}", f"output_dir={a_file}", f"generation.model={tiny_model_dir}"],
         "is a file"),
        (["eval", f"outputs={src}", f"baseline_outputs={src}", f"output_dir={a_file / 'e'}", *judge],
         "which is a file"),
        (["selfplay", f"model={tiny_model_dir}", f"prompts={prompts}", f"output_dir={a_file}", *judge],
         "is a file"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.jsonl", "file.txt", "gen.jsonl", "prompts.jsonl",
                                                          "verifier.py"]
    assert not any((tmp_path / "dir.jsonl").iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory; the file cases above "
                                               "cover the path checks")
def test_a_read_only_output_directory_is_one_line(tmp_path, capsys):
    src = judged_input(tmp_path / "gen.jsonl")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["label", f"input={src}", f"output={ro / 'p.jsonl'}"]) == 2
    finally:
        ro.chmod(0o755)
    assert "cannot write in" in capsys.readouterr().err


def test_a_full_disk_is_one_line_and_the_rerun_resumes(tmp_path, monkeypatch, capsys):
    src, out = judged_input(tmp_path / "gen.jsonl"), tmp_path / "judged.jsonl"
    args = ["judge", f"input={src}", f"output={out}", "batch_size=2", "judge.type=callable",
            f"judge.function={write_judge(tmp_path / 'verifier.py')}"]
    fsync, writes = os.fsync, []

    def full_after_two_batches(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".partial.jsonl"):
            writes.append(fd)
            if len(writes) > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(pipeline_io.os, "fsync", full_after_two_batches)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err == f"prefero: error: disk full while writing {tmp_path / 'judged.partial.jsonl'}; the partial file " \
                  "is kept, rerun to resume\n"
    monkeypatch.undo()
    assert main(args) == 0
    assert json.loads(out.with_name("judged.report.json").read_text())["this_run"]["rows_resumed"] >= 4


# --------------------------------------------------------------------------- item 13


def test_selfplay_with_a_wrong_model_creates_nothing_and_the_corrected_rerun_runs(tmp_path, tiny_model_dir,
                                                                                  monkeypatch):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Say a word."}, {"prompt": "Name a colour."}])
    out = tmp_path / "runs" / "sp"
    args = [f"prompts={prompts}", f"output_dir={out}", "iterations=1", "method=iterative", "judge.type=callable",
            f"judge.function={write_judge(tmp_path / 'verifier.py')}", "generation.num_completions=2"]
    with pytest.raises(ConfigError, match=r"^model: not found: .*no-such-model$"):
        sp_run.run_selfplay(load_config(None, [f"model={tmp_path / 'no-such-model'}", *args], cls=SelfPlayConfig))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "verifier.py"]  # no runs/, no lock
    stages = []
    monkeypatch.setattr(sp_run, "iteration_stages", lambda cfg, n, pool, indices: [
        Stage(name, lambda name=name: stages.append(name)) for name in sp_run.stage_names(cfg)])
    monkeypatch.setattr("prefero.selfplay.summary.write_summary", lambda cfg: {"per_iteration": [{}]})
    monkeypatch.setattr("prefero.selfplay.summary.iteration_line", lambda *a, **k: "")
    sp_run.run_selfplay(load_config(None, [f"model={tiny_model_dir}", *args], cls=SelfPlayConfig))
    assert stages == ["generate", "judge", "label", "train"]
    assert json.loads((out / MANIFEST).read_text())["run"]["model"] == str(tiny_model_dir)
