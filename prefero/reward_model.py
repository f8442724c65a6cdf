"""Bradley–Terry reward model: a scalar head on a causal LM, trained on preference pairs.

    loss = −logσ(r(x,y_w) − r(x,y_l) − m) + c·(r_w + r_l)²      (`losses.bradley_terry`)

The model is a Hugging Face `AutoModelForSequenceClassification` with `num_labels=1`, so
the saved directory loads anywhere with `from_pretrained` and scores with a plain padded
forward. Training runs on the prefix-shared packed layout instead: [prompt | chosen |
rejected] in one row, the prompt computed once, and r(x, y) read from the hidden state of
the token HF's own forward would pool.

Which token that is: HF pools the rightmost token that is not `config.pad_token_id`.
Completions end with EOS, so with a distinct pad token the reward sits on the EOS; a
tokenizer whose pad *is* EOS (what `load_tokenizer` sets when none exists) pools the last
token before the trailing EOS. `score_index` applies the same rule, so both agree always.
"""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from prefero.batching import PackedBatch, pack_groups, pair_groups
from prefero.config import ConfigError, LoraConfig, _f, to_dict, validate_common
from prefero.data import DataError, DataReport, load_pairs
from prefero.data.read import iter_rows
from prefero.logprobs import unwrap_causal_lm
from prefero.losses import bradley_terry
from prefero.model import _first_line, apply_lora, load_tokenizer, save_model
from prefero.train import TrainingError, _prepare_output_dir, data_options, make_scheduler, step_order

MAX_BAD_STEPS = 5  # consecutive non-finite steps before the run stops


@dataclass
class RewardConfig:
    """Everything `prefero rm` reads."""

    model: str = _f("", "base model: any causal LM (hub id or local directory); a fresh scalar head is added")
    train_data: str = _f("", "preference pairs (.jsonl/.json/.parquet/.csv), save_to_disk folder or hub name")
    eval_data: str | None = _f(None, "held-out pairs; pairwise accuracy is printed and logged")
    output_dir: str = _f("runs/prefero-rm", "where metrics, data report and the reward model go")
    overwrite: bool = _f(False, "allow writing into a non-empty output_dir")
    trust_remote_code: bool = _f(False, "run model code from the hub (only if you trust it)")
    learning_rate: float = _f(1e-5, "peak AdamW learning rate")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    lr_scheduler: str = _f("cosine", "cosine | linear | constant (after warmup)")
    warmup_ratio: float = _f(0.03, "fraction of the steps spent warming up linearly")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 = off)")
    batch_size: int = _f(8, "pairs per micro-step per process")
    grad_accum: int = _f(1, "micro-steps per optimizer step")
    max_steps: int = _f(0, "optimizer steps (0 = derive from epochs)")
    epochs: float = _f(1.0, "passes over train_data when max_steps is 0")
    seed: int = _f(42, "seed for the head's initialisation, data order and dropout")
    max_length: int = _f(1024, "prompt + completion tokens per sequence")
    max_prompt_length: int = _f(512, "prompt tokens kept (from the end)")
    on_bad_record: str = _f("error", "error | skip: what a malformed record (or margin) does")
    dtype: str = _f("float32", "float32 | bfloat16 (autocast on float32 master weights)")
    margin_column: str | None = _f(None, "column with a per-pair margin m (a number); none = m=0")
    center_weight: float = _f(0.0, "c: weight of the centering term c·(r_w + r_l)²")
    eval_steps: int = _f(0, "evaluate every N optimizer steps (0 = only at start and end)")
    lora: LoraConfig | None = _f(
        None, "LoRA adapter block (r, alpha, dropout, target_modules, merge); the head trains fully")

    def validate(self) -> "RewardConfig":
        validate_common(self)
        if self.center_weight < 0:
            raise ConfigError(f"center_weight must be >= 0, got {self.center_weight}")
        if self.margin_column == "":
            raise ConfigError("margin_column must be a column name or null")
        return self


