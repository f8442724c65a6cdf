"""Metrics on held-out preference pairs from per-sequence statistics (docs/evaluation.md).

Inputs are what the trainer already computes for each pair: the implicit rewards r(y_w),
r(y_l) of the method being evaluated (β·Δ for the DPO family, β·A_θ for SimPO, ... — the
loss functions in `prefero.losses` return them), the summed log-probs S_θ and the
completion lengths |y| in tokens. A_θ(y) = S_θ(y) / |y|.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairMetrics:
    """`reward_accuracy`: share of pairs with r(y_w) > r(y_l) (a tie counts as wrong, as the
    trainer's rewards/accuracies does). `likelihood_ranking_accuracy`: share with
    A_θ(y_w) > A_θ(y_l). `spearman_avg_logp_length`: Spearman ρ between A_θ(y) and |y| over
    all 2·n sequences (chosen and rejected pooled); None when either is constant.
    `reward_margin`: mean r(y_w) − r(y_l). None fields: the input was not given."""

    n_pairs: int
    reward_accuracy: float | None
    reward_margin: float | None
    likelihood_ranking_accuracy: float
    spearman_avg_logp_length: float | None


def pair_metrics(chosen_logps: Sequence[float], rejected_logps: Sequence[float],
                 chosen_lengths: Sequence[float], rejected_lengths: Sequence[float],
                 chosen_rewards: Sequence[float] | None = None,
                 rejected_rewards: Sequence[float] | None = None) -> PairMetrics:
    """Reward accuracy, likelihood-ranking accuracy and the A_θ–length correlation.

    Likelihood ranking is the SimPO paper's diagnostic (Meng et al. 2024, §2.2 and
    Fig. 4): a policy that generates what it ranks higher should give the chosen response
    the higher *average* log-likelihood; DPO's reward (a summed log-ratio) does not
    guarantee it, and they measure about 50% for DPO. The Spearman correlation between
    A_θ(y) and |y| shows whether the model's per-token likelihood itself favours length.
    """
    lw, ll = _array(chosen_logps, "chosen_logps"), _array(rejected_logps, "rejected_logps")
    nw, nl = _array(chosen_lengths, "chosen_lengths"), _array(rejected_lengths, "rejected_lengths")
    n = lw.size
    if n == 0:
        raise ValueError("pair metrics of zero pairs")
    for name, a in [("rejected_logps", ll), ("chosen_lengths", nw), ("rejected_lengths", nl)]:
        if a.size != n:
            raise ValueError(f"{name} has {a.size} entries for {n} pairs")
    if np.any(nw < 1) or np.any(nl < 1):
        raise ValueError("completion lengths must be >= 1 token (EOS included)")
    if (chosen_rewards is None) != (rejected_rewards is None):
        raise ValueError("give both chosen_rewards and rejected_rewards, or neither")

    aw, al = lw / nw, ll / nl
    accuracy = margin = None
    if chosen_rewards is not None:
        rw, rl = _array(chosen_rewards, "chosen_rewards"), _array(rejected_rewards, "rejected_rewards")
        if rw.size != n or rl.size != n:
            raise ValueError(f"rewards have {rw.size} and {rl.size} entries for {n} pairs")
        accuracy, margin = float(np.mean(rw > rl)), float(np.mean(rw - rl))
    return PairMetrics(
        n_pairs=int(n),
        reward_accuracy=accuracy,
        reward_margin=margin,
        likelihood_ranking_accuracy=float(np.mean(aw > al)),
        spearman_avg_logp_length=spearman(np.concatenate([aw, al]), np.concatenate([nw, nl])),
    )


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's ρ (ties get their average rank), None when x or y is constant —
    the coefficient is 0/0 there, not a number to report."""
    from scipy.stats import spearmanr

    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return None
    return float(spearmanr(x, y).statistic)


def _array(values, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(a)):
        i = int(np.flatnonzero(~np.isfinite(a))[0])
        raise ValueError(f"{name}[{i}] is not finite ({a[i]})")
    return a
