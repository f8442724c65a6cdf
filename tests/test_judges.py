"""Judges: reward-model scores == a plain padded HF forward and == `prefero rm`'s scoring; the
LLM judge's probabilities == a softmax over the answer tokens' logits worked by hand; position
bias removed exactly; callables checked (the OpenAI judge: tests/test_openai_judge.py);
`prefero judge` resumes without redoing or duplicating rows; bad input names file, row, field.

Tolerances: the judge runs several rows in one padded batch, the hand computation one row at
a time. The two differ only in the order float32 sums are taken (matmul/attention blocking),
relative error ~ eps·√(reduction length)·depth ≈ 1.2e-7·16·2 < 1e-5 for the 2-layer, width-64
tiny model; 1e-5 is the bound, not a tuned value.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jsonl_files import write_jsonl
from prefero.cli import main
from prefero.data import DataError, DataOptions, load_pairs
from prefero.data.formats import Where
from prefero.judges import (
    Item,
    JudgeError,
    build_judge,
    compare_by_scores,
    ordered,
    pairwise_matrices,
    sigmoid,
    win_rates,
)
from prefero.judges.callable import CallableJudge, load_function
from prefero.judges.config import JudgeConfig, JudgeRunConfig, check_template
from prefero.judges.llm import LLMJudge, label_probabilities, needed_prefixes
from prefero.judges.prompts import PAIRWISE_TEMPLATE, POINTWISE_TEMPLATE
from prefero.judges.reward_model import RewardModelJudge
from prefero.judges.run import read_items, report_path, run_judge
from prefero.model import load_causal_lm, load_tokenizer
from prefero.options import ConfigError, load_config
from prefero.scoring import load_reward_model, score

RTOL = 1e-5  # see the module docstring
ROOT = Path(__file__).resolve().parents[1]


def item(prompt, completions, row=1, record=None):
    return Item(prompt, completions, Where("rows.jsonl", row), record or {"prompt": prompt, "completions": completions})



ITEMS = [
    item("Tell me about the sea.", ["It is wide and blue.", "No.", "Whatever, the sea is boring."], row=1),
    item("What is a volcano like?", ["Hot!", "A mountain that can erupt with lava and ash.", ""], row=2),
    item([{"role": "user", "content": "Describe the moon briefly."}],
         [[{"role": "assistant", "content": "Grey, dusty and bright at night."}], "I refuse."], row=3),
]


# --------------------------------------------------------------------------- reward model


@pytest.fixture(scope="module")
def rm_dir(tiny_model_dir, tmp_path_factory):
    """A saved reward model, as `prefero rm` leaves one: the tiny LM with a scalar head."""
    tok = load_tokenizer(str(tiny_model_dir))
    model = load_reward_model(str(tiny_model_dir), tok)
    torch.nn.init.normal_(model.score.weight, std=1.0)  # a fresh head scores ~0 for everything
    out = tmp_path_factory.mktemp("rm")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def rm_judge(rm_dir):
    judge = build_judge(JudgeConfig(type="reward_model", model=str(rm_dir)).validate())
    judge.batch_size = 3  # 8 completions -> three padded forwards of mixed rows
    return judge


def test_a_causal_lm_is_not_a_reward_model_judge(tiny_model_dir):
    with pytest.raises(ConfigError, match=r"^judge\.model: .* is not a trained reward model: the checkpoint has "
                                          r"no weights for score\.weight"):
        build_judge(JudgeConfig(type="reward_model", model=str(tiny_model_dir)).validate())


def test_reward_model_scores_equal_a_padded_hf_forward(rm_judge):
    tok, model = rm_judge.tokenizer, rm_judge.model
    got = rm_judge.score(ITEMS[:2])
    # by hand: [BOS] + prompt, completion + EOS, tokenized apart (plain strings: no chat template)
    rows = []
    for it in ITEMS[:2]:
        prompt = [tok.bos_token_id] + tok.encode(it.prompt, add_special_tokens=False)
        rows += [prompt + tok.encode(c, add_special_tokens=False) + [tok.eos_token_id] for c in it.completions]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits[:, 0]
    flat = torch.tensor([s for row in got for s in row])
    assert [len(r) for r in got] == [3, 3]  # the blank completion too: scored on its EOS
    torch.testing.assert_close(flat, want, rtol=RTOL, atol=0)
    assert flat.std() > 0.1  # the scores differ: equality above is not 0 == 0


def test_reward_model_scores_equal_prefero_rm_scoring(rm_judge, tmp_path):
    """Judging [chosen, rejected] gives what `prefero rm` evaluation computes from load_pairs'
    ids, for string and conversational records (chat template, one EOS)."""
    records = [
        {"prompt": ITEMS[0].prompt, "chosen": ITEMS[0].completions[0], "rejected": ITEMS[0].completions[2]},
        {"prompt": ITEMS[2].prompt, "chosen": ITEMS[2].completions[0], "rejected": ITEMS[2].completions[1]},
    ]
    pairs, _ = load_pairs(write_jsonl(tmp_path / "p.jsonl", records), rm_judge.tokenizer,
                          DataOptions(max_length=1024, max_prompt_length=512))
    judged = rm_judge.score([item(r["prompt"], [r["chosen"], r["rejected"]]) for r in records])
    for p, scores in zip(pairs, judged):
        want = score(rm_judge.model, rm_judge.tokenizer, p.prompt_ids, [p.chosen_ids, p.rejected_ids])
        torch.testing.assert_close(torch.tensor(scores), want, rtol=RTOL, atol=0)


def test_reward_model_scores_a_cut_completion_without_a_stop_token(rm_judge):
    """A completion generate cut at max_new_tokens is scored as generated: an EOS after it
    would score an answer the policy never finished as a finished one."""
    tok, it = rm_judge.tokenizer, ITEMS[0]
    cut_item = item(it.prompt, it.completions, record={"finish_reasons": ["length", "stop", "stop"]})
    got = rm_judge.score([cut_item])[0]
    prompt = [tok.bos_token_id] + tok.encode(it.prompt, add_special_tokens=False)
    comps = [tok.encode(c, add_special_tokens=False) for c in it.completions]
    want = score(rm_judge.model, tok, prompt, [comps[0]] + [c + [tok.eos_token_id] for c in comps[1:]])
    torch.testing.assert_close(torch.tensor(got), want, rtol=RTOL, atol=0)
    assert got[0] != rm_judge.score([it])[0][0]  # the EOS changes the score: the test can fail


def test_reward_model_truncates_as_training_does_and_counts_it(rm_dir, rm_judge):
    cfg = JudgeConfig(type="reward_model", model=str(rm_dir), max_length=12, max_prompt_length=6).validate()
    judge = RewardModelJudge(cfg, model=rm_judge.model, tokenizer=rm_judge.tokenizer)
    it = ITEMS[1]
    got = judge.score([it])[0]
    tok = rm_judge.tokenizer
    prompt = [tok.bos_token_id] + tok.encode(it.prompt, add_special_tokens=False)
    prompt = prompt[:1] + prompt[-5:]  # the prompt keeps BOS and its end
    budget = 12 - len(prompt)
    comps = [(tok.encode(c, add_special_tokens=False) + [tok.eos_token_id])[:budget] for c in it.completions]
    want = score(rm_judge.model, tok, prompt, comps)
    torch.testing.assert_close(torch.tensor(got), want, rtol=RTOL, atol=0)
    assert judge.stats["prompt_truncated"] == 1
    assert judge.stats["completion_truncated"] == 1  # "Hot!" fits, the long one does not


# --------------------------------------------------------------------------- LLM judge


@pytest.fixture(scope="module")
def llm_judge(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    model = load_causal_lm(str(tiny_model_dir), attention="sdpa").eval()
    with torch.no_grad():  # a random tiny LM is near uniform over the answers; spread it
        model.lm_head.weight.mul_(8.0)
    judge = LLMJudge(JudgeConfig(type="llm", model=str(tiny_model_dir)).validate(), model=model, tokenizer=tok)
    judge.batch_size = 3
    return judge


def chat_ids(tok, text):
    rendered = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    return tok.encode(rendered, add_special_tokens=False)


def last_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].double()


def test_label_probabilities_hand_worked():
    """Answers "1", "2", "10" with "10" = tokens (1, 0). First token restricted to {1, 2}:
    P(1) = .3/.4 = .75, P(2) = .25. After "1", P(0) = .4 over the whole vocabulary, so
    P("10") = .75·.4 = .30 and P("1") = .75·(1 − .4) = .45. Sum = 1."""
    labels = [(1,), (2,), (1, 0)]
    assert needed_prefixes(labels) == [(), (1,)]
    logprobs = {(): {1: math.log(0.3), 2: math.log(0.1)}, (1,): {0: math.log(0.4)}}
    assert label_probabilities(logprobs, labels) == pytest.approx([0.45, 0.25, 0.30], rel=1e-12)


def test_llm_rating_equals_hand_softmax_over_answer_tokens(llm_judge):
    tok, model = llm_judge.tokenizer, llm_judge.model
    digits = [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    assert tok.encode("10", add_special_tokens=False) == [digits[1], digits[0]]  # "10" is two tokens here
    it = ITEMS[0]
    got = llm_judge.score([it, ITEMS[1]])[0]
    for c, rating in zip(it.completions, got):
        ids = chat_ids(tok, POINTWISE_TEMPLATE.format(prompt=it.prompt, completion=c))
        first = torch.softmax(last_logits(model, ids)[digits[1:]], 0)  # restricted to "1".."9"
        zero = torch.softmax(last_logits(model, ids + [digits[1]]), 0)[digits[0]]  # P("0" | "1")
        probs = [first[0] * (1 - zero)] + list(first[1:]) + [first[0] * zero]  # ratings 1..10
        want = sum(r * p for r, p in zip(range(1, 11), probs)).item()
        assert rating == pytest.approx(want, rel=RTOL)
    assert max(got) - min(got) > 1e-3  # the completions are told apart


def test_llm_pairwise_equals_hand_softmax_and_is_debiased_exactly(llm_judge):
    tok, model = llm_judge.tokenizer, llm_judge.model
    a_id, b_id = tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")
    it = ITEMS[0]

    def p_first(x, y):  # P("A") with x shown as A, by hand
        ids = chat_ids(tok, PAIRWISE_TEMPLATE.format(prompt=it.prompt, a=x, b=y))
        return torch.softmax(last_logits(model, ids)[[a_id, b_id]], 0)[0].item()

    c = it.completions
    one_order = llm_judge.choice_probs([it], [0], [1])[0]
    assert one_order[0] == pytest.approx(p_first(c[0], c[1]), rel=RTOL)
    assert sum(one_order) == pytest.approx(1.0, rel=1e-12)
    want01 = 0.5 * (p_first(c[0], c[1]) + (1 - p_first(c[1], c[0])))  # ½[P(A | 0, 1) + P(B | 1, 0)]
    asked = []
    original = llm_judge.choice_probs
    llm_judge.choice_probs = lambda items, a, b: asked.append(len(items)) or original(items, a, b)
    try:
        forward, backward = llm_judge.compare([(it, 0, 1), (it, 1, 0)])
    finally:
        del llm_judge.choice_probs
    assert forward == pytest.approx(want01, rel=RTOL)
    # exactly, not approximately: the pair is computed once (its two orders shown to the
    # model, 2 prompts), the other request is 1 − it, whatever the batch or thread count
    assert asked == [2]
    assert backward == 1.0 - forward
    # this model is position-biased: one order alone would not be 1 − the other
    assert abs(p_first(c[0], c[1]) - (1 - p_first(c[1], c[0]))) > 1e-3

    matrix = pairwise_matrices(llm_judge, [it])[0]
    rev = pairwise_matrices(llm_judge, [item(it.prompt, c[::-1])])[0]
    for i in range(3):
        assert matrix[i][i] == 0.5
        for j in range(3):
            if i < j:
                assert matrix[j][i] == 1.0 - matrix[i][j]
            assert rev[2 - i][2 - j] == pytest.approx(matrix[i][j], rel=RTOL)  # listing order does not matter
    assert matrix[0][1] == pytest.approx(want01, rel=RTOL)
    assert win_rates(matrix) == pytest.approx([sum(r) / 3 for r in matrix], rel=1e-12)


def test_llm_without_chat_template_answers_after_a_cue(llm_judge, tiny_model_dir):
    """A plain LM reads "...\nAnswer:" and answers " A" or " B". This tokenizer writes " A" as
    one token (ĠA) but " B" as two (Ġ, B): the answers form a trie whose first level is
    {ĠA, Ġ}, and after Ġ only B continues an answer, so P(A) = e^l(ĠA) / (e^l(ĠA) + e^l(Ġ))."""
    tok = load_tokenizer(str(tiny_model_dir))
    tok.chat_template = None
    judge = LLMJudge(JudgeConfig(type="llm", model=str(tiny_model_dir)).validate(), model=llm_judge.model, tokenizer=tok)
    space, a_tok = tok.convert_tokens_to_ids("Ġ"), tok.convert_tokens_to_ids("ĠA")
    assert judge.choice_labels == [(a_tok,), (space, tok.convert_tokens_to_ids("B"))]
    it = ITEMS[1]
    text = PAIRWISE_TEMPLATE.format(prompt=it.prompt, a=it.completions[0], b=it.completions[1]) + "\nAnswer:"
    ids = tok.encode(text)  # with the tokenizer's BOS
    assert ids[0] == tok.bos_token_id
    want = torch.softmax(last_logits(llm_judge.model, ids)[[a_tok, space]], 0)[0].item()
    got = judge.choice_probs([it], [0], [1])[0]
    assert got[0] == pytest.approx(want, rel=RTOL) and sum(got) == pytest.approx(1.0, rel=1e-12)


def test_reward_model_as_messages_reads_strings_through_the_chat_template(rm_dir, rm_judge):
    cfg = JudgeConfig(type="reward_model", model=str(rm_dir), as_messages=True).validate()
    judge = RewardModelJudge(cfg, model=rm_judge.model, tokenizer=rm_judge.tokenizer)
    strings = item("Describe the moon briefly.", ["Grey.", "No."])
    messages = item([{"role": "user", "content": "Describe the moon briefly."}],
                    [[{"role": "assistant", "content": "Grey."}], [{"role": "assistant", "content": "No."}]])
    assert judge.score([strings]) == rm_judge.score([messages])  # the same token rows: equal bit for bit
    assert rm_judge.score([strings]) != rm_judge.score([messages])  # by default strings skip the template


def test_identical_completions_compare_to_one_half_without_asking(llm_judge):
    it = item("Hi?", ["Same.", "Same."])
    assert llm_judge.compare([(it, 0, 1)]) == [0.5]


# --------------------------------------------------------------------------- comparisons


def test_score_judges_compare_by_bradley_terry():
    class Fixed:
        def score(self, items):
            return [[0.0, math.log(3), None]] * len(items)

    it = item("p", ["a", "b", "c"])
    p01, p10, p02 = compare_by_scores(Fixed(), [(it, 0, 1), (it, 1, 0), (it, 0, 2)])
    assert p01 == pytest.approx(0.25, rel=1e-12) and p10 == 1.0 - p01  # σ(−ln 3) = 1/4
    assert p02 is None  # no score, no comparison
    assert sigmoid(-800.0) == 0.0 and sigmoid(800.0) == 1.0  # no overflow
    canonical, flipped = ordered([(it, 1, 0), (item("p", ["x", "x"]), 0, 1)])
    assert [(i, j) for _, i, j in canonical] == [(0, 1)] and flipped == [(0, True), None]
    # both orders of one pair, and a repeated text, are one question: asked once
    rep = item("p", ["a", "b", "a"])
    canonical, flipped = ordered([(rep, 0, 1), (rep, 1, 0), (rep, 2, 1), (rep, 0, 2)])
    assert [(i, j) for _, i, j in canonical] == [(0, 1)] and flipped == [(0, False), (0, True), (0, False), None]


# --------------------------------------------------------------------------- callable judge


def test_callable_judge_module_and_file_and_row(tmp_path, monkeypatch):
    (tmp_path / "checks_mod.py").write_text(
        "def by_length(prompt, completions):\n    return [len(c) for c in completions]\n"
        "def with_row(prompt, completions, row):\n    return [float(c == row['answer']) for c in completions]\n"
        "def wrong_count(prompt, completions):\n    return [1.0]\n"
        "def text(prompt, completions):\n    return ['good'] * len(completions)\n"
        "def nan(prompt, completions):\n    return [float('nan')] * len(completions)\n"
        "def boom(prompt, completions):\n    raise ValueError('cannot parse')\n"
        "def maybe(prompt, completions):\n    return [True, None]\n"
        "NOT_A_FUNCTION = 3\n")
    monkeypatch.chdir(tmp_path)
    judge = lambda spec: CallableJudge(JudgeConfig(type="callable", function=spec).validate())  # noqa: E731
    it = item("q", ["four", "seven"], row=7, record={"prompt": "q", "completions": ["four", "seven"], "answer": "seven"})
    assert judge("checks_mod:by_length").score([it]) == [[4.0, 5.0]]
    assert judge(str(tmp_path / "checks_mod.py") + ":with_row").score([it]) == [[0.0, 1.0]]
    maybe = judge("checks_mod:maybe")
    assert maybe.score([it]) == [[1.0, None]] and maybe.stats["null_scores_returned"] == 1
    with pytest.raises(DataError, match=r"rows\.jsonl: row 7: judge\.function 'checks_mod:wrong_count' returned 1 scores for 2"):
        judge("checks_mod:wrong_count").score([it])
    with pytest.raises(DataError, match=r"row 7, field 'completions\[0\]': .*returned 'good' \(str\); expected a number"):
        judge("checks_mod:text").score([it])
    with pytest.raises(DataError, match=r"row 7, field 'completions\[0\]': .*returned nan; expected a finite"):
        judge("checks_mod:nan").score([it])
    with pytest.raises(DataError, match=r"row 7: judge\.function 'checks_mod:boom' raised ValueError: cannot parse"):
        judge("checks_mod:boom").score([it])
    import numpy as np

    assert CallableJudge(JudgeConfig(type="callable", function="m:f"), fn=lambda p, c: [np.True_, np.False_]) \
        .score([item("p", ["a", "b"])]) == [[1.0, 0.0]]  # numpy's bools count as Python's do
    for spec, message in [("no_such_module:f", r"cannot import 'no_such_module': ModuleNotFoundError"),
                          ("checks_mod:missing", r"'checks_mod' has no attribute 'missing'"),
                          ("checks_mod:NOT_A_FUNCTION", r"'checks_mod:NOT_A_FUNCTION' is a int, not a function"),
                          ("checks_mod", r"expected 'module:function'"),
                          ("nowhere.py:f", r"file 'nowhere.py' not found")]:
        with pytest.raises(ConfigError, match=r"^judge\.function: " + message):
            load_function(spec)


def test_example_verifiers(monkeypatch):
    monkeypatch.chdir(ROOT)
    arithmetic = load_function("examples/verifiers.py:arithmetic")
    assert arithmetic("What is 12 + 7?", ["It is 19.", "The answer is 20", "19, I think. Or 21?", "no idea"]) == \
        [1.0, 0.0, 0.0, 0.0]  # the last number given is the answer
    assert arithmetic("What is 6 * 7?", ["42"]) == [1.0]
    assert arithmetic("Write a poem.", ["x"]) == [None]  # not an arithmetic prompt: no verdict
    exact = load_function("examples/verifiers.py:exact_answer")
    assert exact("Capital of France?", ["Paris.", " paris", "Lyon"], row={"answer": "Paris"}) == [1.0, 1.0, 0.0]


# --------------------------------------------------------------------------- prefero judge


VERIFIER = """
import os
def lengths(prompt, completions):
    log = os.environ["JUDGE_CALL_LOG"]
    with open(log, "a") as f:
        f.write(prompt + "\\n")
    if os.environ.get("JUDGE_DIE_AT") and sum(1 for _ in open(log)) == int(os.environ["JUDGE_DIE_AT"]):
        raise KeyboardInterrupt  # stands in for a kill: no cleanup, no finish()
    return [len(c) % 5 for c in completions]
