"""`prefero eval`: is the trained policy better? (SPEC §5)

    report = run_eval(load_config("examples/eval.yaml", cls=EvalConfig))
    report["win_rate"], report["win_rate_ci"], report["lc_win_rate"]

Two measurements, either or both:

- **Win rate on held-out prompts.** Each side's responses come from a model (the
  generation stage, one response per prompt, greedy by default) or from a file. The judge
  sees every (policy, baseline) pair in both orders, then `compare` and `write_report`
  make the numbers and files (see prefero.evaluate.report).
- **Metrics on held-out pairs** from `model`'s own log-probabilities (prefero's packed,
  prefix-shared engine, as in training): the method's implicit reward r(y) per the loss
  (β·Δ for the DPO family, β·A for SimPO, ...), then `pair_metrics`.

Responses and prompts. Responses a model generates here are aligned with `prompts` by
position (they were generated from that file, in its order). Responses read from a file
(`outputs`, `baseline_outputs`) are matched to the prompts **by prompt text**, exactly,
a prompt recorded as one user message ([{"role": "user", "content": P}], as `prefero
generate` records a string prompt under a chat template) counting as the string P; a
prompt asked twice takes the file's responses to it in file order. A prompt with no
response is an error naming its row; rows of the file that answer no prompt are counted
in the report (`unused_rows`). Without `prompts` the policy's file sets the prompts.

How a judge's answers become P(policy ≻ baseline) (both as in prefero.evaluate.metrics,
`p_fwd` with the policy's response shown first, `p_rev` with the baseline's first):

- `llm`, `openai` (they compare): p_fwd = P(answer A | policy is A), p_rev = P(answer B
  | baseline is A). Their mean is exactly what `Judge.compare` returns; kept apart, the
  two orders also measure the judge's position bias.
- `callable` (it scores the list it is given): called with [policy, baseline] and with
  [baseline, policy]; each call's two scores give that order's preference.
- `reward_model`: scores each response alone, so there is no order to debias; one
  preference per prompt (p_rev null, the report says 1 order).
- Scores become a preference by `pointwise_preference`: `sigmoid`, σ(s_policy −
  s_baseline) (Bradley–Terry: a reward model's score differences are log-odds), or
  `verdict`, win / tie / loss by which score is higher (a verifier's 1/0 is a win, not
  σ(1) = 0.73). `auto`: sigmoid for reward_model, verdict for callable.
- Identical responses are a tie (½) without asking, as the judges package rules.
- A prompt the judge gave no usable answer for (an unparseable reply, a null score) is
  left out of the win rate and counted by reason (`meta.prompts_unjudged`,
  `meta.unjudged_reasons`), never guessed.

Files in `output_dir`: `policy_responses.jsonl` / `baseline_responses.jsonl` (from a
model; `prefero generate` rows, with their `.report.json`), `judgments.jsonl` (one row per
prompt: index, p_fwd, p_rev, the judge's scores, why a prompt was unjudged),
`pairs_data_report.json` (what the pairs loader kept, truncated, dropped), and the report:
report.json, report.md, comparisons.jsonl, plots/.

Resumption: generation and judging are the costly stages; both write resumable outputs
(prefero.pipeline_io.StageOutput), so a killed evaluation picks up where it stopped. A
finished responses or judgments file is reused when the settings it was made with (kept
beside it in NAME.settings.json: the sampling keys, the prompts' fingerprint, the model's
weight files, the judge block, the responses judged) equal this run's; made with other
settings it is an error, or with `overwrite: true` is made again. An existing report.json
is replaced only with `overwrite: true`, checked before any work, as are output_dir itself
(not a file, not under one) and the lock that keeps a second evaluation out of it while
this one runs.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

from prefero.config import ConfigError
from prefero.data.errors import DataError
from prefero.data.formats import Text, Where, _text
from prefero.data.read import iter_rows
from prefero.evaluate.config import EvalConfig
from prefero.evaluate.pairs import PairMetrics, pair_metrics
from prefero.evaluate.report import REPORT_JSON, compare, write_report
from prefero.judges import Item, sigmoid, text_key
from prefero.judges.run import check_finite, judge_identity
from prefero.pipeline_io import (
    Prompt, StageOutput, atomic_write_json, partial_paths, read_jsonl_rows, read_prompts, scrub_credentials,
)
from prefero.stage_files import OutputLock, check_output_dir_path, check_output_file, make_folder

SIDES = ("policy", "baseline")
JUDGMENTS = "judgments.jsonl"
PAIRS_DATA_REPORT = "pairs_data_report.json"


def responses_path(output_dir: str | Path, side: str) -> Path:
    return Path(output_dir) / f"{side}_responses.jsonl"


# --------------------------------------------------------------------------- the command


def run_eval(cfg: EvalConfig) -> dict:
    """Evaluate as `cfg` says; returns the report (the content of output_dir/report.json).

    Every input is read and checked before any model runs, so a bad row fails in seconds,
    not after an hour of generation.
    """
    cfg.validate()
    out = Path(cfg.output_dir)
    check_output_dir_path(out)
    check_output_file(out / REPORT_JSON, "output_dir", out / JUDGMENTS, responses_path(out, "policy"),
                      responses_path(out, "baseline"))
    if (out / REPORT_JSON).exists() and not cfg.overwrite:
        raise ConfigError(f"{out / REPORT_JSON} exists; set overwrite=true to replace it (responses and "
                          "judgments made with the same settings are reused)")
    make_folder(out.parent, "output_dir", out)
    with OutputLock(out, "output_dir"):  # one evaluation writes output_dir at a time
        return _evaluate(cfg, out)


def _evaluate(cfg: EvalConfig, out: Path) -> dict:
    meta: dict = {"name": Path(cfg.model or cfg.outputs or "policy").name}

    # 1. read and check the inputs: models, judge, prompts, responses files, pairs
    check_sources(cfg)
    prompts, responses = None, {}
    if cfg.wants_win_rate:
        given = {side: read_outputs(path, cfg.prompt_column, cfg.response_column)
                 for side, path in (("policy", cfg.outputs), ("baseline", cfg.baseline_outputs)) if path}
        prompts = (read_prompts(cfg.prompts, cfg.prompt_column) if cfg.prompts
                   else [Prompt(r.prompt, r.row, r.file) for r in given["policy"]])
        responses = {side: match_responses(prompts, rows, cfg.prompt_column) for side, rows in given.items()}
    pairs_input = load_eval_pairs(cfg) if cfg.pairs else None

    # 2. held-out pairs
    pairs = pairs_meta = None
    if pairs_input is not None:
        pairs, pairs_meta = evaluate_pairs(cfg, *pairs_input)

    # 3. win rate
    result = None
    if cfg.wants_win_rate:
        for side, model in (("policy", cfg.model), ("baseline", cfg.baseline_model)):
            if model:
                responses[side] = generated_responses(cfg, side, model, prompts)
        result, judge_meta = judge_and_compare(cfg, prompts, responses)
        meta.update(describe_sides(cfg, responses))
        meta.update(judge_meta)
    meta.update(pairs_meta or {})

    write_report(out, result, pairs, meta=meta, n_examples=cfg.n_examples, overwrite=cfg.overwrite)
    # where it went, for the command's closing line (not in the file: a report stays the same wherever it is)
    return {**json.loads((out / REPORT_JSON).read_text(encoding="utf-8")), "output_dir": str(out)}


def check_sources(cfg: EvalConfig) -> None:
    """Every model path and the judge's function, checked in seconds (ConfigError naming
    the key) rather than found wrong after an hour of generation."""
    from prefero.model import check_model_source

    generating = cfg.generates
    for key, name, tokenizer in [("model", cfg.model, True), ("ref_model", cfg.ref_model, False),
                                 ("baseline_model", cfg.baseline_model if generating else None, True),
                                 ("tokenizer", cfg.tokenizer, True)]:
        if name:
            check_model_source(name, key, tokenizer=tokenizer)
    if generating:
        for side, model in (("policy", cfg.model), ("baseline", cfg.baseline_model)):
            if model:
                generate_config(cfg, side, model).validate()
    judge = cfg.judge if cfg.wants_win_rate else None
    if judge is not None and judge.type == "callable":
        from prefero.judges.callable import load_function

        load_function(judge.function)
    elif judge is not None and judge.type in ("reward_model", "llm"):
        check_model_source(judge.model, "judge.model", tokenizer=True)


def describe_sides(cfg: EvalConfig, responses: dict) -> dict:
    """Where each side's responses came from, one line each (report.md shows meta as is)."""
    meta = {"policy": cfg.model or cfg.outputs, "baseline": cfg.baseline_model or cfg.baseline_outputs,
            "prompts": cfg.prompts or f"the prompts of {cfg.outputs}"}
    for side in SIDES:
        r = responses[side]
        notes = ["generated here" if r.matched_by == "index" else "matched to the prompts by prompt text"]
        if r.unused_rows:
            notes.append(f"{r.unused_rows} rows answer none of the prompts")
        if r.hit_max_new_tokens is not None:
            notes.append(f"{r.hit_max_new_tokens} of {len(r.texts)} cut at max_new_tokens")
        meta[f"{side}_responses"] = f"{r.source} ({'; '.join(notes)})"
    if cfg.generates:
        g = cfg.generation
        sampling = ("greedy" if g.temperature == 0 else
                    f"temperature {g.temperature:g}, top_p {g.top_p:g}, top_k {g.top_k}, seed {g.seed}")
        meta["generation"] = f"{sampling}, max_new_tokens {g.max_new_tokens}, backend {g.backend}"
    return meta


