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

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from prefero.batching import PackedBatch, pack_groups, pair_groups
from prefero.config import ConfigError, LoopConfig, LoraConfig, _f
from prefero.data import DataError, DataReport, load_pairs
from prefero.data.read import iter_rows
from prefero.logprobs import unwrap_causal_lm
from prefero.losses import bradley_terry
from prefero.loop import Loop
from prefero.model import _first_line, apply_lora, load_tokenizer
from prefero.train import data_options


@dataclass
class RewardConfig(LoopConfig):
    """Everything `prefero rm` reads: the loop's keys, then the Bradley–Terry options."""

    model: str = _f("", "base model: any causal LM (hub id or local directory); a fresh scalar head is added")
    train_data: str = _f("", "preference pairs (.jsonl/.json/.parquet/.csv), save_to_disk folder or hub name")
    eval_data: str | None = _f(None, "held-out pairs; pairwise accuracy is printed and logged")
    output_dir: str = _f("runs/prefero-rm", "where metrics, data report and the reward model go")
    learning_rate: float = _f(1e-5, "peak AdamW learning rate")
    warmup_ratio: float = _f(0.03, "fraction of the steps spent warming up linearly")
    lora: LoraConfig | None = _f(
        None, "LoRA adapter block (r, alpha, dropout, target_modules, merge); the head trains fully")
    margin_column: str | None = _f(None, "column with a per-pair margin m (a number); none = m=0")
    center_weight: float = _f(0.0, "c: weight of the centering term c·(r_w + r_l)²")

    def validate(self) -> "RewardConfig":
        super().validate()
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


class RewardTrainer(Loop):
    """A reward-model run; `run()` (the loop `prefero train` shares) trains it."""

    desc = "rm"
    config_file = "reward_config.json"

    def __init__(self, cfg: RewardConfig):
        super().__init__(cfg)
        self.tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
        self.train_ds, report = load_reward_data(cfg.train_data, self.tokenizer, cfg)
        eval_report = None
        if cfg.eval_data:
            self.eval_ds, eval_report = load_reward_data(cfg.eval_data, self.tokenizer, cfg)
        self.write_data_report(report, eval_report)

        model = load_reward_model(cfg.model, self.tokenizer, cfg.trust_remote_code)
        self.pad_id = model.config.pad_token_id
        # SEQ_CLS also makes the new score head trainable
        self.model = apply_lora(model, cfg.lora, task_type="SEQ_CLS") if cfg.lora is not None else model
        self._prepare(RewardScorer(self.model), [p for p in self.model.parameters() if p.requires_grad])

    def _forward(self, data: PairData, idx: list[int]) -> dict:
        """Per-pair loss, r_w and r_l for pairs `idx`."""
        groups = [data.groups[i] for i in idx]
        batch = pack_groups(groups).to(self.device)
        index = torch.tensor(score_index(groups, self.pad_id), device=self.device)
        with self.autocast():
            scores = self.engine(batch, index)
        chosen, rejected = scores[0::2], scores[1::2]
        loss = bradley_terry(chosen, rejected, data.margins[idx].to(self.device), self.cfg.center_weight)
        return {"loss_tensor": loss, "loss": loss.detach(), "chosen": chosen.detach(), "rejected": rejected.detach(),
                "tokens": sum(len(p) + len(c) for p, cs in groups for c in cs)}

    def _summarize(self, rows: list[dict], gather=lambda t: t) -> dict:
        return pair_metrics(*(gather(torch.cat([r[k] for r in rows])) for k in ("loss", "chosen", "rejected")))

    def _postfix(self, metrics: dict) -> dict:
        return {"loss": f"{metrics['loss']:.4f}", "acc": f"{metrics['accuracy']:.2f}"}

    def log(self, metrics: dict, split: str = "train") -> None:
        super().log(metrics, split)
        if split == "eval" and self.accelerator.is_main_process:
            print(f"eval step {self.step}: accuracy {metrics['accuracy']:.3f}  loss {metrics['loss']:.4f}  "
                  f"margin {metrics['rewards/margins']:.3f}", flush=True)


def train_reward_model(cfg: RewardConfig) -> dict:
    return RewardTrainer(cfg).run()
