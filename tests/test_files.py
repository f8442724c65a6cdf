"""One writer for every file prefero finishes, and one error base for every one-line error.

The writer: the file is readable as any file the user writes (mode 0666 less the umask, not
mkstemp's 0600), nothing is left beside it, and a temporary left by a killed writer is removed
by the next write. The errors: each subclasses `PreferoError` with the exit status the command
line documents, and the command line turns any of them into one line and that status.
"""

import json
import os
import subprocess
import sys

import pytest

from prefero.cli import main
from prefero.data.errors import DataError
from prefero.data.report import DataReport
from prefero.errors import PreferoError
from prefero.files import WriteFailed, atomic_write_json, atomic_write_text
from prefero.judges import EXIT_JUDGE, JudgeError
from prefero.loop import TrainingError
from prefero.openai_client import OpenAIError
from prefero.options import ConfigError


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_written_files_have_the_usual_mode_and_nothing_beside_them(tmp_path):
    report = DataReport(read=3, kept=2)
    report.write(tmp_path / "data_report.json")  # the data layer's report went through mkstemp (0600)
    atomic_write_json(tmp_path / "report.json", {"rows": 2})
    atomic_write_text(tmp_path / "rows.jsonl", '{"index": 0}\n')
    for name in ("data_report.json", "report.json", "rows.jsonl"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data_report.json", "report.json", "rows.jsonl"]
    assert json.loads((tmp_path / "data_report.json").read_text())["kept"] == 2


@pytest.mark.slow
def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".report.json.tmp-{int(dead.stdout)}"  # that process has exited
    stale.write_text("half a report")
    alive = tmp_path / f".report.json.tmp-{os.getppid()}"  # a running process's is not ours to remove
    alive.write_text("being written")
    atomic_write_json(tmp_path / "report.json", {"rows": 1})
    assert not stale.exists() and alive.exists()


@pytest.mark.parametrize("error, status", [
    (ConfigError("lr: must be > 0"), 2), (DataError("d.jsonl", 3, "prompt", "missing"), 2),
    (JudgeError("judge: 9 of 10 answers unreadable"), 3), (OpenAIError("server kept failing"), 1),
    (WriteFailed("disk full while writing x"), 1), (TrainingError("loss is nan"), 1)])
def test_every_error_is_a_prefero_error_with_its_exit_status(error, status, monkeypatch, capsys):
    assert isinstance(error, PreferoError) and error.exit_code == status
    assert EXIT_JUDGE == JudgeError.exit_code

    def fail(cfg):
        raise error

    monkeypatch.setattr("prefero.judges.run.run_judge", fail)
    code = main(["judge", "input=x.jsonl", "output=y.jsonl", "judge.type=callable", "judge.function=m:f"])
    err = capsys.readouterr().err
    assert code == status and err == f"prefero: error: {error}\n"
