"""Counts of what happened to every record, so nothing is dropped silently (README.md#data, README.md#checkpoints-resume-safety).

The invariant the tests hold the loaders to: `read == kept + sum(dropped.values())`.
Truncation does not remove a record, so `truncated` counts are not part of that sum.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field

from prefero.data.errors import DataError
from prefero.files import atomic_write_text

#: Skipped-record messages kept verbatim; the count keeps growing past this so a
#: dataset with a million bad rows does not produce a million-line report.
MAX_MESSAGES = 100
#: What to change when most records were dropped for a reason (for `nothing_kept`).
DROP_HINTS = {
    "completion_empty_after_truncation": "the prompt fills max_length: raise max_length or lower max_prompt_length",
    "identical_after_truncation": "chosen and rejected agree within max_length: raise max_length",
    "tied_scores": "every completion of a prompt has the same score: nothing to prefer",
    "identical_chosen_rejected": "chosen and rejected are the same text",
    "sft_undesirable_label": "SFT keeps only records labelled true",
    "bad_record": "on_bad_record=skip skipped malformed records",
}


@dataclass
class DataReport:
    """What the loader did with each record: read, kept, truncated, dropped, skipped."""

    read: int = 0  # records read from the source (bad ones included)
    kept: int = 0  # records that produced training data
    truncated: dict[str, int] = field(default_factory=dict)  # reason -> records
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> records
    skipped: int = 0  # bad records skipped under on_bad_record="skip" (also in dropped)
    messages: list[dict] = field(default_factory=list)  # first MAX_MESSAGES skipped records

    def count_truncated(self, reason: str) -> None:
        self.truncated[reason] = self.truncated.get(reason, 0) + 1

    def count_dropped(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def count_skipped(self, error: DataError) -> None:
        """A bad record skipped by policy: counted under `bad_record:<field>` and kept as text."""
        self.skipped += 1
        self.count_dropped(f"bad_record:{error.field}" if error.field else "bad_record")
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(
                {"file": error.file, "row": error.row, "field": error.field, "message": str(error)}
            )

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def merge(self, other: DataReport) -> DataReport:
        """Add `other`'s counts into this report (for several files) and return self."""
        self.read += other.read
        self.kept += other.kept
        self.truncated = dict(Counter(self.truncated) + Counter(other.truncated))
        self.dropped = dict(Counter(self.dropped) + Counter(other.dropped))
        self.skipped += other.skipped
        self.messages = (self.messages + other.messages)[:MAX_MESSAGES]
        return self

    def to_dict(self) -> dict:
        return {
            "read": self.read,
            "kept": self.kept,
            "truncated": dict(sorted(self.truncated.items())),
            "dropped": dict(sorted(self.dropped.items())),
            "skipped": self.skipped,
            "messages": list(self.messages),
        }

    def write(self, path: str | os.PathLike) -> None:
        """Write the report as JSON, atomically (prefero.files): a crash never leaves half a report."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def nothing_kept(self, source: str, top: int = 3) -> str:
        """The one-line error for a source of which no record survived: the most common
        drop reasons with their counts and what to change, so the user need not look for
        a report (none is written when a run stops here)."""
        reasons = sorted(self.dropped.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{reason} {count}" for reason, count in reasons[:top])
        if len(reasons) > top:
            shown += f", {len(reasons) - top} other reason(s) {sum(c for _, c in reasons[top:])}"
        line = f"{source}: no usable records: read {self.read}, kept 0" + (f"; dropped: {shown}" if shown else "")
        hint = DROP_HINTS.get(reasons[0][0].split(":")[0]) if reasons else None
        if hint:
            line += f" ({hint})"
        if self.messages:
            line += f"; first skipped: {self.messages[0]['message']}"
        return line

    def summary(self) -> str:
        """One line for logs, e.g. `read 100, kept 97, dropped {tied_scores: 3}`."""
        parts = [f"read {self.read}", f"kept {self.kept}"]
        if self.truncated:
            parts.append(f"truncated {dict(sorted(self.truncated.items()))}")
        if self.dropped:
            parts.append(f"dropped {dict(sorted(self.dropped.items()))}")
        return ", ".join(parts)
