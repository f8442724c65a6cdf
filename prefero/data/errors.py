"""The one exception the data layer raises for bad input.

A malformed record must be a clear, one-line error that tells the user where to look
(README.md#data: "names file, row and field"), so every check in `prefero.data` raises a
`DataError` built from the record's location instead of a bare KeyError/TypeError
from deep inside a tokenizer.
"""

from __future__ import annotations

from prefero.errors import PreferoError


class DataError(PreferoError, ValueError):
    """A problem with the input data: `FILE: row N, field 'F': what is wrong`.

    `row` is 1-based (the line number for .jsonl files, the record index otherwise) and
    `field` is the column name as it appears in the data; either may be None when the
    problem is not tied to one (an empty file, a missing directory).

    `skippable` is False for problems that no record-skip policy can fix (the file
    cannot be read, the tokenizer has no chat template): skipping would drop every
    record and leave the user with an empty dataset instead of an explanation.
    """

    exit_code = 2

    def __init__(
        self,
        file: str | None,
        row: int | None,
        field: str | None,
        problem: str,
        *,
        skippable: bool = True,
    ):
        self.file = file
        self.row = row
        self.field = field
        self.problem = problem
        self.skippable = skippable
        super().__init__(self._format())

    def _format(self) -> str:
        where = str(self.file) if self.file is not None else "<data>"
        if self.row is not None:
            where += f": row {self.row}"
            if self.field is not None:
                where += f", field '{self.field}'"
        elif self.field is not None:
            where += f": field '{self.field}'"
        # One line, always: a multi-line message from a template or JSON parser would
        # break log grepping and the report's message list.
        problem = " ".join(str(self.problem).split())
        return f"{where}: {problem}"

    def __reduce__(self):
        # Exceptions are pickled by their args by default, which would lose the fields
        # when errors cross a multiprocessing boundary (datasets.map workers).
        return (_rebuild, (self.file, self.row, self.field, self.problem, self.skippable))


def _rebuild(file, row, field, problem, skippable):
    return DataError(file, row, field, problem, skippable=skippable)
