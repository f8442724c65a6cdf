"""`prefero eval` (prefero.evaluate.run): responses from files matched by prompt text and from
tiny models generated here; every pair judged in both orders; the report's numbers equal
`compare` on the same judgments and values worked by hand; pair metrics equal a padded
float64 forward; generation and judging resume and are reused, never redone or duplicated;
bad input is one line naming file, row and field (or the config key).

Tolerances. Win rates from verdicts are means of 0, ½ and 1 over a few prompts: exact in
float64, compared with ==. Log-probs: the engine runs the tiny model in float32 (packed,
prefix-shared, chunked log-softmax), the hand computation in float64 (one row at a time,
full-vocabulary log_softmax). A float32 forward of the 2-layer, width-64 model has relative
error ~ eps·√(reduction length)·depth ≈ 1.2e-7·√64·2 ≈ 2e-6 per log-prob, and a sum of
same-signed terms keeps that relative bound: RTOL = 1e-5 is that bound with margin, not a
value tuned to this machine (measured: 1.9e-7). Discrete metrics (accuracies) are compared
exactly, after checking that no pair is closer to a tie than the tolerance allows.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from jsonl_files import write_jsonl
from prefero.data.errors import DataError
from prefero.evaluate import compare
from prefero.evaluate.config import EvalConfig
from prefero.evaluate.heldout import implicit_rewards
from prefero.evaluate.judging import order_preferences, score_preference
from prefero.evaluate.responses import match_responses, prompt_key, read_outputs, responses_path
from prefero.evaluate.run import run_eval
from prefero.judges import Item
from prefero.judges.config import JudgeConfig
from prefero.options import ConfigError, load_config
from prefero.pipeline_io import read_prompts
from prefero.stages import MANIFEST

RTOL = 1e-5  # see the module docstring
ROOT = Path(__file__).resolve().parents[1]
DEMO_PAIRS = ROOT / "prefero" / "assets" / "demo_eval.jsonl"

JUDGES = '''
import json, os

def goods(prompt, completions):
    """A verifier: how often the response says "good"."""
    return [c.count("good") for c in completions]

def first(prompt, completions):
    """A judge that always prefers the response shown first (pure position bias)."""
    return [1, 0]

def nothing(prompt, completions):
    return [None, None]

def longer(prompt, completions):
    """Scores the length; logs each call; raises once a fail-flag file exists (a kill)."""
    log = os.environ["EVAL_JUDGE_LOG"]
    with open(log, "a") as f:
        f.write(json.dumps(completions) + "\\n")
    if os.path.exists(log + ".fail") and os.path.getsize(log) > int(open(log + ".fail").read() or 0):
        raise RuntimeError("killed")
    return [len(c) for c in completions]
'''



def eval_config(*overrides: str) -> EvalConfig:
    return load_config(None, list(overrides), cls=EvalConfig)


@pytest.fixture
def judges(tmp_path, monkeypatch):
    path = tmp_path / "eval_judges.py"
    path.write_text(JUDGES)
    monkeypatch.setenv("EVAL_JUDGE_LOG", str(tmp_path / "judge_calls.log"))
    return path


# --------------------------------------------------------------------------- responses from files

# prompt, policy response, baseline response, verdict of the "goods" verifier
CASES = [
    ("Tell me about the sea.", "good good", "good", "win"),
    ("What is a volcano like?", "good", "", "win"),  # an empty response has still answered
    ("Describe the moon.", "bad", "good", "loss"),
    ("Explain rain.", "good", "good!", "tie"),  # equal scores, different texts
    ("Describe a lake.", "good good good", "ok", "win"),
    ("Tell me about a storm.", "same", "same", "tie"),  # identical: ½ without asking
]


@pytest.fixture
def files(tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p, *_ in CASES])
    # policy: {prompt, response}, in another order than the prompts
    policy = write_jsonl(tmp_path / "policy.jsonl", [{"prompt": p, "response": a} for p, a, _, _ in CASES[::-1]])
    # baseline: as `prefero generate` writes (a string prompt recorded as one user message),
    # plus a row that answers none of the prompts
    baseline = write_jsonl(tmp_path / "baseline.jsonl", [
        {"index": i, "prompt": [{"role": "user", "content": p}], "completions": [b], "finish_reasons": ["stop"]}
        for i, (p, _, b, _) in enumerate(CASES)] + [{"prompt": "Unasked?", "completions": ["x"]}])
    return prompts, policy, baseline


def test_outputs_files_win_rate_equals_compare_and_the_hand_value(files, judges, tmp_path):
    prompts, policy, baseline = files
    report = run_eval(eval_config(
        f"outputs={policy}", f"baseline_outputs={baseline}", f"prompts={prompts}", "judge.type=callable",
        f"judge.function={judges}:goods", f"output_dir={tmp_path / 'out'}", "bootstrap_resamples=500"))
    verdicts = {"win": 1.0, "tie": 0.5, "loss": 0.0}
    prefs = [verdicts[v] for *_, v in CASES]
    assert report["win_rate"] == sum(prefs) / len(prefs) == 4 / 6  # hand: (1 + 1 + 0 + ½ + 1 + ½) / 6
    assert report["judgments"] == {"wins": 3, "ties": 2, "losses": 1, "position_bias": 0.0}
    # the same numbers through compare() directly: interval and length control agree exactly
    want = compare([p for p, *_ in CASES], [a for _, a, _, _ in CASES], [b for _, _, b, _ in CASES], prefs, prefs,
                   n_resamples=500)
    assert report["win_rate_ci"] == list(want.win.ci)
    assert report["lc_win_rate"] == want.lc.lc_win_rate
    assert report["length_control"]["theta_length"] == want.lc.theta_length
    assert report["mean_length"] == sum(len(a) for _, a, _, _ in CASES) / 6
    assert report["baseline_mean_length"] == sum(len(b) for _, _, b, _ in CASES) / 6
    assert report["repetition_rate"] == want.policy.repetition_rate
    meta = report["meta"]
    assert (meta["prompts_read"], meta["prompts_unjudged"], meta["identical_responses"]) == (6, 0, 1)
    assert "1 rows answer none of the prompts" in meta["baseline_responses"]
    assert "0 of 6 cut at max_new_tokens" in meta["baseline_responses"]
    assert meta["judge"] == f"callable {judges}:goods (scores -> verdict)"
    rows = [json.loads(line) for line in (tmp_path / "out" / "comparisons.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["policy"], r["baseline"], r["preference"]) for r in rows] == [
        (p, a, b, verdicts[v]) for p, a, b, v in CASES]
    # both orders were asked: the verifier saw [policy, baseline] and [baseline, policy]
    judged = [json.loads(line) for line in (tmp_path / "out" / "judgments.jsonl").read_text().splitlines()]
    assert judged[0]["scores"] == [[2, 1], [1, 2]]
    assert (tmp_path / "out" / "plots" / "lengths.png").stat().st_size > 0
    assert (tmp_path / "out" / "report.md").read_text().startswith("# Evaluation report")


def test_a_position_biased_judge_is_cancelled_by_the_two_orders(files, judges, tmp_path):
    prompts, policy, baseline = files
    report = run_eval(eval_config(
        f"outputs={policy}", f"baseline_outputs={baseline}", f"prompts={prompts}", "judge.type=callable",
        f"judge.function={judges}:first", f"output_dir={tmp_path / 'out'}"))
    # policy first: win (p_fwd = 1); baseline first: loss (p_rev = 0); their mean ½. The
    # identical pair is ½ in both orders, so the bias is 5 prompts × 1 / 6.
    assert report["win_rate"] == 0.5
    assert report["judgments"]["position_bias"] == 5 / 6
    # every preference ½: θ = 0 is the optimum, found to the fit's gradient tolerance 1e-10
    assert report["lc_win_rate"] == pytest.approx(0.5, abs=1e-9)


def test_outputs_alone_take_the_policy_files_prompts(files, judges, tmp_path):
    _, policy, baseline = files
    report = run_eval(eval_config(f"outputs={policy}", f"baseline_outputs={baseline}", "judge.type=callable",
                                  f"judge.function={judges}:goods", f"output_dir={tmp_path / 'out'}"))
    assert report["win_rate"] == 4 / 6
    assert report["meta"]["prompts"] == f"the prompts of {policy}"
    rows = [json.loads(line) for line in (tmp_path / "out" / "comparisons.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [p for p, *_ in CASES[::-1]]  # the policy file's order


def test_prompt_matching_by_text(tmp_path):
    assert prompt_key("hi") == prompt_key([{"role": "user", "content": "hi"}])
    assert prompt_key("hi") != prompt_key([{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}])
    assert prompt_key("hi") != prompt_key("hi ")  # exact text
    prompts = read_prompts(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q"}, {"prompt": "r"}, {"prompt": "q"}]))
    rows = read_outputs(write_jsonl(tmp_path / "o.jsonl", [
        {"prompt": "q", "response": "first q"}, {"prompt": "r", "response": "r"},
        {"prompt": "q", "response": "second q"}]))
    got = match_responses(prompts, rows)
    assert got.texts == ["first q", "r", "second q"]  # a repeated prompt takes its answers in file order
    assert (got.matched_by, got.unused_rows, got.hit_max_new_tokens) == ("prompt text", 0, None)


# --------------------------------------------------------------------------- judges' answers


def test_score_preference_rules():
    assert score_preference(2.0, 0.5, "sigmoid") == 1 / (1 + math.exp(-1.5))
    assert score_preference(0.5, 2.0, "sigmoid") == pytest.approx(1 - 1 / (1 + math.exp(-1.5)), rel=1e-15)
    assert score_preference(1.0, 1.0, "sigmoid") == 0.5
    assert [score_preference(*s, "verdict") for s in [(1, 0), (1, 1), (0, 1)]] == [1.0, 0.5, 0.0]
    assert score_preference(None, 1.0, "verdict") is None


class ScoresOf:
    """A stand-in scoring judge with fixed scores per response text."""

    def __init__(self, scores: dict):
        self.scores = scores

    def score(self, items):
        return [[self.scores[c] for c in item.completions] for item in items]


def test_reward_model_judge_is_one_order_through_the_sigmoid(tmp_path):
    from prefero.data.formats import Where

    cfg = EvalConfig(outputs="a.jsonl", baseline_outputs="b.jsonl", judge=JudgeConfig(type="reward_model", model="m"))
    assert cfg.pointwise_rule() == "sigmoid"
    items = [Item("x", ["p", "b"], Where("f", 1)), Item("y", ["q", "c"], Where("f", 2))]
    got = order_preferences(ScoresOf({"p": 2.0, "b": 0.5, "q": -1.0, "c": 1.0}), cfg, items)
    assert got == [(1 / (1 + math.exp(-1.5)), None, [[2.0, 0.5]]), (1 / (1 + math.exp(2.0)), None, [[-1.0, 1.0]])]
    cfg.pointwise_preference = "verdict"
    assert [g[0] for g in order_preferences(ScoresOf({"p": 2.0, "b": 0.5, "q": -1.0, "c": 1.0}), cfg, items)] == [1, 0]


def test_pairwise_model_judge_is_its_own_probability_in_one_order(tmp_path):
    """A pairwise model is antisymmetric: P(policy ≻ baseline) is its answer as is (not σ of a
    difference of win rates), and there is no second order to ask."""
    from prefero.data.formats import Where
    from prefero.tiny import save_tiny_scorer

    model = save_tiny_scorer(tmp_path / "pm", pairwise=True)
    cfg = EvalConfig(outputs="a.jsonl", baseline_outputs="b.jsonl",
                     judge=JudgeConfig(type="pairwise_model", model=str(model)).validate())
    assert cfg.pointwise_rule() is None
    from prefero.judges import build_judge

    judge = build_judge(cfg.judge)
    items = [Item("Describe the sea.", ["The sea is wide.", "No."], Where("f", 1)),
             Item("Explain a storm.", ["Rain.", "A storm is wind and rain."], Where("f", 2))]
    got = order_preferences(judge, cfg, items)
    want = judge.compare([(it, 0, 1) for it in items])
    assert [g[0] for g in got] == want and all(g[1] is None and g[2] is None for g in got)


@pytest.fixture(scope="module")
def llm_judge(tiny_model_dir):
    from prefero.judges.llm import LLMJudge
    from prefero.model import load_causal_lm, load_tokenizer

    model = load_causal_lm(str(tiny_model_dir), attention="sdpa").eval()
    with torch.no_grad():  # a random tiny LM is near uniform over A/B; spread it so bias shows
        model.lm_head.weight.mul_(8.0)
    judge = LLMJudge(JudgeConfig(type="llm", model=str(tiny_model_dir)).validate(), model=model,
                     tokenizer=load_tokenizer(str(tiny_model_dir)))
    judge.batch_size = 3
    return judge


def test_llm_judge_orders_average_to_its_compare_and_show_the_bias(llm_judge):
    from prefero.data.formats import Where

    cfg = EvalConfig(outputs="a.jsonl", baseline_outputs="b.jsonl",
                     judge=JudgeConfig(type="llm", model="m"))
    items = [Item(p, [a, b], Where("f", i + 1)) for i, (p, a, b, _) in enumerate(CASES[:5])]
    got = order_preferences(llm_judge, cfg, items)
    debiased = llm_judge.compare([(item, 0, 1) for item in items])
    for (p_fwd, p_rev, _), want in zip(got, debiased):
        assert 0 < p_fwd < 1 and 0 < p_rev < 1
        assert (p_fwd + p_rev) / 2 == pytest.approx(want, rel=RTOL)  # RTOL: batching differs, see the docstring
    # the two orders disagree by far more than the tolerance: the bias is measured, not hidden
    assert max(abs(f - r) for f, r, _ in got) > 1e-3


def test_openai_judge_both_orders_bias_and_unparseable_replies(files, tmp_path):
    """A server judge that says "A" with P = .8 whatever it is shown: p_fwd = .8 (policy
    is A), p_rev = P(B | baseline is A) = .2; each prompt ½, the bias .6 per asked prompt.
    One prompt's replies cannot be read: it is left out and counted, not guessed."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from openai_server import FakeOpenAIServer

    prompts, policy, baseline = files

    def responder(body, choice):
        if "moon" in body["messages"][-1]["content"]:
            return "I would rather not say."
        return [("A", {"A": math.log(0.8), "B": math.log(0.2)})]

    with FakeOpenAIServer() as server:
        server.responder = responder
        report = run_eval(eval_config(
            f"outputs={policy}", f"baseline_outputs={baseline}", f"prompts={prompts}", "judge.type=openai",
            "judge.model=fake", f"judge.base_url={server.base_url}", f"output_dir={tmp_path / 'out'}",
            "judge.max_unparseable=0.2"))  # 2 of the 10 answers: at the limit, not over it
        assert len(server.requests) == 2 * 5  # the identical pair is not asked
    assert report["n_prompts"] == 5 and report["win_rate"] == pytest.approx(0.5, rel=1e-15)
    # (4 asked prompts × (.8 − .2) + the identical pair's 0) / 5
    assert report["judgments"]["position_bias"] == pytest.approx(4 * 0.6 / 5, rel=1e-12)
    assert (report["meta"]["prompts_unjudged"], report["meta"]["unjudged_reasons"]) == (1, "null_answer: 1")


