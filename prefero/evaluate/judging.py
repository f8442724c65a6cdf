"""Judging in `prefero eval`: every (policy, baseline) pair in both orders, resumably, then
the win rate and its length control.

How a judge's answers become P(policy ≻ baseline) (both as in prefero.evaluate.metrics,
`p_fwd` with the policy's response shown first, `p_rev` with the baseline's first):

- `llm`, `openai` (they compare): p_fwd = P(answer A | policy is A), p_rev = P(answer B
  | baseline is A). Their mean is exactly what `Judge.compare` returns; kept apart, the
  two orders also measure the judge's position bias.
- `callable` (it scores the list it is given): called with [policy, baseline] and with
  [baseline, policy]; each call's two scores give that order's preference.
- `reward_model`: scores each response alone, so there is no order to debias; one
  preference per prompt (p_rev null, the report says 1 order). `pairwise_model` too: it
  is antisymmetric by construction, so its other order would say exactly 1 − p_fwd.
- Scores become a preference by `pointwise_preference`: `sigmoid`, σ(s_policy −
  s_baseline) (Bradley–Terry: a reward model's score differences are log-odds), or
  `verdict`, win / tie / loss by which score is higher (a verifier's 1/0 is a win, not
  σ(1) = 0.73). `auto`: sigmoid for reward_model, verdict for callable.
- Identical responses are a tie (½) without asking, as the judges package rules.
- A prompt the judge gave no usable answer for (an unparseable reply, a null score) is
  left out of the win rate and counted by reason (`meta.prompts_unjudged`,
  `meta.unjudged_reasons`), never guessed.

`judgments.jsonl` (one row per prompt: index, p_fwd, p_rev, the judge's scores, why a
prompt was unjudged) is a resumable stage output, reused when the judge block and the
responses judged are this run's. Under a launcher each process judges its share of the
batches (prefero.processes) and process 0 merges them: the file one process writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path

from prefero.data.errors import DataError
from prefero.data.formats import Where
from prefero.data.read import iter_rows
from prefero.evaluate.config import EvalConfig
from prefero.evaluate.report import compare
from prefero.evaluate.responses import prompt_key
from prefero.judges import Item, sigmoid, text_key
from prefero.judges.run import check_finite, judge_identity
from prefero.pipeline_io import Prompt, StageOutput, partial_paths, read_jsonl_rows
from prefero.processes import Processes, position_batches
from prefero.stages import Runner, Stage

JUDGMENTS = "judgments.jsonl"
#: Judges with no order to debias: a reward model scores each response alone; a pairwise
#: model is antisymmetric (P(B ≻ A) = 1 − P(A ≻ B) for every pair), so one order says it all.
ONE_ORDER = ("reward_model", "pairwise_model")


def judge_and_compare(cfg: EvalConfig, prompts: list[Prompt], responses: dict, procs: Processes, runner: Runner):
    """Judge every prompt (resumably), then the win rate and length control on the judged
    ones; (None, {}) on processes other than 0."""
    policy, baseline = responses["policy"].texts, responses["baseline"].texts
    records = prompt_records(cfg, prompts)
    items = [Item(p.text, [a, b], Where(p.file, p.row), records[i], (cfg.prompt_column, "responses"))
             for i, (p, a, b) in enumerate(zip(prompts, policy, baseline))]
    rows = judgments(cfg, items, procs, runner)
    if rows is None:
        return None, {}
    judged = [r for r in rows if r["unjudged"] is None]
    unjudged = Counter(r["unjudged"] for r in rows if r["unjudged"] is not None)
    if not judged:
        raise DataError(str(Path(cfg.output_dir) / JUDGMENTS), None, None,
                        f"the judge gave no usable answer for any of the {len(rows)} prompts ({dict(unjudged)})",
                        skippable=False)
    keep = [r["index"] for r in judged]
    two_orders = judged[0]["p_rev"] is not None
    result = compare(
        [prompts[i].text for i in keep], [policy[i] for i in keep], [baseline[i] for i in keep],
        [r["p_fwd"] for r in judged], [r["p_rev"] for r in judged] if two_orders else None,
        tokenizer=length_tokenizer(cfg), ngram=cfg.ngram, n_resamples=cfg.bootstrap_resamples,
        confidence=cfg.confidence, seed=cfg.seed, lc_prior_scale=cfg.lc_prior_scale,
        lc_resamples=cfg.lc_resamples, source=str(Path(cfg.output_dir) / JUDGMENTS))
    for row, i in zip(result.rows, keep):
        row["index"] = i  # the prompt's position in the prompts file, not among the judged
    what = next((getattr(cfg.judge, k) for k in ("model", "function") if getattr(cfg.judge, k)), None)
    rule = cfg.pointwise_rule()
    meta = {"judge": " ".join(filter(None, [cfg.judge.type, what, rule and f"(scores -> {rule})"])),
            "prompts_read": len(prompts), "prompts_unjudged": sum(unjudged.values()),
            "identical_responses": sum(r["identical"] for r in rows)}
    if unjudged:
        meta["unjudged_reasons"] = ", ".join(f"{k}: {v}" for k, v in sorted(unjudged.items()))
    return result, meta


def prompt_records(cfg: EvalConfig, prompts: list[Prompt]) -> list[dict]:
    """The whole source row of each prompt, for a callable judge that reads other columns
    (a reference answer next to the prompt); other judges do not need them."""
    if cfg.judge.type != "callable":
        return [{} for _ in prompts]
    source = cfg.prompts or cfg.outputs
    records = [r for _, r in iter_rows(source)]  # read once already, so no bad row is left
    return [records[i] if isinstance(records[i], dict) else {} for i in range(len(prompts))]


class Judgments(Stage):
    """Both orders of every (policy, baseline) pair judged, batch by batch into
    judgments.jsonl (`StageOutput`: a killed run resumes its rows). Its fingerprint: the
    judge's identity, the pointwise rule and the prompts and responses judged."""

    def __init__(self, cfg: EvalConfig, items: list[Item], procs: Processes):
        self.cfg, self.items, self.procs = cfg, items, procs
        self.output = Path(cfg.output_dir) / JUDGMENTS
        fingerprint = hashlib.sha256()
        for item in items:
            fingerprint.update(json.dumps([prompt_key(item.prompt), *item.completions], ensure_ascii=False).encode())
        settings = {"judge": judge_identity(cfg.judge), "pointwise_preference": cfg.pointwise_rule(),
                    "prompts_and_responses_sha256": fingerprint.hexdigest()}
        super().__init__("judgments", outputs=[JUDGMENTS], settings=settings)  # in the run directory

    def run(self) -> None:
        if self.resuming and self.output.exists():
            return  # killed between the file's last write and the manifest's: it is this stage's own
        cfg, items, procs, output = self.cfg, self.items, self.procs, self.output
        stage = StageOutput(output, self.settings, cfg.overwrite, procs.rank, procs.world, procs.barrier)
        done = stage.start()
        batches = position_batches(len(items), cfg.batch_size)
        mine = procs.pending(batches, done)
        if mine:
            from prefero.judges import build_judge, check_unparseable, process_budget

            judge = build_judge(cfg.judge)
            if hasattr(judge, "batch_size"):
                judge.batch_size = cfg.batch_size
            # both orders of every prompt whose two responses differ (identical ones are ½ unasked)
            planned, resumed = process_budget(
                procs.main, asked_answers(items, [i for b in mine for i in batches[b]]), bool(done),
                lambda: asked_answers(items, done),
                lambda: sum(row["unjudged"] is not None for path in partial_paths(output)
                            for _, row in read_jsonl_rows(path) if row["index"] in done))
            try:
                for b in mine:
                    rows = judgment_rows(judge, cfg, [items[i] for i in batches[b]], batches[b])
                    check_unparseable(judge, planned, resumed)  # before saving, as prefero judge does
                    stage.append([row for row in rows if row["index"] not in done])
            except BaseException:
                stage.abandon()
                stage.close()
                raise
            finally:
                if hasattr(judge, "close"):
                    judge.close()
        stage.finish(total=len(items))


