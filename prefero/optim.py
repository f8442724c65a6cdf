"""The optimizer and the learning-rate schedule of a training run."""

from __future__ import annotations

import torch


def make_optimizer(cfg, params: list, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW or RMSprop; weight decay only on parameters of two or more dimensions (matrices,
    embeddings), never on biases and norm weights, as transformers' Trainer does."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.learning_rate, alpha=cfg.rmsprop_alpha)
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=tuple(cfg.adam_betas),
                             **({"fused": True} if fused else {}))


def fused_adam(device: torch.device) -> bool:
    """Whether torch has a fused AdamW for `device`: CUDA, and CPU from torch 2.4."""
    if device.type == "cuda":
        return True
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return device.type == "cpu" and (major, minor) >= (2, 4)


def make_scheduler(cfg, optimizer, total_steps: int):
    """Linear warmup, then cosine, linear or constant."""
    from transformers import get_scheduler

    name = "constant_with_warmup" if cfg.lr_scheduler == "constant" else cfg.lr_scheduler
    return get_scheduler(name, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps),
                         num_training_steps=total_steps)
