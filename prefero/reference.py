"""Reference log-probs: computed once, cached on disk, so DPO-family training holds no
reference model (README.md#how-it-is-fast-and-lean).

The cache key covers everything the numbers depend on: the tokenized data (which
fingerprints the file, the column mapping, chat template and truncation settings), the
reference model's identity (its config and the size and modification time of each weight
file, or the hub revision), the numeric precision and the engine version. Change any of
them and the log-probs are recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from prefero.attention import row_tokens
from prefero.batching import pack_groups
from prefero.files import atomic_path
from prefero.logprobs import CompletionLogProbs

ENGINE_VERSION = "3"  # bump when the log-prob computation changes numerically


@torch.no_grad()
def precompute_logps(model, groups: list, batch_groups: int, chunk_size: int, device) -> Tensor:
    """Summed log-prob of every completion of every group under `model`, in order.

    Returns a float32 tensor of shape [len(groups), completions per group].
    """
    engine = CompletionLogProbs(model, chunk_size).to(device).eval()
    width = len(groups[0][1]) if groups else 0
    out = torch.empty(len(groups), width, dtype=torch.float32)
    rows = row_tokens(model)
    for s in range(0, len(groups), batch_groups):
        chunk = groups[s : s + batch_groups]
        sums, _ = engine(pack_groups(chunk, rows).to(device))
        out[s : s + len(chunk)] = sums.view(len(chunk), width).float().cpu()
    return out


def data_fingerprint(groups: list) -> str:
    """Hash of the exact token ids the reference scores."""
    h = hashlib.sha256()
    for prompt, completions in groups:
        h.update(b"P" + _ids_bytes(prompt))
        for c in completions:
            h.update(b"C" + _ids_bytes(c))
    return h.hexdigest()


def _ids_bytes(ids) -> bytes:
    return torch.tensor(list(ids), dtype=torch.int64).numpy().tobytes()


def model_identity(name: str) -> dict:
    """What identifies a model's weights without reading them all."""
    path = Path(name)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())
        return {
            "path": str(path.resolve()),
            "files": {
                p.name: (p.read_text() if p.name == "config.json" else [p.stat().st_size, p.stat().st_mtime_ns])
                for p in files
            },
        }
    try:  # a hub id: the cached snapshot's folder name is the commit it resolved to
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(name, local_files_only=True, allow_patterns=["config.json"])
        return {"hub": name, "revision": Path(snapshot).name}
    except Exception:
        return {"hub": name}


def cache_key(groups: list, model_name: str, precision: str, settings: dict) -> tuple[str, dict]:
    parts = {
        "data": data_fingerprint(groups),
        "model": model_identity(model_name),
        "precision": precision,
        "settings": settings,
        "engine": ENGINE_VERSION,
        "torch": torch.__version__.split("+")[0],
    }
    blob = json.dumps(parts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:32], parts


def load_cached(cache_dir: Path, key: str) -> Tensor | None:
    path = cache_dir / f"{key}.safetensors"
    if not path.exists():
        return None
    try:
        return load_file(path)["logps"]
    except Exception:  # a torn or corrupt file is a miss, not an error
        return None


def store_cached(cache_dir: Path, key: str, logps: Tensor, parts: dict) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{key}.safetensors"
    meta = {"key_parts": json.dumps({k: v for k, v in parts.items() if k != "data"}), "data": parts["data"]}
    with atomic_path(path) as tmp:
        save_file({"logps": logps.contiguous()}, tmp, metadata=meta)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # on disk before the rename, as every prefero file
    return path
