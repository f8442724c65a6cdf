"""`prefero train`: every offline loss and SFT on one engine, run by the shared loop.

Read top to bottom: load data → reference log-probs (only if the loss needs them) →
policy → `Loop._prepare` (optimizer, schedule, resume); per step `_forward` packs the
items, takes completion log-probs and applies the loss, `summarize` makes the metrics.
The steps themselves (accumulation, clipping, guard, eval, checkpoints) are `prefero/loop.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from prefero.attention import row_tokens
from prefero.batching import pack_groups
from prefero.config import TrainConfig
from prefero.data import DataReport, load_examples, load_pairs
from prefero.data.limits import check_run_lengths
from prefero.logprobs import CompletionLogProbs, unwrap_causal_lm
from prefero.loop import Loop, TrainingError, data_options  # noqa: F401  (TrainingError: importable here)
from prefero.losses import LossSpec, PairStats, UnpairedStats, get_loss
from prefero.model import (
    apply_lora,
    enable_gradient_checkpointing,
    load_causal_lm,
    load_tokenizer,
    resolve_attention,
)
from prefero.options import ConfigError
from prefero.reference import cache_key, load_cached, precompute_logps, store_cached


@dataclass(eq=False)  # identity: datasets key dicts
class Dataset:
    """Tokenized items with their layout groups and, if needed, reference log-probs."""

    items: list
    groups: list  # (prompt_ids, [completion_ids, ...]) per item
    ref: Tensor | None = None  # [N, completions per group]
    # KTO: reference log-probs of the mismatched (prompt i, completion j) pairs the run uses
    kl_ref: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def first_lengths(self) -> Tensor:
        """|y| of each item's first (chosen / only) completion, EOS included."""
        if not hasattr(self, "_first_lengths"):
            self._first_lengths = torch.tensor([len(cs[0]) for _, cs in self.groups], dtype=torch.float32)
        return self._first_lengths


def kl_partners(batch: list[int]) -> list[int]:
    """KTO's mismatched completions: item k of a micro-batch is scored with the completion of
    item k−1 (cycled), inside the batch and after shuffling, as the KTO authors' code does."""
    return [batch[k - 1] for k in range(len(batch))]


def load_dataset(path: str, tokenizer, cfg: TrainConfig, spec: LossSpec, split: str | None) -> tuple[Dataset, DataReport]:
    opts = data_options(cfg, split)
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
    else:  # unpaired (KTO); the KL pairs are formed per micro-batch (`kl_partners`)
        items, report = load_examples(path, tokenizer, opts, kind="unpaired")
        groups = [(it.prompt_ids, [it.completion_ids]) for it in items]
    if not items:
        raise ConfigError(report.nothing_kept(path))
    return Dataset(items, groups), report


def loss_stats(spec: LossSpec, ds: Dataset, idx: list[int], sums: Tensor, lengths: Tensor, device,
               scope: list[int] | None = None):
    """The loss's inputs for items `idx` from the engine's per-completion sums; `scope` (the
    items the loss is averaged over) sets the token-level NLL normaliser."""
    ref = ds.ref[idx].to(device) if ds.ref is not None else None
    lengths = lengths.float()
    if spec.data == "unpaired":
        labels = torch.tensor([ds.items[i].label for i in idx], device=device)
        ref_kl = torch.tensor([ds.kl_ref[(i, j)] for i, j in zip(idx, kl_partners(idx))], device=device)
        return UnpairedStats(sums[0::2], ref[:, 0], labels, sums[1::2], ref_kl), lengths[0::2]
    nll_scale = ds.first_lengths[scope].mean().to(device) if scope is not None else None
    if spec.data == "sft":
        return PairStats(chosen_logps=sums, chosen_lengths=lengths, nll_scale=nll_scale), lengths
    stats = PairStats(
        chosen_logps=sums[0::2], rejected_logps=sums[1::2],
        chosen_lengths=lengths[0::2], rejected_lengths=lengths[1::2], nll_scale=nll_scale,
    )
    if ref is not None:
        stats.ref_chosen_logps, stats.ref_rejected_logps = ref[:, 0], ref[:, 1]
    if spec.needs_win_probs:
        stats.p_chosen = torch.tensor([ds.items[i].p_chosen for i in idx], device=device)
        stats.p_rejected = torch.tensor([ds.items[i].p_rejected for i in idx], device=device)
    return stats, lengths


