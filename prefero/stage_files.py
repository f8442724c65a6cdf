"""What every stage output shares besides its rows: one writer at a time, paths checked before
any work, write failures said in one line, and a description of what changed between two runs.

    lock = OutputLock(Path("run/judged.jsonl"))   # run/.judged.jsonl.lock, holding "PID HOST"
    lock.acquire()                                 # a second run fails at once, naming the PID
    ...
    lock.release()

Locks are `fcntl.flock` locks on a file beside the output. The kernel drops a flock when its
process dies however it dies (SIGKILL included), so a lock left by a killed run is free: the
next run takes it over without guessing from PIDs, which a reboot or another host (a shared
filesystem) would make wrong. The file's "PID HOST" is only for the message. A released lock
file is removed while still locked, and a run that opened the file just before its removal
sees, after locking, that its file is no longer the one at the path and tries again: two runs
never hold locks on two different files of one output.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import weakref
from pathlib import Path
from typing import Iterable, Iterator

from prefero.log import get_logger
from prefero.options import ConfigError

log = get_logger(__name__)

try:
    import fcntl
except ImportError:  # Windows: no flock; outputs are then not locked
    fcntl = None

__all__ = ["OutputBusy", "OutputLock", "check_output_dir_path", "check_output_file", "changed_keys", "describe_changes", "same_settings",
           "make_folder", "rows_sha256"]


class OutputBusy(ConfigError):
    """Another run holds the output's lock."""


# --------------------------------------------------------------------------- locks

#: Locks this process holds: path -> [fd, the OutputLock holding it]. Another OutputLock of
#: this process on the same path (a run after an earlier one that was never closed, in one
#: Python session) takes the hold over: only other processes are kept out.
_HELD: dict[str, list] = {}


def lock_path(target: str | os.PathLike) -> Path:
    """`DIR/NAME` -> `DIR/.NAME.lock` (beside the output, so a directory output's lock is not
    among its own files)."""
    target = Path(os.path.abspath(target))  # "." and ".." named by what they are
    return target.parent / f".{target.name}.lock"


class OutputLock:
    """An exclusive lock on one output (a file or a run directory) for this process."""

    def __init__(self, target: str | os.PathLike, key: str = "output"):
        self.target = Path(target)
        self.key = key
        self.path = lock_path(target)
        self.held = False

    def acquire(self) -> None:
        """Take the lock or raise `OutputBusy` naming the holder; never waits."""
        if self.held:
            return
        name = str(self.path.absolute())
        if name in _HELD:
            _HELD[name][1] = weakref.ref(self)  # weak: a lock nobody keeps is released when collected
            self.held = True
            return
        if fcntl is None:
            return
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise ConfigError(f"{self.key} {self.target}: cannot write in {self.path.parent} "
                                  f"({e.strerror}); choose a writable place") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _read_holder(fd)
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    # a filesystem without locks (some network mounts): run, but say what is not guarded
                    log.warning(f"cannot lock {self.path} ({e.strerror}); a second run on {self.target} "
                                "would not be stopped")
                    return
                raise OutputBusy(f"{self.key} {self.target} is being written by another prefero run ({holder}); "
                                 f"wait for it to end or stop it (its lock: {self.path})") from None
            try:
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if not current:  # its holder removed it between our open and our lock: lock the new one
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            _HELD[name] = [fd, weakref.ref(self)]
            self.held = True
            return

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        name = str(self.path.absolute())
        entry = _HELD.get(name)
        if entry is None or entry[1]() not in (self, None):
            return  # taken over by a later lock of this process
        del _HELD[name]
        try:
            self.path.unlink()  # while still locked: nobody else holds this file
        except OSError:
            pass
        os.close(entry[0])

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:
            pass


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        pid, _, host = os.read(fd, 200).decode(errors="replace").strip().partition(" ")
    except OSError:
        return "PID unknown"
    if not pid:
        return "PID unknown"
    return f"PID {pid}" + (f" on host {host}" if host and host != socket.gethostname() else "")


# --------------------------------------------------------------------------- paths


def check_output_dir_path(path: str | os.PathLike, key: str = "output_dir") -> None:
    """A directory to write into must not be a file nor lie under one, and must be writable
    when it exists (one line, no work done)."""
    path = Path(path)
    for p in [path, *path.parents]:
        if p.exists() and not p.is_dir():
            what = "is a file" if p == path else f"lies under {p}, which is a file"
            raise ConfigError(f"{key} {path} {what}; choose a directory")
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} {path}: cannot write in {path} (read-only); choose a writable place")


