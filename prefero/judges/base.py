"""What every judge shares: the work item, the judge interface, its error, and the helpers
that turn scores or answers into pairwise matrices (the package docstring says how)."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from prefero.data.formats import Text, Where
from prefero.errors import PreferoError

Scores = list  # list[float | None], one per completion


@dataclass
class Item:
    """One prompt and its K completions, with where they came from (for error messages)."""

    prompt: Text
    completions: list  # list[Text]
    where: Where
    record: dict = field(default_factory=dict)  # the whole input row (a callable may read its columns)
    columns: tuple[str, str] = ("prompt", "completions")  # the input's column names, for errors

    def column(self, k: int | None = None) -> str:
        """The column name of the prompt (k None) or of completion k, as errors name it."""
        return self.columns[0] if k is None else f"{self.columns[1]}[{k}]"


Request = tuple  # (Item, i, j): P(item.completions[i] ≻ item.completions[j])


class JudgeError(PreferoError, RuntimeError):
    """The judge failed for good: its server kept failing, or too many of its answers could
    not be read. One line; `prefero` exits with EXIT_JUDGE, apart from the config/data
    errors' 2, since the config may be right and the server at fault."""

    exit_code = 3


#: The exit status of a run stopped by a `JudgeError`.
EXIT_JUDGE = JudgeError.exit_code


class Judge(Protocol):
    stats: Counter  # what happened this run (unparseable answers, truncations, ...), for the report

    def score(self, items: Sequence[Item]) -> list[Scores]: ...

    def compare(self, requests: Sequence[Request]) -> list[float | None]: ...


# --------------------------------------------------------------------------- comparisons


def sigmoid(x: float) -> float:
    """σ(x) without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def text_key(text: Text) -> str:
    """A total order on completions (strings or message lists) that does not depend on their
    position: which one a comparison computes directly, and which as 1 − the other."""
    return text if isinstance(text, str) else json.dumps(text, sort_keys=True, ensure_ascii=False)


def ordered(requests: Sequence[Request]) -> tuple[list[tuple[Item, int, int]], list[tuple[int, bool] | None]]:
    """The distinct questions behind `requests`, each in canonical order (item, lo, hi) by
    `text_key`, and per request (which question, whether it was flipped); None for
    identical texts (P = ½, nothing to ask).

    A judge computes P once per question and answers a flipped request with 1 − P, so
    compare(j, i) == 1 − compare(i, j) exactly, in floating point too. Asking a question
    twice (once per order, or for a repeated text) would put it in two rows of a batch,
    whose results may differ in the last bits with the batch's shape and thread count."""
    canonical, flipped, seen = [], [], {}
    for item, i, j in requests:
        ki, kj = text_key(item.completions[i]), text_key(item.completions[j])
        if ki == kj:
            flipped.append(None)
            continue
        flip = ki > kj
        key = (id(item), kj, ki) if flip else (id(item), ki, kj)
        if key not in seen:
            seen[key] = len(canonical)
            canonical.append((item, j, i) if flip else (item, i, j))
        flipped.append((seen[key], flip))
    return canonical, flipped


def unorder(values: list[float | None], flipped: list[tuple[int, bool] | None]) -> list[float | None]:
    """`ordered`'s inverse: the canonical answers back in request order."""
    out = []
    for entry in flipped:
        if entry is None:
            out.append(0.5)
            continue
        k, flip = entry
        p = values[k]
        out.append(None if p is None else (1.0 - p if flip else p))
    return out


def compare_by_scores(judge, requests: Sequence[Request]) -> list[float | None]:
    """Bradley–Terry from a scoring judge: P(i ≻ j) = σ(s_i − s_j), each item scored once."""
    canonical, flipped = ordered(requests)
    items = list({id(item): item for item, _, _ in canonical}.values())
    scores = dict(zip(map(id, items), judge.score(items)))
    values = []
    for item, i, j in canonical:
        si, sj = scores[id(item)][i], scores[id(item)][j]
        values.append(None if si is None or sj is None else sigmoid(si - sj))
    return unorder(values, flipped)


def pairwise_matrices(judge: Judge, items: Sequence[Item]) -> list[list[list[float | None]]]:
    """Per item the K×K matrix P[i][j] = P(y_i ≻ y_j): asked for i < j, P[j][i] = 1 − P[i][j],
    P[i][i] = ½. An unanswered comparison leaves both entries None."""
    requests = [(item, i, j) for item in items for i in range(len(item.completions))
                for j in range(i + 1, len(item.completions))]
    answers = iter(judge.compare(requests))
    out = []
    for item in items:
        k = len(item.completions)
        m = [[0.5 if i == j else None for j in range(k)] for i in range(k)]
        for i in range(k):
            for j in range(i + 1, k):
                p = next(answers)
                if p is not None:
                    m[i][j], m[j][i] = p, 1.0 - p
        out.append(m)
    return out


def win_rates(matrix: list[list[float | None]]) -> list[float | None]:
    """P̂(y_i) = mean over all j of P[i][j], the diagonal's ½ included (as the SPPO authors'
    code computes it); None for a row with an unanswered comparison."""
    return [None if any(p is None for p in row) else sum(row) / len(row) for row in matrix]


def check_unparseable(judge: Judge, planned: int, resumed: int = 0) -> None:
    """Raise a `JudgeError` once the judge's unreadable answers pass its `max_unparseable`
    share of the output's `planned` answers (judges that always answer have no such check).

    Checked after every batch, before it is saved: the count can only grow, so once it is
    over max_unparseable × planned the finished output would be too, and a broken server
    stops the run early, leaving no file that a rerun would publish as finished.
    resumed: unreadable answers already in the rows an earlier run saved."""
    check = getattr(judge, "check_answers", None)
    if check is not None:
        check(planned, resumed)


def process_budget(main: bool, own: int, saved: bool, saved_planned: Callable[[], int],
                   saved_unread: Callable[[], int]) -> tuple[int, int]:
    """(planned, resumed) for `check_unparseable` on one process of a sharded stage.

    Each process keeps to its share of the unreadable-answer budget: `own`, the answers its
    own batches ask for. Process 0's share also covers the rows earlier runs `saved`
    (`saved_planned()` answers, `saved_unread()` of them unreadable). When every share
    holds, the whole output does."""
    if main and saved:
        return own + saved_planned(), saved_unread()
    return own, 0