# --------------------------------------------------------------------------- responses


@dataclass
class OutputRow:
    """One row of a responses file: the prompt it answers and the response."""

    prompt: Text
    response: str
    row: int
    file: str
    finish_reason: str | None = None


@dataclass
class Responses:
    """One side's response to each prompt, in prompt order, and where they came from."""

    texts: list[str]
    source: str
    matched_by: str  # "index" (generated here from the prompts file) | "prompt text"
    unused_rows: int = 0  # rows of the file that answer none of the prompts
    hit_max_new_tokens: int | None = None  # responses cut by the token limit (None: unknown)


def read_outputs(path: str, prompt_column: str = "prompt", response_column: str = "response") -> list[OutputRow]:
    """Rows {prompt, response} or {prompt, completions: [one]} (as `prefero generate` writes
    with num_completions 1). The prompt is read from `prompt_column`, else from `prompt`
    (generate's own column). A response may be empty (a policy that answered nothing has
    still answered); it must be a string. A bad row is a DataError naming row and field."""
    rows = []
    for row, record in iter_rows(path):
        if isinstance(record, DataError):
            raise record
        where = Where(str(path), row)
        column = prompt_column if prompt_column in record or "prompt" not in record else "prompt"
        if record.get(column) is None:
            columns = ", ".join(sorted(map(str, record))) or "none"
            raise where.error(prompt_column, f"missing (the row has columns: {columns}); set prompt_column")
        prompt = _text(record[column], column, where)
        response, reason = _response(record, response_column, where)
        rows.append(OutputRow(prompt, response, row, str(path), reason))
    if not rows:
        raise DataError(str(path), None, None, "no responses (the file has no rows)", skippable=False)
    return rows


