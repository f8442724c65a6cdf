"""The one training loop: every offline loss, SFT, on one engine.

Read top to bottom: load data → reference log-probs (only if the loss needs them) →
policy → optimizer → steps (micro-batches, clipping, non-finite guard) → metrics, eval,
checkpoints → final save.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from prefero.batching import pack_groups
from prefero.checkpoint import FULL, get_model_state_dict, load_latest, save_checkpoint
from prefero.config import ConfigError, TrainConfig, to_dict
from prefero.data import DataOptions, DataReport, load_examples, load_pairs
from prefero.logprobs import CompletionLogProbs, unwrap_causal_lm
from prefero.losses import LossSpec, PairStats, UnpairedStats, get_loss
from prefero.model import (
    apply_lora,
    attn_implementation,
    enable_gradient_checkpointing,
    load_causal_lm,
    load_tokenizer,
    save_model,
)
from prefero.reference import cache_key, load_cached, precompute_logps, store_cached


class TrainingError(RuntimeError):
    """A run that cannot go on (e.g. too many non-finite steps); printed without traceback."""


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


def step_order(n: int, step: int, per_step: int, seed: int) -> list[int]:
    """Item indices of optimizer step `step`: epoch-wise seeded permutations, so the order
    is a pure function of (seed, step) and a resumed run sees exactly the same data."""
    start = step * per_step
    out = []
    while len(out) < per_step:
        epoch, offset = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000003 + epoch))
        take = min(per_step - len(out), n - offset)
        out += perm[offset : offset + take].tolist()
    return out


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


class Trainer:
    """Holds what a run needs; `run()` is the loop."""

    def __init__(self, cfg: TrainConfig):
        from accelerate import Accelerator

        self.cfg = cfg
        self.spec = get_loss(cfg.loss)
        self.out = Path(cfg.output_dir)
        # precision is our own autocast, not accelerate's process-wide setting, so several
        # runs in one process (self-play iterations, tests) can each choose theirs
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())  # gloo DDP on CPUs
        self.device = self.accelerator.device
        _prepare_output_dir(self.out, cfg.overwrite, cfg.resume)
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)

        self.tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
        self.train_ds, report = load_dataset(cfg.train_data, self.tokenizer, cfg, self.spec)
        self.eval_ds = None
        if cfg.eval_data:
            self.eval_ds, eval_report = load_dataset(cfg.eval_data, self.tokenizer, cfg, self.spec)
            report = {"train": report.to_dict(), "eval": eval_report.to_dict()}
        else:
            report = {"train": report.to_dict()}
        (self.out / "data_report.json").write_text(json.dumps(report, indent=2))

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
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=cfg.learning_rate, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay
        )
        self.per_step = cfg.batch_size * cfg.grad_accum * self.accelerator.num_processes
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(self.train_ds) / self.per_step))
        scheduler = make_scheduler(cfg, optimizer, self.total_steps)
        # the scheduler stays unprepared: accelerate would step it once per process
        self.scheduler = scheduler
        self.engine, self.optimizer = self.accelerator.prepare(engine, optimizer)
        self.step = 0
        self.bad_steps = 0
        if cfg.resume:
            self._resume()

    def _resume(self) -> None:
        loop = load_latest(self.out / "checkpoints", self.accelerator.unwrap_model(self.engine),
                           self.optimizer.optimizer, self.scheduler, self.accelerator.process_index)
        if loop is None:
            if self.accelerator.is_main_process:
                print(f"no complete checkpoint in {self.out / 'checkpoints'}; starting from step 0")
            _truncate_metrics(self.out / "metrics.jsonl", 0, keep_step_zero_eval=False)
            return
        self.step, self.bad_steps = loop["step"], loop["bad_steps"]
        if self.accelerator.is_main_process:
            _truncate_metrics(self.out / "metrics.jsonl", self.step)
            print(f"resumed from step {self.step}")

    def save_checkpoint(self) -> None:
        acc = self.accelerator
        save_checkpoint(
            self.out / "checkpoints", self.step, acc.unwrap_model(self.engine), self.optimizer.optimizer,
            self.scheduler, {"step": self.step, "bad_steps": self.bad_steps},
            keep_last=self.cfg.keep_last, process_index=acc.process_index,
            is_main=acc.is_main_process, barrier=acc.wait_for_everyone,
        )

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

    def autocast(self):
        """bf16 autocast over float32 master weights when dtype is bfloat16."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.dtype == "bfloat16")

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

    def train_step(self) -> dict:
        cfg, acc = self.cfg, self.accelerator
        idx = step_order(len(self.train_ds), self.step, self.per_step, cfg.seed)
        local = idx[acc.process_index :: acc.num_processes]
        self.engine.train()
        rows, t0 = [], time.perf_counter()
        for m in range(cfg.grad_accum):
            micro = local[m * cfg.batch_size : (m + 1) * cfg.batch_size]
            sync = acc.no_sync(self.engine) if m < cfg.grad_accum - 1 else nullcontext()
            with sync:
                row = self._forward(self.train_ds, micro)
                # sum over the micro-batch / examples in the step == mean over the step
                acc.backward(row.pop("loss_tensor").sum() / len(local))
            rows.append(row)
        grad_norm = self._clip()
        metrics = summarize(self.spec, rows, gather=acc.gather)
        finite = math.isfinite(metrics["loss"]) and math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
            self.bad_steps = 0
        else:
            self.bad_steps += 1
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - t0
        metrics.update({"grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0],
                        "tokens/s": acc.num_processes * sum(r["tokens"] for r in rows) / max(elapsed, 1e-9)})
        if not finite:
            metrics["skipped"] = True
        self.step += 1
        return metrics

    def _check_bad_steps(self) -> None:
        if self.cfg.max_bad_steps and self.bad_steps >= self.cfg.max_bad_steps:
            raise TrainingError(
                f"{self.bad_steps} consecutive steps had a non-finite loss or gradient norm "
                f"(last at step {self.step}); stopping with the last good checkpoint intact. "
                "Lower learning_rate or check the data."
            )

    def _clip(self) -> float:
        params = [p for p in self.engine.parameters() if p.requires_grad]
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        return float(self.accelerator.clip_grad_norm_(params, max_norm))

    @torch.no_grad()
    def evaluate(self, ds: Dataset | None = None) -> dict:
        ds = ds or self.eval_ds
        self.engine.eval()
        rows = [self._forward(ds, list(range(s, min(s + self.cfg.batch_size, len(ds)))))
                for s in range(0, len(ds), self.cfg.batch_size)]
        for r in rows:
            r.pop("loss_tensor")
        return summarize(self.spec, rows)

    def log(self, metrics: dict, split: str = "train") -> None:
        if not self.accelerator.is_main_process:
            return
        row = {"step": self.step, **({"split": split} if split != "train" else {}), **metrics}
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def run(self) -> dict:
        from tqdm.auto import tqdm

        cfg = self.cfg
        (self.out / "train_config.json").write_text(json.dumps(to_dict(cfg), indent=2))
        history = {}
        if self.eval_ds is not None and self.step == 0:
            history["eval_start"] = self.evaluate()
            self.log(history["eval_start"], "eval")
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"{cfg.loss}",
                   disable=not self.accelerator.is_main_process, dynamic_ncols=True)
        metrics = {}
        while self.step < self.total_steps:
            metrics = self.train_step()
            self.log(metrics)
            self._check_bad_steps()
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens/s']:.0f}")
            if self.eval_ds is not None and cfg.eval_steps and self.step % cfg.eval_steps == 0 \
                    and self.step < self.total_steps:
                self.log(self.evaluate(), "eval")
            if cfg.save_steps and self.step % cfg.save_steps == 0 and self.step < self.total_steps:
                self.save_checkpoint()
        bar.close()
        history["train_last"] = metrics
        if self.eval_ds is not None:
            history["eval_end"] = self.evaluate()
            self.log(history["eval_end"], "eval")
        self.save()
        return history

    def save(self) -> None:
        """The final model in HF format; under FSDP the shards are gathered first."""
        acc = self.accelerator
        acc.wait_for_everyone()
        engine = acc.unwrap_model(self.engine)
        state = None
        if acc.num_processes > 1:
            full = get_model_state_dict(engine, options=FULL)  # collective
            state = {k.removeprefix("model."): v for k, v in full.items()}
        if acc.is_main_process:
            merge = bool(self.cfg.lora and self.cfg.lora.merge)
            save_model(engine.model, self.tokenizer, self.out, merge_lora=merge, state_dict=state)
        acc.wait_for_everyone()


