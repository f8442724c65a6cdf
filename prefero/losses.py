"""Preference losses as pure functions of per-sequence statistics (README.md#losses).

Every loss takes a `PairStats` (or `UnpairedStats` for KTO) of shape-[B] tensors and
returns a `LossOutput` with the per-example loss and the implicit rewards that the
trainer logs. Nothing here touches a model, so each loss is checked in the tests
against numbers worked by hand.

Notation: S = summed completion log-prob, A = S/|y| (average), Δ = S_θ − S_ref,
h = Δ_w − Δ_l; w = chosen, l = rejected.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class PairStats:
    """Per-pair statistics, each a float tensor of shape [B]."""

    chosen_logps: Tensor  # S_θ(y_w|x), summed over completion tokens
    rejected_logps: Tensor | None = None  # S_θ(y_l|x); None for SFT
    chosen_lengths: Tensor | None = None  # |y_w|, completion tokens incl. EOS
    rejected_lengths: Tensor | None = None
    ref_chosen_logps: Tensor | None = None  # S_ref(y_w|x)
    ref_rejected_logps: Tensor | None = None
    p_chosen: Tensor | None = None  # SPPO win probability P̂(y_w ≻ π_t)
    p_rejected: Tensor | None = None
    # Token-level NLL normaliser: the mean |y_w| over the examples the loss is averaged
    # over (the whole optimizer step, all processes). Dividing each NLL by it makes the
    # mean of the per-example losses Σ NLL / Σ |y_w|. None: the mean over this batch.
    nll_scale: Tensor | float | None = None


@dataclass
class UnpairedStats:
    """Per-example statistics for KTO, each of shape [B]."""

    logps: Tensor  # S_θ(y|x)
    ref_logps: Tensor  # S_ref(y|x)
    labels: Tensor  # bool: desirable
    kl_logps: Tensor  # S_θ(y_{i−1}|x_i): completions cycled by one inside the micro-batch
    ref_kl_logps: Tensor


@dataclass
class LossOutput:
    loss: Tensor  # [B] per-example loss; the batch loss is its mean
    chosen_rewards: Tensor | None = None  # [B] implicit reward r(y_w), detached
    rejected_rewards: Tensor | None = None
    extra: dict | None = None  # batch-level statistics to log (e.g. KTO's z0 as "kl"), detached


def _ratios(s: PairStats) -> tuple[Tensor, Tensor]:
    return s.chosen_logps - s.ref_chosen_logps, s.rejected_logps - s.ref_rejected_logps


def _smoothed(z: Tensor, eps: float) -> Tensor:
    """−(1−ε)·logσ(z) − ε·logσ(−z): the sigmoid loss with label smoothing ε."""
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def _nll(s: PairStats, nll_reduction: str) -> Tensor:
    """Per-example NLL of y_w whose mean over the step is the token-level mean
    Σ NLL / Σ |y_w| (`token`, as the CPO/ORPO authors and TRL average it) or the mean of
    per-sequence averages (`sequence`, which weighs short completions more)."""
    if nll_reduction == "sequence":
        return -s.chosen_logps / s.chosen_lengths
    if nll_reduction != "token":
        raise ValueError(f"nll_reduction must be 'token' or 'sequence', got {nll_reduction!r}")
    scale = s.nll_scale if s.nll_scale is not None else s.chosen_lengths.float().mean()
    return -s.chosen_logps / scale


def _rewards(beta: float, chosen: Tensor, rejected: Tensor) -> tuple[Tensor, Tensor]:
    return (beta * chosen).detach(), (beta * rejected).detach()


def dpo(s: PairStats, beta: float = 0.1, label_smoothing: float = 0.0, rpo_alpha: float = 0.0,
        nll_reduction: str = "token") -> LossOutput:
    """DPO (Rafailov et al. 2023, eq. 7); ε>0 is conservative DPO (cDPO).

    loss = −(1−ε)·logσ(βh) − ε·logσ(−βh), + α·NLL(y_w) with α = `rpo_alpha` > 0 (`_nll`):
    RPO (Pang et al. 2024), which keeps the chosen answers likely where DPO alone may lower
    both answers of a pair, as on-policy iterations of DPO do.
    """
    dw, dl = _ratios(s)
    loss = _smoothed(beta * (dw - dl), label_smoothing)
    if rpo_alpha:
        loss = loss + rpo_alpha * _nll(s, nll_reduction)
    return LossOutput(loss, *_rewards(beta, dw, dl))


def robust(s: PairStats, beta: float = 0.1, label_smoothing: float = 0.1) -> LossOutput:
    """Robust DPO (Chowdhury et al. 2024, eq. 8), unbiased under label-flip rate ε∈[0, 0.5).

    loss = [−(1−ε)·logσ(βh) + ε·logσ(−βh)] / (1−2ε).
    """
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs label_smoothing in [0, 0.5), got {label_smoothing}")
    dw, dl = _ratios(s)
    z = beta * (dw - dl)
    eps = label_smoothing
    loss = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    return LossOutput(loss, *_rewards(beta, dw, dl))


def ipo(s: PairStats, beta: float = 0.1, ipo_average: bool = True) -> LossOutput:
    """IPO (Azar et al. 2023, eq. 17): (h̄ − 1/(2β))².

    h̄ uses length-averaged log-ratios by default (as the IPO authors' released runs
    do); `ipo_average=False` uses summed log-ratios as in the paper's equation.
    """
    dw, dl = _ratios(s)
    h = dw / s.chosen_lengths - dl / s.rejected_lengths if ipo_average else dw - dl
    return LossOutput((h - 1 / (2 * beta)) ** 2, *_rewards(beta, dw, dl))


def hinge(s: PairStats, beta: float = 0.1) -> LossOutput:
    """SLiC-HF hinge (Zhao et al. 2023): max(0, 1 − βh)."""
    dw, dl = _ratios(s)
    return LossOutput(torch.relu(1 - beta * (dw - dl)), *_rewards(beta, dw, dl))


def rdpo(s: PairStats, beta: float = 0.1, rdpo_alpha: float = 0.01) -> LossOutput:
    """Length-regularized DPO (Park et al. 2024, eq. 9): −logσ(βh + α(|y_w| − |y_l|))."""
    dw, dl = _ratios(s)
    z = beta * (dw - dl) + rdpo_alpha * (s.chosen_lengths - s.rejected_lengths)
    return LossOutput(-F.logsigmoid(z), *_rewards(beta, dw, dl))


def nca_pair(s: PairStats, beta: float = 0.1) -> LossOutput:
    """NCA, pairwise form (Chen et al. 2024, "Noise Contrastive Alignment", eq. 11):
    −logσ(βΔ_w) − ½·logσ(−βΔ_w) − ½·logσ(−βΔ_l).

    Unlike DPO it is not a function of the margin h alone: it raises Δ_w in absolute terms,
    so the chosen likelihood does not fall along with the rejected one.
    """
    dw, dl = _ratios(s)
    loss = -F.logsigmoid(beta * dw) - 0.5 * F.logsigmoid(-beta * dw) - 0.5 * F.logsigmoid(-beta * dl)
    return LossOutput(loss, *_rewards(beta, dw, dl))


def simpo(
    s: PairStats, beta: float = 2.0, gamma_beta_ratio: float = 0.5, label_smoothing: float = 0.0,
    simpo_length_normalize: bool = True, cpo_lambda: float = 0.0, nll_reduction: str = "token",
) -> LossOutput:
    """SimPO (Meng et al. 2024, eq. 6), reference-free, length-normalised.

    z = β·A_θ(y_w) − β·A_θ(y_l) − γ with γ = β·(γ/β); loss = −(1−ε)·logσ(z) − ε·logσ(−z).
    `simpo_length_normalize=False` uses summed log-probs S_θ instead of A_θ (the paper's
    ablation, which finds longer outputs without the normalisation). λ = `cpo_lambda` > 0
    adds CPO's term λ·NLL(y_w) (`_nll`), which holds the chosen answers' likelihood up where
    SimPO alone, with no reference, lets it drift (CPO-SimPO); λ = 0 is the paper's SimPO.
    """
    if simpo_length_normalize:
        aw = s.chosen_logps / s.chosen_lengths
        al = s.rejected_logps / s.rejected_lengths
    else:
        aw, al = s.chosen_logps, s.rejected_logps
    z = beta * (aw - al) - beta * gamma_beta_ratio
    loss = _smoothed(z, label_smoothing)
    if cpo_lambda:
        loss = loss + cpo_lambda * _nll(s, nll_reduction)
    return LossOutput(loss, *_rewards(beta, aw, al))


def cpo(s: PairStats, beta: float = 0.1, cpo_lambda: float = 1.0, nll_reduction: str = "token") -> LossOutput:
    """CPO (Xu et al. 2024, eq. 6): −logσ(β(S_w − S_l)) + λ·NLL(y_w), NLL a token mean (`_nll`)."""
    nll = _nll(s, nll_reduction)
    loss = -F.logsigmoid(beta * (s.chosen_logps - s.rejected_logps)) + cpo_lambda * nll
    return LossOutput(loss, *_rewards(beta, s.chosen_logps, s.rejected_logps))


def orpo(s: PairStats, orpo_lambda: float = 0.1, nll_reduction: str = "token") -> LossOutput:
    """ORPO (Hong et al. 2024, eq. 6): NLL(y_w) − λ·logσ(o_w − o_l), NLL a token mean (`_nll`).

    o = log odds(y) = A − log(1 − exp(A)), with A the average log-prob (< 0).
    """
    aw = s.chosen_logps / s.chosen_lengths
    al = s.rejected_logps / s.rejected_lengths
    ow = aw - torch.log1p(-torch.exp(aw))
    ol = al - torch.log1p(-torch.exp(al))
    loss = _nll(s, nll_reduction) - orpo_lambda * F.logsigmoid(ow - ol)
    return LossOutput(loss, *_rewards(orpo_lambda, ow, ol))


def sppo(s: PairStats, beta: float = 0.001) -> LossOutput:
    """SPPO (Wu et al. 2024, eq. 4.8) with η = 1/β and estimated win probabilities.

    loss = (Δ_w − η(P̂_w − ½))² + (Δ_l − η(P̂_l − ½))², ref = policy at iteration start.
    """
    dw, dl = _ratios(s)
    eta = 1.0 / beta
    loss = (dw - eta * (s.p_chosen - 0.5)) ** 2 + (dl - eta * (s.p_rejected - 0.5)) ** 2
    return LossOutput(loss, *_rewards(beta, dw, dl))


def sppo_hard(s: PairStats, beta: float = 0.001) -> LossOutput:
    """SPPO with hard labels P̂_w = 1, P̂_l = 0: (Δ_w − η/2)² + (Δ_l + η/2)²."""
    dw, dl = _ratios(s)
    eta = 1.0 / beta
    loss = (dw - eta / 2) ** 2 + (dl + eta / 2) ** 2
    return LossOutput(loss, *_rewards(beta, dw, dl))


def sft(s: PairStats, nll_reduction: str = "token") -> LossOutput:
    """Supervised fine-tuning: NLL of the completion, by default the mean over all completion
    tokens of the step (`_nll`)."""
    return LossOutput(_nll(s, nll_reduction))


def kto(
    s: UnpairedStats,
    beta: float = 0.1,
    kto_desirable_weight: float = 1.0,
    kto_undesirable_weight: float = 1.0,
) -> LossOutput:
    """KTO (Ethayarajh et al. 2024, eq. 8).

    z0 = max(0, mean(S_θ − S_ref) over mismatched pairs), detached;
    desirable: λ_D(1 − σ(β(Δ − z0))), undesirable: λ_U(1 − σ(β(z0 − Δ))).
    `chosen_rewards` holds β·Δ of every example; split by label when logging.
    """
    z0 = (s.kl_logps - s.ref_kl_logps).mean().clamp(min=0).detach()
    delta = s.logps - s.ref_logps
    desirable = kto_desirable_weight * (1 - torch.sigmoid(beta * (delta - z0)))
    undesirable = kto_undesirable_weight * (1 - torch.sigmoid(beta * (z0 - delta)))
    loss = torch.where(s.labels.bool(), desirable, undesirable)
    return LossOutput(loss, (beta * delta).detach(), extra={"kl": z0})


def bradley_terry(
    chosen_scores: Tensor, rejected_scores: Tensor, margin: Tensor | float = 0.0,
    center_weight: float = 0.0,
) -> Tensor:
    """Reward-model loss: −logσ(r_w − r_l − m) + c·(r_w + r_l)², per pair ([B])."""
    loss = -F.logsigmoid(chosen_scores - rejected_scores - margin)
    if center_weight:
        loss = loss + center_weight * (chosen_scores + rejected_scores) ** 2
    return loss


@dataclass(frozen=True)
class LossSpec:
    """What a loss needs from the trainer."""

    name: str
    fn: Callable[..., LossOutput]
    needs_reference: bool
    data: str  # "paired", "unpaired" (KTO), "sft"
    needs_win_probs: bool = False

    def hyperparameters(self) -> dict[str, object]:
        """The loss's keyword hyperparameters and their defaults."""
        params = inspect.signature(self.fn).parameters
        return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}

    def __call__(self, stats, **overrides) -> LossOutput:
        known = self.hyperparameters()
        unknown = [k for k, v in overrides.items() if k not in known and v is not None]
        if unknown:  # a setting the loss does not read must not be dropped silently
            raise ValueError(f"loss {self.name!r} takes no {', '.join(unknown)} (it takes: {', '.join(known)})")
        return self.fn(stats, **{k: v for k, v in overrides.items() if v is not None})


LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in [
        LossSpec("dpo", dpo, needs_reference=True, data="paired"),
        LossSpec("robust", robust, needs_reference=True, data="paired"),
        LossSpec("ipo", ipo, needs_reference=True, data="paired"),
        LossSpec("hinge", hinge, needs_reference=True, data="paired"),
        LossSpec("rdpo", rdpo, needs_reference=True, data="paired"),
        LossSpec("nca_pair", nca_pair, needs_reference=True, data="paired"),
        LossSpec("simpo", simpo, needs_reference=False, data="paired"),
        LossSpec("cpo", cpo, needs_reference=False, data="paired"),
        LossSpec("orpo", orpo, needs_reference=False, data="paired"),
        LossSpec("sppo", sppo, needs_reference=True, data="paired", needs_win_probs=True),
        LossSpec("sppo_hard", sppo_hard, needs_reference=True, data="paired"),
        LossSpec("kto", kto, needs_reference=True, data="unpaired"),
        LossSpec("sft", sft, needs_reference=False, data="sft"),
    ]
}


def get_loss(name: str) -> LossSpec:
    if name not in LOSSES:
        import difflib

        hint = difflib.get_close_matches(name, LOSSES, n=1)
        raise ValueError(
            f"unknown loss {name!r}"
            + (f"; did you mean {hint[0]!r}?" if hint else "")
            + f" (known: {', '.join(LOSSES)})"
        )
    return LOSSES[name]
