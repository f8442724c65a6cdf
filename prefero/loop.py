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

import dataclasses
import json
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from prefero.checkpoint import (
    FULL,
    check_resume_config,
    flatten,
    get_model_state_dict,
    load_latest,
    save_checkpoint,
    truncate_metrics,
)
from prefero.data import DataOptions
from prefero.errors import PreferoError
from prefero.files import atomic_write_text
from prefero.log import get_logger
from prefero.model import save_model
from prefero.optim import fused_adam, make_optimizer, make_scheduler
from prefero.options import ConfigError, to_dict
from prefero.outputs import check_output_dir, claim_output_dir

log = get_logger(__name__)

class TrainingError(PreferoError, RuntimeError):
    """A run that cannot go on (e.g. too many non-finite steps); printed without traceback."""


def step_order(n: int, step: int, per_step: int, seed: int, shuffle: bool = True) -> list[int]:
    """Item indices of optimizer step `step`: epoch-wise seeded permutations (or file order
    when `shuffle` is false), so the order is a pure function of (seed, step) and a resumed
    run sees exactly the same data."""
    start = step * per_step
    out = []
    while len(out) < per_step:
        epoch, offset = divmod(start + len(out), n)
        if shuffle:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000003 + epoch))
        else:
            perm = torch.arange(n)
        take = min(per_step - len(out), n - offset)
        out += perm[offset : offset + take].tolist()
    return out


