"""prefero's messages go through the `prefero` logger (`logging.getLogger("prefero")` and its
children, e.g. `prefero.loop`), not `print`: where a run trains, what it resumed, eval lines,
each stage's first line. Progress bars stay tqdm's.

As a command-line tool's messages do, INFO goes to stdout as the bare message and WARNING and
above to stderr as `prefero: warning: ...`, to whatever `sys.stdout` / `sys.stderr` are when
the message is written (a redirected or captured stream included). A program that embeds
prefero quiets it with `logging.getLogger("prefero").setLevel(logging.WARNING)` or replaces
the handler (`logger.handlers`). What a command produces (its closing line, the demo's
report) is printed by the command itself.
"""

from __future__ import annotations

import logging
import sys


class _CurrentStreams(logging.Handler):
    """INFO to the current sys.stdout, WARNING and above to the current sys.stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.levelno >= logging.WARNING:
                sys.stderr.write(f"prefero: {record.levelname.lower()}: {record.getMessage()}\n")
                sys.stderr.flush()
            else:
                sys.stdout.write(record.getMessage() + "\n")
                sys.stdout.flush()
        except Exception:  # a closed stream: logging's own error report, never a crash
            self.handleError(record)


logger = logging.getLogger("prefero")
if not logger.handlers:
    logger.addHandler(_CurrentStreams())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def get_logger(name: str) -> logging.Logger:
    """The logger of a prefero module: `get_logger(__name__)`."""
    return logging.getLogger(name)