# --------------------------------------------------------------------------- model


def load_reward_model(name: str, tokenizer, trust_remote_code: bool = False, dtype=torch.float32):
    """`AutoModelForSequenceClassification` with one output (a causal LM gets a fresh head),
    safetensors only, its pad id set so HF's padded forward pools the right token."""
    from transformers import AutoModelForSequenceClassification

    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            name, num_labels=1, dtype=dtype, trust_remote_code=trust_remote_code,
            use_safetensors=True, attn_implementation="sdpa",
        )
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load a reward model from {name!r}: {_first_line(e)}") from None
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False
    return model


def score_index(groups: Sequence, pad_id: int | None) -> list[int]:
    """Index, in `pack_groups(groups)`'s row, of the token each completion is scored at:
    the rightmost token of [prompt | completion] that is not `pad_id` (HF's pooling rule,
    including its 0 when every token is pad)."""
    out, start = [], 0
    for prompt, completions in groups:
        offset = start + len(prompt)
        for c in completions:
            seq = list(prompt) + list(c)
            last = max((i for i, t in enumerate(seq) if t != pad_id), default=0)
            out.append(start + last if last < len(prompt) else offset + last - len(prompt))
            offset += len(c)
        start = offset
    return out


def sequence_scores(model: nn.Module, batch: PackedBatch, index: Tensor) -> Tensor:
    """r(x, y) [S] float32: the score head on the backbone's hidden states at `index`."""
    lm = unwrap_causal_lm(model)
    hidden = getattr(lm, lm.base_model_prefix)(
        input_ids=batch.input_ids, position_ids=batch.position_ids,
        attention_mask=batch.dense_mask(), use_cache=False,
    ).last_hidden_state[0]
    head = getattr(lm, "score", None) or getattr(lm, "classifier", None)
    if head is None:
        raise ConfigError(f"{type(lm).__name__} has no `score` head; not a sequence classifier")
    return head(hidden[index]).float().squeeze(-1)