def _response(record: dict, column: str, where: Where) -> tuple[str, str | None]:
    if record.get(column) is not None:
        value = record[column]
        if not isinstance(value, str):
            raise where.error(column, f"expected the response as a string, got {type(value).__name__}")
        return value, None
    completions = record.get("completions")
    if completions is None:
        raise where.error(column, "missing; expected the response as a string (or `completions`: a list with one)")
    if not isinstance(completions, list) or len(completions) != 1:
        got = f"{len(completions)} completions" if isinstance(completions, list) else type(completions).__name__
        raise where.error("completions", f"expected a list with exactly one response, got {got} (the evaluation "
                                         "compares one response per prompt: generate with num_completions=1)")
    if not isinstance(completions[0], str):
        raise where.error("completions[0]", f"expected a string, got {type(completions[0]).__name__}")
    reasons = record.get("finish_reasons")
    return completions[0], reasons[0] if isinstance(reasons, list) and reasons else None


def prompt_key(text: Text) -> str:
    """What two prompts must share to be the same prompt: a single user message is its text."""
    if isinstance(text, list) and len(text) == 1 and text[0].get("role") == "user":
        text = text[0]["content"]
    return ("s:" if isinstance(text, str) else "m:") + text_key(text)


def match_responses(prompts: list[Prompt], rows: list[OutputRow], prompt_column: str = "prompt") -> Responses:
    """Each prompt's response from `rows`, matched by prompt text (see the module docstring)."""
    answers: dict[str, deque] = defaultdict(deque)
    for r in rows:
        answers[prompt_key(r.prompt)].append(r)
    picked, missing = [], []
    for p in prompts:
        queue = answers.get(prompt_key(p.text))
        if queue:
            picked.append(queue.popleft())
        else:
            missing.append(p)
    source = rows[0].file
    if missing:
        first = missing[0]
        raise first.error(prompt_column, f"no response to this prompt in {source} ({len(missing)} of {len(prompts)} "
                                         "prompts have none; responses are matched to prompts by their exact text)")
    reasons = [r.finish_reason for r in picked]
    return Responses([r.response for r in picked], source, "prompt text",
                     unused_rows=sum(len(q) for q in answers.values()),
                     hit_max_new_tokens=None if None in reasons else reasons.count("length"))


