"""Writing files: atomically, durably, readable by others, and failures said in one line.

    atomic_write_json("run/report.json", report)   # a reader sees the old file or the new one
    with atomic_path("run/plot.png") as tmp: fig.savefig(tmp)

Every finished file prefero writes goes through `atomic_path`: written to `.NAME.tmp-PID`
beside it (plain `open`, so the file gets the usual mode, 0644 under the usual umask, not
mkstemp's 0600), flushed and fsynced, renamed onto NAME, and the directory fsynced so the
rename survives a crash. A temporary left by a killed process is removed by the next write
of the same file (a running process's is left alone). An OS refusal (a full disk, a read-only
filesystem) becomes a `WriteFailed` naming the file and what is kept (`writing`). What goes
into a record has the user:password@ part of every URL removed (`scrub_credentials`).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from prefero.errors import PreferoError


class WriteFailed(PreferoError, RuntimeError):
    """A write failed for a reason outside prefero (a full disk, a read-only filesystem)."""


@contextmanager
def writing(path: str | os.PathLike, after: str = "rerun when there is space") -> Iterator[None]:
    """Turn an OS refusal to write `path` into one line: a full disk (or quota) says `after`
    (what is kept, how to go on); another refusal (read-only filesystem, permissions) names it."""
    try:
        yield
    except OSError as e:
        if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError)) or e.errno is None:
            raise
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise WriteFailed(f"disk full while writing {path}; {after}") from None
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG):
            raise WriteFailed(f"cannot write {path}: {e.strerror}; {after}") from None
        raise


def remove_stale_temporaries(path: str | os.PathLike) -> None:
    """Remove `.NAME.tmp-PID` files beside `path` left by a process that was killed before it
    could remove its own (a running process's PID is left alone)."""
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}.tmp-") + r"(\d+)")
    try:
        names = os.listdir(path.parent if str(path.parent) else ".")
    except FileNotFoundError:
        return
    for tmp in [path.parent / n for n in names if pattern.fullmatch(n)]:
        pid = int(pattern.fullmatch(tmp.name).group(1))
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # alive, another user's: not ours to remove


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to `path`, moved onto `path` when the block succeeds and removed
    when it fails: a reader sees the old file or the new one, never half of one. (Plain
    `open`, not mkstemp, whose 0600 mode would survive the rename.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`text` to `path` atomically, on disk before the rename."""
    with writing(path, "the earlier file, if any, is unchanged"), atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def fsync_dir(directory: Path) -> None:
    # the rename itself must reach the disk, or a crash can bring the old name back
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform/filesystem
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: str | os.PathLike, value) -> None:
    """Write a JSON document (a stage's report, a run's settings) atomically: URLs without
    their credentials, and strict JSON (a NaN or an infinity is a bug to name, not a token
    that other JSON readers refuse)."""
    bad = _non_finite(value)
    if bad is not None:
        raise ValueError(f"{path}: {bad[0]} is {bad[1]}; a report holds finite numbers only")
    atomic_write_text(Path(path), json.dumps(scrub_credentials(value), indent=2, ensure_ascii=False,
                                             allow_nan=False) + "\n")


def _non_finite(value, where: str = "the value") -> tuple[str, float] | None:
    """(where, number) of the first NaN or infinity inside `value`, else None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (where, value)
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        found = _non_finite(v, f"{where}[{k!r}]" if where != "the value" else repr(k))
        if found is not None:
            return found
    return None


# --------------------------------------------------------------------------- credentials

# scheme://user:password@host -> scheme://host (any scheme; the userinfo part ends at the first '@'
# before the path, and may not contain '/', whitespace or quotes)
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@\"'<>]+@")


def scrub_credentials(value):
    """`value` (a string, or lists/dicts of them, keys included) with the user:password@
    part of every URL removed: what a run records about a server must not hold its
    password. Everything else is returned unchanged."""
    if isinstance(value, str):
        return _USERINFO.sub(r"\1", value) if "@" in value else value
    if isinstance(value, dict):
        return {scrub_credentials(k): scrub_credentials(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_credentials(v) for v in value]
    return value


def write_jsonl_atomic(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write rows as JSON lines atomically (a stage's finished file)."""
    atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
