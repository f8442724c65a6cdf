"""Judges: AI feedback on sampled completions (docs/pipeline.md).

A judge does two things, each batched over work items:

    judge.score(items)      -> per item, one float per completion (None: no usable answer)
    judge.compare(requests) -> per (item, i, j), P(completion i ≻ completion j)

Five kinds stand behind that interface (`build_judge(cfg)` makes one from a `judge:` block):
- `reward_model`: a sequence classifier's r(x, y) (`prefero/judges/reward_model.py`);
- `pairwise_model`: a `prefero pm` cross-encoder's P(y_i ≻ y_j | x), both orders in one
  antisymmetric logit (`prefero/judges/pairwise_model.py`);
- `llm`: a local causal LM asked to rate 1–10 or to pick A or B, its answer read from the
  next-token probabilities (`prefero/judges/llm.py`);
- `openai`: the same prompts against an OpenAI-compatible server (`prefero/judges/openai.py`);
- `callable`: a Python function, e.g. a verifier (`prefero/judges/callable.py`).

Judges that only score compare by Bradley–Terry, P(i ≻ j) = σ(s_i − s_j); the LLM judges
compare by asking, in both orders. `compare(i, j)` and `compare(j, i)` are exact
complements for every judge (`ordered`), so a pairwise matrix never depends on the order
the completions were listed in.
"""

from __future__ import annotations

from prefero.judges.base import (
    EXIT_JUDGE,
    Item,
    Judge,
    JudgeError,
    Request,
    check_unparseable,
    compare_by_scores,
    ordered,
    pairwise_matrices,
    process_budget,
    sigmoid,
    text_key,
    unorder,
    win_rates,
)

__all__ = ["EXIT_JUDGE", "Item", "Judge", "JudgeError", "Request", "build_judge", "check_unparseable",
           "compare_by_scores", "ordered", "pairwise_matrices", "process_budget", "sigmoid", "text_key", "unorder",
           "win_rates"]


def build_judge(cfg) -> Judge:
    """The judge a `JudgeConfig` describes (models are loaded here)."""
    if cfg.type == "reward_model":
        from prefero.judges.reward_model import RewardModelJudge

        return RewardModelJudge(cfg)
    if cfg.type == "pairwise_model":
        from prefero.judges.pairrm import PairRMJudge, is_pairrm
        from prefero.judges.pairwise_model import PairwiseModelJudge

        return PairRMJudge(cfg) if is_pairrm(cfg.model) else PairwiseModelJudge(cfg)
    if cfg.type == "llm":
        from prefero.judges.llm import LLMJudge

        return LLMJudge(cfg)
    if cfg.type == "openai":
        from prefero.judges.openai import OpenAIJudge

        return OpenAIJudge(cfg)
    if cfg.type == "callable":
        from prefero.judges.callable import CallableJudge

        return CallableJudge(cfg)
    raise ValueError(f"unknown judge type {cfg.type!r}")


__all__ = ["EXIT_JUDGE", "Item", "Judge", "JudgeError", "build_judge", "check_unparseable", "compare_by_scores",
           "ordered", "pairwise_matrices", "sigmoid", "text_key", "unorder", "win_rates"]