# --------------------------------------------------------------------------- tiny models end to end


@pytest.fixture(scope="module")
def baseline_dir(tmp_path_factory):
    from prefero.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-baseline"), arch="llama", seed=1)


def test_models_generate_judge_report_resume_and_reuse(tiny_model_dir, baseline_dir, judges, tmp_path,
                                                      monkeypatch):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p, *_ in CASES[:4]])
    out = tmp_path / "out"
    log = Path(str(tmp_path / "judge_calls.log"))
    args = [f"model={tiny_model_dir}", f"baseline_model={baseline_dir}", f"prompts={prompts}",
            "judge.type=callable", f"judge.function={judges}:longer", "generation.max_new_tokens=8",
            "batch_size=2", f"output_dir={out}", "bootstrap_resamples=200"]

    # a run killed at its first judgment: the responses are finished, no judgment is
    log.write_text("")
    Path(str(log) + ".fail").write_text("0")  # the judge raises once more than 0 bytes are logged
    with pytest.raises(DataError, match="raised RuntimeError: killed"):
        run_eval(eval_config(*args))
    assert not (out / "report.json").exists()
    assert responses_path(out, "policy").exists() and responses_path(out, "baseline").exists()

    # other sampling settings than the finished responses': refused, naming the key
    with pytest.raises(ConfigError, match=r"stage 'policy_responses' finished with other inputs or settings "
                                          r"\(max_new_tokens: 8 -> 9\); rerun with those to reuse it, or set "
                                          r"overwrite=true"):
        run_eval(eval_config(*args, "generation.max_new_tokens=9"))

    # the finished responses are reused (generating again would fail here), judging completes
    import prefero.generate

    monkeypatch.setattr(prefero.generate, "run_generate", lambda cfg: pytest.fail("responses generated again"))
    Path(str(log) + ".fail").unlink()
    log.write_text("")
    report = run_eval(eval_config(*args))
    assert len(log.read_text().splitlines()) == 2 * 4  # every prompt judged, both orders, once

    for key in ("win_rate", "win_rate_ci", "lc_win_rate", "mean_length", "baseline_mean_length",
                "repetition_rate", "baseline_repetition_rate", "mean_tokens"):
        assert key in report
    policy = [json.loads(line)["completions"][0] for line in responses_path(out, "policy").read_text().splitlines()]
    baseline = [json.loads(line)["completions"][0] for line in responses_path(out, "baseline").read_text().splitlines()]
    hand = [1.0 if len(a) > len(b) else 0.5 if len(a) == len(b) else 0.0 for a, b in zip(policy, baseline)]
    assert report["win_rate"] == sum(hand) / 4
    assert report["mean_length"] == sum(map(len, policy)) / 4
    assert policy != baseline  # two different models answered
    assert "generated here" in report["meta"]["policy_responses"]
    assert report["meta"]["generation"] == "greedy, max_new_tokens 8, backend transformers"
    for png in ("lengths.png", "win_rates.png"):
        assert (out / "plots" / png).stat().st_size > 0

    # the report is never replaced without asking; with overwrite, nothing is redone
    with pytest.raises(ConfigError, match="report.json exists; set overwrite=true"):
        run_eval(eval_config(*args))
    log.write_text("")
    again = run_eval(eval_config(*args, "overwrite=true"))
    assert log.read_text() == ""  # judgments reused too
    assert again == report

    # killed after writing the responses and judgments but before recording them finished: the
    # stages resume their own files, nothing is generated or judged again
    manifest = json.loads((out / MANIFEST).read_text())
    assert list(manifest["stages"]) == ["policy_responses", "baseline_responses", "judgments"]
    for record in manifest["stages"].values():
        record["finished"] = False
    (out / MANIFEST).write_text(json.dumps(manifest))
    (out / "report.json").unlink()
    assert run_eval(eval_config(*args)) == report
    assert log.read_text() == ""

    # a model retrained in place (its weight file changed) does not reuse its old responses
    weights = baseline_dir / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    (out / "report.json").unlink()
    with pytest.raises(ConfigError, match=r"stage 'baseline_responses' finished with other inputs or settings "
                                          r"\(model's weight files changed\)"):
        run_eval(eval_config(*args))


