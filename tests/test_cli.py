"""The command line as a user meets it: help, typos, bad data, a real run."""

import json
import subprocess
import sys

import pytest

from jsonl_files import metrics
from prefero.config import TrainConfig
from prefero.demo import asset
from prefero.options import field_docs


def prefero(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "prefero", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.mark.slow
def test_help_lists_every_option_with_default():
    r = prefero("train", "--help")
    assert r.returncode == 0
    for name, _, default, doc in field_docs(TrainConfig):
        assert name in r.stdout
    assert "learning_rate" in r.stdout and "5e-07" in r.stdout
    assert "lora.r" in r.stdout
    top = prefero("--help")
    assert top.returncode == 0 and "train" in top.stdout and "demo" in top.stdout


@pytest.mark.slow
def test_config_typo_is_an_error_with_suggestion(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: x\ntrain_data: y\nlerning_rate: 1e-6\n")
    r = prefero("train", cfg)
    assert r.returncode == 2
    assert "did you mean 'learning_rate'" in r.stderr
    assert "Traceback" not in r.stderr
    r = prefero("train", cfg, "lerning_rate=1", "loss=dpoo")
    assert r.returncode == 2 and "Traceback" not in r.stderr


@pytest.mark.slow
def test_bad_data_names_file_row_field(tiny_model_dir, tmp_path):
    data = tmp_path / "bad.jsonl"
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": 3, "rejected": "c"}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    r = prefero("train", f"model={tiny_model_dir}", f"train_data={data}", f"output_dir={tmp_path / 'o'}")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert str(data) in line and "row 2" in line and "chosen" in line


@pytest.mark.slow
def test_train_end_to_end(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    cfg = tmp_path / "simpo.yaml"
    cfg.write_text(
        f"model: {tiny_model_dir}\ntrain_data: {asset('demo_train.jsonl')}\noutput_dir: {out}\n"
        "loss: simpo\nbeta: 2.0\nlearning_rate: 1.0e-3\nbatch_size: 8\nmax_steps: 3\n"
    )
    r = prefero("train", cfg, "seed=1")
    assert r.returncode == 0, r.stderr
    rows = metrics(out)
    assert [x["step"] for x in rows] == [1, 2, 3]
    assert json.loads((out / "train_config.json").read_text())["seed"] == 1
    # a second run into the same directory must not overwrite it
    r = prefero("train", cfg)
    assert r.returncode == 2 and "overwrite=true" in r.stderr


@pytest.mark.slow
def test_walkthrough_of_bad_inputs_has_no_traceback(tiny_model_dir, tmp_path):
    """Bad numbers, a wrong model path, a misspelled LoRA module: one line, exit 2."""
    base = [f"model={tiny_model_dir}", f"train_data={asset('demo_train.jsonl')}", f"output_dir={tmp_path / 'o'}",
            "max_steps=1", "max_length=128", "max_prompt_length=64"]
    for extra, message in [
        (["beta=0"], "beta must be > 0, got 0.0"),
        (["model=./not-there"], "model: not found: ./not-there"),
        (["lora.target_modules=[q_prj]"], "the model has no module 'q_prj'; did you mean 'q_proj'?"),
    ]:
        r = prefero("train", *base, *extra)
        assert r.returncode == 2, r.stderr
        lines = [x for x in r.stderr.splitlines() if x.startswith("prefero: error:")]
        assert len(lines) == 1 and message in lines[0], r.stderr[-2000:]
        assert "Traceback" not in r.stderr
