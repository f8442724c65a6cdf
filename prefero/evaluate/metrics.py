"""Win rate against a baseline, its bootstrap interval, and the length-controlled win rate.

Everything here is a function of plain numbers: one preference per prompt,
P(policy ≻ baseline) ∈ [0, 1], and (for length control) the two responses' lengths. The
judges produce the preferences; nothing here knows which judge or model made them.

Both orders. An LLM judge prefers whichever response it is shown first (or second) more
often than their content warrants, so each prompt is judged twice: once with the policy's
response first (`p_fwd`) and once with the baseline's first (`p_rev`). Both numbers are the
probability that the *policy* wins — a caller whose judge answers "P(first ≻ second)"
passes `1 − answer` for the reversed order. The prompt's preference is their mean, which
cancels a constant position bias exactly: if the judge adds b to whichever side is first,
p_fwd = p + b and p_rev = p − b.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from prefero.data.errors import DataError

#: Hard verdicts a judge may give instead of a probability, from the policy's side.
VERDICTS = {"win": 1.0, "tie": 0.5, "loss": 0.0}


# --------------------------------------------------------------------------- preferences


def policy_preferences(p_fwd: Sequence, p_rev: Sequence | None = None, *, source: str | None = None) -> np.ndarray:
    """Per-prompt P(policy ≻ baseline): the mean of the two orders (or `p_fwd` alone).

    Each entry is a probability in [0, 1] or a hard verdict "win" / "tie" / "loss" (1, ½, 0),
    always from the policy's side (see the module docstring for the reversed order).
    `p_rev=None` is for judges that see no order (a reward model scoring each response
    alone). A bad entry raises `DataError(source, row, "p_fwd" | "p_rev", ...)`, row being
    the 1-based prompt position.
    """
    fwd = _as_preferences(p_fwd, "p_fwd", source)
    if p_rev is None:
        return fwd
    rev = _as_preferences(p_rev, "p_rev", source)
    if len(rev) != len(fwd):
        raise DataError(source, None, "p_rev", f"{len(rev)} reversed-order judgments for {len(fwd)} prompts")
    return (fwd + rev) / 2


def _as_preferences(values: Sequence, field: str, source: str | None) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        if isinstance(v, str):
            if v.strip().lower() not in VERDICTS:
                raise DataError(source, i + 1, field, f"verdict {v!r} is not one of win, tie, loss")
            out[i] = VERDICTS[v.strip().lower()]
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise DataError(source, i + 1, field, f"expected a probability in [0, 1] or win/tie/loss, got {v!r}")
        if not 0.0 <= float(v) <= 1.0:  # also rejects NaN
            raise DataError(source, i + 1, field, f"expected a probability in [0, 1], got {v!r}")
        out[i] = float(v)
    return out


# --------------------------------------------------------------------------- win rate


@dataclass(frozen=True)
class WinRate:
    """Mean preference over prompts with its bootstrap interval.

    `wins` / `ties` / `losses` count prompts whose preference is above, at or below ½
    (so a prompt won in one order and lost in the other is a tie). `position_bias` is
    mean(p_fwd − p_rev): how much more often the policy wins when shown first; None
    when only one order was judged.
    """

    win_rate: float
    ci: tuple[float, float]
    n: int
    wins: int
    ties: int
    losses: int
    position_bias: float | None = None


def win_rate(preferences: Sequence[float], *, p_fwd: Sequence | None = None, p_rev: Sequence | None = None,
             n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> WinRate:
    """Win rate = mean over prompts of P(policy ≻ baseline); ties count ½ (they are ½).

    The interval is the percentile bootstrap over prompts (`bootstrap_ci`). Pass the
    raw `p_fwd` / `p_rev` too to get the judge's position bias in the result.
    """
    p = np.asarray(preferences, dtype=np.float64)
    if p.size == 0:
        raise ValueError("win rate of zero prompts")
    bias = None
    if p_fwd is not None and p_rev is not None:
        bias = float(np.mean(_as_preferences(p_fwd, "p_fwd", None) - _as_preferences(p_rev, "p_rev", None)))
    lo, hi = bootstrap_ci(p, np.mean, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return WinRate(
        win_rate=float(p.mean()), ci=(lo, hi), n=int(p.size),
        wins=int(np.sum(p > 0.5)), ties=int(np.sum(p == 0.5)), losses=int(np.sum(p < 0.5)),
        position_bias=bias,
    )


def bootstrap_ci(values, statistic: Callable = np.mean, *, n_resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0, chunk: int = 256) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over the rows of `values`.

    Each resample draws len(values) rows with replacement (prompts are the unit: the
    judge's noise and the prompt set's sampling are what the interval is about); the
    interval is the (1−c)/2 and (1+c)/2 quantiles of the resampled statistic (Efron &
    Tibshirani 1993, ch. 13). `values` may be a 1-D array or an [n, k] array whose
    rows are prompts, with `statistic` taking such an array (as `length_controlled_win_rate`
    needs); for a 1-D `values` and the mean, `chunk` resamples at a time are one indexed
    array and one vectorized mean. Seeded: the same inputs give the same interval, for
    any `chunk` (the index draws are one stream).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(size, n))
        if statistic is np.mean and values.ndim == 1:
            stats[start:start + size] = values[idx].mean(axis=1)
        else:
            stats[start:start + size] = [statistic(values[i]) for i in idx]
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- length control


@dataclass(frozen=True)
class LengthControlled:
    """The fitted length-control model and the win rate it predicts at equal lengths.

    P(policy ≻ baseline | x) = σ(theta_model + theta_length·tanh(Δlen/length_scale)
    + theta_difficulty·γ_x); `lc_win_rate` = mean over prompts of σ(theta_model +
    theta_difficulty·γ_x). `length_scale` is std(Δlen) (None when Δlen is constant, in
    which case the length term is dropped: it cannot be told apart from theta_model).
    """

    lc_win_rate: float
    theta_model: float
    theta_length: float
    theta_difficulty: float | None
    length_scale: float | None
    prior_scale: float


def length_controlled_win_rate(preferences: Sequence[float], policy_lengths: Sequence[float],
                               baseline_lengths: Sequence[float], difficulty: Sequence[float] | None = None,
                               *, prior_scale: float = 5.0) -> LengthControlled:
    """Length-controlled win rate (Dubois et al. 2024, "Length-Controlled AlpacaEval", eq. 2–3).

    Model: P(policy ≻ baseline | x) = σ(θ_m + θ_len·tanh(Δ_x / s) + θ_γ·γ_x), with
    Δ_x = len(policy response) − len(baseline response) in characters, s = std(Δ)
    (sample std, ddof=1) and γ_x an optional per-prompt difficulty. The tanh bounds how
    much length alone can buy. A soft preference p is two rows — label 1 with weight p,
    label 0 with weight 1 − p — so a tie is two ½-weighted rows and the fit is exact for
    preferences a judge reports as probabilities.

    The answer is the counterfactual "what if both responses had the same length":
    LC = mean_x σ(θ_m + θ_γ·γ_x), the length term set to 0.

    Regularization: θ_m is not penalized — a penalty on it would pull LC toward ½ for a
    reason that has nothing to do with length. θ_len and θ_γ get a Gaussian prior
    N(0, prior_scale²) on the *summed* log-likelihood, i.e. the MAP of
        Σ_x [softplus(z_x) − p_x·z_x] + (θ_len² + θ_γ²) / (2·prior_scale²).
    With n prompts the likelihood's curvature grows like n while the prior's stays
    1/prior_scale², so for a few hundred prompts the prior moves the estimate by well
    under 1%; its job is the separable case (a judge that always picks the longer
    response), where the unpenalized θ_len is infinite. prior_scale=5 means length alone
    may move the odds by up to e^5 ≈ 150×, the weakly-informative scale for a bounded
    input (Gelman et al. 2008 recommend 2.5 for standardized inputs). `prior_scale=inf`
    fits without any penalty.

    If every preference is 1 (or every one is 0) θ_m is ±∞; LC is then 1 (or 0), the
    raw win rate, and the length term is reported as 0.
    """
    p = np.asarray(preferences, dtype=np.float64)
    n = p.size
    if n == 0:
        raise ValueError("length-controlled win rate of zero prompts")
    if not len(policy_lengths) == len(baseline_lengths) == n:
        raise ValueError(f"{n} preferences but {len(policy_lengths)} policy and {len(baseline_lengths)} baseline lengths")
    delta = np.asarray(policy_lengths, dtype=np.float64) - np.asarray(baseline_lengths, dtype=np.float64)
    gamma = None if difficulty is None else np.asarray(difficulty, dtype=np.float64)
    if gamma is not None and gamma.shape != p.shape:
        raise ValueError(f"{n} preferences but {len(gamma)} difficulty values")
    if not prior_scale > 0:
        raise ValueError(f"prior_scale must be > 0, got {prior_scale}")

    scale = float(np.std(delta, ddof=1)) if n > 1 else 0.0
    columns = [np.ones(n)]
    if scale > 0:
        columns.append(np.tanh(delta / scale))
    if gamma is not None:
        columns.append(gamma)
    X = np.stack(columns, axis=1)
    penalty = np.full(X.shape[1], 0.0 if math.isinf(prior_scale) else 1.0 / prior_scale**2)
    penalty[0] = 0.0  # θ_m is free: see the docstring

    if np.all(p == 1.0) or np.all(p == 0.0):
        theta = np.zeros(X.shape[1])
        theta[0] = math.inf if p[0] == 1.0 else -math.inf
        lc = float(p[0])
    else:
        theta = fit_soft_logistic(X, p, penalty)
        lc = float(np.mean(_sigmoid(X[:, 0] * theta[0] + (gamma * theta[-1] if gamma is not None else 0.0))))
    return LengthControlled(
        lc_win_rate=lc,
        theta_model=float(theta[0]),
        theta_length=float(theta[1]) if scale > 0 else 0.0,
        theta_difficulty=float(theta[-1]) if gamma is not None else None,
        length_scale=scale if scale > 0 else None,
        prior_scale=float(prior_scale),
    )


def fit_soft_logistic(X: np.ndarray, p: np.ndarray, penalty: np.ndarray, *, gtol: float = 1e-10) -> np.ndarray:
    """θ minimizing Σ_i [softplus(x_i·θ) − p_i·x_i·θ] + ½·Σ_j penalty_j·θ_j².

    That sum is the negative log-likelihood of the two weighted rows per prompt (label 1
    weight p_i, label 0 weight 1 − p_i). It is convex; gradient Σ (σ(z) − p)·x + penalty·θ,
    Hessian Xᵀ diag(σ(1−σ)) X + diag(penalty); a trust-region Newton method with both
    converges to `gtol` in the gradient's max-norm in a handful of steps for the 2–3
    parameters here.
    """
    from scipy.optimize import minimize

    def objective(theta):
        z = X @ theta
        return float(np.sum(np.logaddexp(0.0, z) - p * z) + 0.5 * np.sum(penalty * theta**2))

    def gradient(theta):
        return X.T @ (_sigmoid(X @ theta) - p) + penalty * theta

    def hessian(theta):
        s = _sigmoid(X @ theta)
        return (X * (s * (1 - s))[:, None]).T @ X + np.diag(penalty)

    result = minimize(objective, np.zeros(X.shape[1]), jac=gradient, hess=hessian, method="trust-exact",
                      options={"gtol": gtol, "maxiter": 1000})
    theta = _newton_polish(result.x, gradient, hessian, gtol)
    # Without a penalty, data that one feature separates perfectly has its optimum at
    # infinity; the optimizer stops wherever σ has saturated. Refuse that instead of
    # returning an arbitrary large θ: |x·θ| > 30 means σ within e^-30 of 0 or 1.
    free = penalty == 0
    if not np.all(np.isfinite(theta)) or np.any(np.abs(theta[free]) * np.abs(X[:, free]).max(axis=0) > 30):
        raise ValueError("the preferences are separated perfectly (e.g. the longer response always wins), so "
                         "the unpenalized fit has no finite optimum; use a finite prior_scale")
    return theta


def _newton_polish(theta, gradient, hessian, gtol: float, max_steps: int = 20):
    """Plain Newton steps on the gradient from near the optimum.

    A trust-region method decides each step by the change of the objective, and near the
    optimum that change (‖g‖²/λ) falls below the objective's float64 resolution (n·eps):
    it stops at ‖g‖ ~ 1e-7 with "failure to predict improvement". Newton steps need no
    objective comparison and converge quadratically there; a step is kept while it
    shrinks the gradient.
    """
    g = gradient(theta)
    for _ in range(max_steps):
        if np.max(np.abs(g)) <= gtol:
            break
        try:
            candidate = theta - np.linalg.solve(hessian(theta), g)
        except np.linalg.LinAlgError:
            break
        g_new = gradient(candidate)
        if not np.max(np.abs(g_new)) < np.max(np.abs(g)):
            break
        theta, g = candidate, g_new
    return theta


def _sigmoid(z):
    from scipy.special import expit

    return expit(z)


# --------------------------------------------------------------------------- repetition within a response
#
# A judge that can be gamed by saying the same thing again (a verifier that does not check
# for repeats, a reward model that likes a keyword) is gamed that way first. These numbers
# look at each response alone, so they can sit beside every win rate: a win rate that rose
# while the repetition rate or the degenerate share rose with it is suspect.


def response_words(text: str) -> list[str]:
    """The words of a response as the repetition measures compare them: split on
    whitespace, lowercased, with punctuation stripped from both ends ("Tide." and "tide"
    are one word); a chunk that is only punctuation ("!!!") is kept as it is."""
    words = []
    for chunk in text.split():
        word = chunk.strip(_PUNCTUATION).lower()
        words.append(word or chunk)
    return words


_PUNCTUATION = "\"'.,;:!?()[]{}<>«»“”‘’`*_-–—…"


def repeats_a_word(words: Sequence) -> bool:
    """Whether any word (or token) occurs twice in the sequence."""
    return len(set(words)) < len(words)


def distinct_ratio(words: Sequence, n: int = 1) -> float | None:
    """distinct-n of one response: distinct n-grams / n-gram occurrences (T − n + 1 of
    them with T words). 1 when no n-gram occurs twice; 1/(T − n + 1) for one n-gram
    written over and over. None with fewer than n words (no n-gram at all).

    "a b a b a b": n=1 → 2 distinct of 6 = 1/3; n=2 → ab, ba of 5 = 0.4; n=3 → 2 of 4 = 0.5.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    count = len(words) - n + 1
    if count < 1:
        return None
    return len({tuple(words[i:i + n]) for i in range(count)}) / count


