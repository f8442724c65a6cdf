"""Exact resume after SIGKILL, atomic checkpoints, the non-finite guard."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from jsonl_files import metrics
from prefero.checkpoint import list_checkpoints
from prefero.config import load_config
from prefero.demo import asset
from prefero.train import Trainer, TrainingError

TIMING = {"tokens/s"}


def args(model_dir, out, *extra):
    return [
        f"model={model_dir}", f"train_data={asset('demo_train.jsonl')}", f"eval_data={asset('demo_eval.jsonl')}",
        f"output_dir={out}", "loss=dpo", "learning_rate=1e-3", "batch_size=4", "max_steps=10",
        "save_steps=3", "eval_steps=5", "seed=3", "max_length=128", "max_prompt_length=64",
        "lora.r=4", "lora.dropout=0.1", *extra,  # dropout: the RNG state must be restored too
    ]


def rows(out):
    out_rows = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out_rows.append({k: v for k, v in r.items() if k not in TIMING})
    return out_rows


def run_cli(argv, kill_at_step=None):
    """Run `prefero train` in a subprocess; optionally SIGKILL itself once step N is logged."""
    code = "import sys\nfrom prefero.cli import main\n"
    if kill_at_step is not None:
        code += textwrap.dedent(f"""
            import os, signal
            from prefero import train
            log = train.Trainer.log
            def log_then_die(self, metrics, split="train"):
                log(self, metrics, split)
                if self.step == {kill_at_step} and split == "train":
                    os.kill(os.getpid(), signal.SIGKILL)
            train.Trainer.log = log_then_die
        """)
    code += "sys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, "train", *argv], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted(tiny_model_dir, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    r = run_cli(args(tiny_model_dir, full))
    assert r.returncode == 0, r.stderr
    r = run_cli(args(tiny_model_dir, killed), kill_at_step=8)
    assert r.returncode == -9
    assert [d.name for d in list_checkpoints(killed / "checkpoints")] == ["step-3", "step-6"]
    assert not (killed / "model.safetensors").exists() and not (killed / "adapter_model.safetensors").exists()
    r = run_cli(args(tiny_model_dir, killed, "resume=true"))
    assert r.returncode == 0, r.stderr
    assert "resumed from step 6" in r.stdout
    a, b = rows(full), rows(killed)
    assert len(a) == len(b) == 10 + 3  # 10 train rows, eval at 0, 5, 10
    assert a == b  # bit-identical on CPU, every key


def test_corrupt_and_incomplete_checkpoints_are_skipped(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    Trainer(load_config(None, args(tiny_model_dir, out, "max_steps=7", "eval_data=null"))).run()
    ckpts = out / "checkpoints"
    assert [d.name for d in list_checkpoints(ckpts)] == ["step-3", "step-6"]
    (ckpts / "step-6" / "trainable.safetensors").write_bytes(b"garbage")
    (ckpts / ".tmp-step-9").mkdir()  # a write that was killed half way: no marker
    with pytest.warns(UserWarning, match="step-6 is unreadable"):
        t = Trainer(load_config(None, args(tiny_model_dir, out, "max_steps=7", "eval_data=null", "resume=true")))
    assert t.step == 3


def test_keep_last_prunes(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    Trainer(load_config(None, args(tiny_model_dir, out, "max_steps=10", "save_steps=2", "keep_last=2",
                                   "eval_data=null"))).run()
    assert [d.name for d in list_checkpoints(out / "checkpoints")] == ["step-6", "step-8"]


def poison(trainer, steps):
    """Make the loss non-finite at the given (1-based) optimizer steps."""
    forward = trainer._forward

    def nan_forward(ds, idx, scope):
        row = forward(ds, idx, scope)
        if trainer.engine.training and trainer.step + 1 in steps:
            row["loss_tensor"] = row["loss_tensor"] * float("nan")
            row["loss"] = row["loss"] * float("nan")
        return row

    trainer._forward = nan_forward


def test_non_finite_step_is_not_applied(tiny_model_dir, tmp_path):
    t = Trainer(load_config(None, args(tiny_model_dir, tmp_path / "nan", "max_steps=4", "eval_data=null")))
    poison(t, {2, 3})
    t.train_step()
    before = [p.detach().clone() for p in t.model.parameters()]
    m2, m3 = t.train_step(), t.train_step()
    assert m2["skipped"] and m3["skipped"]
    for p, q in zip(before, t.model.parameters()):
        assert torch.equal(p, q)
    m4 = t.train_step()
    assert "skipped" not in m4 and t.bad_steps == 0


def test_too_many_bad_steps_stop_with_checkpoint_intact(tiny_model_dir, tmp_path):
    out = tmp_path / "bad"
    t = Trainer(load_config(None, args(tiny_model_dir, out, "max_steps=10", "max_bad_steps=2", "eval_data=null")))
    poison(t, {4, 5, 6, 7, 8, 9, 10})
    with pytest.raises(TrainingError, match="2 consecutive steps"):
        t.run()
    assert [d.name for d in list_checkpoints(out / "checkpoints")] == ["step-3"]
    logged = metrics(out)
    assert [r.get("skipped", False) for r in logged] == [False, False, False, True, True]


def test_checkpoint_with_pickled_code_is_refused(tiny_model_dir, tmp_path):
    """Optimizer state is loaded with weights_only=True: a pickle that runs code is skipped."""
    out = tmp_path / "run"
    Trainer(load_config(None, args(tiny_model_dir, out, "max_steps=7", "eval_data=null"))).run()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state": Evil()}, out / "checkpoints" / "step-6" / "optimizer.pt")
    with pytest.warns(UserWarning, match="step-6 is unreadable"):
        t = Trainer(load_config(None, args(tiny_model_dir, out, "max_steps=7", "eval_data=null", "resume=true")))
    assert t.step == 3 and not marker.exists()
