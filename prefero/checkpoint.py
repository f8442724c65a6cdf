"""Atomic, resumable checkpoints (SPEC §7).

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


def trainable_state(model: torch.nn.Module) -> dict:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(root: Path, step: int, model, optimizer, scheduler, loop_state: dict,
                    keep_last: int = 0, process_index: int = 0, is_main: bool = True,
                    barrier=lambda: None) -> Path:
    """Write checkpoint `step` under `root` atomically; prune to the newest `keep_last`.

    Every process calls this (each writes its own RNG state); the main process writes
    the rest, the marker, and renames. `barrier` synchronises processes between phases.
    """
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()
    torch.save(_rng_state(), tmp / f"rng-{process_index}.pt")
    if is_main:
        save_file(trainable_state(model), tmp / "trainable.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
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


def load_latest(root: Path, model, optimizer, scheduler, process_index: int = 0) -> dict | None:
    """Restore the newest checkpoint that loads; skip (with a warning) any that does not.

    Returns the loop state, or None when there is no usable checkpoint.
    """
    for d in reversed(list_checkpoints(root)):
        try:
            weights = load_file(d / "trainable.safetensors")
            opt_state = torch.load(d / "optimizer.pt", weights_only=True)
            sched_state = torch.load(d / "scheduler.pt", weights_only=True)
            rng = torch.load(d / f"rng-{process_index}.pt", weights_only=True)
            loop = json.loads((d / "loop.json").read_text())
        except Exception as e:  # a corrupt file: fall back to the previous checkpoint
            warnings.warn(f"checkpoint {d} is unreadable ({type(e).__name__}: {e}); trying the previous one")
            continue
        params = dict(model.named_parameters())
        missing = [n for n in weights if n not in params]
        if missing:
            warnings.warn(f"checkpoint {d} does not match the model (e.g. {missing[0]}); trying the previous one")
            continue
        with torch.no_grad():
            for n, t in weights.items():
                params[n].copy_(t)
        optimizer.load_state_dict(opt_state)
        scheduler.load_state_dict(sched_state)
        _set_rng_state(rng)
        return loop
    return None