class Loop:
    """Holds what a run needs; `run()` is the loop."""

    desc = "train"  # progress-bar label
    command = "train"  # the CLI command, named in the start line and the output marker
    config_file = "train_config.json"  # the resolved config, written at the start of `run()`

    def __init__(self, cfg):
        from accelerate import Accelerator

        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        # precision is our own autocast, not accelerate's process-wide setting, so several
        # runs in one process (self-play iterations, tests) can each choose theirs
        clear = check_output_dir(self.out, overwrite=cfg.overwrite, resume=cfg.resume)
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(),  # gloo DDP on CPUs
                                       log_with=_tracker(cfg.report_to), project_dir=str(self.out))
        _refuse_deepspeed(self.accelerator)
        self.device = self.accelerator.device
        if cfg.resume:
            self.config_changes = check_resume_config(self.out / self.config_file, to_dict(cfg))
        if self.accelerator.is_main_process:
            claim_output_dir(self.out, self.command, clear)
        self.accelerator.wait_for_everyone()
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.train_ds = self.eval_ds = None
        self.reports = {}
        self.per_step = cfg.batch_size * cfg.grad_accum * self.accelerator.num_processes

    def eval_source(self) -> tuple[str, str | None] | None:
        """(data, split) evaluated on: eval_data, or a held-out split of train_data."""
        cfg = self.cfg
        if cfg.eval_data:
            return cfg.eval_data, cfg.eval_split
        return (cfg.train_data, cfg.eval_split) if cfg.eval_split else None

    def planned_steps(self) -> int:
        """Optimizer steps of the run (needs the training data)."""
        cfg = self.cfg
        return cfg.max_steps or max(1, math.ceil(cfg.epochs * len(self.train_ds) / self.per_step))

    def step_items(self, step: int) -> list[int]:
        """Indices of the items of optimizer step `step`, over all processes."""
        return step_order(len(self.train_ds), step, self.per_step, self.cfg.seed, self.cfg.shuffle)

    def micro_batches(self, idx: list[int], process_index: int) -> list[list[int]]:
        """Process `process_index`'s micro-batches of a step's items `idx`."""
        local = idx[process_index :: self.accelerator.num_processes]
        bs = self.cfg.batch_size
        return [local[m * bs : (m + 1) * bs] for m in range(self.cfg.grad_accum)]

    def eval_batches(self, ds) -> list[list[int]]:
        n = len(ds)
        return [list(range(s, min(s + self.cfg.batch_size, n))) for s in range(0, n, self.cfg.batch_size)]

    def _prepare(self, engine: torch.nn.Module, params: list) -> None:
        """Optimizer and schedule over `params`, `engine` wrapped for DDP/FSDP; resume if asked."""
        from accelerate.utils import DistributedType

        cfg = self.cfg
        # one fused kernel per step (the same update, rounded in another order): on CPU the demo
        # model's step took 0.22x the per-tensor loop's (benchmarks/RESULTS.md); FSDP2's sharded
        # DTensor parameters keep the default multi-tensor path
        fused = fused_adam(self.device) and self.accelerator.distributed_type != DistributedType.FSDP
        optimizer = make_optimizer(cfg, params, fused)
        self.total_steps = self.planned_steps()
        # the scheduler stays unprepared: accelerate would step it once per process
        self.scheduler = make_scheduler(cfg, optimizer, self.total_steps)
        self.engine, self.optimizer = self.accelerator.prepare(engine, optimizer)
        self.step = 0
        self.bad_steps = 0
        if cfg.resume:
            self._resume()

    def write_data_report(self, train_report, eval_report=None) -> None:
        self.reports = {"train": train_report.to_dict()}
        if eval_report is not None:
            self.reports["eval"] = eval_report.to_dict()
        if self.accelerator.is_main_process:
            atomic_write_text(self.out / "data_report.json", json.dumps(self.reports, indent=2))

    # --------------------------------------------------------------- what subclasses define

    def _forward(self, ds, idx: list[int], scope: list[int] | None = None) -> dict:
        """`scope`: the items the loss is averaged over (the optimizer step's, on all
        processes, or the whole evaluation set) — token-level means normalise by them."""
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
        acc = self.accelerator
        idx = self.step_items(self.step)
        micros = self.micro_batches(idx, acc.process_index)
        n_local = sum(len(m) for m in micros)
        self.engine.train()
        rows, t0 = [], time.perf_counter()
        for m, micro in enumerate(micros):
            sync = acc.no_sync(self.engine) if m < len(micros) - 1 else nullcontext()
            with sync:
                row = self._forward(self.train_ds, micro, idx)
                # sum over the micro-batch / examples in the step == mean over the step
                acc.backward(row.pop("loss_tensor").sum() / n_local)
            rows.append(row)
        grad_norm = self._clip()
        metrics = self._summarize(rows, gather=acc.gather)
        finite = math.isfinite(metrics["loss"]) and math.isfinite(grad_norm)
        if finite:  # README.md#checkpoints-resume-safety: no step is applied with a non-finite loss or gradient
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
        everything = list(range(len(ds)))
        rows = [self._forward(ds, batch, everything) for batch in self.eval_batches(ds)]
        for r in rows:
            r.pop("loss_tensor")
        return self._summarize(rows)

    def log(self, metrics: dict, split: str = "train") -> None:
        if not self.accelerator.is_main_process:
            return
        row = {"step": self.step, **({"split": split} if split != "train" else {}), **metrics}
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.cfg.report_to != "none":
            self.accelerator.log({f"{split}/{k}": v for k, v in metrics.items()
                                  if isinstance(v, (int, float)) and not isinstance(v, bool)}, step=self.step)

    # --------------------------------------------------------------- the run

    def run(self) -> dict:
        from tqdm.auto import tqdm

        cfg = self.cfg
        main = self.accelerator.is_main_process
        if main:
            atomic_write_text(self.out / self.config_file, json.dumps(to_dict(cfg), indent=2))
            log.info(self.world_line())
        if cfg.report_to != "none":
            self.accelerator.init_trackers(self.out.name or "prefero", config=_tracker_config(to_dict(cfg)))
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
        if cfg.report_to != "none":
            self.accelerator.end_training()
        if main:
            log.info(self.summary(history))
        return history

    # --------------------------------------------------------------- what the run says

    def world_line(self) -> str:
        """Where and how the run trains: processes, distribution, device, precision, batch —
        so a launch that quietly started one process instead of several shows at once."""
        cfg, acc = self.cfg, self.accelerator
        kind = str(acc.distributed_type).split(".")[-1]
        line = (f"prefero {self.command}: {acc.num_processes} process{'es' if acc.num_processes > 1 else ''} "
                f"(distributed: {kind}), device {self.device.type}, {cfg.dtype}, optimizer {cfg.optimizer}; "
                f"global batch {self.per_step} per step = {cfg.batch_size} per micro-step x {cfg.grad_accum} "
                f"accumulation x {acc.num_processes} process{'es' if acc.num_processes > 1 else ''}; "
                f"{self.total_steps} steps over {len(self.train_ds)} training items")
        attention = _attention_line(getattr(self, "model", None))
        if attention:
            line += f"; attention {attention}"
        if self.step:
            line += f"; resuming at step {self.step}"
        expected = _launcher_processes()
        if expected and expected != acc.num_processes:
            line += (f"\nwarning: accelerate launch was asked for {expected} processes but this run has "
                     f"{acc.num_processes} (its --cpu flag starts one process; on CPUs launch with "
                     "--multi_gpu and prefero uses gloo)")
        return line

    def summary(self, history: dict) -> str:
        """What the run did: eval metrics before -> after, the data's counts, where the model is."""
        lines = [f"prefero {self.command}: done, {self.step} steps"]
        before, after = history.get("eval_start"), history.get("eval_end")
        if after:
            lines.append(f"  {'eval':<28} {'before':>10} {'after':>10}")
            for key, value in after.items():
                if isinstance(value, float):
                    start = f"{before[key]:>10.4f}" if before and key in before else f"{'-':>10}"
                    lines.append(f"  {key:<28} {start} {value:>10.4f}")
        for split, rep in self.reports.items():
            lines.append(f"  data ({split}): {rep['read']} records read, {rep['kept']} kept, "
                         f"{sum(rep['dropped'].values())} dropped, {rep['skipped']} skipped as malformed "
                         f"(by reason in {self.out / 'data_report.json'})")
        lines.append(f"  model: {self.out}   metrics: {self.out / 'metrics.jsonl'}")
        return "\n".join(lines)

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
                log.info(f"no complete checkpoint in {self.out / 'checkpoints'}; starting from step 0")
            truncate_metrics(self.out / "metrics.jsonl", 0, keep_step_zero_eval=False)
            return
        self.step, self.bad_steps = loop["step"], loop["bad_steps"]
        if self.accelerator.is_main_process:
            truncate_metrics(self.out / "metrics.jsonl", self.step)
            log.info(f"resumed from step {self.step}")
            for change in self.config_changes:
                log.info(f"resume: {change}")


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


