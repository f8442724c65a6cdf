"""Every loss against numbers worked by hand, and the sign of its gradient.

Scalars: S_θ(y_w) = -10, S_θ(y_l) = -12, S_ref(y_w) = -11, S_ref(y_l) = -11,
|y_w| = 4, |y_l| = 8. So Δ_w = 1, Δ_l = -1, h = 2; A_w = -2.5, A_l = -1.5.
"""

import math

import pytest
import torch

from prefero.losses import LOSSES, PairStats, UnpairedStats, bradley_terry, get_loss


def sig(x):
    return 1 / (1 + math.exp(-x))


def logsig(x):
    return math.log(sig(x))


def stats(**kw):
    base = dict(
        chosen_logps=-10.0, rejected_logps=-12.0, ref_chosen_logps=-11.0, ref_rejected_logps=-11.0,
        chosen_lengths=4.0, rejected_lengths=8.0, p_chosen=0.8, p_rejected=0.3,
    )
    base.update(kw)
    t = {k: torch.tensor([float(v)], requires_grad=k in ("chosen_logps", "rejected_logps")) for k, v in base.items()}
    return PairStats(**t)


def value(name, **hp):
    return get_loss(name)(stats(), **hp).loss.item()


def test_dpo_by_hand():
    # βh = 0.1 * 2 = 0.2 ; -logσ(0.2) = 0.598139
    assert value("dpo") == pytest.approx(-logsig(0.2), rel=1e-6)
    assert value("dpo") == pytest.approx(0.598139, abs=1e-6)
    # cDPO ε = 0.25: -(0.75)logσ(0.2) - 0.25 logσ(-0.2)
    assert value("dpo", label_smoothing=0.25) == pytest.approx(-0.75 * logsig(0.2) - 0.25 * logsig(-0.2), rel=1e-6)
    out = get_loss("dpo")(stats())
    assert out.chosen_rewards.item() == pytest.approx(0.1) and out.rejected_rewards.item() == pytest.approx(-0.1)
    # RPO, α = 1: + NLL(y_w) = 10/4 tokens = 2.5 (0.598139 + 2.5); α = 0.5 per sequence: + 1.25
    assert value("dpo", rpo_alpha=1.0) == pytest.approx(3.098139, abs=1e-6)
    assert value("dpo", rpo_alpha=0.5, nll_reduction="sequence") == pytest.approx(0.598139 + 1.25, abs=1e-6)
    # the NLL term leaves the implicit rewards alone
    out = get_loss("dpo")(stats(), rpo_alpha=1.0)
    assert out.chosen_rewards.item() == pytest.approx(0.1) and out.rejected_rewards.item() == pytest.approx(-0.1)


def test_robust_by_hand():
    eps = 0.1
    expected = (-(1 - eps) * logsig(0.2) + eps * logsig(-0.2)) / (1 - 2 * eps)
    assert value("robust") == pytest.approx(expected, rel=1e-6)
    assert value("robust", label_smoothing=0.0) == pytest.approx(-logsig(0.2), rel=1e-6)
    with pytest.raises(ValueError):
        value("robust", label_smoothing=0.5)


def test_ipo_by_hand():
    # averaged: h̄ = 1/4 - (-1/8) = 0.375; (0.375 - 5)^2 = 21.390625
    assert value("ipo") == pytest.approx(21.390625, rel=1e-6)
    # summed: (2 - 5)^2 = 9
    assert value("ipo", ipo_average=False) == pytest.approx(9.0, rel=1e-6)


def test_hinge_by_hand():
    assert value("hinge") == pytest.approx(0.8, rel=1e-6)  # max(0, 1 - 0.2)
    assert value("hinge", beta=1.0) == pytest.approx(0.0, abs=1e-7)  # 1 - 2 < 0


def test_rdpo_by_hand():
    # βh + α(|y_w| - |y_l|) = 0.2 + 0.01 * (4 - 8) = 0.16
    assert value("rdpo") == pytest.approx(-logsig(0.16), rel=1e-6)


