"""The data pipeline through the command line, as a user runs it: generate -> judge -> label ->
train, every file read by the next stage unchanged."""

import json

import pytest

from jsonl_files import metrics
from prefero.cli import main

VERIFIER = '''
def longer_is_better(prompt, completions):
    """A verifiable reward: the completion's length in characters."""
    return [float(len(c)) for c in completions]
'''


def rows(path):
    return [json.loads(x) for x in open(path)]


@pytest.mark.parametrize("fmt, loss", [("pairs", "dpo"), ("sppo", "sppo")])
def test_generate_judge_label_train(fmt, loss, tiny_model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                               ["Describe the sea.", "Explain a question.", "Summarize the fox.", "Answer me."]))
    verifier = tmp_path / "verifier.py"
    verifier.write_text(VERIFIER)
    gen, judged, pairs = tmp_path / "gen.jsonl", tmp_path / "judged.jsonl", tmp_path / "pairs.jsonl"
    assert main(["generate", f"model={tiny_model_dir}", f"prompts={prompts}", f"output={gen}",
                 "num_completions=4", "max_new_tokens=16", "temperature=1.0", "seed=0"]) == 0
    assert main(["judge", f"input={gen}", f"output={judged}", "judge.type=callable",
                 f"judge.function={verifier}:longer_is_better"]) == 0
    # completions cut at max_new_tokens=16 are not finished answers: dropped by default, counted
    judged_rows = rows(judged)
    cut = 0
    for r in judged_rows:
        assert len(r["finish_reasons"]) == len(r["completions"])  # carried through the judge
        s = r["scores"]
        best, worst = s.index(max(s)), s.index(min(s))
        cut += "length" in (r["finish_reasons"][best], r["finish_reasons"][worst])
    assert cut > 0  # a tiny random model rarely ends an answer itself
    code = main(["label", f"input={judged}", f"output={tmp_path / 'strict.jsonl'}", f"format={fmt}"])
    assert json.load(open(tmp_path / "strict.report.json"))["dropped"] == {"truncated": cut}
    assert code == (2 if cut == 4 else 0)
    assert main(["label", f"input={judged}", f"output={pairs}", f"format={fmt}", "keep_truncated=true"]) == 0
    out = capsys.readouterr().out
    assert "prefero generate: 4 prompts x 4 completions" in out and "prefero judge: 4 rows" in out
    for row in rows(judged):
        assert row["scores"] == [float(len(c)) for c in row["completions"]]
    labelled = rows(pairs)
    assert sum(bool(r.get("chosen_truncated") or r.get("rejected_truncated")) for r in labelled) == cut
    by_prompt = {json.dumps(r["prompt"]): r for r in rows(judged)}
    for r in labelled:
        scores = by_prompt[json.dumps(r["prompt"])]["scores"]
        assert len(r["chosen"]) == max(map(len, by_prompt[json.dumps(r["prompt"])]["completions"]))
        assert max(scores) > min(scores)
        if fmt == "sppo":
            assert 0.5 <= r["p_chosen"] <= 1 and 0 <= r["p_rejected"] <= 0.5
    assert len(labelled) == 4  # sampled at temperature 1, no prompt's completions all tie
    beta = "beta=0.5" if loss == "sppo" else "beta=0.1"
    assert main(["train", f"model={tiny_model_dir}", f"train_data={pairs}", f"output_dir={tmp_path / 'run'}",
                 f"loss={loss}", beta, "batch_size=4", "max_steps=2", "max_length=128", "max_prompt_length=64"]) == 0
    trained = metrics(tmp_path / "run")
    assert len(trained) == 2
    if loss == "dpo":  # the policy starts as its reference: h = 0, loss = ln 2
        assert trained[0]["loss"] == pytest.approx(0.693147, rel=1e-4)
    else:  # Δ = 0 at step 1: η²[(p_w − ½)² + (p_l − ½)²] averaged over the step's (all 4) pairs, η = 2
        expected = sum(4 * ((r["p_chosen"] - 0.5) ** 2 + (r["p_rejected"] - 0.5) ** 2) for r in labelled) / 4
        assert trained[0]["loss"] == pytest.approx(expected, rel=1e-4)