class RewardScorer(nn.Module):
    """forward(batch, index) -> scores; a Module so DDP wraps it and sees every parameter."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: PackedBatch, index: Tensor) -> Tensor:
        return sequence_scores(self.model, batch, index)


@torch.no_grad()
def score(model: nn.Module, tokenizer, prompt_ids: Sequence[int],
          completion_ids_list: Sequence[Sequence[int]]) -> Tensor:
    """r(x, y) for each completion of one prompt ([K] float32, on the model's device).

    Token ids as `load_pairs` makes them (completion ends with EOS); the prompt runs once.
    Equals `AutoModelForSequenceClassification`'s padded forward on [prompt + completion].
    """
    pad_id = unwrap_causal_lm(model).config.pad_token_id
    pad_id = tokenizer.pad_token_id if pad_id is None else pad_id
    groups = [(list(prompt_ids), [list(c) for c in completion_ids_list])]
    device = next(model.parameters()).device
    index = torch.tensor(score_index(groups, pad_id), device=device)
    return sequence_scores(model, pack_groups(groups).to(device), index)


# --------------------------------------------------------------------------- data


@dataclass
class PairData:
    pairs: list  # TokenizedPair
    groups: list  # (prompt_ids, [chosen_ids, rejected_ids])
    margins: Tensor  # [N] float32, m per pair (0 without margin_column)

    def __len__(self) -> int:
        return len(self.pairs)


def load_reward_data(path: str, tokenizer, cfg: RewardConfig) -> tuple[PairData, DataReport]:
    pairs, report = load_pairs(path, tokenizer, data_options(cfg))
    margins = [0.0] * len(pairs)
    if cfg.margin_column:
        pairs, margins = _with_margins(path, pairs, report, cfg)
    if not pairs:
        raise ConfigError(f"{path}: no usable records (see the data report for why)")
    return PairData(pairs, pair_groups(pairs), torch.tensor(margins, dtype=torch.float32)), report


def _with_margins(path, pairs, report: DataReport, cfg: RewardConfig):
    """Each pair's margin from its record's `margin_column` (a second pass over the rows, which
    `TokenizedPair.row` points into); a bad margin is a bad record like any other."""
    col = cfg.margin_column
    values = {row: rec.get(col) for row, rec in iter_rows(path) if isinstance(rec, dict)}
    kept, margins = [], []
    for p in pairs:
        m = values.get(p.row)
        try:
            if m is not None and not isinstance(m, bool) and math.isfinite(float(m)):
                kept.append(p)
                margins.append(float(m))
                continue
        except (TypeError, ValueError):
            pass
        err = DataError(str(path), p.row, col,
                        "missing margin" if m is None else f"margin must be a finite number, got {m!r}")
        if cfg.on_bad_record != "skip":
            raise err
        report.count_skipped(err)
        report.kept -= 1
    return kept, margins


def pair_metrics(loss: Tensor, chosen: Tensor, rejected: Tensor) -> dict:
    """Loss and pairwise accuracy (r_w > r_l) with the reward statistics, over [B] tensors."""
    return {
        "loss": loss.mean().item(), "accuracy": (chosen > rejected).float().mean().item(),
        "rewards/chosen": chosen.mean().item(), "rewards/rejected": rejected.mean().item(),
        "rewards/margins": (chosen - rejected).mean().item(),
    }


# --------------------------------------------------------------------------- training


class RewardTrainer:
    """Holds what a run needs; `run()` is the loop (the shape of `train.Trainer`)."""

    def __init__(self, cfg: RewardConfig):
        from accelerate import Accelerator
        self.cfg, self.out = cfg, Path(cfg.output_dir)
        self.accelerator = Accelerator(mixed_precision="bf16" if cfg.dtype == "bfloat16" else "no")
        self.device = self.accelerator.device
        _prepare_output_dir(self.out, cfg.overwrite, False)
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)

        self.tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
        self.train_data, report = load_reward_data(cfg.train_data, self.tokenizer, cfg)
        reports = {"train": report.to_dict()}
        self.eval_data = None
        if cfg.eval_data:
            self.eval_data, eval_report = load_reward_data(cfg.eval_data, self.tokenizer, cfg)
            reports["eval"] = eval_report.to_dict()
        (self.out / "data_report.json").write_text(json.dumps(reports, indent=2))

        model = load_reward_model(cfg.model, self.tokenizer, cfg.trust_remote_code)
        self.pad_id = model.config.pad_token_id
        # SEQ_CLS also makes the new score head trainable
        self.model = apply_lora(model, cfg.lora, task_type="SEQ_CLS") if cfg.lora is not None else model
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.per_step = cfg.batch_size * cfg.grad_accum * self.accelerator.num_processes
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(self.train_data) / self.per_step))
        # unprepared, as in train.py: accelerate would step it once per process
        self.scheduler = make_scheduler(cfg, optimizer, self.total_steps)
        self.engine, self.optimizer = self.accelerator.prepare(RewardScorer(self.model), optimizer)
        self.step = self.bad_steps = 0

    def _forward(self, data: PairData, idx: list[int]) -> tuple[Tensor, Tensor, Tensor, int]:
        """Per-pair loss, r_w, r_l for pairs `idx`, and the tokens run."""
        groups = [data.groups[i] for i in idx]
        batch = pack_groups(groups).to(self.device)
        index = torch.tensor(score_index(groups, self.pad_id), device=self.device)
        with self.accelerator.autocast():
            scores = self.engine(batch, index)
        chosen, rejected = scores[0::2], scores[1::2]
        loss = bradley_terry(chosen, rejected, data.margins[idx].to(self.device), self.cfg.center_weight)
        return loss, chosen.detach(), rejected.detach(), batch.num_tokens

    def train_step(self) -> dict:
        cfg, acc = self.cfg, self.accelerator
        idx = step_order(len(self.train_data), self.step, self.per_step, cfg.seed)
        local = idx[acc.process_index :: acc.num_processes]
        self.engine.train()
        parts, tokens, t0 = [], 0, time.perf_counter()
        for m in range(cfg.grad_accum):
            micro = local[m * cfg.batch_size : (m + 1) * cfg.batch_size]
            with acc.no_sync(self.engine) if m < cfg.grad_accum - 1 else nullcontext():
                loss, chosen, rejected, n = self._forward(self.train_data, micro)
                acc.backward(loss.sum() / len(local))  # sum over micro-batches == mean over the step
            parts.append((loss.detach(), chosen, rejected))
            tokens += n
        params = [p for p in self.engine.parameters() if p.requires_grad]
        grad_norm = float(acc.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")))
        metrics = pair_metrics(*(torch.cat(x) for x in zip(*parts)))
        finite = math.isfinite(metrics["loss"]) and math.isfinite(grad_norm)
        if finite:  # SPEC §7: no step applied with a non-finite loss or gradient
            self.optimizer.step()
        self.bad_steps = 0 if finite else self.bad_steps + 1
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics.update({"grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0],
                        "tokens/s": tokens / max(time.perf_counter() - t0, 1e-9)})
        if not finite:
            metrics["skipped"] = True
        self.step += 1
        if self.bad_steps >= MAX_BAD_STEPS:
            raise TrainingError(f"{self.bad_steps} consecutive steps had a non-finite loss or gradient norm "
                                f"(last at step {self.step}); stopping. Lower learning_rate or check the data.")
        return metrics

    @torch.no_grad()
    def evaluate(self, data: PairData | None = None) -> dict:
        data = data or self.eval_data
        self.engine.eval()
        parts = [self._forward(data, list(range(s, min(s + self.cfg.batch_size, len(data)))))[:3]
                 for s in range(0, len(data), self.cfg.batch_size)]
        return pair_metrics(*(torch.cat(x) for x in zip(*parts)))

    def log(self, metrics: dict, split: str = "train") -> None:
        if not self.accelerator.is_main_process:
            return
        row = {"step": self.step, **({"split": split} if split != "train" else {}), **metrics}
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if split == "eval":
            print(f"eval step {self.step}: accuracy {metrics['accuracy']:.3f}  loss {metrics['loss']:.4f}  "
                  f"margin {metrics['rewards/margins']:.3f}", flush=True)

    def run(self) -> dict:
        from tqdm.auto import tqdm

        cfg = self.cfg
        (self.out / "reward_config.json").write_text(json.dumps(to_dict(cfg), indent=2))
        history, metrics = {}, {}
        if self.eval_data is not None:
            history["eval_start"] = self.evaluate()
            self.log(history["eval_start"], "eval")
        bar = tqdm(total=self.total_steps, desc="rm", disable=not self.accelerator.is_main_process,
                   dynamic_ncols=True)
        while self.step < self.total_steps:
            metrics = self.train_step()
            self.log(metrics)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['accuracy']:.2f}")
            if self.eval_data is not None and cfg.eval_steps and self.step % cfg.eval_steps == 0 \
                    and self.step < self.total_steps:
                self.log(self.evaluate(), "eval")
        bar.close()
        history["train_last"] = metrics
        if self.eval_data is not None:
            history["eval_end"] = self.evaluate()
            self.log(history["eval_end"], "eval")
        self.save()
        return history

    def save(self) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            model = self.accelerator.unwrap_model(self.engine).model
            save_model(model, self.tokenizer, self.out, merge_lora=bool(self.cfg.lora and self.cfg.lora.merge))


def train_reward_model(cfg: RewardConfig) -> dict:
    return RewardTrainer(cfg).run()
