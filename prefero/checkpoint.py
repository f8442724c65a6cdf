"""Atomic, resumable checkpoints (README.md#checkpoints-resume-safety).

A checkpoint is a directory `output_dir/checkpoints/step-N` holding the trainable weights
(safetensors), the optimizer and scheduler states, every RNG state and the loop's own
state. It is written under a temporary name, a `COMPLETE` marker is written last, and
only then is it renamed into place, so a kill at any moment leaves either the previous
checkpoint or the new one, never half of one. Loading uses `weights_only=True`: a
checkpoint can carry tensors and plain containers, never code.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from prefero.config import RESUMABLE_KEYS
from prefero.files import atomic_write_text
from prefero.options import ConfigError
from prefero.stage_files import changed_keys, changes_in_words, describe_changes

# Full (unsharded) state dicts, gathered to CPU: the same files whether the run was one
# process, DDP or FSDP, so a checkpoint resumes under any of them.
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)

MARKER = "COMPLETE"


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "gauss": gauss},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(module: torch.nn.Module) -> dict:
    """Full state of the trainable parameters (collective under FSDP: call on every rank)."""
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    full = get_model_state_dict(module, options=FULL)
    return {k: v.contiguous() for k, v in full.items() if k in names}


def save_checkpoint(root: Path, step: int, module, optimizer, scheduler, loop_state: dict,
                    keep_last: int = 0, process_index: int = 0, is_main: bool = True,
                    barrier=lambda: None) -> Path:
    """Write checkpoint `step` under `root` atomically; prune to the newest `keep_last`.

    Every process calls this (each writes its own RNG state; gathering sharded state is
    collective); the main process writes the rest, the marker, and renames. `module` is
    the unwrapped module the optimizer trains; `barrier` synchronises processes.
    """
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()
    torch.save(_rng_state(), tmp / f"rng-{process_index}.pt")
    weights = trainable_state(module)
    opt_state = get_optimizer_state_dict(module, optimizer, options=FULL)
    if is_main:
        save_file(weights, tmp / "trainable.safetensors")
        torch.save(opt_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "loop.json").write_text(json.dumps(loop_state))
    barrier()
    if is_main:
        for f in tmp.iterdir():
            _fsync(f)
        (tmp / MARKER).write_text(str(step))
        _fsync(tmp / MARKER)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if keep_last > 0:
            for old in list_checkpoints(root)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.exists():
        return []
    done = [d for d in root.iterdir() if d.is_dir() and d.name.startswith("step-") and (d / MARKER).exists()]
    return sorted(done, key=lambda d: int(d.name.split("-")[1]))


def load_latest(root: Path, module, optimizer, scheduler, process_index: int = 0) -> dict | None:
    """Restore the newest checkpoint that loads; skip (with a warning) any that does not.

    Every process reads the full state and keeps its own shard. Returns the loop state,
    or None when there is no usable checkpoint.
    """
    for d in reversed(list_checkpoints(root)):
        try:
            weights = load_file(d / "trainable.safetensors")
            opt_state = torch.load(d / "optimizer.pt", weights_only=True)
            sched_state = torch.load(d / "scheduler.pt", weights_only=True)
            rng = torch.load(d / f"rng-{process_index}.pt", weights_only=True)
            loop = json.loads((d / "loop.json").read_text())
        except Exception as e:  # a corrupt or unsafe file: fall back to the previous checkpoint
            warnings.warn(f"checkpoint {d} is unreadable ({type(e).__name__}: {_short(e)}); trying the previous one")
            continue
        trainable = {n for n, p in module.named_parameters() if p.requires_grad}
        if set(weights) != trainable:
            warnings.warn(f"checkpoint {d} does not match the model's trainable parameters; trying the previous one")
            continue
        set_model_state_dict(module, weights, options=StateDictOptions(full_state_dict=True, strict=False))
        set_optimizer_state_dict(module, optimizer, opt_state, options=StateDictOptions(full_state_dict=True))
        scheduler.load_state_dict(sched_state)
        _set_rng_state(rng)
        return loop
    return None


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""


# --------------------------------------------------------------------------- resuming a run


def check_resume_config(saved_path: Path, current: dict) -> list[str]:
    """Resuming with a config that changes the run's math is an error naming each changed key;
    keys in `RESUMABLE_KEYS` (length of the run, eval/save cadence, engine) may change and are
    returned as "key: old -> new" lines to print."""
    if not saved_path.exists():
        return []
    saved = json.loads(saved_path.read_text())
    if changed_keys(saved, current, ignore=RESUMABLE_KEYS):
        raise ConfigError(f"resume=true with a config that changes the run: "
                          f"{describe_changes(saved, current, limit=10, ignore=RESUMABLE_KEYS)}; restore them "
                          f"or start a new output_dir (see {saved_path})")
    return changes_in_words(saved, current, ignore=("resume", "overwrite"))


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested config blocks as dotted keys: {"lora": {"r": 8}} -> {"lora.r": 8}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def truncate_metrics(path: Path, step: int, keep_step_zero_eval: bool = True) -> None:
    """Drop rows a killed run logged after its last checkpoint, so the file reads as one run."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    keep = [r for r in rows if json.loads(r)["step"] <= step]
    if not keep_step_zero_eval:
        keep = []
    atomic_write_text(path, "".join(r + "\n" for r in keep))