def test_nca_pair_by_hand():
    # βΔ_w = 0.1, βΔ_l = -0.1: -logσ(0.1) - ½logσ(-0.1) - ½logσ(0.1)
    expected = -logsig(0.1) - 0.5 * logsig(-0.1) - 0.5 * logsig(0.1)
    assert value("nca_pair") == pytest.approx(expected, rel=1e-6)
    assert value("nca_pair") == pytest.approx(1.338793, abs=1e-6)


def test_simpo_by_hand():
    # z = 2(-2.5) - 2(-1.5) - 2*0.5 = -3 ; -logσ(-3) = 3.048587
    assert value("simpo") == pytest.approx(-logsig(-3.0), rel=1e-6)
    assert value("simpo") == pytest.approx(3.048587, abs=1e-6)
    # γ/β = 0 and ε = 0.3 (the seed repo's hard-coded smoothing)
    z = -2.0
    assert value("simpo", gamma_beta_ratio=0.0, label_smoothing=0.3) == pytest.approx(
        -0.7 * logsig(z) - 0.3 * logsig(-z), rel=1e-6)
    # β = 2.5, γ/β = 0.5 → z = 2.5(-1) - 1.25 = -3.75
    assert value("simpo", beta=2.5) == pytest.approx(-logsig(-3.75), rel=1e-6)
    out = get_loss("simpo")(stats())
    assert out.chosen_rewards.item() == pytest.approx(-5.0) and out.rejected_rewards.item() == pytest.approx(-3.0)
    # the ablation on summed log-probs: z = 0.1(-10) - 0.1(-12) - 0.1*0.5 = 0.15
    assert value("simpo", beta=0.1, simpo_length_normalize=False) == pytest.approx(-logsig(0.15), rel=1e-6)
    out = get_loss("simpo")(stats(), beta=0.1, simpo_length_normalize=False)
    assert out.chosen_rewards.item() == pytest.approx(-1.0) and out.rejected_rewards.item() == pytest.approx(-1.2)
    # CPO-SimPO, λ = 1: + NLL(y_w) = 10/4 tokens; per sequence the same for one pair
    assert value("simpo", cpo_lambda=1.0) == pytest.approx(3.048587 + 2.5, abs=1e-6)
    assert value("simpo", cpo_lambda=0.5, nll_reduction="sequence") == pytest.approx(3.048587 + 1.25, abs=1e-6)
    # over two pairs the token mean is Σ NLL / Σ |y_w| = (10 + 4) / (4 + 2), not the mean of 10/4 and 4/2
    two = PairStats(chosen_logps=torch.tensor([-10.0, -4.0]), rejected_logps=torch.tensor([-12.0, -4.0]),
                    chosen_lengths=torch.tensor([4.0, 2.0]), rejected_lengths=torch.tensor([8.0, 2.0]))
    simpo_terms = -logsig(-3.0) - logsig(2 * (-2.0) - 2 * (-2.0) - 1.0)  # z = -3, then -1
    assert get_loss("simpo")(two, cpo_lambda=1.0).loss.mean().item() == pytest.approx(
        simpo_terms / 2 + 14 / 6, rel=1e-6)
    assert get_loss("simpo")(two, cpo_lambda=1.0, nll_reduction="sequence").loss.mean().item() == pytest.approx(
        simpo_terms / 2 + (10 / 4 + 4 / 2) / 2, rel=1e-6)


def test_cpo_by_hand():
    # -logσ(0.1 * 2) + 1.0 * (10 / 4)
    assert value("cpo") == pytest.approx(-logsig(0.2) + 2.5, rel=1e-6)


def test_orpo_by_hand():
    aw, al = -2.5, -1.5
    ow = aw - math.log(1 - math.exp(aw))
    ol = al - math.log(1 - math.exp(al))
    # log(1 - e^-2.5) = -0.085648, log(1 - e^-1.5) = -0.252480
    # o_w = -2.414352, o_l = -1.247520, o_w - o_l = -1.166832
    assert ow - ol == pytest.approx(-1.166832, abs=1e-6)
    assert value("orpo") == pytest.approx(2.5 - 0.1 * logsig(ow - ol), rel=1e-6)


