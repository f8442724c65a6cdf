"""The optimizer-step loop every trainer shares (`prefero train`, `prefero rm`).

A subclass loads its data and model, then calls `_prepare(engine, params)`; it defines

    _forward(ds, idx)          -> row: "loss_tensor" (per example, differentiable),
                                  "tokens" (tokens of the items, prompt once per completion)
                                  and whatever its summary reads
    _summarize(rows, gather)   -> the metrics of a step or an evaluation

and the loop does the rest the same way for all: seeded data order, micro-batches with
exact gradient accumulation, clipping, the non-finite guard, the schedule, metrics.jsonl,
periodic eval, atomic checkpoints and exact resume, the final save (gathered under FSDP).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from prefero.checkpoint import FULL, get_model_state_dict, load_latest, save_checkpoint
from prefero.config import ConfigError, to_dict
from prefero.model import save_model


class TrainingError(RuntimeError):
    """A run that cannot go on (e.g. too many non-finite steps); printed without traceback."""


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


class Loop:
    """Holds what a run needs; `run()` is the loop."""

    desc = "train"  # progress-bar label
    config_file = "train_config.json"  # the resolved config, written at the start of `run()`

    def __init__(self, cfg):
        from accelerate import Accelerator

        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        # precision is our own autocast, not accelerate's process-wide setting, so several
        # runs in one process (self-play iterations, tests) can each choose theirs
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())  # gloo DDP on CPUs
        _refuse_deepspeed(self.accelerator)
        self.device = self.accelerator.device
        _prepare_output_dir(self.out, cfg.overwrite, cfg.resume)
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.train_ds = self.eval_ds = None

    def _prepare(self, engine: torch.nn.Module, params: list) -> None:
        """Optimizer and schedule over `params`, `engine` wrapped for DDP/FSDP; resume if asked."""
        from accelerate.utils import DistributedType

        cfg = self.cfg
        # one fused kernel per step on GPU (the same update); FSDP2's sharded DTensor
        # parameters keep the default multi-tensor path
        fused = self.device.type == "cuda" and self.accelerator.distributed_type != DistributedType.FSDP
        optimizer = torch.optim.AdamW(
            params, lr=cfg.learning_rate, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay,
            **({"fused": True} if fused else {}),
        )
        self.per_step = cfg.batch_size * cfg.grad_accum * self.accelerator.num_processes
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(self.train_ds) / self.per_step))
        # the scheduler stays unprepared: accelerate would step it once per process
        self.scheduler = make_scheduler(cfg, optimizer, self.total_steps)
        self.engine, self.optimizer = self.accelerator.prepare(engine, optimizer)
        self.step = 0
        self.bad_steps = 0
        if cfg.resume:
            self._resume()

    def write_data_report(self, train_report, eval_report=None) -> None:
        reports = {"train": train_report.to_dict()}
        if eval_report is not None:
            reports["eval"] = eval_report.to_dict()
        (self.out / "data_report.json").write_text(json.dumps(reports, indent=2))

    # --------------------------------------------------------------- what subclasses define

    def _forward(self, ds, idx: list[int]) -> dict:
        raise NotImplementedError

    def _summarize(self, rows: list[dict], gather=lambda t: t) -> dict:
        raise NotImplementedError

    def _postfix(self, metrics: dict) -> dict:
        """Progress-bar fields."""
        return {"loss": f"{metrics['loss']:.4f}", "tok_s": f"{metrics['tokens/s']:.0f}"}

    # --------------------------------------------------------------- one step

    def autocast(self):
        """bf16 autocast over float32 master weights when dtype is bfloat16."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.dtype == "bfloat16")

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
        metrics = self._summarize(rows, gather=acc.gather)
        finite = math.isfinite(metrics["loss"]) and math.isfinite(grad_norm)
        if finite:  # SPEC §7: no step is applied with a non-finite loss or gradient
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

    def _clip(self) -> float:
        params = [p for p in self.engine.parameters() if p.requires_grad]
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        return float(self.accelerator.clip_grad_norm_(params, max_norm))

    def _check_bad_steps(self) -> None:
        if self.cfg.max_bad_steps and self.bad_steps >= self.cfg.max_bad_steps:
            raise TrainingError(
                f"{self.bad_steps} consecutive steps had a non-finite loss or gradient norm "
                f"(last at step {self.step}); stopping with the last good checkpoint intact. "
                "Lower learning_rate or check the data."
            )

    @torch.no_grad()
    def evaluate(self, ds=None) -> dict:
        ds = ds or self.eval_ds
        self.engine.eval()
        rows = [self._forward(ds, list(range(s, min(s + self.cfg.batch_size, len(ds)))))
                for s in range(0, len(ds), self.cfg.batch_size)]
        for r in rows:
            r.pop("loss_tensor")
        return self._summarize(rows)

    def log(self, metrics: dict, split: str = "train") -> None:
        if not self.accelerator.is_main_process:
            return
        row = {"step": self.step, **({"split": split} if split != "train" else {}), **metrics}
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    # --------------------------------------------------------------- the run

    def run(self) -> dict:
        from tqdm.auto import tqdm

        cfg = self.cfg
        (self.out / self.config_file).write_text(json.dumps(to_dict(cfg), indent=2))
        history = {}
        if self.eval_ds is not None and self.step == 0:
            history["eval_start"] = self.evaluate()
            self.log(history["eval_start"], "eval")
        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.desc,
                   disable=not self.accelerator.is_main_process, dynamic_ncols=True)
        metrics = {}
        while self.step < self.total_steps:
            metrics = self.train_step()
            self.log(metrics)
            self._check_bad_steps()
            bar.update(1)
            bar.set_postfix(self._postfix(metrics))
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

    # --------------------------------------------------------------- checkpoints

    def save_checkpoint(self) -> None:
        acc = self.accelerator
        save_checkpoint(
            self.out / "checkpoints", self.step, acc.unwrap_model(self.engine), self.optimizer.optimizer,
            self.scheduler, {"step": self.step, "bad_steps": self.bad_steps},
            keep_last=self.cfg.keep_last, process_index=acc.process_index,
            is_main=acc.is_main_process, barrier=acc.wait_for_everyone,
        )

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


def _refuse_deepspeed(accelerator) -> None:
    """Under DeepSpeed, accelerate's `backward` runs the engine's own optimizer step, so the
    loop's accumulation, non-finite guard and checkpoints would silently not apply."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ConfigError(
            "DeepSpeed is not supported: its engine steps the optimizer inside backward, which "
            "bypasses prefero's gradient accumulation, non-finite guard and checkpoints. For "
            "ZeRO-3-style sharding (parameters, gradients, optimizer state) use FSDP2: "
            "accelerate launch --config_file examples/accelerate/fsdp2.yaml -m prefero train ..."
        )


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
