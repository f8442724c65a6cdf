"""A new user's walk-through: wrong model paths, output directories (overwrite, files,
the demo's own), resume with a changed config, multi-split datasets, what a run prints."""

import json
import re

import pytest
import torch

from jsonl_files import metrics
from prefero.config import load_config
from prefero.demo import asset, run_demo
from prefero.model import check_model_source
from prefero.options import ConfigError
from prefero.outputs import MARKER
from prefero.processes import free_port
from prefero.train import Trainer


def config(model_dir, out, *extra):
    return load_config(None, [
        f"model={model_dir}", f"train_data={asset('demo_train.jsonl')}", f"output_dir={out}",
        "learning_rate=1e-3", "batch_size=8", "max_steps=3", "seed=0", "max_length=128",
        "max_prompt_length=64", *extra,
    ])


# --------------------------------------------------------------------------- model paths


def test_model_path_errors_say_what_is_wrong(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="model: not found: ./no-such-model"):
        check_model_source("./no-such-model")
    with pytest.raises(ConfigError, match=f"not found: {tmp_path}/missing"):
        check_model_source(str(tmp_path / "missing"))
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ["config.json", "model.safetensors"]:
        (partial / name).write_bytes((tiny_model_dir / name).read_bytes())
    with pytest.raises(ConfigError, match=r"partial is not a complete .* no tokenizer files"):
        check_model_source(str(partial))
    assert check_model_source(str(partial), tokenizer=False) == {}  # a reference needs no tokenizer
    (partial / "model.safetensors").unlink()
    (partial / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match="only pickle weights"):
        check_model_source(str(partial), tokenizer=False)
    with pytest.raises(ConfigError, match="config.json is a file"):
        check_model_source(str(tiny_model_dir / "config.json"))
    with pytest.raises(ConfigError, match="ref_model: not found"):
        check_model_source("/nowhere/ref", key="ref_model")


def test_hub_id_without_network_fails_at_once(monkeypatch):
    from prefero import model

    port = free_port()  # nothing listens there: connection refused
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-cache")
    model._hub_access.cache_clear()
    with pytest.raises(ConfigError, match="'someone/some-model' is not a local directory and the hub "
                                          "cannot be reached"):
        check_model_source("someone/some-model")


# --------------------------------------------------------------------------- output dirs


def logits(model_or_dir, ids):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_or_dir) if not isinstance(model_or_dir, torch.nn.Module) \
        else model_or_dir
    with torch.no_grad():
        return m(input_ids=ids).logits


