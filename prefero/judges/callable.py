"""A Python function as judge: verifiable rewards (a unit test passed, an answer matched).

    judge: {type: callable, function: "my_checks:exact_answer"}      # my_checks.py in the current dir
    judge: {type: callable, function: "examples/verifiers.py:arithmetic"}

The function is called once per row as fn(prompt, completions) and returns one number per
completion (None where it cannot tell: left null and counted, never guessed). A function
that also takes a `row` argument gets the whole input row, so a reference answer can sit in
a column next to the prompt. True/False (Python's or numpy's) count as 1/0. Anything else
(a wrong count, a string, NaN, a number too large for a float) is an error naming the row:
a verifier that misbehaves must not quietly become training labels.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import numbers
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

from prefero.judges.base import Item, compare_by_scores
from prefero.options import ConfigError


def load_function(spec: str, key: str = "judge.function") -> Callable:
    """`module:function` (a module importable from the current directory or the installed
    packages) or `path/to/file.py:function`."""
    module_name, sep, name = spec.rpartition(":")
    if not sep or not module_name or not name:
        raise ConfigError(f"{key}: expected 'module:function' or 'path/to/file.py:function', got {spec!r}")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ConfigError(f"{key}: file {module_name!r} not found")
            mod_spec = importlib.util.spec_from_file_location(f"prefero_judge_{path.stem}", path)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            # the current directory first, as `python -m` has it, so a local verifiers.py is found
            sys.path.insert(0, os.getcwd())
            try:
                module = importlib.import_module(module_name)
            finally:
                sys.path.remove(os.getcwd())
    except ConfigError:
        raise
    except Exception as e:  # ImportError, or whatever the module raises while importing
        raise ConfigError(f"{key}: cannot import {module_name!r}: {type(e).__name__}: "
                          f"{' '.join(str(e).split())}") from e
    fn = getattr(module, name, None)
    if fn is None:
        raise ConfigError(f"{key}: {module_name!r} has no attribute {name!r}")
    if not callable(fn):
        raise ConfigError(f"{key}: {spec!r} is a {type(fn).__name__}, not a function")
    return fn


def _takes_row(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "row" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class CallableJudge:
    """score: the function's numbers; compare: σ(s_i − s_j) (Bradley–Terry)."""

    def __init__(self, cfg, fn: Callable | None = None):
        self.spec = cfg.function
        self.fn = fn or load_function(cfg.function)
        self.takes_row = _takes_row(self.fn)
        self.stats: Counter = Counter()

    def score(self, items: Sequence[Item]) -> list[list[float | None]]:
        return [self.score_one(item) for item in items]

    def score_one(self, item: Item) -> list[float | None]:
        try:
            if self.takes_row:
                result = self.fn(item.prompt, list(item.completions), row=item.record)
            else:
                result = self.fn(item.prompt, list(item.completions))
        except Exception as e:
            raise item.where.error(None, f"judge.function {self.spec!r} raised {type(e).__name__}: {e}") from e
        return self.check(result, item)

    def check(self, result, item: Item) -> list[float | None]:
        k = len(item.completions)
        if hasattr(result, "tolist"):  # numpy array, torch tensor
            result = result.tolist()
        if not isinstance(result, (list, tuple)):
            raise item.where.error(None, f"judge.function {self.spec!r} returned {type(result).__name__}; "
                                         f"expected a list of {k} numbers (one per completion)")
        if len(result) != k:
            raise item.where.error(None, f"judge.function {self.spec!r} returned {len(result)} scores for "
                                         f"{k} completions")
        out = []
        for i, s in enumerate(result):
            if s is None:
                self.stats["null_scores_returned"] += 1
                out.append(None)
                continue
            if getattr(getattr(s, "dtype", None), "kind", None) == "b":
                s = bool(s)  # numpy's bool counts as 1/0, as Python's does
            if not isinstance(s, numbers.Real):
                raise item.where.error(item.column(i), f"judge.function {self.spec!r} returned {s!r} "
                                                       f"({type(s).__name__}); expected a number")
            try:
                value = float(s)
            except OverflowError:  # an int such as 10**400
                raise item.where.error(item.column(i), f"judge.function {self.spec!r} returned a number too large "
                                                       f"for a float ({len(str(abs(s)))} digits)") from None
            if not math.isfinite(value):
                raise item.where.error(item.column(i), f"judge.function {self.spec!r} returned {value}; "
                                                       "expected a finite number (or None for no score)")
            out.append(value)
        return out

    def compare(self, requests) -> list[float | None]:
        return compare_by_scores(self, requests)