def loops(seq: Sequence, *, max_unit: int = 4, min_copies: int = 3) -> bool:
    """Whether `seq` (words or tokens) is degenerate: some unit of 1 to `max_unit` items
    written at least `min_copies` times back to back, the looping stretch covering at
    least half of `seq`.

    "tide tide tide tide" loops (one word, 4 copies, all of it); "a b a b a b c" loops
    ("a b" 3 times, 6 of 7 items); "a b c a b c" does not (2 copies); "x y z w v a a a"
    does not (3 copies of "a" but 3 of 8 items). A stretch with period u is measured by
    comparing each item with the one u before it: k matches in a row are a stretch of
    k + u items holding (k + u) // u whole copies.
    """
    t = len(seq)
    for u in range(1, max_unit + 1):
        run = 0
        for i in range(u, t):
            run = run + 1 if seq[i] == seq[i - u] else 0
            stretch = run + u
            if run and stretch // u >= min_copies and 2 * stretch >= t:
                return True
    return False


@dataclass(frozen=True)
class RepetitionStats:
    """Repetition within each response, over a set of responses.

    `repetition_rate`: share of responses in which some word occurs twice (blank ones
    count as not repeating); `distinct_1` / `distinct_n`: mean of `distinct_ratio` with
    n = 1 / n = `ngram` over the responses that have at least 1 / `ngram` words
    (`too_short` counts those left out of distinct_n); `degenerate`: share of responses
    whose words — or, given a tokenizer, tokens — `loops` finds looping.
    """

    n: int
    repetition_rate: float
    distinct_1: float | None
    distinct_n: float | None
    ngram: int
    too_short: int
    degenerate: float


def repetition_stats(texts: Sequence[str], *, ngram: int = 3, tokenizer=None) -> RepetitionStats:
    """`RepetitionStats` of `texts` (words: `response_words`; tokens, when `tokenizer`
    — anything with `encode(text, add_special_tokens=False)` — is given, for `degenerate`)."""
    if not texts:
        raise ValueError("repetition statistics of zero responses")
    words = [response_words(t) for t in texts]
    d1 = [r for r in (distinct_ratio(w, 1) for w in words) if r is not None]
    dn = [r for r in (distinct_ratio(w, ngram) for w in words) if r is not None]
    looped = 0
    for text, w in zip(texts, words):
        if loops(w) or (tokenizer is not None and loops(tokenizer.encode(text, add_special_tokens=False))):
            looped += 1
    n = len(texts)
    return RepetitionStats(
        n=n, repetition_rate=sum(repeats_a_word(w) for w in words) / n,
        distinct_1=sum(d1) / len(d1) if d1 else None, distinct_n=sum(dn) / len(dn) if dn else None,
        ngram=ngram, too_short=n - len(dn), degenerate=looped / n)