def test_overwrite_leaves_nothing_of_the_earlier_run(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    Trainer(config(tiny_model_dir, out, "lora.r=4", "save_steps=1")).run()
    assert (out / "adapter_config.json").exists() and (out / "checkpoints").exists()
    trainer = Trainer(config(tiny_model_dir, out, "overwrite=true", "loss=simpo", "beta=2.0"))
    trainer.run()
    assert not (out / "adapter_config.json").exists() and not (out / "adapter_model.safetensors").exists()
    assert not (out / "checkpoints").exists()
    ids = torch.tensor([trainer.train_ds.groups[0][0] + trainer.train_ds.groups[0][1][0]])
    # what loads from output_dir is what was trained, not the stale adapter on top of it
    torch.testing.assert_close(logits(out, ids), logits(trainer.model, ids), rtol=0, atol=0)


def test_overwrite_never_empties_a_directory_prefero_did_not_write(tiny_model_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(ConfigError, match="prefero did not write"):
        Trainer(config(tiny_model_dir, out, "overwrite=true"))
    assert (out / "notes.txt").read_text() == "precious"


def test_output_dir_that_is_a_file(tiny_model_dir, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ConfigError, match="output_dir .*file.txt is a file"):
        Trainer(config(tiny_model_dir, f))
    with pytest.raises(ConfigError, match="lies under .*file.txt, which is a file"):
        Trainer(config(tiny_model_dir, f / "run"))


def test_demo_replaces_only_its_own_directory(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(ConfigError, match="--output-dir .*prefero did not write"):
        run_demo(str(foreign), steps=1)
    assert (foreign / "thesis.tex").exists()
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / MARKER).write_text(json.dumps({"command": "train"}))
    (trained / "metrics.jsonl").write_text("{}\n")  # a run's files, not just an empty claimed directory
    with pytest.raises(ConfigError, match="written by `prefero train`"):
        run_demo(str(trained), steps=1)
    earlier = tmp_path / "demo"
    earlier.mkdir()
    (earlier / MARKER).write_text(json.dumps({"command": "demo"}))
    (earlier / "stale.txt").write_text("old")
    run_demo(str(earlier), steps=1)
    assert not (earlier / "stale.txt").exists() and (earlier / "dpo" / "model.safetensors").exists()


# --------------------------------------------------------------------------- resume


def test_resume_with_a_changed_config(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    Trainer(config(tiny_model_dir, out, "save_steps=2", "max_steps=3")).run()
    with pytest.raises(ConfigError) as err:
        Trainer(config(tiny_model_dir, out, "save_steps=2", "max_steps=3", "resume=true", "loss=ipo", "beta=0.5"))
    assert "loss: 'dpo' -> 'ipo'" in str(err.value) and "beta: None -> 0.5" in str(err.value)
    with pytest.raises(ConfigError, match="lora.r"):
        Trainer(config(tiny_model_dir, out, "save_steps=2", "max_steps=3", "resume=true", "lora.r=4"))
    assert json.loads((out / "train_config.json").read_text())["loss"] == "dpo"  # not rewritten
    capsys.readouterr()
    Trainer(config(tiny_model_dir, out, "save_steps=2", "max_steps=5", "resume=true")).run()
    printed = capsys.readouterr().out
    assert "resumed from step 2" in printed and "resume: max_steps: 3 -> 5" in printed
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]


# --------------------------------------------------------------------------- splits


@pytest.fixture(scope="module")
def split_dataset(tmp_path_factory):
    """A save_to_disk dataset shaped like UltraFeedback-binarized: no `train` split."""
    import datasets

    rows = [json.loads(x) for x in open(asset("demo_train.jsonl"))]
    path = tmp_path_factory.mktemp("uf") / "prefs"
    datasets.DatasetDict({
        "train_prefs": datasets.Dataset.from_list(rows[:48]),
        "test_prefs": datasets.Dataset.from_list(rows[48:]),
    }).save_to_disk(str(path))
    return path


def test_multi_split_datasets(tiny_model_dir, tmp_path, split_dataset):
    base = [f"model={tiny_model_dir}", f"train_data={split_dataset}", "max_steps=1", "batch_size=8",
            "max_length=128", "max_prompt_length=64"]
    with pytest.raises(Exception, match=r"no split 'train' \(splits: test_prefs, train_prefs\)"):
        Trainer(load_config(None, base + [f"output_dir={tmp_path / 'a'}"]))
    cfg = load_config(None, base + [f"output_dir={tmp_path / 'b'}", "train_split=train_prefs",
                                    "eval_split=test_prefs"])
    trainer = Trainer(cfg)
    assert len(trainer.train_ds) == 48 and len(trainer.eval_ds) == 16
    with pytest.raises(Exception, match="several splits .*test_prefs, train_prefs.*eval_split"):
        Trainer(load_config(None, base + [f"output_dir={tmp_path / 'c'}", "train_split=train_prefs",
                                          f"eval_data={split_dataset}"]))
    with pytest.raises(ConfigError, match="eval would read the training data itself"):
        load_config(None, base + ["train_split=train_prefs", "eval_split=train_prefs"])


def test_kto_shaped_data_under_dpo_hints_at_the_cli(tiny_model_dir, tmp_path):
    data = tmp_path / "kto.jsonl"
    data.write_text(json.dumps({"prompt": "a", "completion": "b", "label": True}) + "\n")
    from prefero.data import DataError

    with pytest.raises(DataError, match="loss=kto"):
        Trainer(config(tiny_model_dir, tmp_path / "out", f"train_data={data}"))


# --------------------------------------------------------------------------- what a run says


def test_run_prints_its_world_and_a_summary(tiny_model_dir, tmp_path, capsys):
    Trainer(config(tiny_model_dir, tmp_path / "out", f"eval_data={asset('demo_eval.jsonl')}",
                   "grad_accum=2", "batch_size=4")).run()
    out = capsys.readouterr().out
    assert re.search(r"prefero train: 1 process \(distributed: NO\), device cpu, float32, optimizer adamw; "
                     r"global batch 8 per step = 4 per micro-step x 2 accumulation x 1 process; "
                     r"3 steps over 64 training items", out)
    assert re.search(r"rewards/accuracies\s+[\d.]+\s+[\d.]+", out)  # before -> after
    assert "data (train): 64 records read, 64 kept, 0 dropped" in out
    assert "data (eval): 16 records read, 16 kept" in out
    assert f"model: {tmp_path / 'out'}" in out


def test_report_to_tensorboard_logs_what_metrics_jsonl_has(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    Trainer(config(tiny_model_dir, out, "report_to=tensorboard", f"eval_data={asset('demo_eval.jsonl')}")).run()
    rows = metrics(out)
    events = [p for p in out.rglob("events.out.tfevents.*")]
    assert events, list(out.rglob("*"))
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    logged = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert logged == pytest.approx({r["step"]: r["loss"] for r in rows if "split" not in r}, rel=1e-6)  # float32
    evals = {e.step: e.value for e in acc.Scalars("eval/rewards/accuracies")}
    assert sorted(evals) == [0, 3]
