"""Metrics on held-out pairs in `prefero eval`, from `model`'s own log-probabilities:
prefero's packed, prefix-shared engine, as in training, the method's implicit reward r(y)
per the loss (β·Δ for the DPO family, β·A for SimPO, ...), then `pair_metrics`.
`pairs_data_report.json` says what the pairs loader kept, truncated and dropped.
"""

from __future__ import annotations

import gc
from pathlib import Path

from prefero.data.errors import DataError
from prefero.evaluate.config import EvalConfig
from prefero.evaluate.pairs import PairMetrics, pair_metrics

PAIRS_DATA_REPORT = "pairs_data_report.json"


def load_eval_pairs(cfg: EvalConfig):
    """The pairs tokenized as training tokenizes them (prompt and completion apart, one EOS,
    the same truncation); what was dropped or truncated goes to pairs_data_report.json."""
    from prefero.data import DataOptions, load_pairs
    from prefero.data.limits import check_run_lengths
    from prefero.model import load_tokenizer

    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    # max_length above the positions of model or ref_model: a config error, as in `train`
    check_run_lengths(cfg, tokenizer, ("model", "ref_model"))
    pairs, report = load_pairs(cfg.pairs, tokenizer, DataOptions(max_length=cfg.max_length,
                                                                 max_prompt_length=cfg.max_prompt_length))
    report.write(Path(cfg.output_dir) / PAIRS_DATA_REPORT)
    if not pairs:
        raise DataError(cfg.pairs, None, None, f"no usable pairs ({report.summary()})", skippable=False)
    return pairs, report


def evaluate_pairs(cfg: EvalConfig, pairs, data_report) -> tuple[PairMetrics, dict]:
    """Summed log-probs of chosen and rejected under `model` (and `ref_model` when the
    loss's implicit reward needs it), the rewards, and `pair_metrics`."""
    from prefero.losses import get_loss

    spec = get_loss(cfg.loss)
    logps = completion_logps(cfg.model, pairs, cfg)
    ref = completion_logps(cfg.ref_model, pairs, cfg) if spec.needs_reference and cfg.ref_model else None
    chosen_len = [len(p.chosen_ids) for p in pairs]
    rejected_len = [len(p.rejected_ids) for p in pairs]
    rewards = implicit_rewards(spec, cfg.beta, logps, chosen_len, rejected_len, ref,
                               [p.p_chosen for p in pairs], [p.p_rejected for p in pairs])
    chosen_r, rejected_r = (rewards[0].tolist(), rewards[1].tolist()) if rewards is not None else (None, None)
    metrics = pair_metrics(logps[:, 0].tolist(), logps[:, 1].tolist(), chosen_len, rejected_len, chosen_r, rejected_r)
    meta = {"pairs": cfg.pairs, "pairs_data": data_report.summary(), "implicit_reward": cfg.loss}
    if rewards is None:
        meta["implicit_reward"] = (f"none: loss {cfg.loss!r} has no implicit reward" if spec.data == "sft" else
                                   f"none: loss {cfg.loss!r} needs ref_model for its reward β·Δ")
    if ref is not None:
        meta["ref_model"] = cfg.ref_model
    return metrics, meta


def completion_logps(model_name: str, pairs, cfg: EvalConfig):
    """[n, 2] float32 summed log-probs of (chosen, rejected) under `model_name`: the packed,
    prefix-shared engine training uses, `batch_size` pairs per forward."""
    import torch

    from prefero.batching import pair_groups
    from prefero.model import load_causal_lm
    from prefero.reference import precompute_logps

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]
    key = "model" if model_name == cfg.model else "ref_model"
    model = load_causal_lm(model_name, cfg.trust_remote_code, dtype, attention="auto", key=key)
    try:
        return precompute_logps(model, pair_groups(pairs), cfg.batch_size, 0, device)
    finally:
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the next stage loads its own model


def implicit_rewards(spec, beta, logps, chosen_lengths, rejected_lengths, ref=None, p_chosen=None,
                     p_rejected=None):
    """(r(y_w), r(y_l)) float64 tensors, computed by the loss function itself (its
    `chosen_rewards` / `rejected_rewards`, so the definition lives in one place), or None:
    the loss has no implicit reward (sft) or it needs a reference that was not given.
    The loss value is discarded, so inputs only it reads (SPPO's P̂ where the pairs carry
    none) are filled with ½."""
    import torch

    from prefero.losses import PairStats, UnpairedStats

    if spec.data == "sft" or (spec.needs_reference and ref is None):
        return None
    f64 = lambda x: torch.as_tensor(x, dtype=torch.float64)  # noqa: E731 — Δ of two sums near −100 in float64
    n = logps.shape[0]
    kwargs = {"beta": beta} if beta is not None else {}
    if spec.data == "unpaired":  # KTO: β·Δ of each completion, chosen then rejected
        s = f64(torch.cat([logps[:, 0], logps[:, 1]]))
        s_ref = f64(torch.cat([ref[:, 0], ref[:, 1]]))
        labels = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])
        r = spec(UnpairedStats(s, s_ref, labels, s, s_ref), **kwargs).chosen_rewards
        return r[:n], r[n:]
    half = [0.5 if p is None else p for p in (p_chosen or [None] * n)]
    half_l = [0.5 if p is None else p for p in (p_rejected or [None] * n)]
    stats = PairStats(
        chosen_logps=f64(logps[:, 0]), rejected_logps=f64(logps[:, 1]),
        chosen_lengths=f64(chosen_lengths), rejected_lengths=f64(rejected_lengths),
        ref_chosen_logps=f64(ref[:, 0]) if ref is not None else None,
        ref_rejected_logps=f64(ref[:, 1]) if ref is not None else None,
        p_chosen=f64(half), p_rejected=f64(half_l),
    )
    out = spec(stats, **kwargs)
    return out.chosen_rewards, out.rejected_rewards