def test_sppo_by_hand():
    # η = 1000: (1 - 1000*0.3)^2 + (-1 - 1000*(-0.2))^2 = 299^2 + 199^2
    assert value("sppo") == pytest.approx(299.0**2 + 199.0**2, rel=1e-6)
    # hard: (1 - 500)^2 + (-1 + 500)^2 = 2 * 499^2
    assert value("sppo_hard") == pytest.approx(2 * 499.0**2, rel=1e-6)
    assert value("sppo", beta=0.5) == pytest.approx((1 - 0.6) ** 2 + (-1 + 0.4) ** 2, rel=1e-6)


def test_sft_by_hand():
    assert get_loss("sft")(PairStats(torch.tensor([-10.0]), chosen_lengths=torch.tensor([4.0]))).loss.item() == 2.5


def test_kto_by_hand():
    # KL estimate: mean(S_θ - S_ref) over mismatched = mean(0.5, -1.5) = -0.5 → z0 = 0
    s = UnpairedStats(
        logps=torch.tensor([-10.0, -12.0]), ref_logps=torch.tensor([-11.0, -11.0]),
        labels=torch.tensor([True, False]),
        kl_logps=torch.tensor([-9.5, -13.0]), ref_kl_logps=torch.tensor([-10.0, -11.5]),
    )
    out = get_loss("kto")(s).loss
    assert out[0].item() == pytest.approx(1 - sig(0.1 * 1), rel=1e-6)
    assert out[1].item() == pytest.approx(1 - sig(0.1 * (0 - (-1))), rel=1e-6)
    # positive KL estimate: mean(2, 0) = 1 → z0 = 1; weights λ_D = 2, λ_U = 0.5
    s.kl_logps = torch.tensor([-8.0, -11.5])
    out = get_loss("kto")(s, kto_desirable_weight=2.0, kto_undesirable_weight=0.5).loss
    assert out[0].item() == pytest.approx(2 * (1 - sig(0.1 * (1 - 1))), rel=1e-6)
    assert out[1].item() == pytest.approx(0.5 * (1 - sig(0.1 * (1 - (-1)))), rel=1e-6)


def test_bradley_terry_by_hand():
    rw, rl = torch.tensor([1.0]), torch.tensor([-0.5])
    assert bradley_terry(rw, rl).item() == pytest.approx(-logsig(1.5), rel=1e-6)
    assert bradley_terry(rw, rl, margin=1.0).item() == pytest.approx(-logsig(0.5), rel=1e-6)
    assert bradley_terry(rw, rl, center_weight=0.1).item() == pytest.approx(-logsig(1.5) + 0.1 * 0.25, rel=1e-6)


@pytest.mark.parametrize("name", [n for n, s in LOSSES.items() if s.data == "paired"])
def test_gradient_pushes_chosen_up_and_rejected_down(name):
    s = stats()
    loss = get_loss(name)(s).loss.sum()
    gw, gl = torch.autograd.grad(loss, [s.chosen_logps, s.rejected_logps])
    assert gw.item() < 0, f"{name}: raising log π(y_w) must lower the loss"
    if name not in ("sppo",):
        assert gl.item() > 0, f"{name}: raising log π(y_l) must raise the loss"
    else:  # SPPO pulls Δ_l toward η(P̂_l − ½) = -200 from -1: also downward
        assert gl.item() > 0


def test_kto_gradient_signs():
    logps = torch.tensor([-10.0, -12.0], requires_grad=True)
    s = UnpairedStats(logps, torch.tensor([-11.0, -11.0]), torch.tensor([True, False]),
                      torch.tensor([-9.5, -13.0]), torch.tensor([-10.0, -11.5]))
    (g,) = torch.autograd.grad(get_loss("kto")(s).loss.sum(), [logps])
    assert g[0] < 0 and g[1] > 0


def test_reference_free_losses_are_marked():
    assert not get_loss("simpo").needs_reference
    assert not get_loss("cpo").needs_reference and not get_loss("orpo").needs_reference
    assert not get_loss("sft").needs_reference
    assert get_loss("dpo").needs_reference and get_loss("sppo").needs_win_probs


def test_unknown_loss_suggests():
    with pytest.raises(ValueError, match="did you mean 'simpo'"):
        get_loss("smpo")
