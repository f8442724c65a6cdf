"""Tiny-model runs: losses fall, rewards separate, SimPO holds no reference, equivalences."""

import json
import math

import pytest
import torch

from jsonl_files import metrics
from prefero import train as train_mod
from prefero.config import load_config
from prefero.demo import asset
from prefero.train import Trainer


def config(model_dir, out, *extra):
    return load_config(None, [
        f"model={model_dir}", f"train_data={asset('demo_train.jsonl')}",
        f"eval_data={asset('demo_eval.jsonl')}", f"output_dir={out}",
        "learning_rate=1e-3", "batch_size=8", "max_steps=30", "warmup_ratio=0.1", "seed=0",
        "max_length=128", "max_prompt_length=64", *extra,
    ])


def read_metrics(out):
    rows = metrics(out)
    return [r for r in rows if "split" not in r], [r for r in rows if r.get("split") == "eval"]


def count_model_loads(monkeypatch):
    calls = []
    original = train_mod.load_causal_lm

    def counting(name, *a, **kw):
        calls.append(name)
        return original(name, *a, **kw)

    monkeypatch.setattr(train_mod, "load_causal_lm", counting)
    return calls


def test_dpo_learns(tiny_model_dir, tmp_path, monkeypatch):
    loads = count_model_loads(monkeypatch)
    history = Trainer(config(tiny_model_dir, tmp_path / "dpo", "loss=dpo", "beta=0.1")).run()
    assert len(loads) == 2  # reference (scored once, then freed) + policy
    train, evals = read_metrics(tmp_path / "dpo")
    assert len(train) == 30 and [r["step"] for r in train] == list(range(1, 31))
    for key in ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected", "avg_logps/chosen", "grad_norm", "lr", "tokens/s"]:
        assert key in train[0], key
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference at step 1
    late = train[-5:]
    assert sum(r["loss"] for r in late) / 5 < 0.2
    assert sum(r["rewards/accuracies"] for r in late) / 5 > 0.9
    assert history["eval_end"]["rewards/accuracies"] > 0.9
    assert history["eval_end"]["rewards/margins"] > 1.0
    assert len(evals) == 2 and evals[0]["step"] == 0
    report = json.loads((tmp_path / "dpo" / "data_report.json").read_text())
    assert report["train"]["kept"] == 64 and report["eval"]["kept"] == 16


def test_simpo_learns_without_reference(tiny_model_dir, tmp_path, monkeypatch):
    loads = count_model_loads(monkeypatch)
    monkeypatch.setattr(train_mod, "precompute_logps", lambda *a, **k: pytest.fail("SimPO computed a reference"))
    Trainer(config(tiny_model_dir, tmp_path / "simpo", "loss=simpo", "beta=2.0")).run()
    assert loads == [str(tiny_model_dir)]  # the policy only
    train, _ = read_metrics(tmp_path / "simpo")
    first, late = train[0], train[-5:]
    assert sum(r["loss"] for r in late) / 5 < first["loss"] / 2
    assert sum(r["rewards/accuracies"] for r in late) / 5 > 0.9


def test_grad_accumulation_equals_big_batch(tiny_model_dir, tmp_path):
    big = Trainer(config(tiny_model_dir, tmp_path / "big", "batch_size=8", "grad_accum=1", "max_steps=4", "eval_data=null"))
    acc = Trainer(config(tiny_model_dir, tmp_path / "acc", "batch_size=2", "grad_accum=4", "max_steps=4", "eval_data=null"))
    big.run()
    acc.run()
    a, _ = read_metrics(tmp_path / "big")
    b, _ = read_metrics(tmp_path / "acc")
    # Batch 8 and 4 x 2 run the same math in different reduction orders (packed row length,
    # matmul blocking, thread count), so each summed log-prob S differs by a few float32 eps
    # times |S|. Loss and grad norm are compared relatively (100 eps). A reward β·(S_θ − S_ref)
    # carries that error in absolute terms: at step 1 the margin is exactly 0 in one run and
    # ~1e-7 in the other, so it is compared to β·|S|·100 eps, not to 0.
    eps = torch.finfo(torch.float32).eps
    for ra, rb in zip(a, b):
        for key in ["loss", "grad_norm"]:
            assert ra[key] == pytest.approx(rb[key], rel=100 * eps), key
        scale = 0.1 * max(abs(ra["logps/chosen"]), abs(ra["logps/rejected"]))
        assert ra["rewards/margins"] == pytest.approx(rb["rewards/margins"], rel=100 * eps, abs=100 * eps * scale)
    for pa, pb in zip(big.model.parameters(), acc.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)  # Adam amplifies float noise on ~0 grads


def test_save_round_trip_gives_identical_logps(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from prefero.batching import pack_groups
    from prefero.logprobs import CompletionLogProbs

    trainer = Trainer(config(tiny_model_dir, tmp_path / "rt", "max_steps=3", "eval_data=null"))
    trainer.run()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "rt")
    assert (tmp_path / "rt" / "model.safetensors").exists()
    assert (tmp_path / "rt" / "tokenizer_config.json").exists()
    batch = pack_groups(trainer.train_ds.groups[:4])
    with torch.no_grad():
        a, _ = CompletionLogProbs(trainer.model)(batch)
        b, _ = CompletionLogProbs(reloaded)(batch)
    assert torch.equal(a, b)


def test_sft_learns(tiny_model_dir, tmp_path):
    Trainer(config(tiny_model_dir, tmp_path / "sft", "loss=sft", "eval_data=null", "learning_rate=1e-2")).run()
    train, _ = read_metrics(tmp_path / "sft")
    assert train[-1]["loss"] < train[0]["loss"] / 2


def test_lora_saves_adapter_and_merged(tiny_model_dir, tmp_path):
    out = tmp_path / "lora"
    Trainer(config(tiny_model_dir, out, "loss=simpo", "max_steps=3", "eval_data=null",
                   "lora.r=4", "lora.merge=true", "learning_rate=1e-2")).run()
    assert (out / "adapter_model.safetensors").exists()
    assert (out / "merged" / "model.safetensors").exists()


def test_output_dir_not_overwritten(tiny_model_dir, tmp_path):
    from prefero.options import ConfigError

    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="overwrite=true"):
        Trainer(config(tiny_model_dir, out, "max_steps=1"))
    assert (out / "keep.txt").read_text() == "x"


def test_bfloat16_autocast_trains(tiny_model_dir, tmp_path):
    trainer = Trainer(config(tiny_model_dir, tmp_path / "bf16", "dtype=bfloat16", "max_steps=12", "eval_data=null"))
    trainer.run()
    train, _ = read_metrics(tmp_path / "bf16")
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # fp32 master weights
    assert train[-1]["loss"] < 0.6 and train[-1]["rewards/accuracies"] > 0.7


def test_compiled_body_gives_the_same_steps(tiny_model_dir, tmp_path):
    """compile=true (inductor on CPU here) trains to the same numbers as eager."""
    eager = Trainer(config(tiny_model_dir, tmp_path / "eager", "max_steps=2", "eval_data=null"))
    compiled = Trainer(config(tiny_model_dir, tmp_path / "compiled", "max_steps=2", "eval_data=null", "compile=true"))
    for _ in range(2):
        a, b = eager.train_step(), compiled.train_step()
        for key in ["loss", "grad_norm", "rewards/margins"]:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