"""


def judge_config(tmp_path, *extra):
    return load_config(None, [f"input={tmp_path / 'gen.jsonl'}", f"output={tmp_path / 'judged.jsonl'}",
                              "judge.type=callable", f"judge.function={tmp_path / 'verifier.py'}:lengths",
                              "batch_size=2", *extra], cls=JudgeRunConfig)


def test_run_judge_rows_report_and_resume_without_redoing(tmp_path, monkeypatch):
    (tmp_path / "verifier.py").write_text(VERIFIER)
    rows = [{"prompt": f"p{i}", "completions": ["a" * i, "bb", "ccc"][: 2 + i % 2], "index": 100 + i, "extra": i}
            for i in range(7)]
    write_jsonl(tmp_path / "gen.jsonl", rows)
    monkeypatch.setenv("JUDGE_CALL_LOG", str(tmp_path / "calls.log"))
    monkeypatch.setenv("JUDGE_DIE_AT", "5")  # dies on the 5th row: batches {0,1}, {2,3} saved
    with pytest.raises(KeyboardInterrupt):
        run_judge(judge_config(tmp_path))
    assert not (tmp_path / "judged.jsonl").exists()
    assert len((tmp_path / "judged.partial.jsonl").read_text().splitlines()) == 4
    monkeypatch.delenv("JUDGE_DIE_AT")
    report = run_judge(judge_config(tmp_path))
    calls = (tmp_path / "calls.log").read_text().split()
    assert calls == ["p0", "p1", "p2", "p3", "p4", "p4", "p5", "p6"]  # only the row that died is asked again
    out = [json.loads(x) for x in (tmp_path / "judged.jsonl").read_text().splitlines()]
    want = [[len(c) % 5 for c in r["completions"]] for r in rows]
    assert [r["scores"] for r in out] == want
    # each row keeps its input's own index (resume keys on it too)
    assert [r["index"] for r in out] == [100 + i for i in range(7)] and [r["extra"] for r in out] == list(range(7))
    assert not list(tmp_path.glob("judged.partial*"))
    # uninterrupted run: the same bytes
    run_judge(judge_config(tmp_path, f"output={tmp_path / 'again.jsonl'}"))
    assert (tmp_path / "again.jsonl").read_bytes() == (tmp_path / "judged.jsonl").read_bytes()
    flat = [float(s) for r in want for s in r]
    assert report["rows"] == 7 and report["completions"] == len(flat) == 17
    assert report["scores"]["mean"] == pytest.approx(sum(flat) / 17, rel=1e-12)
    assert report["scores"]["std"] == pytest.approx(math.sqrt(sum((x - sum(flat) / 17) ** 2 for x in flat) / 17), rel=1e-12)
    # scores: [0,2] [1,2,3] [2,2] [3,2,3] [4,2] [0,2,3] [1,2]: row 2 all tied, row 3 best tied
    assert want[2] == [2, 2] and want[3] == [3, 2, 3]
    assert report["ties"] == {"rows_all_tied": 1, "rows_best_tied": 1}
    assert report["null_scores"] == 0 and report["this_run"]["rows_resumed"] == 4
    assert json.loads(report_path(str(tmp_path / "judged.jsonl")).read_text()) == report
    with pytest.raises(ConfigError, match="already exists; set overwrite=true"):
        run_judge(judge_config(tmp_path))


LENGTHS = "def lengths(prompt, completions):\n    return [float(len(c)) for c in completions]\n"


def test_judge_keeps_the_input_index_and_finish_reasons_so_filtering_changes_no_label(tmp_path):
    """Rows 17 and 42 stay 17 and 42 (not 0 and 1), generate's finish_reasons ride along,
    and `rejected: random` (seeded by index) picks the same for a row judged among all
    rows or after the others were filtered out."""
    (tmp_path / "v.py").write_text(LENGTHS)
    rows = [{"index": i, "prompt": f"p{i}", "completions": ["a" * (k + 1) for k in range(6)],
             "finish_reasons": ["stop"] * 5 + ["length"]} for i in range(60)]
    write_jsonl(tmp_path / "all.jsonl", rows)
    write_jsonl(tmp_path / "some.jsonl", [rows[17], rows[42]] + rows[50:])

    def judge_and_label(name):
        assert main(["judge", f"input={tmp_path / name}.jsonl", f"output={tmp_path / name}.judged.jsonl",
                     "judge.type=callable", f"judge.function={tmp_path / 'v.py'}:lengths"]) == 0
        assert main(["label", f"input={tmp_path / name}.judged.jsonl", f"output={tmp_path / name}.pairs.jsonl",
                     "rejected=random", "keep_truncated=true"]) == 0
        judged = [json.loads(x) for x in open(f"{tmp_path / name}.judged.jsonl")]
        return judged, {r["index"]: r["rejected"] for r in map(json.loads, open(f"{tmp_path / name}.pairs.jsonl"))}

    judged, every = judge_and_label("all")
    some_judged, some = judge_and_label("some")
    assert [r["index"] for r in some_judged][:3] == [17, 42, 50]
    assert some_judged[0]["finish_reasons"] == ["stop"] * 5 + ["length"]
    assert some == {i: every[i] for i in some}
    assert len(set(every.values())) > 1  # the random choice does vary over rows
    # duplicated indices (two generate files concatenated) cannot be ids: positions then
    write_jsonl(tmp_path / "dup.jsonl", [rows[0], rows[0]])
    assert main(["judge", f"input={tmp_path / 'dup.jsonl'}", f"output={tmp_path / 'dup.judged.jsonl'}",
                 "judge.type=callable", f"judge.function={tmp_path / 'v.py'}:lengths"]) == 0
    assert [json.loads(x)["index"] for x in open(tmp_path / "dup.judged.jsonl")] == [0, 1]


def test_non_finite_or_overflowing_scores_are_refused_naming_the_row(tmp_path, rm_judge, capsys):
    """10**400 from a callable, NaN from a reward model: one line naming the row, and
    nothing of the batch written (no NaN in judged.jsonl, no report lost to pstdev)."""
    (tmp_path / "huge.py").write_text("def huge(prompt, completions):\n    return [1, 10**400]\n")
    write_jsonl(tmp_path / "gen.jsonl", [{"prompt": "p", "completions": ["a", "b"]}])
    code = main(["judge", f"input={tmp_path / 'gen.jsonl'}", f"output={tmp_path / 'j.jsonl'}", "judge.type=callable",
                 f"judge.function={tmp_path / 'huge.py'}:huge"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "gen.jsonl: row 1, field 'completions[1]'" in err and "too large" in err
    assert not (tmp_path / "j.jsonl").exists()
    assert not (tmp_path / "j.partial.jsonl").exists() or not (tmp_path / "j.partial.jsonl").read_text()
    from prefero.judges.run import judge_rows

    weight = rm_judge.model.score.weight.data.clone()
    rm_judge.model.score.weight.data.fill_(float("nan"))
    try:
        with pytest.raises(JudgeError, match=r"^rows\.jsonl: row 2, field 'completions\[0\]': the judge gave the "
                                             r"score nan; expected a finite number"):
            judge_rows(rm_judge, [ITEMS[1]], "pointwise", [0])
    finally:
        rm_judge.model.score.weight.data.copy_(weight)


def test_bad_input_names_file_row_and_field(tmp_path):
    good = {"prompt": "p", "completions": ["a", "b"]}
    for bad, field, problem in [({"completions": ["a"]}, "prompt", "missing"),
                                ({"prompt": "p"}, "completions", "missing"),
                                ({"prompt": "p", "completions": "a"}, "completions", "expected a non-empty list"),
                                ({"prompt": "p", "completions": []}, "completions", "expected a non-empty list of completions, got an empty list"),
                                ({"prompt": "p", "completions": ["a", 3]}, r"completions\[1\]", "expected a string")]:
        path = write_jsonl(tmp_path / "in.jsonl", [good, bad])
        with pytest.raises(DataError, match=rf"in\.jsonl: row 2, field '{field}': {problem}"):
            read_items(str(path))


def test_config_errors_name_the_key(tmp_path):
    base = [f"input={tmp_path / 'in.jsonl'}", f"output={tmp_path / 'o.jsonl'}"]
    cases = [
        ([], r"the `judge:` block is required"),
        (["judge.type=llm"], r"judge\.model is required for judge type 'llm'"),
        (["judge.type=lmm"], r"judge\.type: 'lmm' is not one of .*did you mean 'llm'"),
        (["judge.type=llm", "judge.model=m", "judge.base_url=http://x"], r"judge\.base_url is not a setting of judge type 'llm'"),
        (["judge.type=callable", "judge.function=m:f", "mode=pairwise"], r"mode: pairwise needs a judge that compares"),
        (["judge.type=openai", "judge.model=m"], r"judge\.base_url is required"),
        (["judge.type=openai", "judge.model=m", "judge.base_url=localhost:8000/v1"],
         r"^judge\.base_url: expected an http\(s\) URL"),
        (["judge.type=openai", "judge.model=m", "judge.base_url=http://x", "judge.top_logprobs=50"],
         r"judge\.top_logprobs must be in \[0, 20\], got 50"),
        (["judge.type=openai", "judge.model=m", "judge.base_url=http://x", "judge.max_unparseable=2"],
         r"judge\.max_unparseable must be in \[0, 1\], got 2"),
        (["judge.type=llm", "judge.model=m", "judge.pointwise_template=Rate {completion}"], r"must contain \{prompt\}"),
        (["judge.type=llm", "judge.model=m", "judge.pairwise_template={prompt} {a} {b} {c}"], r"unknown placeholder"),
        (["judge.type=callable", "judge.function=m:f", "batch_size=0"], r"batch_size must be >= 1, got 0"),
        (["judge.type=callable", "judge.function=m:f", "output=o.json"], r"output: 'o\.json' must end in \.jsonl"),
    ]
    for extra, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_config(None, base + extra, cls=JudgeRunConfig)
    check_template("{prompt} {{literal}} {completion}", {"prompt", "completion"}, "k")  # braces escaped: fine


@pytest.mark.slow
def test_judges_do_not_import_the_training_loop():
    code = ("import sys, prefero.judges.run, prefero.judges.llm, prefero.judges.reward_model, prefero.judges.openai, "
            "prefero.judges.callable, prefero.label; "
            "print(sorted(m for m in sys.modules if m in ('prefero.loop', 'prefero.train', 'prefero.reward_model')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_judge_type_switched_on_the_command_line_drops_the_files_other_keys(tmp_path, capsys):
    """examples/judge.yaml is a reward-model judge (model, max_length, max_prompt_length):
    `judge.type=callable` switches it without clearing those; a key given next to the
    switch that the new type does not read is still refused."""
    from prefero.judges.config import type_switch_overrides

    (tmp_path / "v.py").write_text(LENGTHS)
    write_jsonl(tmp_path / "gen.jsonl", [{"prompt": "p", "completions": ["a", "bb"]}])
    base = ["judge", str(ROOT / "examples" / "judge.yaml"), f"input={tmp_path / 'gen.jsonl'}",
            f"output={tmp_path / 'j.jsonl'}", "judge.type=callable", f"judge.function={tmp_path / 'v.py'}:lengths"]
    assert main(base) == 0
    assert json.loads((tmp_path / "j.jsonl").read_text())["scores"] == [1.0, 2.0]
    assert main(base + ["overwrite=true", "judge.model=m"]) == 2
    assert "judge.model is not a setting of judge type 'callable'" in capsys.readouterr().err
    values = {"judge": {"type": "reward_model", "model": "rm", "max_length": 64, "dtype": "bfloat16"}}
    assert type_switch_overrides(values, ["judge.type=llm"]) == ["judge.max_length=1024"]  # llm reads model, dtype
    assert type_switch_overrides({"eval": values}, ["eval.judge.type=openai", "eval.judge.dtype=float32"]) == \
        ["eval.judge.max_length=1024"]


def test_example_config_loads():
    cfg = load_config(ROOT / "examples" / "judge.yaml", cls=JudgeRunConfig)
    assert cfg.judge.type in ("reward_model", "llm", "openai", "callable")
    assert os.path.basename(cfg.output).endswith(".jsonl")