# --------------------------------------------------------------------------- generation


def generate_config(cfg: EvalConfig, side: str, model: str):
    from prefero.generate import GenerateConfig

    return GenerateConfig(model=model, prompts=cfg.prompts, prompt_column=cfg.prompt_column,
                          output=str(responses_path(cfg.output_dir, side)), num_completions=1,
                          trust_remote_code=cfg.trust_remote_code, overwrite=cfg.overwrite,
                          **dataclasses.asdict(cfg.generation))


def generated_responses(cfg: EvalConfig, side: str, model: str, prompts: list[Prompt]) -> Responses:
    """`model`'s response to every prompt: the generation stage's output, made (or resumed)
    unless a finished one with the same settings is there."""
    from prefero.generate import run_generate
    from prefero.generate.prompts import prompts_sha256
    from prefero.reference import model_identity

    gen = generate_config(cfg, side, model)
    # the model's weight files too: a model retrained in place must not reuse old responses
    settings = {**gen.settings(prompts_sha256(prompts)), "model_files": model_identity(model)}
    if not reusable(Path(gen.output), settings, cfg.overwrite):
        run_generate(gen)
    rows = [row for _, row in read_jsonl_rows(Path(gen.output))]
    if [r["index"] for r in rows] != list(range(len(prompts))):
        raise DataError(gen.output, None, "index", f"{len(rows)} rows that are not the {len(prompts)} prompts of "
                                                   f"{cfg.prompts} in order; delete it to generate again")
    texts = [r["completions"][0] for r in rows]
    hit = sum(r["finish_reasons"][0] == "length" for r in rows)
    return Responses(texts, gen.output, "index", hit_max_new_tokens=hit)


