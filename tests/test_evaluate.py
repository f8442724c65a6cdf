"""prefero.evaluate: win rate, bootstrap, length control, pair metrics, generation
statistics, reports and plots — checked against values worked by hand and exact
equivalences. Tolerances: float64 arithmetic (eps ≈ 2.2e-16) on at most a few hundred
terms is exact to ~1e-13; where an optimizer is involved the tolerance follows from its
gradient tolerance and the Hessian (stated at each test)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from prefero.data.errors import DataError
from prefero.evaluate import (
    bootstrap_ci,
    compare,
    generation_stats,
    length_controlled_win_rate,
    ngram_repetition,
    pair_metrics,
    policy_preferences,
    report_dict,
    win_rate,
    write_report,
)
from prefero.evaluate.config import EvalConfig
from prefero.evaluate.metrics import (
    _sigmoid,
    distinct_ratio,
    loops,
    repeats_a_word,
    repetition_stats,
    response_words,
)
from prefero.evaluate.plots import (
    collect_win_rates,
    curve,
    plot_lengths,
    plot_repetition,
    plot_run,
    plot_training_curves,
    plot_win_rates,
    read_metrics,
    splits,
)
from prefero.evaluate.report import pick_examples, render_markdown
from prefero.files import atomic_path, atomic_write_text
from prefero.options import ConfigError, load_config

EXACT = 1e-12  # float64 sums of ≤ a few hundred O(1) terms
PNG = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- preferences and win rate


def test_preferences_average_both_orders_and_read_verdicts():
    pref = policy_preferences([1.0, "tie", 0.2, "WIN"], ["loss", 0.5, 0.6, " win "])
    np.testing.assert_allclose(pref, [0.5, 0.5, 0.4, 1.0], rtol=0, atol=EXACT)
    np.testing.assert_array_equal(policy_preferences([0, 1]), [0.0, 1.0])  # one order: as given


@pytest.mark.parametrize("fwd, rev, message", [
    ([0.5, 0.5], [0.5, "maybe"], "judgments.jsonl: row 2, field 'p_rev': verdict 'maybe' is not one of win, tie, loss"),
    ([0.5, 1.5], None, "judgments.jsonl: row 2, field 'p_fwd': expected a probability in [0, 1], got 1.5"),
    ([float("nan")], None, "judgments.jsonl: row 1, field 'p_fwd': expected a probability in [0, 1], got nan"),
    ([True], None, "judgments.jsonl: row 1, field 'p_fwd': expected a probability in [0, 1] or win/tie/loss, got True"),
    ([0.5, 0.5], [0.5], "judgments.jsonl: field 'p_rev': 1 reversed-order judgments for 2 prompts"),
])
def test_bad_preferences_name_row_and_field(fwd, rev, message):
    with pytest.raises(DataError) as e:
        policy_preferences(fwd, rev, source="judgments.jsonl")
    assert str(e.value) == message


def test_win_rate_counts_ties_as_half_and_measures_position_bias():
    fwd, rev = [1, 1, 0, 1], [1, 0, 0, 1]  # prompt 2: wins only when shown first
    wr = win_rate(policy_preferences(fwd, rev), p_fwd=fwd, p_rev=rev)
    assert wr.win_rate == 0.625  # (1 + ½ + 0 + 1) / 4
    assert (wr.wins, wr.ties, wr.losses, wr.n) == (2, 1, 1, 4)
    assert wr.position_bias == 0.25  # mean(p_fwd − p_rev) = (0 + 1 + 0 + 0) / 4
    assert wr.ci[0] <= wr.win_rate <= wr.ci[1]


def test_bootstrap_of_a_constant_is_that_constant():
    assert bootstrap_ci(np.full(50, 0.7)) == (pytest.approx(0.7, abs=EXACT), pytest.approx(0.7, abs=EXACT))


def test_bootstrap_is_seeded_and_independent_of_chunking():
    v = np.random.default_rng(1).uniform(size=37)
    ref = bootstrap_ci(v, seed=3)
    assert bootstrap_ci(v, seed=3) == ref
    assert bootstrap_ci(v, seed=4) != ref
    # the vectorized mean, any chunk size, and the generic statistic path draw the same resamples
    assert bootstrap_ci(v, seed=3, chunk=7) == ref
    assert bootstrap_ci(v, lambda x: float(np.mean(x)), seed=3) == pytest.approx(ref, abs=EXACT)


def test_bootstrap_percentiles_of_two_points():
    # n = 2 values {0, 1}: a resample mean is 0, ½ or 1 with probability ¼, ½, ¼, so the 2.5%
    # quantile is 0 and the 97.5% quantile is 1 unless fewer than 2.5% of 2000 resamples
    # hit each end (probability ~e^-400). A 20% interval (the 40th and 60th percentiles)
    # lies inside the ½ atom at both ends.
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    assert bootstrap_ci([0.0, 1.0], confidence=0.2) == (0.5, 0.5)


def test_bootstrap_interval_matches_the_normal_approximation():
    # 400 fair coin flips (exactly 200 ones): the mean's sampling sd is √(¼/400) = 0.025, so
    # the 95% interval is ½ ± 1.96·0.025 = ½ ± 0.049. The bootstrap's quantile estimates from
    # 2000 resamples have a relative standard error of about 3%; 10% is over 3 of them.
    v = np.array([0.0, 1.0] * 200)
    lo, hi = bootstrap_ci(v)
    assert (hi - lo) / 2 == pytest.approx(1.96 * 0.025, rel=0.10)
    assert (lo + hi) / 2 == pytest.approx(0.5, abs=0.01)


# --------------------------------------------------------------------------- length control


def _lengths(n=200, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(200, 800, n).astype(float)
    pol = base + rng.normal(150, 200, n).round()  # the policy is longer on ~3/4 of prompts
    return pol, base


def _hessian(X, theta, penalty):
    s = _sigmoid(X @ theta)
    return (X * (s * (1 - s))[:, None]).T @ X + np.diag(penalty)


def test_length_only_soft_judge_has_lc_of_one_half_exactly():
    # The judge's P(policy ≻ baseline) is σ(2·tanh(Δ/s)): length and nothing else. The soft-label
    # MLE is then exactly θ* = (0, 2), so LC = σ(0) = ½ while the raw win rate is ~0.65.
    # Unpenalized (prior_scale=inf) the fit stops at ‖gradient‖∞ ≤ 1e-10, so ‖θ − θ*‖₂ ≤
    # √2·1e-10 / λ_min(H) (λ_min ≈ 8.8 here); |LC − ½| ≤ ¼·|θ_m|.
    pol, base = _lengths()
    d = pol - base
    t = np.tanh(d / d.std(ddof=1))
    p = _sigmoid(2.0 * t)
    raw = p.mean()
    assert raw > 0.62
    fit = length_controlled_win_rate(p, pol, base, prior_scale=math.inf)
    X = np.stack([np.ones_like(t), t], axis=1)
    bound = math.sqrt(2) * 1e-10 / np.linalg.eigvalsh(_hessian(X, np.array([0.0, 2.0]), np.zeros(2)))[0]
    assert abs(fit.theta_model) <= bound
    assert abs(fit.theta_length - 2.0) <= bound
    assert abs(fit.lc_win_rate - 0.5) <= bound / 4
    assert fit.length_scale == pytest.approx(d.std(ddof=1), rel=EXACT)


def test_default_prior_moves_the_fit_by_its_first_order_bias_only():
    # With the N(0, 5²) prior on θ_len the MAP is θ* + δ + r with δ = −(H + P)⁻¹·P·θ* (first
    # order) and a remainder bounded by the softplus third derivative (|σ''| ≤ 1/(6√3)):
    # ‖r‖ ≤ ½·√d·(n/(6√3))·‖δ‖₁² / λ_min(H + P), inputs |x| ≤ 1. LC stays within 0.001 of ½.
    pol, base = _lengths()
    d = pol - base
    t = np.tanh(d / d.std(ddof=1))
    p = _sigmoid(2.0 * t)
    X = np.stack([np.ones_like(t), t], axis=1)
    theta = np.array([0.0, 2.0])
    P = np.diag([0.0, 1 / 25])
    Hp = _hessian(X, theta, np.diag(P))
    delta = -np.linalg.solve(Hp, P @ theta)
    remainder = 0.5 * math.sqrt(2) * (len(p) / (6 * math.sqrt(3))) * np.abs(delta).sum() ** 2 / np.linalg.eigvalsh(Hp)[0]
    fit = length_controlled_win_rate(p, pol, base)  # default prior_scale = 5
    assert abs(fit.theta_model - delta[0]) <= remainder
    assert abs(fit.theta_length - (2.0 + delta[1])) <= remainder
    assert abs(fit.lc_win_rate - 0.5) < 1e-3


def test_judge_that_always_picks_the_longer_response():
    # Hard verdicts, longer wins: the policy is longer on 75 of 100 prompts (Δ = 10..750 chars),
    # shorter on 25 (Δ = −10..−250). Raw win rate 0.75. The data are separable, so only the
    # prior keeps θ_len finite, and the fitted boundary θ_m + θ_len·tanh(Δ/s) = 0 must fall in
    # the gap between the two classes, |Δ| < 10 chars: |θ_m| ≤ θ_len·tanh(10/s), hence
    # |LC − ½| ≤ θ_len·tanh(10/s)/4 (σ' ≤ ¼) — about 0.09 here against the raw 0.25.
    d = np.concatenate([np.arange(10, 760, 10), -np.arange(10, 260, 10)]).astype(float)
    base = np.full(d.size, 500.0)
    p = (d > 0).astype(float)
    fit = length_controlled_win_rate(p, base + d, base)
    gap = math.tanh(10 / fit.length_scale)
    assert p.mean() == 0.75
    assert fit.theta_length > 0
    assert abs(fit.theta_model) <= fit.theta_length * gap
    assert abs(fit.lc_win_rate - 0.5) <= fit.theta_length * gap / 4 < 0.1
    with pytest.raises(ValueError, match="separated perfectly"):
        length_controlled_win_rate(p, base + d, base, prior_scale=math.inf)


def test_no_length_effect_gives_lc_equal_to_raw():
    # Every Δ appears twice, +Δ and −Δ, with the same preference: Σ(σ(θ_m) − p)·tanh(Δ/s) = 0
    # at θ_len = 0 for any θ_m, and the intercept's condition gives σ(θ_m) = mean p. So θ_len = 0
    # and LC = raw exactly, with or without the prior (its gradient vanishes at θ_len = 0).
    rng = np.random.default_rng(5)
    half = rng.integers(0, 400, 60).astype(float)
    d = np.concatenate([half, -half])
    p = np.tile(rng.uniform(0.1, 0.95, 60), 2)
    base = np.full(d.size, 600.0)
    for prior in (5.0, math.inf):
        fit = length_controlled_win_rate(p, base + d, base, prior_scale=prior)
        assert abs(fit.theta_length) < 1e-9  # ≤ gtol / λ_min, λ_min ≥ 1 here
        assert fit.lc_win_rate == pytest.approx(p.mean(), abs=1e-9)


def test_difficulty_term_is_recovered_and_kept_in_lc():
    # Preferences generated by the model itself with θ = (0.3, 1.5, −0.8): the unpenalized fit
    # recovers θ (to gtol/λ_min), and LC = mean σ(0.3 − 0.8·γ) — the length term alone removed.
    pol, base = _lengths(seed=2)
    d = pol - base
    t = np.tanh(d / d.std(ddof=1))
    gamma = np.random.default_rng(3).normal(size=d.size)
    p = _sigmoid(0.3 + 1.5 * t - 0.8 * gamma)
    fit = length_controlled_win_rate(p, pol, base, gamma, prior_scale=math.inf)
    assert (fit.theta_model, fit.theta_length, fit.theta_difficulty) == pytest.approx((0.3, 1.5, -0.8), abs=1e-9)
    assert fit.lc_win_rate == pytest.approx(_sigmoid(0.3 - 0.8 * gamma).mean(), abs=1e-9)


def test_degenerate_length_control_inputs():
    # all wins: θ_m = +∞ and LC = 1, the raw win rate
    fit = length_controlled_win_rate([1.0, 1.0, 1.0], [5, 9, 2], [3, 3, 3])
    assert fit.lc_win_rate == 1.0 and fit.theta_model == math.inf
    # Δlen constant: the length term is the intercept again and is dropped; σ(θ_m) = mean p
    fit = length_controlled_win_rate([0.2, 0.9, 0.6, 1.0], [10] * 4, [4] * 4)
    assert fit.length_scale is None and fit.theta_length == 0.0
    assert fit.lc_win_rate == pytest.approx(0.675, abs=1e-10)
    with pytest.raises(ValueError, match="2 preferences but 3 policy"):
        length_controlled_win_rate([0.5, 0.5], [1, 2, 3], [1, 2])


# --------------------------------------------------------------------------- generation statistics


def test_ngram_repetition_by_hand():
    toks = ["a", "b", "a", "b", "a", "b"]
    assert ngram_repetition(toks, 3) == 0.5  # aba bab aba bab: 2 distinct of 4
    assert ngram_repetition(toks, 2) == pytest.approx(0.6, abs=EXACT)  # ab ba ab ba ab: 2 of 5
    assert ngram_repetition(toks, 1) == pytest.approx(2 / 3, abs=EXACT)  # a b a b a b: 2 of 6
    assert ngram_repetition(["a", "b", "c", "d"], 3) == 0.0
    assert ngram_repetition(["x", "y"], 3) is None
    with pytest.raises(ValueError):
        ngram_repetition(toks, 0)


class _CharTokenizer:
    """Every character a token (a model that writes without spaces still loops in tokens)."""

    def encode(self, text, add_special_tokens=False):
        return list(text)


def test_repetition_measures_by_hand():
    assert response_words("Tide tide, TIDE. !!! (sea)") == ["tide", "tide", "tide", "!!!", "sea"]
    assert repeats_a_word(response_words(" tide tide tide tide.")) and not repeats_a_word(["wave", "salt"])
    abab = ["a", "b", "a", "b", "a", "b"]
    assert distinct_ratio(abab, 1) == 2 / 6 and distinct_ratio(abab, 2) == 2 / 5 and distinct_ratio(abab, 3) == 2 / 4
    assert distinct_ratio(["x", "y"], 3) is None and distinct_ratio(["a", "b", "c"], 1) == 1.0
    with pytest.raises(ValueError, match="n must be >= 1"):
        distinct_ratio(abab, 0)
    # loops: a unit of 1-4 items at least 3 times back to back, over at least half the items
    assert loops(["tide"] * 4) and loops(abab + ["c"])  # one word x4; "a b" x3 over 6 of 7
    assert not loops(["tide"] * 2)  # two copies are not a loop
    assert not loops(["a", "b", "c", "a", "b", "c"])  # "a b c" twice
    assert not loops(["x", "y", "z", "w", "v", "a", "a", "a"])  # 3 copies, but 3 of 8 items
    assert loops(["x", "y", "z", "w", "a", "a", "a", "a"])  # 4 of 8: half
    assert loops(list("uvwxuvwxuvwx")) and not loops(list("uvwxyuvwxyuvwxy"))  # 4-item unit; 5 is too long

    answers = [" tide tide tide tide.", " wave salt wave shell.", " wave salt shell tide.", "", "abababab"]
    r = repetition_stats(answers, ngram=2)
    assert r.repetition_rate == 2 / 5  # the blank one repeats nothing; "abababab" is one word
    # distinct-1 per answer with words: 1/4, 3/4, 1, 1 (the blank one has none)
    assert r.distinct_1 == pytest.approx((1 / 4 + 3 / 4 + 1 + 1) / 4, abs=EXACT)
    # distinct-2: tide-tide x3 → 1/3; wave-salt salt-wave wave-shell → 1; 1; "abababab" is too short
    assert r.distinct_n == pytest.approx((1 / 3 + 1 + 1) / 3, abs=EXACT) and r.too_short == 2
    assert r.degenerate == 1 / 5  # only the first, by its words
    assert repetition_stats(answers, ngram=2, tokenizer=_CharTokenizer()).degenerate == 2 / 5  # "ab" x4 in tokens
    with pytest.raises(ValueError, match="zero responses"):
        repetition_stats([])


def test_generation_stats_counts_what_it_leaves_out(tiny_tokenizer):
    texts = ["a b a b a b", "hi there", "  "]
    s = generation_stats(texts)
    assert s.mean_chars == pytest.approx((11 + 8 + 2) / 3, abs=EXACT)
    assert s.repetition_rate == 1 / 3  # only the first repeats a word; the blank one counts as not
    assert s.distinct_1 == pytest.approx((2 / 6 + 1) / 2, abs=EXACT)  # the blank one has no words
    assert s.distinct_n == 0.5  # only the first has a 3-gram: aba bab aba bab, 2 distinct of 4
    assert s.degenerate == 1 / 3  # "a b" three times over all of it
    assert (s.too_short, s.empty, s.n, s.mean_tokens) == (2, 1, 3, None)
    # tokens exclude special tokens: the tiny tokenizer prepends BOS by default
    t = generation_stats(["hello world", ""], tokenizer=tiny_tokenizer)
    assert t.mean_tokens == (len(tiny_tokenizer.encode("hello world")) - 1 + 0) / 2


# --------------------------------------------------------------------------- pair metrics


def test_pair_metrics_by_hand():
    # A_w = [-10/5, -20/10, -30/10] = [-2, -2, -3]; A_l = [-12/4, -15/5, -30/15] = [-3, -3, -2]
    m = pair_metrics([-10, -20, -30], [-12, -15, -30], [5, 10, 10], [4, 5, 15],
                     chosen_rewards=[1.0, 2.0, 0.5], rejected_rewards=[0.0, 2.0, 1.0])
    assert m.n_pairs == 3
    assert m.likelihood_ranking_accuracy == pytest.approx(2 / 3, abs=EXACT)
    assert m.reward_accuracy == pytest.approx(1 / 3, abs=EXACT)  # the tie (2.0, 2.0) is not a win
    assert m.reward_margin == pytest.approx((1 + 0 - 0.5) / 3, abs=EXACT)
    # Spearman over the 6 sequences, average ranks for ties:
    #   A = [-2,-2,-3,-3,-3,-2] → ranks [5,5,2,2,2,5];  |y| = [5,10,10,4,5,15] → [2.5,4.5,4.5,1,2.5,6]
    #   centred (mean 3.5): Σ dA·dL = 7.5, Σ dA² = 13.5, Σ dL² = 16.5
    assert m.spearman_avg_logp_length == pytest.approx(7.5 / math.sqrt(13.5 * 16.5), abs=EXACT)


def test_pair_metrics_edge_cases():
    m = pair_metrics([-4, -8], [-4, -8], [2, 2], [2, 2])  # constant length: ρ is 0/0
    assert m.spearman_avg_logp_length is None and m.reward_accuracy is None
    assert m.likelihood_ranking_accuracy == 0.0  # equal A is not a correct ranking
    with pytest.raises(ValueError, match="rejected_lengths has 1 entries for 2 pairs"):
        pair_metrics([-1, -2], [-1, -2], [1, 1], [1])
    with pytest.raises(ValueError, match=r"chosen_logps\[1\] is not finite"):
        pair_metrics([-1, float("nan")], [-1, -2], [1, 1], [1, 1])
    with pytest.raises(ValueError, match=">= 1 token"):
        pair_metrics([-1], [-1], [0], [1])
    with pytest.raises(ValueError, match="both chosen_rewards and rejected_rewards"):
        pair_metrics([-1], [-1], [1], [1], chosen_rewards=[1.0])


# --------------------------------------------------------------------------- report


def _result(**kw):
    prompts = ["What is 2+2?", [{"role": "user", "content": "Say hi"}], "Name a color", "Count to 3"]
    policy = ["4", "Hi! Hi! Hi! Hi!", "Blue is a color that ```looks``` calm", "1 2 3"]
    baseline = ["It is 4.", "Hello", "red", "one two three"]
    return compare(prompts, policy, baseline, [1.0, "loss", 0.9, 0.5], ["tie", 0.2, 0.7, 0.5], **kw)


def test_compare_and_report_json(tmp_path):
    r = _result()
    written = write_report(tmp_path, r, meta={"policy": "runs/dpo", "judge": "llm"})
    report = json.loads((tmp_path / "report.json").read_text())
    # preferences: (1+½)/2, (0+0.2)/2, (0.9+0.7)/2, ½ → [0.75, 0.1, 0.8, 0.5]
    assert report["win_rate"] == pytest.approx((0.75 + 0.1 + 0.8 + 0.5) / 4, abs=EXACT)
    assert report["win_rate_ci"] == list(r.win.ci)
    assert report["lc_win_rate"] == r.lc.lc_win_rate
    assert report["mean_length"] == pytest.approx((1 + 15 + 37 + 5) / 4, abs=EXACT)
    assert report["baseline_mean_length"] == pytest.approx((8 + 5 + 3 + 13) / 4, abs=EXACT)
    # repetition: only "Hi! Hi! Hi! Hi!" repeats a word (hi, 4 times), and it loops: 1 of 4 each;
    # distinct 3-grams: "4" has none (left out), "Hi! ..." 1 of 2, the color sentence (7 words) 5 of 5,
    # "1 2 3" 1 of 1
    assert (report["repetition_rate"], report["degenerate"]) == (1 / 4, 1 / 4)
    assert report["distinct_n"] == pytest.approx((0.5 + 1 + 1) / 3, abs=EXACT)
    assert report["generation"]["policy"]["too_short"] == 1
    assert report["generation"]["policy"]["distinct_1"] == pytest.approx((1 + 1 / 4 + 1 + 1) / 4, abs=EXACT)
    assert (report["baseline_repetition_rate"], report["baseline_degenerate"], report["baseline_distinct_n"]) == \
        (0.0, 0.0, 1.0)
    assert report["generation"]["baseline"]["too_short"] == 2  # "Hello", "red"
    assert report["judgments"] == {"wins": 2, "ties": 1, "losses": 1,
                                   "position_bias": pytest.approx((0.5 - 0.2 + 0.2 + 0) / 4, abs=EXACT)}
    assert report["meta"] == {"policy": "runs/dpo", "judge": "llm"}
    assert "reward_accuracy" not in report
    rows = [json.loads(line) for line in (tmp_path / "comparisons.jsonl").read_text().splitlines()]
    assert [row["preference"] for row in rows] == pytest.approx([0.75, 0.1, 0.8, 0.5], abs=EXACT)
    assert rows[1]["prompt"] == [{"role": "user", "content": "Say hi"}] and rows[0]["p_rev"] == "tie"
    assert {p.name for p in written.values()} == {"report.json", "report.md", "comparisons.jsonl",
                                                   "lengths.png", "repetition.png", "win_rates.png"}
    assert not [p for p in tmp_path.rglob(".*.tmp")]  # no temporary file left behind


def test_report_markdown_table_and_examples(tmp_path):
    write_report(tmp_path, _result(), n_examples=2, plots=False)
    md = (tmp_path / "report.md").read_text()
    assert "| win rate | 53.8% [" in md  # (0.75 + 0.1 + 0.8 + 0.5) / 4 = 0.5375
    assert "| wins / ties / losses | 2 / 1 / 1 of 4 prompts |" in md
    assert "| judge position bias | +12.5 points for the response shown first |" in md
    assert "| repetition rate (responses that repeat a word) | 25.0% | 0.0% |" in md
    assert "| degenerate (one word, token or n-gram looped) | 25.0% | 0.0% |" in md
    assert "| distinct-3 (distinct 3-grams / 3-grams) | 0.833 | 1.000 |" in md
    # examples: the clearest loss (prompt 1, 0.1), then the clearest win (prompt 2, 0.8)
    assert "### 1. Prompt 1 — policy lost (P(policy ≻ baseline) = 0.10; policy shown first: loss, " \
           "baseline shown first: 0.20)" in md
    assert "### 2. Prompt 2 — policy won" in md and "### 3." not in md
    assert "[user] Say hi" in md
    # a response containing ``` is fenced with four backticks so it cannot close the block
    assert "````\nBlue is a color that ```looks``` calm\n````" in md
    assert "## Plots" not in md


def test_pick_examples_alternates_losses_and_wins():
    assert pick_examples([0.5, 0.1, 0.9, 0.1, 1.0], 4) == [1, 4, 3, 2]
    assert pick_examples([0.3, 0.7], 5) == [0, 1]


def test_pairs_only_report_and_nan_free_json(tmp_path):
    pm = pair_metrics([-4, -8], [-5, -8], [2, 2], [2, 2], [1.0, 0.0], [0.0, 0.0])
    write_report(tmp_path, pairs=pm)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["reward_accuracy"] == 0.5 and report["likelihood_ranking_accuracy"] == 0.5
    assert report["spearman_avg_logp_length"] is None  # constant lengths
    assert "win_rate" not in report and not (tmp_path / "comparisons.jsonl").exists()
    assert "| Spearman ρ(A(y), \\|y\\|) | n/a |" in (tmp_path / "report.md").read_text()
    with pytest.raises(ValueError, match="nothing to report"):
        report_dict()
    assert report_dict(pairs=pm, meta={"x": float("nan")})["meta"] == {"x": None}


def test_report_is_not_overwritten_without_asking(tmp_path):
    write_report(tmp_path, _result(), plots=False)
    before = (tmp_path / "report.json").read_text()
    with pytest.raises(ConfigError, match="report.json exists; pass overwrite=true"):
        write_report(tmp_path, _result(seed=1), plots=False)
    assert (tmp_path / "report.json").read_text() == before
    write_report(tmp_path, _result(seed=1), plots=False, overwrite=True)
    assert (tmp_path / "report.json").read_text() != before  # another seed, another interval


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path):
    target = tmp_path / "report.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_compare_rejects_mismatched_inputs():
    with pytest.raises(DataError, match="judged.jsonl: 1 baseline responses for 2 prompts"):
        compare(["a", "b"], ["x", "y"], ["z"], [0.5, 0.5], source="judged.jsonl")


def test_lc_bootstrap_interval_is_optional():
    pol, base = _lengths(n=60)
    p = _sigmoid(np.tanh((pol - base) / 200) + np.random.default_rng(0).normal(0, 1, 60))
    prompts = [str(i) for i in range(60)]
    r = compare(prompts, ["x" * int(n) for n in pol], ["y" * int(n) for n in base], list(p), lc_resamples=50)
    assert r.lc_ci[0] <= r.lc.lc_win_rate <= r.lc_ci[1]
    assert compare(prompts[:2], ["a", "bb"], ["c", "d"], [0.4, 0.6]).lc_ci is None


# --------------------------------------------------------------------------- plots


def _metrics_rows():
    def ev(step):
        return {"step": step, "split": "eval", "loss": 0.7 - 0.01 * step, "rewards/margins": 0.02 * step,
                "rewards/accuracies": 0.5 + 0.01 * step, "logps/chosen": -50.0 + step, "logps/rejected": -50.0 - step}

    rows = [ev(0)]
    for s in range(1, 11):
        rows.append({"step": s, "loss": 0.7 * 0.9**s, "rewards/margins": 0.1 * s, "rewards/accuracies": 0.05 * s,
                     "logps/chosen": -50.0 + 0.5 * s, "logps/rejected": -50.0 - 2 * s, "grad_norm": 1.0})
        if s % 5 == 0:
            rows.append(ev(s))
    return rows


def _write_jsonl(path, rows, tail=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def test_metrics_curves_are_the_rows(tmp_path):
    rows = _metrics_rows()
    _write_jsonl(tmp_path / "metrics.jsonl", rows, tail='{"step": 11, "lo')  # a write cut off by a kill
    back = read_metrics(tmp_path / "metrics.jsonl")
    assert back == rows
    assert splits(back) == ["train", "eval"]
    steps, values = curve(back, "loss")
    assert steps == list(range(1, 11)) and values == [0.7 * 0.9**s for s in range(1, 11)]
    assert curve(back, "rewards/margins", "eval") == ([0, 5, 10], [0.0, 0.1, 0.2])
    assert curve(back, "kl") == ([], [])


def test_bad_metrics_line_names_the_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1}\nnot json\n{"step": 2, "loss": 1}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl: row 2: not a JSON object"):
        read_metrics(tmp_path / "metrics.jsonl")
    (tmp_path / "metrics.jsonl").write_text('{"loss": 1}\n')
    with pytest.raises(DataError, match=r"row 1, field 'step'"):
        read_metrics(tmp_path / "metrics.jsonl")


def _is_png(path, min_bytes=5000):
    data = path.read_bytes()
    return data[:8] == PNG and len(data) > min_bytes


def test_figures_are_written(tmp_path):
    assert _is_png(plot_training_curves(_metrics_rows(), tmp_path / "curves.png"))
    assert plot_training_curves([{"step": 1, "grad_norm": 1.0}], tmp_path / "none.png") is None
    assert _is_png(plot_lengths([10, 20, 30, 25], [5, 8, 12, 9], tmp_path / "len.png"))
    assert _is_png(plot_win_rates([{"label": "dpo", "win_rate": 0.6, "ci": [0.5, 0.7], "lc_win_rate": 0.55},
                                   {"label": "simpo", "win_rate": 0.4, "ci": [0.3, 0.5], "degenerate": 0.3}],
                                  tmp_path / "wr.png"))
    sides = {"policy": {"repetition_rate": 0.7, "degenerate": 0.2, "distinct_1": 0.8},
             "baseline": {"repetition_rate": 0.1, "degenerate": 0.0, "distinct_1": None}}
    assert _is_png(plot_repetition(sides, tmp_path / "rep.png"))
    with pytest.raises(ValueError, match="no repetition statistics"):
        plot_repetition({}, tmp_path / "none.png")


def test_plot_run_finds_training_curves_and_iterations(tmp_path):
    _write_jsonl(tmp_path / "metrics.jsonl", _metrics_rows())
    _write_jsonl(tmp_path / "iter_2" / "metrics.jsonl", _metrics_rows())
    for i, wr in [(10, 0.7), (2, 0.55), (1, 0.5)]:
        d = tmp_path / f"iter_{i}"
        d.mkdir(exist_ok=True)
        (d / "report.json").write_text(json.dumps({"win_rate": wr, "win_rate_ci": [wr - 0.05, wr + 0.05]}))
    (tmp_path / "checkpoints" / "step-5").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-5" / "metrics.jsonl").write_text("ignored\n")
    entries = collect_win_rates(tmp_path)
    assert [e["label"] for e in entries] == ["iter_1", "iter_2", "iter_10"]  # natural order
    assert [e["win_rate"] for e in entries] == [0.5, 0.55, 0.7] and entries[0]["lc_win_rate"] is None
    written = plot_run(tmp_path)
    assert [p.name for p in written] == ["training_curves.png", "training_curves_iter_2.png", "win_rates.png"]
    assert all(_is_png(p) for p in written)


def test_plot_run_on_an_eval_directory(tmp_path):
    write_report(tmp_path, _result(), plots=False)
    written = plot_run(tmp_path)
    assert [p.name for p in written] == ["lengths.png", "repetition.png", "win_rates.png"]
    md = render_markdown(json.loads((tmp_path / "report.json").read_text()), plots=written, root=tmp_path)
    assert "![lengths](plots/lengths.png)" in md


def test_plot_run_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        plot_run(tmp_path / "missing")
    with pytest.raises(ConfigError, match="nothing to plot"):
        plot_run(tmp_path)


# --------------------------------------------------------------------------- config


def test_eval_config_loads_and_validates(tmp_path):
    path = tmp_path / "eval.yaml"
    path.write_text("model: runs/dpo\nbaseline_outputs: base.jsonl\nprompts: prompts.jsonl\n"
                    "judge: {type: callable, function: 'verifiers:exact'}\n")
    cfg = load_config(path, ["bootstrap_resamples=500", "ngram=4"], cls=EvalConfig)
    assert (cfg.model, cfg.bootstrap_resamples, cfg.ngram, cfg.confidence) == ("runs/dpo", 500, 4, 0.95)
    with pytest.raises(ConfigError, match="confidence must be in"):
        load_config(path, ["confidence=1.5"], cls=EvalConfig)
    with pytest.raises(ConfigError, match="set either model or outputs"):
        load_config(path, ["outputs=x.jsonl"], cls=EvalConfig)
    with pytest.raises(ConfigError, match="`prompts` is required"):
        load_config(None, ["model=m", "baseline_model=b"], cls=EvalConfig)
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        load_config(None, [], cls=EvalConfig)
    with pytest.raises(ConfigError, match="`pairs` needs `model`"):
        load_config(None, ["outputs=a.jsonl", "baseline_outputs=b.jsonl", "pairs=p.jsonl"], cls=EvalConfig)


def test_example_eval_yaml_keys_are_config_keys():
    import dataclasses
    from pathlib import Path

    import yaml

    example = yaml.safe_load((Path(__file__).parent.parent / "examples" / "eval.yaml").read_text())
    known = {f.name for f in dataclasses.fields(EvalConfig)}
    assert set(example) <= known
    cfg = load_config(Path(__file__).parent.parent / "examples" / "eval.yaml", cls=EvalConfig)
    assert cfg.output_dir == example["output_dir"]
    assert (cfg.judge.type, cfg.judge.model) == (example["judge"]["type"], example["judge"]["model"])