def data_options(cfg, split: str | None = None) -> DataOptions:
    """The data layer's options from a run config (its `data:` block: columns, binarize),
    reading `split` of a multi-split dataset."""
    block = dataclasses.asdict(cfg.data) if cfg.data is not None else {}
    return DataOptions(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                       on_bad_record=cfg.on_bad_record, seed=cfg.seed, split=split, **block)


def _tracker(report_to: str):
    """accelerate's tracker for `report_to`, with a clear error when its package is missing."""
    if report_to == "none":
        return None
    import importlib.util

    package = {"tensorboard": "tensorboard", "wandb": "wandb"}[report_to]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"report_to: {report_to} needs the {package} package: pip install {package}")
    return report_to


def _tracker_config(cfg: dict) -> dict:
    """The run config flattened to what trackers take (numbers, strings, booleans)."""
    flat = flatten(cfg)
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}


def _launcher_processes() -> int | None:
    """How many processes `accelerate launch` was asked for, read from its command line (our
    parent's; Linux only). `accelerate launch --cpu --num_processes 2` starts ONE process,
    and nothing else tells the run."""
    import os

    try:
        args = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    if "launch" not in args:
        return None
    for i, a in enumerate(args):
        value = args[i + 1] if a in ("--num_processes", "--num-processes") and i + 1 < len(args) else None
        if a.startswith(("--num_processes=", "--num-processes=")):
            value = a.split("=", 1)[1]
        if value is not None:
            return int(value) if value.isdigit() else None
    return None


def _attention_line(model) -> str | None:
    """The attention implementation the model runs and why it was picked."""
    from prefero.logprobs import unwrap_causal_lm

    if model is None:
        return None
    lm = unwrap_causal_lm(model)
    impl = getattr(lm.config, "_attn_implementation", None)
    why = getattr(lm, "prefero_attention", None)
    return f"{impl}" + (f" [{why}]" if why and not why.startswith(str(impl)) else "")