def judgments(cfg: EvalConfig, items: list[Item], procs: Processes, runner: Runner) -> list[dict] | None:
    """One row per prompt (see `judgment_rows`): the `Judgments` stage's output, reused when
    finished with the same fingerprint. On processes other than 0, None once their share is
    saved."""
    stage = Judgments(cfg, items, procs)
    runner.run(stage)
    if not procs.main:
        return None
    return [row for _, row in read_jsonl_rows(stage.output)]


def asked_answers(items: list[Item], indices) -> int:
    """The answers judging these items asks for: both orders of every prompt whose two
    responses differ (identical ones are ½ without asking)."""
    return 2 * sum(text_key(items[i].completions[0]) != text_key(items[i].completions[1]) for i in indices)


def judgment_rows(judge, cfg: EvalConfig, items: list[Item], indices: list[int]) -> list[dict]:
    """Rows {index, p_fwd, p_rev, scores, identical, unjudged} for items [policy, baseline].

    `unjudged` is None or why the prompt has no preference (`null_answer`: a comparing
    judge's reply could not be read; `null_score`: a scoring judge returned no score).
    """
    identical = [text_key(item.completions[0]) == text_key(item.completions[1]) for item in items]
    ask = [item for item, same in zip(items, identical) if not same]
    answers = iter(order_preferences(judge, cfg, ask) if ask else [])
    one_order = cfg.judge.type in ONE_ORDER
    rows = []
    for index, same in zip(indices, identical):
        if same:
            p_fwd, p_rev, scores = 0.5, None if one_order else 0.5, None
        else:
            p_fwd, p_rev, scores = next(answers)
        missing = p_fwd is None or (p_rev is None and not one_order)
        reason = ("null_answer" if cfg.judge.compares else "null_score") if missing else None
        rows.append({"index": index, "p_fwd": p_fwd, "p_rev": p_rev, "scores": scores, "identical": same,
                     "unjudged": reason})
    return rows


