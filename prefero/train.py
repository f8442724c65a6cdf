"""`prefero train`: every offline loss and SFT on one engine, run by the shared loop.

Read top to bottom: load data → reference log-probs (only if the loss needs them) →
policy → `Loop._prepare` (optimizer, schedule, resume); per step `_forward` packs the
items, takes completion log-probs and applies the loss, `summarize` makes the metrics.
The steps themselves (accumulation, clipping, guard, eval, checkpoints) are `prefero/loop.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prefero.batching import pack_groups
from prefero.config import ConfigError, TrainConfig
from prefero.data import DataOptions, DataReport, load_examples, load_pairs
from prefero.logprobs import CompletionLogProbs, unwrap_causal_lm
from prefero.loop import Loop, TrainingError, step_order  # noqa: F401  (TrainingError: the CLI's)
from prefero.losses import LossSpec, PairStats, UnpairedStats, get_loss
from prefero.model import (
    apply_lora,
    attn_implementation,
    enable_gradient_checkpointing,
    load_causal_lm,
    load_tokenizer,
)
from prefero.reference import cache_key, load_cached, precompute_logps, store_cached


@dataclass
class Dataset:
    """Tokenized items with their layout groups and, if needed, reference log-probs."""

    items: list
    groups: list  # (prompt_ids, [completion_ids, ...]) per item
    ref: Tensor | None = None  # [N, completions per group]

    def __len__(self) -> int:
        return len(self.items)


def data_options(cfg: TrainConfig) -> DataOptions:
    return DataOptions(
        max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
        on_bad_record=cfg.on_bad_record, seed=cfg.seed,
    )


def load_dataset(path: str, tokenizer, cfg: TrainConfig, spec: LossSpec) -> tuple[Dataset, DataReport]:
    opts = data_options(cfg)
    if spec.data == "paired":
        items, report = load_pairs(path, tokenizer, opts)
        if spec.needs_win_probs:
            for it in items:
                if it.p_chosen is None or it.p_rejected is None:
                    raise ConfigError(
                        f"{path}: row {it.row}: loss {spec.name!r} needs p_chosen and p_rejected"
                    )
        groups = [(it.prompt_ids, [it.chosen_ids, it.rejected_ids]) for it in items]
    elif spec.data == "sft":
        items, report = load_examples(path, tokenizer, opts, kind="sft")
        groups = [(it.prompt_ids, [it.completion_ids]) for it in items]
    else:  # unpaired (KTO): each prompt also scores the next item's completion for the KL term
        items, report = load_examples(path, tokenizer, opts, kind="unpaired")
        n = len(items)
        groups = [
            (it.prompt_ids, [it.completion_ids, items[(i + 1) % n].completion_ids])
            for i, it in enumerate(items)
        ]
    if not items:
        raise ConfigError(f"{path}: no usable records (see the data report for why)")
    return Dataset(items, groups), report


def loss_stats(spec: LossSpec, ds: Dataset, idx: list[int], sums: Tensor, lengths: Tensor, device):
    """The loss's inputs for items `idx` from the engine's per-completion sums."""
    ref = ds.ref[idx].to(device) if ds.ref is not None else None
    lengths = lengths.float()
    if spec.data == "unpaired":
        labels = torch.tensor([ds.items[i].label for i in idx], device=device)
        return UnpairedStats(sums[0::2], ref[:, 0], labels, sums[1::2], ref[:, 1]), lengths[0::2]
    if spec.data == "sft":
        return PairStats(chosen_logps=sums, chosen_lengths=lengths), lengths
    stats = PairStats(
        chosen_logps=sums[0::2], rejected_logps=sums[1::2],
        chosen_lengths=lengths[0::2], rejected_lengths=lengths[1::2],
    )
    if ref is not None:
        stats.ref_chosen_logps, stats.ref_rejected_logps = ref[:, 0], ref[:, 1]
    if spec.needs_win_probs:
        stats.p_chosen = torch.tensor([ds.items[i].p_chosen for i in idx], device=device)
        stats.p_rejected = torch.tensor([ds.items[i].p_rejected for i in idx], device=device)
    return stats, lengths


def summarize(spec: LossSpec, rows: list[dict], gather=lambda t: t) -> dict:
    """Step or eval metrics (SPEC §2) from per-example tensors, gathered over processes."""

    def cat(key):
        parts = [r[key] for r in rows if r.get(key) is not None]
        return gather(torch.cat(parts).detach().float()) if parts else None

    out = {"loss": cat("loss").mean().item()}
    lw, ll, nw, nl = cat("chosen_logps"), cat("rejected_logps"), cat("chosen_lengths"), cat("rejected_lengths")
    rw, rl = cat("chosen_rewards"), cat("rejected_rewards")
    if spec.data == "unpaired":
        labels = cat("labels").bool()
        if labels.any():
            out["rewards/chosen"] = rw[labels].mean().item()
        if (~labels).any():
            out["rewards/rejected"] = rw[~labels].mean().item()
        if labels.any() and (~labels).any():
            out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
        return out
    out.update({"logps/chosen": lw.mean().item(), "avg_logps/chosen": (lw / nw).mean().item(),
                "lengths/chosen": nw.mean().item()})
    if ll is not None:
        out.update({
            "logps/rejected": ll.mean().item(), "avg_logps/rejected": (ll / nl).mean().item(),
            "lengths/rejected": nl.mean().item(),
            "likelihood_ranking_accuracy": (lw / nw > ll / nl).float().mean().item(),
        })
    if rw is not None and rl is not None:
        out.update({
            "rewards/chosen": rw.mean().item(), "rewards/rejected": rl.mean().item(),
            "rewards/margins": (rw - rl).mean().item(),
            "rewards/accuracies": (rw > rl).float().mean().item(),
        })
    return out


class Trainer(Loop):
    """A run of any offline loss; `run()` (the shared loop) trains it."""

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.spec = get_loss(cfg.loss)
        self.desc = cfg.loss
        self.tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
        self.train_ds, report = load_dataset(cfg.train_data, self.tokenizer, cfg, self.spec)
        eval_report = None
        if cfg.eval_data:
            self.eval_ds, eval_report = load_dataset(cfg.eval_data, self.tokenizer, cfg, self.spec)
        self.write_data_report(report, eval_report)

        if self.spec.needs_reference:
            self._compute_reference()
        model = load_causal_lm(cfg.model, cfg.trust_remote_code, attention=cfg.attention)
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        if cfg.lora is not None:
            model = apply_lora(model, cfg.lora)
        if cfg.compile:
            # the body only: packed rows change length every step (dynamic), and the chunked
            # log-prob head is already a fused custom autograd function
            lm = unwrap_causal_lm(model)
            getattr(lm, lm.base_model_prefix).compile(dynamic=True)
        self.model = model
        engine = CompletionLogProbs(model, cfg.logprob_chunk_size)
        self._prepare(engine, [p for p in model.parameters() if p.requires_grad])

    def _compute_reference(self) -> None:
        """Reference log-probs for every completion: from the on-disk cache when its key
        matches, otherwise scored once under the reference model, which is then freed."""
        cfg = self.cfg
        ref_name = cfg.ref_model or cfg.model
        datasets = [ds for ds in [self.train_ds, self.eval_ds] if ds is not None]
        cache_dir = cfg.reference_cache_dir
        settings = {"max_length": cfg.max_length, "max_prompt_length": cfg.max_prompt_length,
                    "attention": attn_implementation(cfg.attention)}
        keys = [cache_key(ds.groups, ref_name, cfg.dtype, settings) for ds in datasets]
        if cache_dir is not None:
            for ds, (key, _) in zip(datasets, keys):
                ds.ref = load_cached(cache_dir, key)
        missing = [(ds, k) for ds, k in zip(datasets, keys) if ds.ref is None]
        if not missing:
            self.reference_source = "cache"
            return
        ref = load_causal_lm(ref_name, cfg.trust_remote_code, attention=cfg.attention)
        ref.to(self.device)
        with self.autocast():
            for ds, (key, parts) in missing:
                ds.ref = precompute_logps(ref, ds.groups, 2 * cfg.batch_size, cfg.logprob_chunk_size, self.device)
                if cache_dir is not None and self.accelerator.is_main_process:
                    store_cached(cache_dir, key, ds.ref, parts)
        self.reference_source = "computed"
        del ref

    def _forward(self, ds: Dataset, idx: list[int]) -> dict:
        batch = pack_groups([ds.groups[i] for i in idx]).to(self.device)
        with self.autocast():
            sums, _ = self.engine(batch)
        stats, _ = loss_stats(self.spec, ds, idx, sums, batch.lengths, self.device)
        out = self.spec(stats, **_loss_hparams(self.cfg))
        row = {"loss_tensor": out.loss, "loss": out.loss, "chosen_rewards": out.chosen_rewards,
               "rejected_rewards": out.rejected_rewards,
               "tokens": sum(len(p) + len(c) for p, cs in (ds.groups[i] for i in idx) for c in cs)}
        if self.spec.data == "unpaired":
            row["labels"] = stats.labels
        else:
            row.update(chosen_logps=stats.chosen_logps, rejected_logps=stats.rejected_logps,
                       chosen_lengths=stats.chosen_lengths, rejected_lengths=stats.rejected_lengths)
        return row

    def _summarize(self, rows: list[dict], gather=lambda t: t) -> dict:
        return summarize(self.spec, rows, gather)


def _loss_hparams(cfg: TrainConfig) -> dict:
    return {k: getattr(cfg, k) for k in get_loss(cfg.loss).hyperparameters() if hasattr(cfg, k)}


def train(cfg: TrainConfig) -> dict:
    return Trainer(cfg).run()
