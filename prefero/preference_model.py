"""Pairwise preference model: P(A ≻ B | x) from a cross-encoder that reads both answers.

The model is a sequence classifier with one output (as `prefero rm` trains), run on the
prompt followed by both candidates, in both orders:

    d(x, A, B) = s(x, A ⊕ B) − s(x, B ⊕ A),      P(A ≻ B | x) = σ(d)

Swapping A and B negates d, so P(A ≻ B) + P(B ≻ A) = 1 for every pair and every weight
setting: the model is antisymmetric by construction, and a bias toward the first (or
second) position cancels out of d. Training minimises −log σ(d(x, y_w, y_l)) on
preference pairs. Both orders share the prompt in one prefix-shared row
([prompt | A ⊕ B | B ⊕ A]), computed once.

This is the shape of the pairwise rankers the SPPO recipe judges its K samples with; the
judge `type: pairwise_model` (prefero/judges/pairwise_model.py) reads the saved model, and
`prefero/scoring.py` holds the layout both share.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefero.data import load_pairs
from prefero.files import atomic_write_text
from prefero.log import get_logger
from prefero.loop import data_options
from prefero.options import ConfigError, option
from prefero.outputs import PAIRWISE_MODEL_FILE
from prefero.reward_model import HeadConfig, RewardTrainer
from prefero.scoring import pairwise_group, pairwise_logits

log = get_logger(__name__)


@dataclass
class PreferenceModelConfig(HeadConfig):
    """Everything `prefero pm` reads: the loop's keys, the model, the pairs. max_length holds
    the prompt and both candidates; each candidate keeps half the room the prompt leaves."""

    output_dir: str = option("runs/prefero-pm", "where metrics, data report and the preference model go")


@dataclass
class ComparisonData:
    groups: list  # (prompt_ids, [chosen ⊕ rejected, rejected ⊕ chosen])

    def __len__(self) -> int:
        return len(self.groups)


def load_comparisons(path: str, tokenizer, cfg: PreferenceModelConfig, split: str | None = None):
    pairs, report = load_pairs(path, tokenizer, data_options(cfg, split))
    if not pairs:
        raise ConfigError(report.nothing_kept(path))
    groups = [pairwise_group(p.prompt_ids, p.chosen_ids, p.rejected_ids, cfg.max_length) for p in pairs]
    cut = sum(len(cs[0]) < len(p.chosen_ids) + len(p.rejected_ids) for p, (_, cs) in zip(pairs, groups))
    report.truncated["pairwise_candidates_halved"] = report.truncated.get("pairwise_candidates_halved", 0) + cut
    return ComparisonData(groups), report


class PreferenceModelTrainer(RewardTrainer):
    """A pairwise preference model run on the reward model's loop: checkpoints, exact
    resume, the non-finite guard, several processes, LoRA."""

    desc = "pm"
    command = "pm"
    config_file = "pm_config.json"

    def load_data(self, path: str, split: str | None):
        return load_comparisons(path, self.tokenizer, self.cfg, split)

    def _forward(self, data: ComparisonData, idx: list[int], scope: list[int] | None = None) -> dict:
        groups = [data.groups[i] for i in idx]
        d = pairwise_logits(self.group_scores(groups))
        loss = -F.logsigmoid(d)
        return {"loss_tensor": loss, "loss": loss.detach(), "d": d.detach(),
                "tokens": sum(len(p) + len(c) for p, cs in groups for c in cs)}

    def _summarize(self, rows: list[dict], gather=lambda t: t) -> dict:
        loss, d = (gather(torch.cat([r[k] for r in rows])) for k in ("loss", "d"))
        return {"loss": loss.mean().item(), "accuracy": (d > 0).float().mean().item(),
                "p_chosen": torch.sigmoid(d).mean().item(), "logit_margin": d.mean().item()}

    def log(self, metrics: dict, split: str = "train") -> None:
        super(RewardTrainer, self).log(metrics, split)
        if split == "eval" and self.accelerator.is_main_process:
            log.info(f"eval step {self.step}: pairwise accuracy {metrics['accuracy']:.3f}  loss {metrics['loss']:.4f}  "
                     f"mean P(chosen ≻ rejected) {metrics['p_chosen']:.3f}")

    def save(self) -> None:
        super().save()
        if self.accelerator.is_main_process:
            atomic_write_text(self.out / PAIRWISE_MODEL_FILE, json.dumps({
                "kind": "pairwise preference model",
                "reads": "prompt, then candidate A, then candidate B, each ending with its stop token",
                "probability": "P(A ≻ B) = sigmoid(s(A ⊕ B) − s(B ⊕ A)), s = the classifier's one output",
                "max_length": self.cfg.max_length, "max_prompt_length": self.cfg.max_prompt_length,
            }, indent=2))


def train_preference_model(cfg: PreferenceModelConfig) -> dict:
    return PreferenceModelTrainer(cfg).run()