def _loss_hparams(cfg: TrainConfig) -> dict:
    return {k: getattr(cfg, k) for k in get_loss(cfg.loss).hyperparameters() if hasattr(cfg, k)}


def make_scheduler(cfg, optimizer, total_steps: int):
    """Linear warmup, then cosine, linear or constant."""
    from transformers import get_scheduler

    name = "constant_with_warmup" if cfg.lr_scheduler == "constant" else cfg.lr_scheduler
    return get_scheduler(name, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps),
                         num_training_steps=total_steps)


def _truncate_metrics(path: Path, step: int, keep_step_zero_eval: bool = True) -> None:
    """Drop rows a killed run logged after its last checkpoint, so the file reads as one run."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    keep = [r for r in rows if json.loads(r)["step"] <= step]
    if not keep_step_zero_eval:
        keep = []
    path.write_text("".join(r + "\n" for r in keep))


def _prepare_output_dir(out: Path, overwrite: bool, resume: bool) -> None:
    if resume:
        out.mkdir(parents=True, exist_ok=True)
        return
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"output_dir {out} is not empty; pass overwrite=true, resume=true, or choose another directory"
        )
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:  # a fresh run: earlier metrics and checkpoints would be mistaken for its own
        (out / "metrics.jsonl").unlink(missing_ok=True)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)


def train(cfg: TrainConfig) -> dict:
    return Trainer(cfg).run()
