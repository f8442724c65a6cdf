"""The README's offline walkthrough runs as written, on the tiny chat model it writes."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # see pyproject.toml's markers

ROOT = Path(__file__).resolve().parents[1]


def walkthrough_lines() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- offline-walkthrough -->\n```bash\n(.*?)```", readme, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_offline_walkthrough_runs_as_written(tmp_path):
    # the commands name examples/ and prefero/assets/ relative to the repository root
    for name in ("examples", "prefero"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    lines = walkthrough_lines()
    assert [line.split()[0:2] for line in lines][0] == ["python", "-m"]
    for line in lines:
        r = subprocess.run(line.replace("python -m", f"{sys.executable} -m", 1), shell=True, cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{line}\n{r.stderr[-1500:]}"
    assert (tmp_path / "runs/try/dpo/model.safetensors").exists()
    assert (tmp_path / "runs/try/revise/sft.jsonl").exists()
    assert sum(1 for _ in open(tmp_path / "runs/try/pairs.jsonl")) > 0
