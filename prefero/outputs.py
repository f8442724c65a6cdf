"""Output directories: never written into without asking, and replaced whole when asked.

Every directory a prefero command writes its results into carries a marker file naming
the command. `overwrite=true` replaces only a marked directory, and all of it: a
half-replaced directory is worse than none, because `from_pretrained(output_dir)` would
quietly pick up an earlier run's adapter or weights next to the new run's files. A
non-empty directory without the marker was not written by prefero and is never emptied.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prefero.files import atomic_write_text
from prefero.options import ConfigError

MARKER = ".prefero-output"


def owner(out: Path) -> str | None:
    """The command that made `out` (its marker), or None if prefero did not make it."""
    try:
        return json.loads((out / MARKER).read_text()).get("command", "unknown")
    except (OSError, ValueError, AttributeError):
        return None


def check_output_dir(out: Path, *, overwrite: bool, resume: bool, key: str = "output_dir",
                     may_replace=lambda who: who is not None) -> bool:
    """Raise a one-line `ConfigError` unless `out` may be written; True if it must be cleared
    first. `may_replace(owner)` says whose directory an overwrite may replace."""
    for p in [out, *out.parents]:
        if p.exists() and not p.is_dir():
            what = "is a file" if p == out else f"lies under {p}, which is a file"
            raise ConfigError(f"{key} {out} {what}; choose a directory")
    # a directory holding only our marker is a run that failed before writing anything
    if resume or not out.exists() or not any(p.name != MARKER for p in out.iterdir()):
        return False
    if not overwrite:
        raise ConfigError(
            f"{key} {out} is not empty; pass overwrite=true, resume=true, or choose another directory")
    who = owner(out)
    if not may_replace(who):
        whose = f"was written by `prefero {who}`" if who else f"holds files prefero did not write (no {MARKER})"
        raise ConfigError(f"{key} {out} {whose}; refusing to delete it — choose another directory")
    return True


def claim_output_dir(out: Path, command: str, clear: bool) -> None:
    """Create `out` (emptied first when `clear`) and mark it as `command`'s."""
    if clear:
        for p in out.iterdir():
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        if owner(out) is None:
            atomic_write_text(out / MARKER, json.dumps({"command": command}) + "\n")
    except OSError as e:
        raise ConfigError(f"cannot create {out}: {e.strerror}") from None

#: The file beside a pairwise preference model that says how it reads its input.
PAIRWISE_MODEL_FILE = "prefero_pairwise_model.json"
