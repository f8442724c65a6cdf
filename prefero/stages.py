"""A run directory's stages, and the one runner that decides which of them to run.

    with Runner("runs/x", overwrite=False) as runner:
        runner.run(Stage("sft", train_sft, inputs=["data/sft.jsonl"], outputs=["sft"],
                         settings={"sft": {"max_steps": 500}}))
        runner.run(Stage("dpo", train_dpo, inputs=["sft", "data/pairs.jsonl"], outputs=["dpo"],
                         settings={"beta": 0.1}))

A stage has a name, the work, what it reads (`inputs`: files or folders), what it writes
(`outputs`) and `settings`: everything else its output depends on (its keys, the identity of
its model or judge: `prefero.judges.run.judge_identity`). Its *fingerprint* is the settings
plus the content of every input (`content_id`), taken just before the stage would run, so an
input an earlier stage of the same run rewrote counts as changed.

One manifest per run directory, `DIR/stages.json`, holds each stage's fingerprint, and for a
finished stage its result (the numbers it returned) and its time. The runner:

- skips a finished stage whose fingerprint is the same and whose outputs are all there, and
  returns the result it recorded;
- refuses a stage recorded (finished or not) with another fingerprint, in one line naming
  what changed, unless `overwrite=True`, which runs it again (and so every later stage that
  reads what it rewrote);
- runs a stage with no record, or an unfinished one with the same fingerprint: a killed stage
  resumes by its own means (generate, judge and eval keep their finished rows, a trainer
  restarts from its newest checkpoint), and only then is it recorded as finished, with the
  result it returned: output and record are committed together, never a record of an output
  that is not there.

One run holds the directory at a time: a second runner fails at once naming the holder's PID
(`prefero.stage_files.OutputLock`, a flock that the kernel drops when its process dies, so a
killed run's lock is taken over).

Several processes of one run (`accelerate launch`: `procs`, a `prefero.processes.Processes`)
share one runner each: process 0 takes the lock and alone writes the manifest; every process
reads the manifest once, between two barriers, after the lock is held and before anything is
written, and decides from that same copy, so all of them skip or run the same stages.

Stages none of which reads what another writes may run side by side in worker processes
(`run_side_by_side`: on a machine with cores to spare, a run of small one-thread stages
takes the time of its longest share, not of their sum); the runner records them as above.

Adding a stage to a command is one `Stage(...)` (or a
subclass with a `run` method) and one `runner.run(...)` line.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from prefero.files import atomic_write_json, scrub_credentials
from prefero.options import ConfigError
from prefero.stage_files import OutputLock, changes_in_words, join_changes, same_settings

MANIFEST = "stages.json"
#: Files up to this size are fingerprinted by their bytes; larger ones (model weights) by their
#: size and modification time, which every rewrite changes, without reading gigabytes.
HASHED_BYTES = 64 << 20


class Stage:
    """One step of a run (module docstring). Subclass it and define `run`, or pass `work`."""

    name: str = ""
    dir: Path  # the run directory, set by the runner before `run`
    #: set by the runner before `run`: True when an earlier run started this stage with the same
    #: fingerprint and did not record it finished (a kill), so what it wrote is this stage's own
    resuming: bool = False

    def __init__(self, name: str | None = None, work: Callable[[], Any] | None = None, *,
                 inputs: Sequence[str | os.PathLike] = (), outputs: Sequence[str | os.PathLike] = (),
                 settings: dict | None = None):
        self.name = name or self.name
        if not self.name:
            raise ValueError("a stage needs a name")
        self.work = work
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.settings = settings or {}

    def run(self) -> Any:
        """Do the stage's work; returns JSON-able numbers recorded with it (or None)."""
        if self.work is None:
            raise NotImplementedError(f"stage {self.name!r} has no work")
        return self.work()

    def fingerprint(self, root: Path) -> dict:
        inputs = {str(p): content_id(_at(root, p)) for p in self.inputs}
        return _as_recorded({"settings": self.settings, "inputs": inputs})


def content_id(path: Path) -> str | dict | None:
    """What identifies a file's or folder's content: sha256 of a file's bytes (size and
    modification time past HASHED_BYTES), a folder's files by relative path (hidden ones and
    lock files left out), None for a path that is not there."""
    if path.is_file():
        st = path.stat()
        if st.st_size > HASHED_BYTES:
            return f"size {st.st_size} mtime_ns {st.st_mtime_ns}"
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    if path.is_dir():
        return {str(p.relative_to(path)): content_id(p) for p in sorted(path.rglob("*"))
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)}
    return None


def what_changed(old: dict, new: dict, limit: int = 4) -> str:
    """Two fingerprints' differences in words: the inputs whose content changed, then the
    settings' changed keys."""
    a, b = old.get("inputs", {}), new.get("inputs", {})
    parts = [f"{p} {'changed' if a.get(p) and b.get(p) else 'is gone' if b.get(p) is None else 'is new'}"
             for p in sorted(set(a) | set(b)) if a.get(p) != b.get(p)]
    return join_changes(parts + changes_in_words(old.get("settings", {}), new.get("settings", {})), limit)


