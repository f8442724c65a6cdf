"""Two processes on CPU (gloo) give the one-process loss curve, for DDP and FSDP2;
FSDP checkpoints resume. Same global batch: 2 × 4 pairs == 1 × 8 pairs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import launching
from prefero.demo import asset

pytestmark = pytest.mark.slow  # see pyproject.toml's markers

FSDP = ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
        "--fsdp_reshard_after_forward", "true"]
KEYS = ["loss", "grad_norm", "rewards/margins", "rewards/accuracies", "logps/chosen"]


def train_args(model_dir, out, batch_size, *extra):
    return [f"model={model_dir}", f"train_data={asset('demo_train.jsonl')}", f"output_dir={out}",
            "loss=dpo", "learning_rate=1e-3", f"batch_size={batch_size}", "max_steps=6", "seed=0",
            "max_length=128", "max_prompt_length=64", *extra]


def launch(launcher_args, args):
    return launching.launch("train", args, launcher_args)


def curve(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()
            if "split" not in json.loads(x)]


@pytest.fixture(scope="module")
def single(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    r = subprocess.run([sys.executable, "-m", "prefero", "train", *train_args(tiny_model_dir, out, 8)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return out


def assert_same_curve(a, b, tol=1e-5):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for k in KEYS:
            assert ra[k] == pytest.approx(rb[k], rel=tol, abs=tol), (ra["step"], k)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one(mode, single, tiny_model_dir, tmp_path):
    out = tmp_path / mode
    # accelerate's --cpu runs one process; --multi_gpu runs torchrun, and prefero picks gloo on CPU
    launch(["--multi_gpu"] if mode == "ddp" else FSDP, train_args(tiny_model_dir, out, 4))
    assert_same_curve(curve(single), curve(out))
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(single).state_dict()
    b = AutoModelForCausalLM.from_pretrained(out).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_token_level_nll_is_exact_across_processes(tiny_model_dir, tmp_path):
    """SFT's token mean over the step's completion tokens: 2 processes x 4 == 1 x 8 although
    the processes hold different token counts (the step's count is known before the forward)."""
    one, two = tmp_path / "one", tmp_path / "two"
    r = subprocess.run([sys.executable, "-m", "prefero", "train",
                        *train_args(tiny_model_dir, one, 8, "loss=sft", "max_steps=3")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    r = launch(["--multi_gpu"], train_args(tiny_model_dir, two, 4, "loss=sft", "max_steps=3"))
    assert "2 processes (distributed: MULTI_CPU)" in r.stdout or "2 processes" in r.stdout
    a, b = curve(one), curve(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        for k in ["loss", "grad_norm", "logps/chosen"]:
            assert ra[k] == pytest.approx(rb[k], rel=1e-5), (ra["step"], k)


def test_a_launch_that_starts_one_process_says_so(tiny_model_dir, tmp_path):
    """`accelerate launch --cpu --num_processes 2` quietly starts ONE process with half the
    intended global batch; the run's first line shows it and warns."""
    r = launch(["--cpu"], train_args(tiny_model_dir, tmp_path / "one", 4, "max_steps=1"))
    assert "1 process (distributed: NO)" in r.stdout and "global batch 4 per step" in r.stdout
    assert "accelerate launch was asked for 2 processes but this run has 1" in r.stdout


def test_fsdp_checkpoint_resumes(single, tiny_model_dir, tmp_path):
    out = tmp_path / "fsdp"
    launch(FSDP, train_args(tiny_model_dir, out, 4, "save_steps=3"))
    first = curve(out)
    assert (out / "checkpoints" / "step-3" / "COMPLETE").exists()
    # resume from step 3: the rows after it are recomputed and must come out the same
    launch(FSDP, train_args(tiny_model_dir, out, 4, "save_steps=3", "resume=true"))
    assert_same_curve(first, curve(out), tol=1e-6)
    assert_same_curve(curve(single), curve(out))


def test_deepspeed_is_refused_with_a_clear_error(tiny_model_dir, tmp_path, monkeypatch):
    """Under DeepSpeed accelerate steps the optimizer inside backward; the loop refuses it
    rather than run without its accumulation, guard and checkpoints."""
    import accelerate
    from accelerate.utils import DistributedType

    from prefero.config import load_config
    from prefero.demo import asset
    from prefero.options import ConfigError
    from prefero.train import Trainer

    class DeepSpeedAccelerator(accelerate.Accelerator):
        distributed_type = DistributedType.DEEPSPEED

    monkeypatch.setattr(accelerate, "Accelerator", DeepSpeedAccelerator)
    cfg = load_config(None, [f"model={tiny_model_dir}", f"train_data={asset('demo_train.jsonl')}",
                             f"output_dir={tmp_path / 'out'}"])
    with pytest.raises(ConfigError, match="DeepSpeed is not supported.*fsdp2.yaml"):
        Trainer(cfg)
