"""Bradley–Terry reward model: a scalar head on a causal LM, trained on preference pairs.

    loss = −logσ(r(x,y_w) − r(x,y_l) − m) + c·(r_w + r_l)²      (`losses.bradley_terry`)

The model is a Hugging Face `AutoModelForSequenceClassification` with `num_labels=1`, so
the saved directory loads anywhere with `from_pretrained` and scores with a plain padded
forward. Training runs on the prefix-shared packed layout instead: [prompt | chosen |
rejected] in one row, the prompt computed once, and r(x, y) read from the hidden state of
the token HF's own forward would pool.

Which token that is, and the scoring functions themselves: `prefero/scoring.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prefero.attention import row_tokens
from prefero.batching import PackedBatch, pack_groups, pair_groups
from prefero.config import LoopConfig, LoraConfig
from prefero.data import DataError, DataReport, load_pairs
from prefero.data.limits import check_run_lengths
from prefero.data.read import iter_rows
from prefero.log import get_logger
from prefero.loop import Loop, data_options
from prefero.losses import bradley_terry
from prefero.model import apply_lora, load_tokenizer
from prefero.options import ConfigError, option

# Scoring lives in prefero.scoring (judges use it without the training loop); these names
# stay importable from here.
from prefero.scoring import load_reward_model, score, score_index, sequence_scores  # noqa: F401

log = get_logger(__name__)


@dataclass
class HeadConfig(LoopConfig):
    """The loop's keys for a scalar head on a causal LM (`prefero rm`, `prefero pm`)."""

    model: str = option("", "base model: any causal LM (hub id or local directory); a fresh scalar head is added")
    train_data: str = option("", "preference pairs (.jsonl/.json/.parquet/.csv), save_to_disk folder or hub name")
    eval_data: str | None = option(None, "held-out pairs; pairwise accuracy is printed and logged")
    output_dir: str = option("runs/prefero-rm", "where metrics, data report and the model go")
    learning_rate: float = option(1e-5, "peak AdamW learning rate", gt=0)
    warmup_ratio: float = option(0.03, "fraction of the steps spent warming up linearly", ge=0, lt=1)
    lora: LoraConfig | None = option(
        None, "LoRA adapter block (r, alpha, dropout, target_modules, merge); the head trains fully")


@dataclass
class RewardConfig(HeadConfig):
    """Everything `prefero rm` reads: the loop's keys, then the Bradley–Terry options."""

    margin_column: str | None = option(None, "column with a per-pair margin m (a number); none = m=0")
    center_weight: float = option(0.0, "c: weight of the centering term c·(r_w + r_l)²", ge=0)

    def validate(self) -> "RewardConfig":
        super().validate()
        if self.margin_column == "":
            raise ConfigError("margin_column must be a column name or null")
        return self


class RewardScorer(nn.Module):
    """forward(batch, index) -> scores; a Module so DDP wraps it and sees every parameter."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: PackedBatch, index: Tensor) -> Tensor:
        return sequence_scores(self.model, batch, index)


# --------------------------------------------------------------------------- data


@dataclass
class PairData:
    pairs: list  # TokenizedPair
    groups: list  # (prompt_ids, [chosen_ids, rejected_ids])
    margins: Tensor  # [N] float32, m per pair (0 without margin_column)

    def __len__(self) -> int:
        return len(self.pairs)


def load_reward_data(path: str, tokenizer, cfg: RewardConfig, split: str | None = None
                     ) -> tuple[PairData, DataReport]:
    opts = data_options(cfg, split)
    pairs, report = load_pairs(path, tokenizer, opts)
    margins = [0.0] * len(pairs)
    if cfg.margin_column:
        pairs, margins = _with_margins(path, split, pairs, report, cfg)
    if not pairs:
        raise ConfigError(report.nothing_kept(path))
    return PairData(pairs, pair_groups(pairs), torch.tensor(margins, dtype=torch.float32)), report


def _with_margins(path, split, pairs, report: DataReport, cfg: RewardConfig):
    """Each pair's margin from its record's `margin_column` (a second pass over the rows, which
    `TokenizedPair.row` points into); a bad margin is a bad record like any other."""
    col = cfg.margin_column
    values = {row: rec.get(col) for row, rec in iter_rows(path, split) if isinstance(rec, dict)}
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
    command = "rm"
    config_file = "reward_config.json"

    def __init__(self, cfg: RewardConfig):
        super().__init__(cfg)
        self.tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
        self.check_lengths()
        self.train_ds, report = self.load_data(cfg.train_data, cfg.train_split)
        eval_report = None
        if self.eval_source():
            path, split = self.eval_source()
            self.eval_ds, eval_report = self.load_data(path, split)
        self.write_data_report(report, eval_report)

        model = load_reward_model(cfg.model, self.tokenizer, cfg.trust_remote_code)
        self.pad_id = model.config.pad_token_id
        # SEQ_CLS also makes the new score head trainable
        self.model = apply_lora(model, cfg.lora, task_type="SEQ_CLS") if cfg.lora is not None else model
        self.row_tokens = row_tokens(self.model)  # the layout of every batch (attention.row_tokens)
        self._prepare(RewardScorer(self.model), [p for p in self.model.parameters() if p.requires_grad])

    def check_lengths(self) -> None:
        check_run_lengths(self.cfg, self.tokenizer)

    def load_data(self, path: str, split: str | None):
        return load_reward_data(path, self.tokenizer, self.cfg, split)

    def _forward(self, data: PairData, idx: list[int], scope: list[int] | None = None) -> dict:
        """Per-pair loss, r_w and r_l for pairs `idx`."""
        groups = [data.groups[i] for i in idx]
        scores = self.group_scores(groups)
        chosen, rejected = scores[0::2], scores[1::2]
        loss = bradley_terry(chosen, rejected, data.margins[idx].to(self.device), self.cfg.center_weight)
        return {"loss_tensor": loss, "loss": loss.detach(), "chosen": chosen.detach(), "rejected": rejected.detach(),
                "tokens": sum(len(p) + len(c) for p, cs in groups for c in cs)}

    def group_scores(self, groups: list) -> Tensor:
        """The head's score of every completion of `groups`, one prefix-shared packed forward."""
        batch = pack_groups(groups, self.row_tokens).to(self.device)
        index = torch.tensor(score_index(groups, self.pad_id, batch.group_starts), device=self.device)
        with self.autocast():
            return self.engine(batch, index)

    def _summarize(self, rows: list[dict], gather=lambda t: t) -> dict:
        return pair_metrics(*(gather(torch.cat([r[k] for r in rows])) for k in ("loss", "chosen", "rejected")))

    def _postfix(self, metrics: dict) -> dict:
        return {"loss": f"{metrics['loss']:.4f}", "acc": f"{metrics['accuracy']:.2f}"}

    def log(self, metrics: dict, split: str = "train") -> None:
        super().log(metrics, split)
        if split == "eval" and self.accelerator.is_main_process:
            log.info(f"eval step {self.step}: accuracy {metrics['accuracy']:.3f}  loss {metrics['loss']:.4f}  "
                     f"margin {metrics['rewards/margins']:.3f}")


def train_reward_model(cfg: RewardConfig) -> dict:
    return RewardTrainer(cfg).run()
