"""`prefero pm`: a pairwise preference model, antisymmetric by construction, and its judge."""

import json
import math

import pytest
import torch

from jsonl_files import write_jsonl
from prefero.data.formats import Where
from prefero.demo import asset
from prefero.judges import Item
from prefero.judges.config import JudgeConfig
from prefero.judges.pairwise_model import PairwiseModelJudge
from prefero.options import ConfigError, load_config
from prefero.preference_model import PreferenceModelConfig, PreferenceModelTrainer
from prefero.scoring import load_reward_model, padded_scores, pairwise_group


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """40 steps on the demo pairs (learnable: helpful vs dismissive answers)."""
    out = tmp_path_factory.mktemp("pm") / "pm"
    cfg = load_config(None, [f"model={tiny_model_dir}", f"train_data={asset('demo_train.jsonl')}",
                             f"eval_data={asset('demo_eval.jsonl')}", f"output_dir={out}", "max_steps=40",
                             "batch_size=8", "learning_rate=1e-3", "max_length=128", "max_prompt_length=64",
                             "seed=0"], cls=PreferenceModelConfig)
    trainer = PreferenceModelTrainer(cfg)
    history = trainer.run()
    return out, trainer, history


def test_learns_held_out_pairs(trained):
    out, _, history = trained
    assert history["eval_end"]["accuracy"] >= 0.9
    assert history["eval_end"]["loss"] < history["eval_start"]["loss"] / 2
    settings = json.loads((out / "prefero_pairwise_model.json").read_text())
    assert settings["max_length"] == 128 and settings["max_prompt_length"] == 64


def test_saved_model_is_antisymmetric_and_matches_the_packed_training_scores(trained):
    """Each order through transformers' own padded forward, separately: d(w, l) = −d(l, w),
    and the eval's mean P(chosen ≻ rejected) is what the packed engine computed."""
    out, trainer, history = trained
    model = load_reward_model(str(out), trainer.tokenizer, trained=True).eval()
    pad = model.config.pad_token_id
    probs = []
    for prompt, (wl, lw) in trainer.eval_ds.groups:
        s_wl, s_lw = (padded_scores(model, [prompt + seq], pad)[0].item() for seq in (wl, lw))
        probs.append(1 / (1 + math.exp(-(s_wl - s_lw))))
        p_lw = 1 / (1 + math.exp(-(s_lw - s_wl)))
        assert probs[-1] + p_lw == pytest.approx(1.0, abs=1e-12)
    # packed (training) vs padded (saved model): fp32, 2 layers -> 1e-5 relative
    assert sum(probs) / len(probs) == pytest.approx(history["eval_end"]["p_chosen"], rel=1e-5)


def test_judge_matrix_feeds_label_and_is_exact_complement(trained, tmp_path):
    out, trainer, _ = trained
    judge = PairwiseModelJudge(JudgeConfig(type="pairwise_model", model=str(out)).validate())
    item = Item(prompt="Tell me about the moon.", completions=[
        "Sure! The moon is full of wonder.", "No. I refuse to answer that.", "Whatever, the moon is boring."],
        where=Where("x.jsonl", 1))
    requests = [(item, i, j) for i in range(3) for j in range(3) if i != j]
    p = dict(zip([(i, j) for _, i, j in requests], judge.compare(requests)))
    for i in range(3):
        for j in range(3):
            if i != j:
                assert p[i, j] + p[j, i] == pytest.approx(1.0, abs=1e-15)  # one logit, one rounding
    assert p[0, 1] > 0.5 and p[0, 2] > 0.5  # the helpful answer wins
    # by hand from the padded forward, as training tokenizes and truncates
    prompt, comps = judge.tokenize(item)
    prompt, (ab, ba) = pairwise_group(prompt, comps[0], comps[1], 128)
    s = padded_scores(judge.model, [prompt + ab, prompt + ba], judge.pad_id)
    want = torch.sigmoid(s[0] - s[1]).item()
    assert p[0, 1] == pytest.approx(want, rel=1e-6)
    assert judge.score([item])[0][0] == max(judge.score([item])[0])


def test_judge_cli_pairwise_then_label_pairs_and_sppo(trained, tmp_path):
    from prefero.cli import main

    out = trained[0]
    rows = [{"index": 7, "prompt": "Describe the sea.", "completions": ["Sure! The sea is beautiful.",
                                                                        "Whatever, the sea is boring."]},
            {"index": 9, "prompt": "Explain a storm.", "completions": ["I refuse to answer that.",
                                                                       "Of course. A storm is full of surprises."]}]
    gen = write_jsonl(tmp_path / "gen.jsonl", rows)
    judged = tmp_path / "judged.jsonl"
    assert main(["judge", f"input={gen}", f"output={judged}", "judge.type=pairwise_model",
                 f"judge.model={out}", "mode=pairwise"]) == 0
    out_rows = [json.loads(line) for line in judged.read_text().splitlines()]
    assert [r["index"] for r in out_rows] == [7, 9]
    for r in out_rows:
        m = r["pairwise"]
        assert m[0][1] + m[1][0] == pytest.approx(1.0, abs=1e-15) and m[0][0] == m[1][1] == 0.5
    for fmt in ("pairs", "sppo"):
        assert main(["label", f"input={judged}", f"output={tmp_path / fmt}.jsonl", f"format={fmt}"]) == 0
        labelled = [json.loads(line) for line in (tmp_path / f"{fmt}.jsonl").read_text().splitlines()]
        assert [r["chosen"] for r in labelled] == ["Sure! The sea is beautiful.",
                                                   "Of course. A storm is full of surprises."]


def test_judge_refuses_a_directory_that_is_not_a_pairwise_model(tiny_model_dir):
    with pytest.raises(ConfigError, match="is not a pairwise preference model .* train one with `prefero pm`"):
        PairwiseModelJudge(JudgeConfig(type="pairwise_model", model=str(tiny_model_dir)).validate())