def reusable(output: Path, settings: dict, overwrite: bool) -> bool:
    """True when `output` is a finished stage output made with `settings` (reuse it).

    Otherwise `settings` is recorded in NAME.settings.json for the run about to make it,
    after refusing (without `overwrite`) to replace a finished output made with others.
    """
    sidecar = output.with_name(output.stem + ".settings.json")
    settings = json.loads(json.dumps(scrub_credentials(settings)))  # as it reads back (no password in a URL)
    if output.exists():
        try:
            old = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = None
        if old == settings:
            return True
        if not overwrite:
            why = ("its settings file is missing" if not isinstance(old, dict) else "settings differ in: " +
                   ", ".join(sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))))
            raise ConfigError(f"{output} was made with other settings ({why}); set overwrite=true to make it again")
    atomic_write_json(sidecar, settings)
    return False


# --------------------------------------------------------------------------- judging


def judge_and_compare(cfg: EvalConfig, prompts: list[Prompt], responses: dict):
    """Judge every prompt (resumably), then the win rate and length control on the judged ones."""
    policy, baseline = responses["policy"].texts, responses["baseline"].texts
    records = prompt_records(cfg, prompts)
    items = [Item(p.text, [a, b], Where(p.file, p.row), records[i], (cfg.prompt_column, "responses"))
             for i, (p, a, b) in enumerate(zip(prompts, policy, baseline))]
    rows = judgments(cfg, items)
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


def judgments(cfg: EvalConfig, items: list[Item]) -> list[dict]:
    """One row per prompt (see `judgment_rows`), from judgments.jsonl when it is finished
    with these settings, else judged batch by batch into it (resuming a killed run)."""
    output = Path(cfg.output_dir) / JUDGMENTS
    fingerprint = hashlib.sha256()
    for item in items:
        fingerprint.update(json.dumps([prompt_key(item.prompt), *item.completions], ensure_ascii=False).encode())
    settings = {"judge": judge_identity(cfg.judge), "pointwise_preference": cfg.pointwise_rule(),
                "prompts_and_responses_sha256": fingerprint.hexdigest()}
    if not reusable(output, settings, cfg.overwrite):
        stage = StageOutput(output, settings, overwrite=cfg.overwrite)
        done = stage.start()
        todo = [i for i in range(len(items)) if i not in done]
        if todo:
            from prefero.judges import build_judge, check_unparseable

            judge = build_judge(cfg.judge)
            if hasattr(judge, "batch_size"):
                judge.batch_size = cfg.batch_size
            # both orders of every prompt whose two responses differ (identical ones are ½ unasked),
            # and the unreadable ones behind the rows an earlier run saved
            planned = 2 * sum(text_key(it.completions[0]) != text_key(it.completions[1]) for it in items)
            resumed = sum(row["unjudged"] is not None for path in partial_paths(output)
                          for _, row in read_jsonl_rows(path))
            try:
                for start in range(0, len(todo), cfg.batch_size):
                    batch = todo[start:start + cfg.batch_size]
                    rows = judgment_rows(judge, cfg, [items[i] for i in batch], batch)
                    check_unparseable(judge, planned, resumed)  # before saving, as prefero judge does
                    stage.append(rows)
            except BaseException:
                stage.abandon()
                stage.close()
                raise
            finally:
                if hasattr(judge, "close"):
                    judge.close()
        stage.finish(total=len(items))
    return [row for _, row in read_jsonl_rows(output)]


def judgment_rows(judge, cfg: EvalConfig, items: list[Item], indices: list[int]) -> list[dict]:
    """Rows {index, p_fwd, p_rev, scores, identical, unjudged} for items [policy, baseline].

    `unjudged` is None or why the prompt has no preference (`null_answer`: a comparing
    judge's reply could not be read; `null_score`: a scoring judge returned no score).
    """
    identical = [text_key(item.completions[0]) == text_key(item.completions[1]) for item in items]
    ask = [item for item, same in zip(items, identical) if not same]
    answers = iter(order_preferences(judge, cfg, ask) if ask else [])
    one_order = cfg.judge.type == "reward_model"
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


# --------------------------------------------------------------------------- held-out pairs


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
