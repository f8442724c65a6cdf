"""The stage runner (prefero.stages): one manifest per run directory; a finished stage with the
same fingerprint is skipped, a changed one refused naming the change (or redone with
overwrite), a killed one resumed, a second concurrent run refused."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from prefero.judges.config import JudgeConfig
from prefero.judges.run import judge_identity
from prefero.options import ConfigError
from prefero.stages import MANIFEST, Runner, Stage, content_id


class WordCount(Stage):
    """The toy stage: one class; running it is one line."""

    name = "count"

    def run(self):
        words = len((self.dir / "words.txt").read_text().split())
        (self.dir / "count.txt").write_text(str(words))
        calls.append(self.name)
        return {"words": words}


calls: list = []


def count_stage(root, **settings):
    return WordCount(inputs=["words.txt"], outputs=["count.txt"], settings=settings)


@pytest.fixture(autouse=True)
def no_calls():
    calls.clear()


def test_a_finished_stage_with_the_same_fingerprint_is_skipped(tmp_path):
    (tmp_path / "words.txt").write_text("wave salt tide")
    with Runner(tmp_path) as runner:
        assert runner.run(count_stage(tmp_path)) == {"words": 3}
    with Runner(tmp_path) as runner:
        assert runner.run(count_stage(tmp_path)) == {"words": 3}  # the recorded result
        assert (runner.ran, runner.skipped) == ([], ["count"])
    assert calls == ["count"]
    record = json.loads((tmp_path / MANIFEST).read_text())["stages"]["count"]
    assert record["finished"] and record["result"] == {"words": 3} and record["seconds"] >= 0
    assert record["fingerprint"]["inputs"] == {"words.txt": content_id(tmp_path / "words.txt")}


def test_a_missing_output_runs_the_stage_again(tmp_path):
    (tmp_path / "words.txt").write_text("wave salt tide")
    with Runner(tmp_path) as runner:
        runner.run(count_stage(tmp_path))
    (tmp_path / "count.txt").unlink()
    with Runner(tmp_path) as runner:
        runner.run(count_stage(tmp_path))
    assert calls == ["count", "count"] and (tmp_path / "count.txt").read_text() == "3"


def test_changed_input_content_is_refused_naming_it_and_overwrite_redoes(tmp_path):
    (tmp_path / "words.txt").write_text("wave salt tide")
    with Runner(tmp_path) as runner:
        runner.run(count_stage(tmp_path))
    (tmp_path / "words.txt").write_text("wave salt tide foam")  # same name, other content
    with Runner(tmp_path) as runner, pytest.raises(ConfigError, match=(
            r"^output_dir .*: stage 'count' finished with other inputs or settings \(words.txt changed\); rerun "
            r"with those to reuse it, or set overwrite=true to run it again$")):
        runner.run(count_stage(tmp_path))
    with Runner(tmp_path, overwrite=True) as runner:
        assert runner.run(count_stage(tmp_path)) == {"words": 4}
    assert calls == ["count", "count"]


def test_a_changed_judge_is_refused_naming_what_changed(tmp_path):
    (tmp_path / "words.txt").write_text("wave salt tide")
    judge_file = tmp_path / "verifier.py"
    judge_file.write_text("def judge(prompt, completions):\n    return [1.0 for _ in completions]\n")
    judge = JudgeConfig(type="callable", function=f"{judge_file}:judge").validate()
    with Runner(tmp_path) as runner:
        runner.run(count_stage(tmp_path, judge=judge_identity(judge)))
        runner.run(count_stage(tmp_path, judge=judge_identity(judge)))  # skipped: same judge
    judge_file.write_text("def judge(prompt, completions):\n    return [0.0 for _ in completions]\n")
    with Runner(tmp_path) as runner, pytest.raises(ConfigError, match=r"\(judge: function's source changed\)"):
        runner.run(count_stage(tmp_path, judge=judge_identity(judge)))
    with Runner(tmp_path) as runner, pytest.raises(ConfigError, match=r"\(judge.function: "):
        runner.run(count_stage(tmp_path, judge={**judge_identity(judge), "function": "other:judge"}))
    assert calls == ["count"]


def test_an_option_added_later_and_left_unset_is_no_change_and_a_set_one_is_named(tmp_path):
    # a run recorded by a version without `new_option`: the same settings with it at None
    # (unset) are the same run; before, they were refused with an empty "()" for a reason
    (tmp_path / "words.txt").write_text("wave salt tide")
    with Runner(tmp_path) as runner:
        runner.run(count_stage(tmp_path, max_steps=10))
    with Runner(tmp_path) as runner:
        assert runner.run(count_stage(tmp_path, max_steps=10, new_option=None)) == {"words": 3}
        assert runner.skipped == ["count"]
    with Runner(tmp_path) as runner, pytest.raises(ConfigError, match=r"\(new_option: None -> 3\)"):
        runner.run(count_stage(tmp_path, max_steps=10, new_option=3))
    assert calls == ["count"]


def test_a_stage_that_fails_is_not_recorded_as_finished(tmp_path):
    (tmp_path / "words.txt").write_text("wave")

    def broken():
        raise RuntimeError("out of memory")

    with Runner(tmp_path) as runner, pytest.raises(RuntimeError, match="out of memory"):
        runner.run(Stage("broken", broken, inputs=["words.txt"]))
    assert not json.loads((tmp_path / MANIFEST).read_text())["stages"]["broken"]["finished"]
    with Runner(tmp_path) as runner, pytest.raises(RuntimeError, match="finished without writing never.txt"):
        runner.run(Stage("lazy", lambda: None, outputs=["never.txt"]))


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from prefero.stages import Runner, Stage

root = Path(sys.argv[1])

def rows():  # a resumable stage: keeps the rows an earlier run appended
    partial = root / "rows.partial"
    done = len(partial.read_text().splitlines()) if partial.exists() else 0
    for i in range(done, 6):
        with open(partial, "a") as f:
            f.write(f"{i}\\n")
        if i == 2 and sys.argv[2] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
    partial.rename(root / "rows.txt")
    return {"rows": 6, "resumed_at": done}

with Runner(root) as runner:
    print("ready", flush=True)
    if sys.argv[2] == "hold":
        sys.stdin.readline()
    else:
        print(runner.run(Stage("rows", rows, outputs=["rows.txt"], settings={"n": 6})))
"""


