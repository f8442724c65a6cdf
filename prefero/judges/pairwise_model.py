"""A pairwise preference model as judge: P(y_i ≻ y_j | x) from a `prefero pm` output.

The model reads the prompt and both candidates, in both orders, and
P(A ≻ B) = σ(s(A ⊕ B) − s(B ⊕ A)) (`prefero/preference_model.py`). Inputs are tokenized as
training tokenized them (`prefero.scoring.encode_group`, then the training run's own
max_length / max_prompt_length, read from the model's `prefero_pairwise_model.json`), so a
judged pair gets the probability `prefero pm` evaluation computes for it. Each unordered
pair is asked once (`ordered`): the other order is 1 − P exactly.

`compare` is the native question. `score` (pointwise mode) gives each completion its mean
win probability against all K, P̂(y_i) = mean_j P[i][j] with P[i][i] = ½, so
`label format=pairs` picks the completion that beats the others on average.

A PairRM checkpoint (llm-blender's ranker in its Hugging Face layout, a DeBERTa
cross-encoder with its own head and input format) is read by prefero.judges.pairrm instead;
any other directory without `prefero pm`'s settings file is refused, saying so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from prefero.judges.base import Item, ordered, pairwise_matrices, sigmoid, unorder, win_rates
from prefero.judges.reward_model import RewardModelJudge
from prefero.options import ConfigError
from prefero.outputs import PAIRWISE_MODEL_FILE
from prefero.scoring import padded_scores, pairwise_group


def read_pairwise_settings(directory: str) -> dict:
    path = Path(directory) / PAIRWISE_MODEL_FILE
    if not path.is_file():
        raise ConfigError(f"judge.model: {directory} is not a pairwise preference model (it has no "
                          f"{PAIRWISE_MODEL_FILE}); train one with `prefero pm`, or judge with type: reward_model")
    return json.loads(path.read_text())


class PairwiseModelJudge(RewardModelJudge):
    """compare: σ(s(A ⊕ B) − s(B ⊕ A)); score: mean win probability against the item's K.
    Loading, tokenizing and truncating are the reward-model judge's, with the lengths the
    model was trained with."""

    def lengths(self, cfg) -> tuple[int, int]:
        settings = read_pairwise_settings(cfg.model)
        return settings["max_length"], settings["max_prompt_length"]

    def compare(self, requests) -> list[float | None]:
        canonical, flipped = ordered(requests)
        tokens = {}
        rows = []
        for item, i, j in canonical:
            if id(item) not in tokens:
                tokens[id(item)] = self.tokenize(item)
            prompt_ids, completions = tokens[id(item)]
            prompt_ids, (ab, ba) = pairwise_group(prompt_ids, completions[i], completions[j], self.max_length)
            rows += [prompt_ids + ab, prompt_ids + ba]
        scores = [0.0] * len(rows)
        order = sorted(range(len(rows)), key=lambda r: len(rows[r]))  # alike lengths per forward
        for s in range(0, len(order), self.batch_size):
            chunk = order[s:s + self.batch_size]
            for r, v in zip(chunk, padded_scores(self.model, [rows[r] for r in chunk], self.pad_id).tolist()):
                scores[r] = v
        values = [sigmoid(scores[2 * n] - scores[2 * n + 1]) for n in range(len(canonical))]
        return unorder(values, flipped)

    def score(self, items: Sequence[Item]) -> list[list[float | None]]:
        return [win_rates(m) for m in pairwise_matrices(self, items)]