def summarize(spec: LossSpec, rows: list[dict], gather=lambda t: t) -> dict:
    """Step or eval metrics (README.md#losses) from per-example tensors, gathered over processes."""

    def cat(key):
        parts = [r[key] for r in rows if r.get(key) is not None]
        return gather(torch.cat(parts).detach().float()) if parts else None

    out = {"loss": cat("loss").mean().item()}
    lw, ll, nw, nl = cat("chosen_logps"), cat("rejected_logps"), cat("chosen_lengths"), cat("rejected_lengths")
    rw, rl = cat("chosen_rewards"), cat("rejected_rewards")
    if spec.data == "unpaired":
        labels, logps = cat("labels").bool(), cat("logps")
        out["kl"] = cat("kl").mean().item()  # z0, the mean over micro-batches (and processes)
        for name, mask in (("chosen", labels), ("rejected", ~labels)):  # desirable, undesirable
            if mask.any():
                out[f"rewards/{name}"] = rw[mask].mean().item()
                out[f"logps/{name}"] = logps[mask].mean().item()
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
        check_run_lengths(cfg, self.tokenizer, ("model", "ref_model"))
        self.train_ds, report = load_dataset(cfg.train_data, self.tokenizer, cfg, self.spec, cfg.train_split)
        eval_report = None
        if self.eval_source():
            path, split = self.eval_source()
            self.eval_ds, eval_report = load_dataset(path, self.tokenizer, cfg, self.spec, split)
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
        self.row_tokens = row_tokens(model)
        engine = CompletionLogProbs(model, cfg.logprob_chunk_size)
        self._prepare(engine, [p for p in model.parameters() if p.requires_grad])

    def _compute_reference(self) -> None:
        """Reference log-probs for every completion: from the on-disk cache when its key
        matches, otherwise scored once under the reference model, which is then freed."""
        cfg = self.cfg
        ref_name = cfg.ref_model or cfg.model
        settings = {"max_length": cfg.max_length, "max_prompt_length": cfg.max_prompt_length,
                    "attention": resolve_attention(ref_name, cfg.attention, cfg.trust_remote_code)[0]}
        # (groups to score, where the [N, width] result goes)
        jobs = [(ds.groups, lambda logps, ds=ds: setattr(ds, "ref", logps))
                for ds in [self.train_ds, self.eval_ds] if ds is not None]
        if self.spec.data == "unpaired":
            # KTO's mismatched pairs: the data order is a pure function of (seed, step), so
            # every (prompt i, completion j) pair the run will form is known now
            for ds, pairs in self._kl_pairs().items():
                groups = [(ds.groups[i][0], [ds.groups[j][1][0]]) for i, j in pairs]
                jobs.append((groups, lambda logps, ds=ds, pairs=pairs:
                             setattr(ds, "kl_ref", dict(zip(pairs, logps[:, 0].tolist())))))
        cache_dir = cfg.reference_cache_dir
        missing = []
        for groups, put in jobs:
            key, parts = cache_key(groups, ref_name, cfg.dtype, settings)
            logps = load_cached(cache_dir, key) if cache_dir is not None else None
            if logps is None:
                missing.append((groups, put, key, parts))
            else:
                put(logps)
        self.reference_source = "computed" if missing else "cache"
        if not missing:
            return
        ref = load_causal_lm(ref_name, cfg.trust_remote_code, attention=cfg.attention,
                             key="ref_model" if cfg.ref_model else "model")
        ref.to(self.device)
        with self.autocast():
            for groups, put, key, parts in missing:
                logps = precompute_logps(ref, groups, 2 * cfg.batch_size, cfg.logprob_chunk_size, self.device)
                if cache_dir is not None and self.accelerator.is_main_process:
                    store_cached(cache_dir, key, logps, parts)
                put(logps)
        del ref

    def _kl_pairs(self) -> dict:
        """Every (i, j) KL pair of the run, per dataset: each process's micro-batches of each
        training step, and the evaluation batches."""
        train = set()
        for step in range(self.planned_steps()):
            idx = self.step_items(step)
            for p in range(self.accelerator.num_processes):
                for micro in self.micro_batches(idx, p):
                    train.update(zip(micro, kl_partners(micro)))
        out = {self.train_ds: sorted(train)}
        if self.eval_ds is not None:
            out[self.eval_ds] = sorted({pair for b in self.eval_batches(self.eval_ds)
                                        for pair in zip(b, kl_partners(b))})
        return out

    def eval_batches(self, ds) -> list[list[int]]:
        batches = super().eval_batches(ds)
        if self.spec.data == "unpaired" and len(batches) > 1 and len(batches[-1]) == 1:
            # a lone item would be its own mismatched pair: fold it into the batch before
            batches[-2] += batches.pop()
        return batches

    def _forward(self, ds: Dataset, idx: list[int], scope: list[int] | None = None) -> dict:
        groups = [ds.groups[i] for i in idx]
        if self.spec.data == "unpaired":
            groups = [(p, cs + ds.groups[j][1]) for (p, cs), j in zip(groups, kl_partners(idx))]
        batch = pack_groups(groups, self.row_tokens).to(self.device)
        with self.autocast():
            sums, _ = self.engine(batch)
        stats, _ = loss_stats(self.spec, ds, idx, sums, batch.lengths, self.device, scope)
        out = self.spec(stats, **self.cfg.loss_hyperparameters())
        row = {"loss_tensor": out.loss, "loss": out.loss, "chosen_rewards": out.chosen_rewards,
               "rejected_rewards": out.rejected_rewards,
               "tokens": sum(len(p) + len(c) for p, cs in groups for c in cs)}
        if self.spec.data == "unpaired":
            row.update(labels=stats.labels, logps=stats.logps, kl=out.extra["kl"].reshape(1))
        else:
            row.update(chosen_logps=stats.chosen_logps, rejected_logps=stats.rejected_logps,
                       chosen_lengths=stats.chosen_lengths, rejected_lengths=stats.rejected_lengths)
        return row

    def _summarize(self, rows: list[dict], gather=lambda t: t) -> dict:
        return summarize(self.spec, rows, gather)


def train(cfg: TrainConfig) -> dict:
    return Trainer(cfg).run()
