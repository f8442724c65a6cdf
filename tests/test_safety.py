"""Safety promises: no remote code unless asked, no secrets in logs or outputs, safetensors
only, bad records counted rather than lost."""

import json
import subprocess
import sys

import pytest

from prefero.config import load_config
from prefero.demo import asset
from prefero.train import Trainer


def base_args(model_dir, out, *extra):
    return [f"model={model_dir}", f"train_data={asset('demo_train.jsonl')}", f"output_dir={out}",
            "learning_rate=1e-3", "batch_size=8", "max_steps=2", "max_length=128", "max_prompt_length=64", *extra]


def test_remote_code_only_when_asked(tiny_model_dir, tmp_path, monkeypatch):
    seen = []
    from transformers import AutoModelForCausalLM, AutoTokenizer

    real_model, real_tok = AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained

    def spy_model(name, **kw):
        seen.append(("model", kw.get("trust_remote_code"), kw.get("use_safetensors")))
        return real_model(name, **kw)

    def spy_tok(name, **kw):
        seen.append(("tokenizer", kw.get("trust_remote_code"), None))
        return real_tok(name, **kw)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy_model)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", spy_tok)
    Trainer(load_config(None, base_args(tiny_model_dir, tmp_path / "a")))
    assert seen and all(trust is False for _, trust, _ in seen)
    assert all(st is True for kind, _, st in seen if kind == "model")
    seen.clear()
    Trainer(load_config(None, base_args(tiny_model_dir, tmp_path / "b", "trust_remote_code=true")))
    assert seen and all(trust is True for _, trust, _ in seen)


@pytest.mark.slow
def test_secrets_never_reach_logs_or_outputs(tiny_model_dir, tmp_path):
    secret = "hf_SECRETTOKEN1234567890"
    env = {"HF_TOKEN": secret, "OPENAI_API_KEY": secret, "PATH": "/usr/bin:/bin"}
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "prefero", "train", *base_args(tiny_model_dir, out, "save_steps=1")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert secret not in r.stdout and secret not in r.stderr
    for f in out.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f


def test_outputs_are_safetensors_only(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    Trainer(load_config(None, base_args(tiny_model_dir, out, "save_steps=1"))).run()
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pkl"))
    assert (out / "model.safetensors").exists()
    assert (out / "checkpoints" / "step-1" / "trainable.safetensors").exists()


@pytest.mark.slow
def test_skipped_bad_records_are_counted_in_the_report(tiny_model_dir, tmp_path):
    data = tmp_path / "mixed.jsonl"
    good = [json.loads(x) for x in open(asset("demo_train.jsonl"))][:10]
    lines = [json.dumps(r) for r in good]
    lines.insert(3, "{not json")
    lines.insert(6, json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}))
    lines.insert(8, json.dumps({"prompt": "p", "chosen": 5, "rejected": "x"}))
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    args = base_args(tiny_model_dir, out, "on_bad_record=skip")
    args[1] = f"train_data={data}"
    t = Trainer(load_config(None, args))
    assert len(t.train_ds) == 10
    report = json.loads((out / "data_report.json").read_text())["train"]
    assert report["read"] == 13 and report["kept"] == 10
    assert sum(report["dropped"].values()) == 3
    # without skip the same file stops at the first bad row with file, row and field
    r = subprocess.run([sys.executable, "-m", "prefero", "train", *base_args(tiny_model_dir, tmp_path / "x"),
                        f"train_data={data}"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{data}: row 4" in r.stderr
