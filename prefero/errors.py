"""The one base of every error prefero reports as one line (no traceback) and an exit status.

    ConfigError   2   a key, its value or a path given in the config (prefero.config)
    DataError     2   a file, row and field of the input (prefero.data.errors)
    JudgeError    3   the judge failed: its server kept failing, or its answers were unreadable
    OpenAIError   1   a server kept failing after its retries (prefero.openai_client)
    WriteFailed   1   the disk refused a write: full, read-only (prefero.files)
    TrainingError 1   a training run stopped: a non-finite loss, a launch that lost processes

The command line catches `PreferoError` alone and exits with the error's `exit_code`;
anything else is a bug and keeps its traceback.
"""


class PreferoError(Exception):
    """An error whose message is the whole story, said in one line."""

    exit_code = 1


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (a library's multi-line error, said in one
    line), or its type's name when it has none."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