def check_output_file(path: str | os.PathLike, key: str = "output", *others: str | os.PathLike) -> None:
    """An output file (and the files written beside it, `others`) must not be a directory and
    its folder must be creatable; checked before any work, so a bad path costs no run."""
    path = Path(path)
    for p in path.parents:
        if p.exists() and not p.is_dir():
            raise ConfigError(f"{key} {path} lies under {p}, which is a file; choose another place")
    for p in (path, *map(Path, others)):
        if p.is_dir():
            raise ConfigError(f"{key} {p} is a directory; expected a file path (e.g. {p / 'out.jsonl'})")


def make_folder(folder: str | os.PathLike, key: str, target: str | os.PathLike) -> None:
    """Create the folder `target` (named by config key `key`) is written into, or say in one
    line why it cannot be (a read-only place: checked, as root ignores permission bits, by
    os.access, which also knows a read-only filesystem)."""
    folder = Path(folder) if str(folder) else Path(".")
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} {target}: cannot write in {existing} (read-only); choose a writable place")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{key} {target}: cannot create {folder} ({e.strerror})") from None


# --------------------------------------------------------------------------- writes


# --------------------------------------------------------------------------- fingerprints


def rows_sha256(rows: Iterable) -> str:
    """Fingerprint of rows' content in order (any JSON-able values; key order ignored)."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, ensure_ascii=False, sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def changed_keys(old: dict, new: dict, ignore: Iterable[str] = ()) -> list[str]:
    """The dotted keys whose values differ between two nested settings dicts ({"judge":
    {"model": ...}} -> "judge.model"), less those in `ignore` or under one of them."""
    return [key for key, _, _ in _changes(old, new, set(ignore))]


def same_settings(old: dict | None, new: dict) -> bool:
    """Whether two records of settings (a config, a stage's fingerprint) say the same, as
    `describe_changes` reads them: a key one of them lacks and the other holds as None is
    no change (an option added in a later version, left unset), so a refusal always names
    what differs. So an option added later keeps None for the behaviour before it."""
    return old is not None and not changed_keys(old, new)


def _changes(old: dict, new: dict, ignore: set, prefix: str = "") -> Iterator[tuple[str, object, object]]:
    for key in sorted(set(old) | set(new), key=str):
        dotted = prefix + str(key)
        a, b = old.get(key), new.get(key)
        if a == b or dotted in ignore:
            continue
        if (isinstance(a, dict) or a is None) and (isinstance(b, dict) or b is None) \
                and not _is_fingerprint(str(key)):  # a block set or unset: its keys, each
            yield from _changes(a or {}, b or {}, ignore, dotted + ".")
        else:
            yield dotted, a, b


def describe_changes(old: dict | None, new: dict, limit: int = 5, ignore: Iterable[str] = ()) -> str:
    """What differs between two sets of settings (a config, a stage's fingerprint), in words,
    the one way every check of prefero says it: "max_new_tokens: 8 -> 9; judge: model's
    weight files changed; prompts content changed". A fingerprint is named, not quoted (its
    values say nothing)."""
    if old is None:
        return "its settings file is missing"
    return join_changes(changes_in_words(old, new, ignore), limit)


def changes_in_words(old: dict, new: dict, ignore: Iterable[str] = ()) -> list[str]:
    return [change_in_words(key, a, b) for key, a, b in _changes(old, new, set(ignore))]


def join_changes(parts: list[str], limit: int = 5) -> str:
    return "; ".join(parts[:limit]) + ("; ..." if len(parts) > limit else "")


def change_in_words(key: str, a, b) -> str:
    """One changed dotted key: its values, or for a fingerprint what it fingerprints."""
    where, _, leaf = key.rpartition(".")
    stem = leaf.removesuffix("_sha256")
    if not _is_fingerprint(leaf):
        return f"{key}: {_short(a)} -> {_short(b)}"
    if stem in _FINGERPRINTS:
        what = f"{_FINGERPRINTS[stem]} changed"
    else:
        what = stem.replace("_and_", " or ").replace("_", " ") + " content changed"
    return f"{where}: {what}" if where else what


def _is_fingerprint(key: str) -> bool:
    return key.endswith("_sha256") or key in _FINGERPRINTS


#: Fingerprints named in words by what they identify ("prompts_sha256" is "prompts content").
_FINGERPRINTS = {"model_files": "model's weight files", "function_source": "function's source"}


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