def _at(root: Path, path: str | os.PathLike) -> Path:
    path = Path(path)
    return path if path.is_absolute() else root / path


class Runner:
    """Runs stages in one directory under one manifest (module docstring). Use it as a
    context manager: it holds the directory's lock while open."""

    def __init__(self, directory: str | os.PathLike, overwrite: bool = False, key: str = "output_dir",
                 redo: str = "set overwrite=true to run it again", procs=None):
        self.dir = Path(directory)
        self.main = procs is None or procs.main
        self.barrier = procs.barrier if procs is not None else None
        self.overwrite = overwrite
        self.key = key
        self.redo = redo  # how a user of this command asks for a changed stage to run again
        self.path = self.dir / MANIFEST
        self.lock = OutputLock(self.dir, key)
        self.stages: dict[str, dict] | None = None  # the manifest, read on first use
        self.config: dict | None = None  # the whole run's config, for a command that records one
        self.open = False
        self._pool, self._pool_size = None, 0  # worker processes for side-by-side stages
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def __enter__(self) -> "Runner":
        self.stages = None
        if self.main:
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()  # beside the directory: a command may clear the directory while holding it
        if self.barrier is not None:
            self.barrier()  # process 0 holds the lock: no other run writes the manifest now
            self._load()
            self.barrier()  # every process has its copy before process 0 writes to it
        self.open = True
        return self

    def _load(self) -> dict:
        if self.stages is None:
            try:
                manifest = json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}
                self.stages, self.config = manifest.get("stages", {}), manifest.get("run")
            except (OSError, ValueError, AttributeError) as e:
                raise ConfigError(f"{self.key}: {self.path} is unreadable ({e}); delete it to run every stage "
                                  "again") from None
        return self.stages

    # ------------------------------------------------------------ the run's own config

    def earlier_config(self, config: dict, ignore: Sequence[str] = ()) -> list[str] | None:
        """How `config` differs from the config the manifest records for the whole run (in
        words, less the keys in `ignore`: those a run may change and continue), or None when
        it records none: a command whose every stage depends on its whole config (self-play)
        refuses another config before any stage starts, instead of at the first one."""
        self._load()
        if self.config is None:
            return None
        return changes_in_words(self.config, _as_recorded(config), ignore)

    def record_config(self, config: dict) -> None:
        self._load()
        self.config = _as_recorded(config)
        self._write()

    def forget(self) -> None:
        """The directory was cleared: nothing recorded before is there any more."""
        self.stages, self.config = {}, None

    def __exit__(self, *exc) -> None:
        self.open = False
        try:
            self.close_processes()
        finally:
            self.lock.release()

    def seconds(self, name: str) -> float | None:
        return self._load().get(name, {}).get("seconds")

    def run(self, stage: Stage) -> Any:
        """Skip, refuse, or run `stage` (module docstring); returns its result."""
        skip, value = self._decide(stage)
        if skip:
            return value
        self._started(stage, value)
        start = time.perf_counter()
        result = stage.run()
        return self._finished(stage, value, result, time.perf_counter() - start)

    def run_side_by_side(self, stages: Sequence[Stage], processes: int,
                         done: Callable[[Stage], None] = lambda stage: None,
                         after: dict[str, Sequence[str]] | None = None) -> list:
        """Run `stages`, `processes` at a time in the run's worker processes (`processes()`:
        spawned, so a stage must pickle: a class with its settings, not a closure); returns
        their results in order, and calls `done(stage)` here as each is recorded or skipped.

        A stage starts once the stages `after[its name]` names (among these) are finished: it
        may read what they write, and is checked (skipped, refused, or run) only then, as it
        would be one after the other. No stage starts after one failed; the first failure is
        raised once the running ones end, and they are recorded. One process: in the order
        given, in this one, so a stage must come after every stage it waits for (checked)."""
        names = {s.name for s in stages}
        waits = {s.name: set((after or {}).get(s.name, ())) & names for s in stages}
        earlier: set[str] = set()
        for s in stages:
            if waits[s.name] - earlier:
                raise ValueError(f"stage {s.name!r} is listed before {', '.join(sorted(waits[s.name] - earlier))}, "
                                 "which it waits for")
            earlier.add(s.name)
        if processes <= 1 or len(stages) <= 1 or not self.main:
            return [(self.run(s), done(s))[0] for s in stages]
        from concurrent.futures import FIRST_COMPLETED, wait

        finished: set[str] = set()
        results: dict[int, Any] = {}
        pending, running = list(range(len(stages))), {}
        error = None
        pool = self.processes(processes)
        try:
            while pending or running:
                ready = [i for i in pending if not waits[stages[i].name] - finished] if error is None else []
                decided = [(i, self._decide(stages[i])) for i in ready]  # every refusal before any starts
                for i, (skip, value) in decided:
                    pending.remove(i)
                    if skip:
                        results[i] = value
                        finished.add(stages[i].name)
                        done(stages[i])
                    else:
                        self._started(stages[i], value)
                        running[pool.submit(_timed_run, stages[i])] = (i, value)
                if any(skip for _, (skip, _) in decided):
                    continue  # what a skipped stage lets start is looked at again
                if not running:
                    break  # nothing left that can start (after a failure)
                ended, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in ended:
                    i, fingerprint = running.pop(future)
                    try:
                        result, seconds = future.result()
                    except BaseException as e:
                        error = error or e
                        continue
                    results[i] = self._finished(stages[i], fingerprint, result, seconds)
                    finished.add(stages[i].name)
                    done(stages[i])
        except BaseException:  # interrupted here, or refused: the workers are stopped with the pool
            self.close_processes()
            raise
        if error is not None:
            raise error
        return [results[i] for i in range(len(stages))]

    def processes(self, n: int, warm: Callable[[], None] | None = None):
        """The run's `n` worker processes for side-by-side stages (spawned on first use, kept
        until the runner closes). `warm`: a module-level function each runs as it starts
        (importing the libraries the stages need while this process works on)."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if self._pool is None or self._pool_size != n:
            self.close_processes()
            self._pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"))
            self._pool_size = n
            for _ in range(n) if warm is not None else ():
                self._pool.submit(warm)
        return self._pool

    def close_processes(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _decide(self, stage: Stage) -> tuple[bool, Any]:
        """(True, its recorded result) for a stage to skip, (False, its fingerprint) for one
        to run; a stage recorded with another fingerprint is refused (unless overwrite)."""
        if not self.open:
            raise RuntimeError("Runner.run outside `with Runner(...)`")
        fingerprint = stage.fingerprint(self.dir)
        record = self._load().get(stage.name)
        if record is not None and not same_settings(record["fingerprint"], fingerprint) and not self.overwrite:
            state = "finished" if record.get("finished") else "started"
            raise ConfigError(
                f"{self.key} {self.dir}: stage {stage.name!r} {state} with other inputs or settings "
                f"({what_changed(record['fingerprint'], fingerprint)}); rerun with those to "
                f"{'reuse' if record.get('finished') else 'resume'} it, or {self.redo}")
        if record is not None and record.get("finished") and same_settings(record["fingerprint"], fingerprint) \
                and all(_at(self.dir, p).exists() for p in stage.outputs):
            self.skipped.append(stage.name)
            return True, record["result"]
        stage.resuming = (record is not None and not record.get("finished")
                          and same_settings(record["fingerprint"], fingerprint))
        return False, fingerprint

    def _started(self, stage: Stage, fingerprint: dict) -> None:
        self._save(stage.name, {"fingerprint": fingerprint, "finished": False})
        stage.dir = self.dir

    def _finished(self, stage: Stage, fingerprint: dict, result: Any, seconds: float) -> Any:
        """Record a stage that ran as finished, once its outputs are all there."""
        if not self.main:
            return result  # process 0 checks the outputs and records the stage
        missing = [str(p) for p in stage.outputs if not _at(self.dir, p).exists()]
        if missing:
            raise RuntimeError(f"stage {stage.name!r} finished without writing {', '.join(missing)}")
        self._save(stage.name, {"fingerprint": fingerprint, "finished": True, "seconds": seconds, "result": result})
        self.ran.append(stage.name)
        return result

    def _save(self, name: str, record: dict) -> None:
        self._load()[name] = _as_recorded(record)
        self._write()

    def _write(self) -> None:
        if not self.main:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = {"run": self.config} if self.config is not None else {}
        atomic_write_json(self.path, {**manifest, "stages": self.stages})


def _timed_run(stage: Stage) -> tuple[Any, float]:
    """A stage run in a process of its own: its result and its time."""
    start = time.perf_counter()
    result = stage.run()
    return result, time.perf_counter() - start


def _as_recorded(value):
    """As the manifest holds it and reads it back: JSON, no password in a URL."""
    return json.loads(json.dumps(scrub_credentials(value), default=str))


def finished_stages(directory: str | os.PathLike) -> set[str]:
    """The stages the manifest of `directory` records as finished (read without the lock: for
    reports written while, or after, a run holds it)."""
    path = Path(directory) / MANIFEST
    try:
        stages = json.loads(path.read_text(encoding="utf-8"))["stages"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {name for name, record in stages.items() if record.get("finished")}


def finished_result(directory: str | os.PathLike, name: str) -> Any:
    """The result the manifest of `directory` records for the finished stage `name` (for a
    stage that reads what an earlier one returned, in another process)."""
    record = json.loads((Path(directory) / MANIFEST).read_text(encoding="utf-8"))["stages"].get(name) or {}
    if not record.get("finished"):
        raise RuntimeError(f"stage {name!r} of {directory} is not finished")
    return record["result"]
