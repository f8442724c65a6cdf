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
killed run's lock is taken over). Adding a stage to a command is one `Stage(...)` (or a
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
from prefero.stage_files import OutputLock, nested_changes

MANIFEST = "stages.json"
#: Files up to this size are fingerprinted by their bytes; larger ones (model weights) by their
#: size and modification time, which every rewrite changes, without reading gigabytes.
HASHED_BYTES = 64 << 20


class Stage:
    """One step of a run (module docstring). Subclass it and define `run`, or pass `work`."""

    name: str = ""
    dir: Path  # the run directory, set by the runner before `run`

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
        return json.loads(json.dumps(scrub_credentials({"settings": self.settings, "inputs": inputs}), default=str))


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
    parts += nested_changes(old.get("settings", {}), new.get("settings", {}))
    return "; ".join(parts[:limit]) + ("; ..." if len(parts) > limit else "")


def _at(root: Path, path: str | os.PathLike) -> Path:
    path = Path(path)
    return path if path.is_absolute() else root / path


class Runner:
    """Runs stages in one directory under one manifest (module docstring). Use it as a
    context manager: it holds the directory's lock while open."""

    def __init__(self, directory: str | os.PathLike, overwrite: bool = False, key: str = "output_dir",
                 redo: str = "set overwrite=true to run it again"):
        self.dir = Path(directory)
        self.overwrite = overwrite
        self.key = key
        self.redo = redo  # how a user of this command asks for a changed stage to run again
        self.path = self.dir / MANIFEST
        self.lock = OutputLock(self.dir, key)
        self.stages: dict[str, dict] | None = None  # the manifest, read on first use
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def __enter__(self) -> "Runner":
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()  # beside the directory: a command may clear the directory while holding it
        self.stages = None
        return self

    def _load(self) -> dict:
        if self.stages is None:
            try:
                self.stages = json.loads(self.path.read_text(encoding="utf-8"))["stages"] if self.path.exists() else {}
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"{self.key}: {self.path} is unreadable ({e}); delete it to run every stage "
                                  "again") from None
        return self.stages

    def __exit__(self, *exc) -> None:
        self.lock.release()

    def seconds(self, name: str) -> float | None:
        return self._load().get(name, {}).get("seconds")

    def run(self, stage: Stage) -> Any:
        """Skip, refuse, or run `stage` (module docstring); returns its result."""
        if not self.lock.held:
            raise RuntimeError("Runner.run outside `with Runner(...)`")
        fingerprint = stage.fingerprint(self.dir)
        record = self._load().get(stage.name)
        if record is not None and record["fingerprint"] != fingerprint and not self.overwrite:
            state = "finished" if record.get("finished") else "started"
            raise ConfigError(
                f"{self.key} {self.dir}: stage {stage.name!r} {state} with other inputs or settings "
                f"({what_changed(record['fingerprint'], fingerprint)}); rerun with those to "
                f"{'reuse' if record.get('finished') else 'resume'} it, or {self.redo}")
        if record is not None and record.get("finished") and record["fingerprint"] == fingerprint \
                and all(_at(self.dir, p).exists() for p in stage.outputs):
            self.skipped.append(stage.name)
            return record["result"]
        self._save(stage.name, {"fingerprint": fingerprint, "finished": False})
        stage.dir = self.dir
        start = time.perf_counter()
        result = stage.run()
        seconds = time.perf_counter() - start
        missing = [str(p) for p in stage.outputs if not _at(self.dir, p).exists()]
        if missing:
            raise RuntimeError(f"stage {stage.name!r} finished without writing {', '.join(missing)}")
        self._save(stage.name, {"fingerprint": fingerprint, "finished": True, "seconds": seconds, "result": result})
        self.ran.append(stage.name)
        return result

    def _save(self, name: str, record: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._load()[name] = json.loads(json.dumps(record, default=str))
        atomic_write_json(self.path, {"stages": self.stages})


def finished_stages(directory: str | os.PathLike) -> set[str]:
    """The stages the manifest of `directory` records as finished (read without the lock: for
    reports written while, or after, a run holds it)."""
    path = Path(directory) / MANIFEST
    try:
        stages = json.loads(path.read_text(encoding="utf-8"))["stages"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {name for name, record in stages.items() if record.get("finished")}