def test_a_relative_output_dir_finishes_and_is_reused(tiny_model_dir, baseline_dir, judges, tmp_path, monkeypatch):
    """output_dir relative to the working directory (the demo's default `runs/demo` makes
    `runs/demo/eval/NAME`): each stage's outputs are found where it wrote them, and a rerun
    reuses them instead of refusing a stage that 'finished without writing' its file."""
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p, *_ in CASES[:2]])
    monkeypatch.chdir(tmp_path)
    args = [f"model={tiny_model_dir}", f"baseline_model={baseline_dir}", f"prompts={prompts}",
            "judge.type=callable", f"judge.function={judges}:longer", "generation.max_new_tokens=4",
            "batch_size=2", "output_dir=runs/eval", "bootstrap_resamples=50"]
    first = run_eval(eval_config(*args))
    assert (tmp_path / "runs" / "eval" / "report.json").exists()
    assert responses_path("runs/eval", "policy").exists() and not (tmp_path / "runs/eval/runs").exists()
    import prefero.generate

    monkeypatch.setattr(prefero.generate, "run_generate", lambda cfg: pytest.fail("responses generated again"))
    assert run_eval(eval_config(*args, "overwrite=true"))["win_rate"] == first["win_rate"]


def test_judging_resumes_after_a_kill_without_redoing(files, judges, tmp_path):
    prompts, policy, baseline = files
    log = Path(str(tmp_path / "judge_calls.log"))
    args = [f"outputs={policy}", f"baseline_outputs={baseline}", f"prompts={prompts}", "judge.type=callable",
            f"judge.function={judges}:longer", "batch_size=2", "bootstrap_resamples=200"]
    reference = run_eval(eval_config(*args, f"output_dir={tmp_path / 'whole'}"))

    # killed in the third call: the first batch (2 prompts, 4 calls; the identical pair is
    # not asked) is saved, the second is not
    log.write_text("")
    one_batch = sum(len(json.dumps([a, b]) + "\n") * 2 for _, a, b, _ in CASES[:2])
    Path(str(log) + ".fail").write_text(str(one_batch))
    with pytest.raises(DataError, match="killed"):
        run_eval(eval_config(*args, f"output_dir={tmp_path / 'cut'}"))
    assert len(log.read_text().splitlines()) == 5
    Path(str(log) + ".fail").unlink()
    log.write_text("")
    resumed = run_eval(eval_config(*args, f"output_dir={tmp_path / 'cut'}"))
    asked = sorted(log.read_text().splitlines())
    # only prompts 2..4 asked, each once in each order (prompt 5's responses are identical: a tie, not asked)
    assert asked == sorted(json.dumps(c) for _, a, b, _ in CASES[2:5] for c in ([a, b], [b, a]))
    same = lambda report: {k: v for k, v in report.items() if k not in ("meta", "output_dir")}  # noqa: E731
    assert same(resumed) == same(reference)
    rows = (tmp_path / "cut" / "judgments.jsonl").read_text().splitlines()
    assert [json.loads(r)["index"] for r in rows] == list(range(6))  # none lost, none twice


