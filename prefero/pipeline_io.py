"""Reading a stage's prompts, and the resumable output every pipeline stage shares.

The pipeline stages (generate, judge, revise) each turn a list of work items into one
JSON row per item. Items carry a stable integer `index`: their position in the input.
A stage must survive being killed at any moment without redoing or duplicating work:

    out = StageOutput("gen.jsonl", settings={"model": ..., "seed": ...}, overwrite=cfg.overwrite)
    done = out.start()                      # indices already finished by an earlier run
    for batch in batches_not_in(done):
        out.append([{"index": i, ...} for i in batch])   # flushed + fsynced
    out.finish(total=len(items))            # gen.jsonl written atomically, in index order

Files, for OUTPUT = `DIR/NAME.jsonl`:
- `DIR/NAME.partial.jsonl` (process 0) and `DIR/NAME.partial.rN.jsonl` (process N > 0):
  finished rows, appended in completion order. A line cut off by a kill (no newline
  yet, or not valid JSON) is the torn tail: it is ignored when reading and cut off
  before the owning process appends again. Every process reads every partial file,
  so a run may resume with a different number of processes.
- `DIR/NAME.partial.rN.done`: process N > 0 has appended all its rows (process 0
  merges when every marker is there).
- `DIR/NAME.partial.meta.json`: the `settings` the partial rows were produced with.
  Resuming with different settings would mix two runs' rows in one file, so it is
  refused (or, with `overwrite=True`, the old partial rows are discarded).
- `DIR/NAME.jsonl`: written only at the end, rows sorted by index, through a temporary
  file and `os.replace`, so it is either absent, the previous run's, or complete.
- `DIR/.NAME.jsonl.lock`: held (flock) by the one run writing OUTPUT; a second run fails
  at once naming the holder's PID; a killed run's lock is free (prefero.stage_files).

A stage with a report (`report=` path) writes it after OUTPUT and then calls `close()`;
the settings file stays until then, so a run killed between the two writes leaves a
finished OUTPUT, no report and the settings it was made with: a rerun with the same
settings redoes nothing (`start()` returns every index, `finish()` keeps OUTPUT) and
writes the report; with other settings it is refused, or redone with `overwrite=True`.

Rules: a finished OUTPUT is never replaced unless `overwrite=True`; a partial file
means "resume"; `settings` should fingerprint the input's content and the model's (or
judge's) identity, not only their names, so a resume never mixes rows of two inputs. `settings` is written to disk: never put a secret (an API key) in it;
a user:password@ part of any URL in it is stripped (`scrub_credentials`), as it is from
every report `atomic_write_json` writes.

Rows carry an integer `index`, by default 0..total-1; a stage whose rows keep an id of
their own (judge keeps its input rows' `index`) passes those ids to `finish(indices=...)`.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from prefero.data.errors import DataError
from prefero.data.formats import Text, Where, is_conversational, parse_pair, prompt_messages, text_value
from prefero.data.options import DataOptions
from prefero.data.read import iter_rows
from prefero.files import atomic_write_text, fsync_dir, remove_stale_temporaries, scrub_credentials, writing
from prefero.options import ConfigError
from prefero.stage_files import OutputLock, check_output_file, describe_changes, make_folder, same_settings

__all__ = ["Prompt", "StageOutput", "partial_paths", "read_jsonl_rows", "read_prompts"]


# --------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Prompt:
    """One prompt read from a file: plain text or a message list, and where it came from."""

    text: Text
    row: int  # the row in the source file (1-based line for .jsonl), for error messages
    file: str

    @property
    def conversational(self) -> bool:
        return is_conversational(self.text)

    def error(self, field: str | None, problem: str) -> DataError:
        return DataError(self.file, self.row, field, problem)


def read_prompts(path: str | os.PathLike, column: str = "prompt") -> list[Prompt]:
    """The prompts of `path`, in file order (the list position is the item's index).

    A record gives its prompt from `column` (a non-blank string, or a message list
    ending with a user/tool turn); failing that, from a preference pair without a prompt
    column ({chosen, rejected} full conversations, or HH-RLHF strings), the prompt being
    their shared prefix as the training data reader derives it. Any other record is a
    `DataError` naming file, row and field; so is a file without records.
    """
    path = os.fspath(path)
    opts = DataOptions(prompt_column=column)
    prompts = []
    for row, record in iter_rows(path):
        if isinstance(record, DataError):
            raise record
        prompts.append(Prompt(_record_prompt(record, opts, Where(path, row)), row, path))
    if not prompts:  # a saved dataset can be empty without the reader noticing
        raise DataError(path, None, None, "no prompts (the file has no records)", skippable=False)
    return prompts


def _record_prompt(record: dict, opts: DataOptions, where: Where) -> Text:
    """The record's prompt, checked by the data layer's own rules (prefero.data.formats)."""
    column = opts.prompt_column
    value = record.get(column)
    if value is None:
        if record.get(opts.chosen_column) is not None and record.get(opts.rejected_column) is not None:
            return parse_pair(record, opts, where).prompt
        columns = ", ".join(sorted(map(str, record))) or "none"
        raise where.error(column, f"missing (the record has columns: {columns}); set prompt_column to the prompt's column")
    text = text_value(value, column, where)
    return text if isinstance(text, str) else prompt_messages(text, column, where)


# --------------------------------------------------------------------------- stage output


def partial_paths(output: str | os.PathLike) -> list[Path]:
    """Every process's partial file of `output` that exists, process 0's first."""
    found = []
    for p in _siblings(Path(output), r"\.partial(\.r\d+)?\.jsonl"):
        rank = re.search(r"\.partial\.r(\d+)\.jsonl$", p.name)
        found.append((int(rank.group(1)) if rank else 0, p))
    return [p for _, p in sorted(found)]


def _siblings(output: Path, suffix_pattern: str) -> list[Path]:
    """Files beside `output` named its stem + a suffix matching the regex (no glob, so
    a stem with glob characters such as '[' is matched literally)."""
    pattern = re.compile(re.escape(output.stem) + suffix_pattern)
    try:
        names = os.listdir(output.parent if str(output.parent) else ".")
    except FileNotFoundError:
        return []
    return [output.parent / n for n in names if pattern.fullmatch(n)]


def read_jsonl_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line, row) of a partial file, skipping its torn tail (see the module docstring).

    A bad line before the last one cannot come from a kill (appends are line-atomic
    from the reader's view once the owner has cut its torn tail), so it is a DataError.
    """
    lines = path.read_bytes().split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # `tail` is b"" when the file ends with "\n"
    for lineno, raw in enumerate(complete, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if lineno == len(complete) and not tail:
                return  # the last line garbled (e.g. zero-filled after a crash): torn
            raise DataError(str(path), lineno, None, "corrupt partial row (not JSON); delete the file to start over", skippable=False) from None
        if not isinstance(row, dict) or not isinstance(row.get("index"), int):
            raise DataError(str(path), lineno, "index", "partial row without an integer index", skippable=False)
        yield lineno, row


class StageOutput:
    """A stage's resumable output file (see the module docstring for the protocol).

    `settings`: what determines the rows (model, seed, sampling...), JSON-serializable,
    no secrets. `rank`/`world_size`: this process among the stage's processes; each
    appends to its own partial file. `barrier`: a callable all processes enter together
    (e.g. `accelerator.wait_for_everyone`); needed when `world_size > 1`. `report`: the
    report the stage writes after OUTPUT (then `close()`), see the module docstring.
    """

    def __init__(self, output: str | os.PathLike, settings: dict, overwrite: bool = False,
                 rank: int = 0, world_size: int = 1, barrier: Callable[[], None] | None = None,
                 report: str | os.PathLike | None = None):
        self.output = Path(output)
        if self.output.suffix != ".jsonl":
            raise ConfigError(f"output: {str(self.output)!r} must end in .jsonl (one JSON row per item)")
        if world_size > 1 and barrier is None:
            raise ValueError("several processes need a barrier to agree on the partial files")
        self.settings = json.loads(json.dumps(scrub_credentials(settings)))  # as it will read back
        self.overwrite = overwrite
        self.rank = rank
        self.world_size = world_size
        self._barrier = barrier or (lambda: None)
        stem = self.output.parent / self.output.stem
        self.partial = Path(f"{stem}.partial.jsonl" if rank == 0 else f"{stem}.partial.r{rank}.jsonl")
        self.meta = Path(f"{stem}.partial.meta.json")
        self.resumed = 0  # rows found from an earlier run
        self.report = Path(report) if report is not None else None
        self.complete = False  # OUTPUT is finished with these settings, only its report is missing
        self.lock = OutputLock(self.output)

    def start(self) -> set[int]:
        """Check what is on disk (refusing to clobber), and return the finished indices.

        Process 0 prepares the files and reads them before the barrier, so the rows it
        counts as resumed are exactly those of earlier runs (no process of this run has
        appended yet); the others read after it."""
        if self.rank == 0:
            check_output_file(self.output, "output", *([self.report] if self.report else []))
            make_folder(self.output.parent, "output", self.output)
            try:
                self.lock.acquire()
                self._prepare()
            except BaseException:
                self.lock.release()
                raise
            done = self._read_done()
            self._barrier()
        else:
            self._barrier()
            self.complete = (self.report is not None and not self.report.exists() and self.output.exists()
                             and not partial_paths(self.output) and same_settings(self._read_meta(), self.settings))
            done = self._read_done()
        self.resumed = len(done)
        self._cut_torn_tail()
        return done

    def _marker(self, rank: int) -> Path:
        """The file process `rank` writes when it has appended all its rows."""
        return self.output.with_name(f"{self.output.stem}.partial.r{rank}.done")

    def _read_done(self) -> set[int]:
        if self.complete:
            return {row["index"] for _, row in read_jsonl_rows(self.output)}
        done = set()
        for path in partial_paths(self.output):
            done.update(row["index"] for _, row in read_jsonl_rows(path))
        return done

    def abandon(self) -> None:
        """After a failed run: remove this output's settings file and empty partial files
        when no process has saved a row (nothing to resume, so nothing to leave behind).
        Partial rows, when there are any, stay: a rerun resumes from them; so does the
        settings file of a finished OUTPUT whose report is still to be written."""
        if self.rank != 0 or self.complete:
            return
        partials = partial_paths(self.output)
        if any(p.stat().st_size for p in partials):
            return
        for p in partials:
            p.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)

    def _prepare(self) -> None:
        remove_stale_temporaries(self.output)
        for old in _siblings(self.output, r"\.partial\.r\d+\.done"):
            old.unlink()  # left by a killed run; this run's processes write theirs after the barrier
        partials = partial_paths(self.output)
        if not any(p.stat().st_size for p in partials):
            # killed before its first row: nothing to resume, nothing lost by starting over
            for p in partials:
                p.unlink()
            partials = []
            if not self.output.exists():  # beside a finished OUTPUT it may be all its missing report needs
                self.meta.unlink(missing_ok=True)
        if partials:
            old = self._read_meta()
            if same_settings(old, self.settings):
                return  # resume
            if not self.overwrite:
                raise ConfigError(
                    f"{partials[0]} holds rows of an unfinished run with different "
                    f"settings ({describe_changes(old, self.settings)}); rerun with the same settings to resume, "
                    f"or set overwrite=true to discard them"
                )
            for p in partials:
                p.unlink()
        elif self.output.exists():
            old = self._read_meta()
            unreported = self.report is not None and not self.report.exists()
            if unreported and same_settings(old, self.settings):
                self.complete = True  # killed between OUTPUT and its report: only the report is left to write
                return
            if not self.overwrite:
                if unreported and old is not None:
                    raise ConfigError(
                        f"output {str(self.output)!r} is finished but its report {self.report} is missing, and it "
                        f"was made with different settings ({describe_changes(old, self.settings)}); rerun with "
                        f"those settings to write the report, or set overwrite=true to make it again")
                self.meta.unlink(missing_ok=True)  # a finished run's, left by a kill before its last step
                raise ConfigError(f"output {str(self.output)!r} already exists; set overwrite=true to replace it")
            if unreported:
                self.output.unlink()  # replaced anyway; gone, no process mistakes it for this run's
        atomic_write_text(self.meta, json.dumps(self.settings, indent=2, sort_keys=True) + "\n")

    def _read_meta(self) -> dict | None:
        try:
            return json.loads(self.meta.read_text())
        except FileNotFoundError:
            return None  # rows without their settings: cannot tell whether they match
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(str(self.meta), None, None, f"unreadable ({e}); delete it and the partial files to start over", skippable=False) from None

    def _cut_torn_tail(self) -> None:
        """Remove a torn last line of this process's own file before appending after it."""
        if not self.partial.exists():
            return
        data = self.partial.read_bytes()
        keep = data.rfind(b"\n") + 1  # everything up to the last newline
        lines = data[:keep].split(b"\n")
        if len(lines) >= 2:  # a garbled but newline-terminated last line is torn too
            try:
                json.loads(lines[-2])
            except (json.JSONDecodeError, UnicodeDecodeError):
                keep -= len(lines[-2]) + 1
        if keep < len(data):
            with open(self.partial, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())

    def append(self, rows: list[dict]) -> None:
        """Append finished rows (each with its `index`) and make them durable."""
        for row in rows:
            if not isinstance(row.get("index"), int):
                raise ValueError("every row needs an integer 'index'")
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        # a write cut short by a full disk leaves a torn tail, cut off by the next run
        with writing(self.partial, "the partial file is kept, rerun to resume"):
            with open(self.partial, "a", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())  # a batch reported done is on disk, not in a page cache

    def finish(self, total: int, poll_seconds: float = 0.5, indices: list[int] | None = None,
               counts: dict | None = None) -> dict:
        """All processes call this when their work is done; process 0 writes OUTPUT.

        Rows 0..total-1 (or, given, exactly `indices`, written in that order) must all be
        present (otherwise nothing is written and the partial files stay, to resume from). A
        duplicated index keeps its first row and is counted. `counts`: this process's tallies
        of the run (a judge's truncations...), summed over the processes. Returns {"rows",
        "duplicates", "resumed", "counts"} on process 0; {} elsewhere.
        """
        if self.rank != 0:
            self.done_here(counts)
            return {}
        counts = self.wait_for_others(poll_seconds, counts)
        if self.complete:
            self._remove_markers()
            return {"rows": total, "duplicates": 0, "resumed": self.resumed, "counts": counts}
        # Collect (index -> where its row is) and copy rows in index order, so a large
        # output never has to be held in memory at once.
        where: dict[int, tuple[Path, int, int]] = {}
        duplicates = 0
        for path in partial_paths(self.output):
            offset = 0
            data = path.read_bytes()
            for raw in data.split(b"\n")[:-1]:
                length = len(raw) + 1
                if raw.strip():
                    try:
                        index = json.loads(raw)["index"]
                    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                        index = None  # torn (validated by start()); skip it
                    if isinstance(index, int):
                        if index in where:
                            duplicates += 1
                        else:
                            where[index] = (path, offset, length)
                offset += length
        order = list(range(total)) if indices is None else list(indices)
        expected = set(order)
        missing = [i for i in order if i not in where]
        extra = [i for i in where if i not in expected]
        if missing or extra:
            problem = f"missing rows for indices {_ranges(missing)}" if missing else f"rows for unknown indices {_ranges(extra)}"
            raise RuntimeError(f"{self.output}: {problem}; the partial files are kept, rerun to resume")
        tmp = self.output.with_name(f".{self.output.name}.tmp-{os.getpid()}")
        handles: dict[Path, object] = {}
        try:
            with writing(self.output, "the partial file is kept, rerun to resume"), open(tmp, "wb") as out:
                for i in order:
                    path, offset, length = where[i]
                    f = handles.get(path) or handles.setdefault(path, open(path, "rb"))
                    f.seek(offset)
                    out.write(f.read(length))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.output)
        finally:
            for f in handles.values():
                f.close()
            tmp.unlink(missing_ok=True)
        fsync_dir(self.output.parent)
        for path in partial_paths(self.output):
            path.unlink()
        self._remove_markers()
        if self.report is None:
            self.close()
        return {"rows": total, "duplicates": duplicates, "resumed": self.resumed, "counts": counts}

    def _remove_markers(self) -> None:
        for rank in range(1, self.world_size):
            self._marker(rank).unlink(missing_ok=True)

    def done_here(self, counts: dict | None = None) -> None:
        """Process N > 0: all its rows are appended (its marker, holding its `counts`)."""
        atomic_write_text(self._marker(self.rank), json.dumps(dict(counts or {}), sort_keys=True) + "\n")

    def wait_for_others(self, poll_seconds: float = 0.5, counts: dict | None = None) -> dict:
        """Process 0: wait until every other process has appended all its rows, and return
        `counts` summed with theirs. It waits for their marker files rather than at a
        collective barrier: processes may finish hours apart (a resumed run gives some of
        them little left to do), longer than a collective's timeout."""
        total = Counter({k: v for k, v in (counts or {}).items() if isinstance(v, (int, float))})
        for rank in range(1, self.world_size):
            marker = self._marker(rank)
            while not marker.exists():
                time.sleep(poll_seconds)
            try:
                theirs = json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                theirs = {}  # a marker of an older version: "done" only
            if isinstance(theirs, dict):
                total.update({k: v for k, v in theirs.items() if isinstance(v, (int, float))})
        return dict(sorted(total.items()))

    def close(self) -> None:
        """End this run's hold on OUTPUT (call it in a `finally`): once OUTPUT and its report
        are both there, the settings file has served; then the lock is released."""
        if self.rank == 0 and self.lock.held:
            if self.output.is_file() and (self.report is None or self.report.exists()) \
                    and not partial_paths(self.output):
                self.meta.unlink(missing_ok=True)
        self.lock.release()


def _ranges(indices: list[int]) -> str:
    shown = ", ".join(map(str, sorted(indices)[:10]))
    return f"[{shown}{', ...' if len(indices) > 10 else ''}] ({len(indices)} in all)"