def test_a_killed_stage_resumes_and_its_lock_is_taken_over(tmp_path):
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(tmp_path), "kill"], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL
    record = json.loads((tmp_path / MANIFEST).read_text())["stages"]["rows"]
    assert record["finished"] is False and not (tmp_path / "rows.txt").exists()
    again = subprocess.run([sys.executable, "-c", KILLED_RUN, str(tmp_path), "resume"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "{'rows': 6, 'resumed_at': 3}" in again.stdout  # the killed run's 3 rows kept, none redone
    assert (tmp_path / "rows.txt").read_text() == "".join(f"{i}\n" for i in range(6))
    assert json.loads((tmp_path / MANIFEST).read_text())["stages"]["rows"]["finished"] is True


def test_a_second_concurrent_run_is_refused_at_once(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tmp_path), "hold"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(ConfigError, match=rf"^output_dir {tmp_path} is being written by another prefero run "
                                              rf"\(PID {holder.pid}\)"):
            with Runner(tmp_path):
                pass
    finally:
        holder.communicate("\n", timeout=60)
    with Runner(tmp_path):  # released: the next run takes it
        pass


def test_an_unfinished_stage_with_other_settings_is_refused(tmp_path):
    def killed():
        raise KeyboardInterrupt

    with Runner(tmp_path) as runner, pytest.raises(KeyboardInterrupt):
        runner.run(Stage("rows", killed, settings={"n": 6}))
    with Runner(tmp_path) as runner, pytest.raises(ConfigError, match=r"stage 'rows' started with other inputs or "
                                                                       r"settings \(n: 6 -> 7\); rerun with those to "
                                                                       r"resume it"):
        runner.run(Stage("rows", lambda: None, settings={"n": 7}))


def test_a_stage_knows_it_resumes_its_own_unfinished_run(tmp_path):
    seen = []

    def killed():
        raise KeyboardInterrupt

    class Probe(Stage):
        def run(self):
            seen.append(self.resuming)
            (self.dir / "out.txt").write_text("done")

    with Runner(tmp_path) as runner, pytest.raises(KeyboardInterrupt):
        runner.run(Stage("s", killed, settings={"n": 1}))
    with Runner(tmp_path) as runner:
        runner.run(Probe("s", outputs=["out.txt"], settings={"n": 1}))  # the killed run's own
    with Runner(tmp_path, overwrite=True) as runner:
        runner.run(Probe("s", outputs=["out.txt"], settings={"n": 2}))  # redone with other settings
        runner.run(Probe("t", outputs=["out.txt"]))  # never started before
    assert seen == [True, False, False]


def test_processes_of_one_run_decide_alike_and_only_process_0_writes(tmp_path):
    """Two processes (threads here, with a real barrier). Process 1 starts late: process 0
    would have finished and recorded stages a and b before process 1 read the manifest, but
    both decide from the copy they read together, so each stage is run by both or skipped by
    both."""
    import threading
    from types import SimpleNamespace

    (tmp_path / "words.txt").write_text("wave salt tide")
    with Runner(tmp_path) as runner:
        runner.run(count_stage(tmp_path))  # finished earlier: both skip it
    barrier = threading.Barrier(2, timeout=60)
    ran = {0: [], 1: []}
    errors = []

    def process(rank):
        procs = SimpleNamespace(main=rank == 0, barrier=barrier.wait)
        time.sleep(0.5 * rank)
        try:
            with Runner(tmp_path, procs=procs) as runner:
                runner.run(count_stage(tmp_path))
                for name in ("a", "b"):
                    runner.run(Stage(name, lambda name=name: ran[rank].append(name)))
                ran[rank].extend(f"skipped {n}" for n in runner.skipped)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=process, args=(rank,)) for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert ran[0] == ran[1] == ["a", "b", "skipped count"]
    stages = json.loads((tmp_path / MANIFEST).read_text())["stages"]
    assert [(n, r["finished"]) for n, r in stages.items()] == [("count", True), ("a", True), ("b", True)]
    assert calls == ["count"]  # once, by the first (one-process) run


class InProcess(Stage):
    """A stage that says which process ran it, for side-by-side runs (module level: it pickles)."""

    def __init__(self, name, fail=False, **kw):
        super().__init__(name, outputs=[f"{name}.txt"], **kw)
        self.fail = fail

    def run(self):
        if self.fail:
            raise ValueError(f"{self.name} failed")
        (self.dir / f"{self.name}.txt").write_text(str(os.getpid()))
        return {"pid": os.getpid()}


def test_stages_side_by_side_run_in_worker_processes_and_are_recorded_here(tmp_path):
    done = []
    with Runner(tmp_path) as runner:
        runner.run(InProcess("a"))
        results = runner.run_side_by_side([InProcess("a"), InProcess("b"), InProcess("c")], processes=2,
                                          done=lambda stage: done.append(stage.name))
    assert results[0]["pid"] == os.getpid()  # recorded earlier, skipped
    assert os.getpid() not in (results[1]["pid"], results[2]["pid"])  # in the worker processes
    assert sorted(done) == ["a", "b", "c"] and done[0] == "a"
    stages = json.loads((tmp_path / MANIFEST).read_text())["stages"]
    assert all(stages[n]["finished"] and stages[n]["result"]["pid"] == results[i]["pid"] for i, n in enumerate("abc"))

    # a changed stage is refused before any of the others starts
    with Runner(tmp_path) as runner, pytest.raises(ConfigError, match=r"stage 'c' finished with other inputs"):
        runner.run_side_by_side([InProcess("d"), InProcess("c", settings={"n": 2})], processes=2)
    assert "d" not in json.loads((tmp_path / MANIFEST).read_text())["stages"]

    # a failure is raised once the others end, and they are recorded finished; the failed one
    # is not, and what waits for it never starts
    with Runner(tmp_path) as runner, pytest.raises(ValueError, match="e failed"):
        runner.run_side_by_side([InProcess("d"), InProcess("e", fail=True), InProcess("f")], processes=2,
                                after={"f": ["e"]})
    stages = json.loads((tmp_path / MANIFEST).read_text())["stages"]
    assert stages["d"]["finished"] and not stages["e"]["finished"] and "f" not in stages


class Reads(Stage):
    """Writes its name after what the stage it reads wrote (module level: it pickles)."""

    def __init__(self, name, reads=None):
        super().__init__(name, inputs=[f"{reads}.txt"] if reads else [], outputs=[f"{name}.txt"])
        self.reads = reads

    def run(self):
        before = (self.dir / f"{self.reads}.txt").read_text() if self.reads else ""
        (self.dir / f"{self.name}.txt").write_text(before + self.name)
        return before + self.name


def test_a_stage_side_by_side_starts_after_those_it_reads(tmp_path):
    stages = [Reads("a"), Reads("b", reads="a"), Reads("c", reads="b"), Reads("x")]
    after = {"b": ["a"], "c": ["b"]}
    with Runner(tmp_path) as runner:
        assert runner.run_side_by_side(stages, processes=2, after=after) == ["a", "ab", "abc", "x"]
    (tmp_path / "a.txt").write_text("A")  # b's input changed: refused when b's turn comes, not before
    with Runner(tmp_path) as runner, pytest.raises(ConfigError, match=r"stage 'b' finished with other inputs"):
        runner.run_side_by_side(stages, processes=2, after=after)
    with Runner(tmp_path, overwrite=True) as runner:  # b runs again on the new a.txt, and so c after it
        assert runner.run_side_by_side(stages, processes=2, after=after) == ["a", "Ab", "Abc", "x"]
        assert sorted(runner.ran) == ["b", "c"] and sorted(runner.skipped) == ["a", "x"]


@pytest.mark.parametrize("processes", [1, 2])
def test_a_stage_listed_before_one_it_waits_for_is_refused(tmp_path, processes):
    """One process runs the list in order, so the order must honour every wait (with any
    count, so a graph that runs on 2 processes runs on 1 alike)."""
    with Runner(tmp_path) as runner, pytest.raises(ValueError, match="stage 'b' is listed before a, which it waits"):
        runner.run_side_by_side([Reads("b", reads="a"), Reads("a")], processes=processes, after={"b": ["a"]})
    assert not (tmp_path / "a.txt").exists()  # refused before any stage ran


def test_content_ids_follow_content_not_names(tmp_path, monkeypatch):
    import hashlib

    from prefero import stages

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\0" * 100)
    (model / ".model.lock").write_text("123 host")  # hidden: not content
    before = content_id(model)
    assert before == {"config.json": hashlib.sha256(b"{}").hexdigest(),
                      "model.safetensors": hashlib.sha256(b"\0" * 100).hexdigest()}
    (model / "model.safetensors").write_bytes(b"\1" * 100)  # same size, other bytes
    assert content_id(model) != before
    monkeypatch.setattr(stages, "HASHED_BYTES", 10)  # weights past the limit: size and time, not bytes
    st = (model / "model.safetensors").stat()
    assert content_id(model)["model.safetensors"] == f"size 100 mtime_ns {st.st_mtime_ns}"
    assert content_id(tmp_path / "missing") is None
