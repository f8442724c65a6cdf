"""Reference log-probs are cached on disk and recomputed when any key part changes."""

import json

import pytest
import torch

from prefero import train as train_mod
from prefero.config import load_config
from prefero.demo import asset
from prefero.tiny import save_tiny_model
from prefero.train import Trainer


def make(model_dir, out, cache, *extra):
    return Trainer(load_config(None, [
        f"model={model_dir}", f"train_data={asset('demo_train.jsonl')}", f"eval_data={asset('demo_eval.jsonl')}",
        f"output_dir={out}", "overwrite=true", "loss=dpo", "batch_size=8", "max_steps=1",
        "max_length=128", "max_prompt_length=64", f"reference_cache={cache}", *extra,
    ]))


@pytest.fixture
def loads(monkeypatch):
    calls = []
    original = train_mod.load_causal_lm
    monkeypatch.setattr(train_mod, "load_causal_lm", lambda n, *a, **k: calls.append(n) or original(n, *a, **k))
    return calls


def test_second_run_reads_the_cache_and_holds_no_reference(tiny_model_dir, tmp_path, loads):
    cache = tmp_path / "cache"
    first = make(tiny_model_dir, tmp_path / "o", cache)
    assert first.reference_source == "computed" and len(loads) == 2
    assert len(list(cache.glob("*.safetensors"))) == 2  # train and eval
    loads.clear()
    second = make(tiny_model_dir, tmp_path / "o", cache)
    assert second.reference_source == "cache" and len(loads) == 1  # the policy only
    assert torch.equal(first.train_ds.ref, second.train_ds.ref)
    assert torch.equal(first.eval_ds.ref, second.eval_ds.ref)


def test_each_key_part_invalidates(tiny_model_dir, tmp_path):
    cache = tmp_path / "cache"
    base = make(tiny_model_dir, tmp_path / "o", cache)
    assert base.reference_source == "computed"
    assert make(tiny_model_dir, tmp_path / "o", cache).reference_source == "cache"
    # tokenization settings
    assert make(tiny_model_dir, tmp_path / "o", cache, "max_length=100").reference_source == "computed"
    # precision
    assert make(tiny_model_dir, tmp_path / "o", cache, "dtype=bfloat16").reference_source == "computed"
    # data: one record changed
    data = tmp_path / "train.jsonl"
    rows = [json.loads(x) for x in open(asset("demo_train.jsonl"))]
    rows[5]["rejected"] = "Something else entirely."
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert make(tiny_model_dir, tmp_path / "o", cache, f"train_data={data}").reference_source == "computed"
    # model identity: the same path with different weights
    other = save_tiny_model(tmp_path / "model", seed=0)
    t = make(other, tmp_path / "o", cache)
    assert t.reference_source == "computed"
    assert make(other, tmp_path / "o", cache).reference_source == "cache"
    save_tiny_model(other, seed=1)
    t2 = make(other, tmp_path / "o", cache)
    assert t2.reference_source == "computed"
    assert not torch.equal(t.train_ds.ref, t2.train_ds.ref)
    # the reference, not the policy, is what the key names: an explicit ref_model is a new
    # key; the policy it trains does not matter
    third = save_tiny_model(tmp_path / "third", seed=2)
    assert make(tiny_model_dir, tmp_path / "o", cache, f"ref_model={third}").reference_source == "computed"
    assert make(other, tmp_path / "o", cache, f"ref_model={third}").reference_source == "cache"


def test_cache_off_always_computes(tiny_model_dir, tmp_path):
    assert make(tiny_model_dir, tmp_path / "o", "off").reference_source == "computed"
    assert make(tiny_model_dir, tmp_path / "o", "off").reference_source == "computed"