# --------------------------------------------------------------------------- held-out pairs


@pytest.fixture(scope="module")
def spread_dir(tmp_path_factory):
    """The tiny model with its output layer ×8: a random tiny LM gives every token about
    log(1/512), so A(y) of different responses differ by less than float32 can resolve;
    spread, they differ by ≥ 3e-3 (20× the tolerance) and ranks mean something."""
    from prefero.tiny import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok, seed=0)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    out = tmp_path_factory.mktemp("tiny-spread")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def padded_logps_float64(model_dir, pairs) -> torch.Tensor:
    """[n, 2] summed log-probs of chosen and rejected: every [prompt + completion] row
    right-padded into one float64 batch, full-vocabulary log_softmax, the completion
    positions summed — nothing of prefero's engine (packing, prefix sharing, chunking)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64, attn_implementation="eager").eval()
    rows = [(p.prompt_ids, c) for p in pairs for c in (p.chosen_ids, p.rejected_ids)]
    width = max(len(a) + len(b) for a, b in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    completion = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (prompt, comp) in enumerate(rows):
        ids[i, :len(prompt) + len(comp)] = torch.tensor(prompt + comp)
        mask[i, :len(prompt) + len(comp)] = 1
        completion[i, len(prompt):len(prompt) + len(comp)] = True
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits, dim=-1)
    # position t predicts token t + 1
    token = logp[:, :-1].gather(2, ids[:, 1:, None]).squeeze(2)
    return (token * completion[:, 1:]).sum(1).view(len(pairs), 2)


def test_pair_metrics_equal_a_padded_float64_forward(spread_dir, baseline_dir, tmp_path):
    from scipy.stats import rankdata

    from prefero.data import DataOptions, load_pairs
    from prefero.model import load_tokenizer

    beta = 0.1
    report = run_eval(eval_config(f"model={spread_dir}", f"ref_model={baseline_dir}", f"pairs={DEMO_PAIRS}",
                                  "loss=dpo", f"beta={beta}", f"output_dir={tmp_path / 'dpo'}"))
    pairs, _ = load_pairs(DEMO_PAIRS, load_tokenizer(str(spread_dir)), DataOptions())
    s = padded_logps_float64(spread_dir, pairs).numpy()
    s_ref = padded_logps_float64(baseline_dir, pairs).numpy()
    lengths = np.array([[len(p.chosen_ids), len(p.rejected_ids)] for p in pairs], dtype=np.float64)
    r = beta * (s - s_ref)
    a = s / lengths
    # what RTOL on each summed log-prob allows a margin r_w − r_l (four sums) and A_w − A_l to move
    r_tol = beta * 4 * RTOL * max(np.abs(s).max(), np.abs(s_ref).max())
    a_tol = 2 * RTOL * np.abs(a).max()
    # no pair (and no two A values) within that of a tie, so the discrete metrics must agree exactly
    assert np.min(np.abs(r[:, 0] - r[:, 1])) > r_tol
    assert np.min(np.diff(np.sort(a.reshape(-1)))) > a_tol
    got = report["pairs"]
    assert got["n_pairs"] == len(pairs) == 16
    assert report["reward_accuracy"] == np.mean(r[:, 0] > r[:, 1])
    assert got["reward_margin"] == pytest.approx(np.mean(r[:, 0] - r[:, 1]), abs=r_tol)
    assert report["likelihood_ranking_accuracy"] == np.mean(a[:, 0] > a[:, 1])
    ranks_a, ranks_n = rankdata(a.T.reshape(-1)), rankdata(lengths.T.reshape(-1))
    assert report["spearman_avg_logp_length"] == pytest.approx(np.corrcoef(ranks_a, ranks_n)[0, 1], rel=1e-12)
    assert json.loads((tmp_path / "dpo" / "pairs_data_report.json").read_text())["kept"] == 16
    assert "win_rate" not in report  # no baseline: pair metrics only

    # SimPO: r = β·A, no reference; its reward accuracy is the likelihood ranking (β > 0)
    simpo = run_eval(eval_config(f"model={spread_dir}", f"pairs={DEMO_PAIRS}", "loss=simpo",
                                 f"output_dir={tmp_path / 'simpo'}"))
    assert simpo["reward_accuracy"] == simpo["likelihood_ranking_accuracy"] == report["likelihood_ranking_accuracy"]
    assert simpo["pairs"]["reward_margin"] == pytest.approx(2.0 * np.mean(a[:, 0] - a[:, 1]), abs=2.0 * a_tol)
    # DPO without a reference model: no implicit reward, said so
    no_ref = run_eval(eval_config(f"model={spread_dir}", f"pairs={DEMO_PAIRS}", f"output_dir={tmp_path / 'n'}"))
    assert no_ref["reward_accuracy"] is None
    assert no_ref["meta"]["implicit_reward"] == "none: loss 'dpo' needs ref_model for its reward β·Δ"


def test_implicit_rewards_per_loss_hand_worked():
    from prefero.losses import get_loss

    logps = torch.tensor([[-10.0, -12.0], [-8.0, -6.0]])
    ref = torch.tensor([[-11.0, -11.0], [-7.0, -7.0]])
    lengths = [[4, 3], [2, 6]]
    cl, rl = [x[0] for x in lengths], [x[1] for x in lengths]

    def rewards(loss, beta=None, with_ref=True, **kw):
        """[r(y_w) of pair 1, 2, r(y_l) of pair 1, 2], or None."""
        got = implicit_rewards(get_loss(loss), beta, logps, cl, rl, ref if with_ref else None, **kw)
        return None if got is None else [x for t in got for x in t.tolist()]

    # Δ = S − S_ref: chosen [1, −1], rejected [−1, 1]
    assert rewards("dpo") == pytest.approx([0.1, -0.1, -0.1, 0.1], rel=1e-15)  # β = 0.1 default
    assert rewards("dpo", beta=0.5) == pytest.approx([0.5, -0.5, -0.5, 0.5], rel=1e-15)
    assert rewards("kto") == rewards("dpo")  # β·Δ per completion
    assert rewards("sppo") == pytest.approx([0.001, -0.001, -0.001, 0.001], rel=1e-12)  # β = 1/η, no P̂ given
    # SimPO β·A (β = 2): A_w = [−2.5, −4], A_l = [−4, −1]
    assert rewards("simpo", with_ref=False) == pytest.approx([-5.0, -8.0, -8.0, -2.0], rel=1e-15)
    assert rewards("cpo", with_ref=False) == pytest.approx([-1.0, -0.8, -1.2, -0.6], rel=1e-15)  # β·S
    assert rewards("dpo", with_ref=False) is None  # needs the reference
    assert rewards("sft", with_ref=False) is None  # no implicit reward


# --------------------------------------------------------------------------- bad input


def test_bad_outputs_files_name_file_row_and_field(files, judges, tmp_path):
    prompts, policy, baseline = files
    base = [f"baseline_outputs={baseline}", f"prompts={prompts}", "judge.type=callable",
            f"judge.function={judges}:goods", f"output_dir={tmp_path / 'out'}"]

    def fails(rows, match):
        path = write_jsonl(tmp_path / "bad.jsonl", rows)
        with pytest.raises(DataError, match=match):
            run_eval(eval_config(f"outputs={path}", *base))

    rows = [{"prompt": p, "response": a} for p, a, _, _ in CASES]
    fails(rows[:2] + rows[3:], rf"{re.escape(str(prompts))}: row 3, field 'prompt': "
                               r"no response to this prompt in .*bad\.jsonl "
                               r"\(1 of 6 prompts have none; responses are matched to prompts by their exact text\)")
    fails(rows[:1] + [{"prompt": CASES[1][0], "completions": ["a", "b"]}] + rows[2:],
          r"bad\.jsonl: row 2, field 'completions': expected a list with exactly one response, got 2 completions")
    fails(rows[:1] + [{"prompt": CASES[1][0], "answer": "a"}] + rows[2:],
          r"bad\.jsonl: row 2, field 'response': missing; expected the response as a string")
    fails(rows[:1] + [{"prompt": CASES[1][0], "response": 3}] + rows[2:],
          r"bad\.jsonl: row 2, field 'response': expected the response as a string, got int")
    fails(rows[:1] + [{"response": "a"}] + rows[2:], r"bad\.jsonl: row 2, field 'prompt': missing")
    assert not (tmp_path / "out" / "report.json").exists()


def test_bad_model_or_judge_fails_before_any_work(tiny_model_dir, files, judges, tmp_path):
    prompts, _, baseline = files
    args = [f"prompts={prompts}", f"baseline_outputs={baseline}", f"output_dir={tmp_path / 'out'}"]
    with pytest.raises(ConfigError, match=r"judge.function: file 'nope.py' not found"):
        run_eval(eval_config(f"model={tiny_model_dir}", *args, "judge.type=callable", "judge.function=nope.py:f"))
    with pytest.raises(ConfigError, match=r"^model: not found: .*missing$"):
        run_eval(eval_config(f"model={tmp_path / 'missing'}", *args, "judge.type=callable",
                             f"judge.function={judges}:goods"))
    with pytest.raises(ConfigError, match=r"^judge.model: not found"):
        run_eval(eval_config(f"model={tiny_model_dir}", *args, "judge.type=llm", f"judge.model={tmp_path / 'j'}"))
    assert not responses_path(tmp_path / "out", "policy").exists()  # nothing was generated


def test_unjudged_prompts_are_left_out_and_counted(files, judges, tmp_path):
    prompts, policy, baseline = files
    args = [f"outputs={policy}", f"baseline_outputs={baseline}", "judge.type=callable",
            f"judge.function={judges}:nothing"]
    report = run_eval(eval_config(*args, f"prompts={prompts}", f"output_dir={tmp_path / 'out'}"))
    # five prompts got no score; the identical pair is a tie without asking
    assert (report["n_prompts"], report["win_rate"]) == (1, 0.5)
    assert (report["meta"]["prompts_unjudged"], report["meta"]["unjudged_reasons"]) == (5, "null_score: 5")
    five = write_jsonl(tmp_path / "five.jsonl", [{"prompt": p} for p, *_ in CASES[:5]])
    with pytest.raises(DataError, match=r"no usable answer for any of the 5 prompts \(\{'null_score': 5\}\)"):
        run_eval(eval_config(*args, f"prompts={five}", f"output_dir={tmp_path / 'none'}"))


@pytest.mark.parametrize("overrides, message", [
    (["outputs=a.jsonl", "baseline_outputs=b.jsonl"], r"a win rate needs the `judge:` block"),
    (["model=m", "pairs=p.jsonl", "judge.type=callable", "judge.function=m:f"],
     r"the judge: block is only read for a win rate"),
    (["model=m", "pairs=p.jsonl", "loss=orpo", "beta=0.1"], r"beta is not a setting of loss 'orpo'"),
    (["model=m", "pairs=p.jsonl", "loss=simpo", "ref_model=r"], r"ref_model is not read for loss 'simpo'"),
    (["model=m", "pairs=p.jsonl", "loss=dpx"], r"loss: unknown loss 'dpx'; did you mean 'dpo'\?"),
    (["model=m", "pairs=p.jsonl", "max_prompt_length=1024"], r"max_prompt_length \(1024\) must be smaller"),
    (["outputs=a.jsonl", "baseline_outputs=b.jsonl", "judge.type=callable", "judge.function=m:f",
      "generation.temperature=0.7"], r"generation.temperature is only read when model or baseline_model answers"),
    (["outputs=a.jsonl", "baseline_outputs=b.jsonl", "judge.type=llm", "judge.model=j",
      "pointwise_preference=sigmoid"], r"pointwise_preference is not read by judge type 'llm'"),
    (["outputs=a.jsonl", "baseline_outputs=b.jsonl", "judge.type=callable"], r"judge.function is required"),
    (["model=m", "baseline_model=b", "prompts=p.jsonl", "judge.type=callable", "judge.function=m:f",
      "generation.top_p=0"], r"generation.top_p must be in \(0, 1\], got 0"),
    (["model=m", "baseline_model=b", "prompts=p.jsonl", "judge.type=callable", "judge.function=m:f",
      "generation.temprature=0"], r"unknown config key 'generation.temprature'.*did you mean 'generation.temperature'"),
])
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        eval_config(*overrides)


def test_example_config_loads_with_its_blocks():
    cfg = load_config(ROOT / "examples" / "eval.yaml", ["generation.temperature=0.7", "judge.type=callable",
                                                        "judge.model=null", "judge.function=m:f"], cls=EvalConfig)
    assert (cfg.generation.temperature, cfg.judge.type, cfg.pointwise_rule()) == (0.7, "callable", "verdict")
    assert load_config(ROOT / "examples" / "eval.yaml", cls=EvalConfig).judge.compares