def order_preferences(judge, cfg: EvalConfig, items: list[Item]) -> list[tuple]:
    """(p_fwd, p_rev, scores) per item [policy, baseline] (see the module docstring)."""
    kind = cfg.judge.type
    if kind == "llm":
        # [P(A), P(B)] with the first index shown as A: the judge's own one-order answer,
        # both orders in one call (batched together, as its `compare` asks them)
        n = len(items)
        both = judge.choice_probs(items + items, [0] * n + [1] * n, [1] * n + [0] * n)
        return [(f[0], r[1], None) for f, r in zip(both[:n], both[n:])]
    if kind == "openai":
        from prefero.judges.prompts import CHOICES, pairwise_prompt

        template = cfg.judge.pairwise_template
        texts = [pairwise_prompt(template, it.prompt, *order) for it in items
                 for order in (it.completions, it.completions[::-1])]
        answers = judge.client.map(lambda t: judge.ask(t, CHOICES), texts)
        out = []
        for f, r in zip(answers[0::2], answers[1::2]):
            # both orders or nothing: one order alone would bring the position bias back
            both = f is not None and r is not None
            out.append((f[0] if both else None, r[1] if both else None, None))
        return out
    if kind == "pairwise_model":  # antisymmetric by construction: the other order says exactly 1 − p
        return [(p, None, None) for p in judge.compare([(it, 0, 1) for it in items])]
    rule = cfg.pointwise_rule()
    forward = judge.score(items)
    for item, s in zip(items, forward):
        check_finite(item, s, None)
    if kind == "reward_model":  # scores each response alone: one order is all there is
        return [(score_preference(s[0], s[1], rule), None, [s]) for s in forward]
    swapped = [dataclasses.replace(it, completions=it.completions[::-1]) for it in items]
    backward = judge.score(swapped)
    for item, s in zip(swapped, backward):
        check_finite(item, s, None)
    return [(score_preference(f[0], f[1], rule), score_preference(b[1], b[0], rule), [f, b])
            for f, b in zip(forward, backward)]


def score_preference(policy: float | None, baseline: float | None, rule: str) -> float | None:
    """P(policy ≻ baseline) from two scores: σ(s_p − s_b) or a verdict 1 / ½ / 0."""
    if policy is None or baseline is None:
        return None
    if rule == "verdict":
        return 1.0 if policy > baseline else 0.5 if policy == baseline else 0.0
    return sigmoid(policy - baseline)


def length_tokenizer(cfg: EvalConfig):
    """The tokenizer that counts response tokens (None: lengths in characters only)."""
    name = cfg.tokenizer or cfg.model
    if not name:
        return None
    from prefero.model import load_tokenizer

    return load_tokenizer(name, cfg.trust_remote_code, key="tokenizer" if cfg.tokenizer else "model")
