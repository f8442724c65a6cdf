"""`prefero selfplay`: T iterations of generate → judge → label → train (docs/pipeline.md).

    from prefero.options import load_config
    from prefero.selfplay import SelfPlayConfig, run_selfplay

    summary = run_selfplay(load_config("examples/selfplay.yaml", ["iterations=2"], cls=SelfPlayConfig))

`method: sppo` (Wu et al., 2024, "Self-Play Preference Optimization for Language Model
Alignment", Alg. 1): K samples per prompt from π_t, the judge's P(y_i ≻ y_j), P̂(y_i) =
mean_j P(y_i ≻ y_j), chosen = argmax P̂, rejected = argmin P̂, the sppo loss against π_t.
`method: iterative`: any paired loss (dpo, simpo, ipo, ...) on best-vs-worst or
best-vs-random pairs, with π_0 or π_t as the reference (iterative DPO, e.g. Xu et al.,
2023, "Some things are more CRINGE than others"; Yuan et al., 2024, "Self-Rewarding
Language Models"). Each iteration lives in its own directory and resumes after a kill at
its first unfinished stage. After each iteration, the judged win rate of the new policy
against π_0 on held-out prompts goes to `summary.json` and `plots/win_rates.png`.

Modules: `config` (SelfPlayConfig and its blocks), `run` (the order of the stages and the
configs they get), `winrate` (the head-to-head evaluation), `summary` (summary.json,
plots). Importing this package does not import torch.
"""

from prefero.selfplay.config import SelfPlayConfig


def run_selfplay(cfg: SelfPlayConfig) -> dict:
    """See `prefero.selfplay.run.run_selfplay` (imported on use: it loads torch)."""
    from prefero.selfplay.run import run_selfplay as _run

    return _run(cfg)


__all__ = ["SelfPlayConfig", "run_selfplay"]
