"""Bradley–Terry reward model: packed scores == HF's padded forward, the loss on hand-worked
numbers, learning the demo task, save/load round trip, LoRA, the `prefero rm` command."""

import json
import math
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from jsonl_files import metrics, rel_err, write_jsonl
from prefero.batching import pack_groups
from prefero.data import DataError, DataOptions, load_pairs
from prefero.demo import asset
from prefero.model import load_tokenizer
from prefero.options import ConfigError, load_config
from prefero.reward_model import (
    RewardConfig,
    RewardTrainer,
    load_reward_model,
    score,
    score_index,
    sequence_scores,
)


def rm_config(model_dir, out, *extra):
    return load_config(None, [
        f"model={model_dir}", f"train_data={asset('demo_train.jsonl')}",
        f"eval_data={asset('demo_eval.jsonl')}", f"output_dir={out}",
        "learning_rate=1e-3", "batch_size=8", "max_steps=30", "warmup_ratio=0.1", "seed=0",
        "max_length=128", "max_prompt_length=64", *extra,
    ], cls=RewardConfig)


def padded_scores(model, groups, pad_id):
    """The plain computation: right-padded [prompt + completion] rows through HF's forward."""
    rows = [list(p) + list(c) for p, cs in groups for c in cs]
    ids = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], attn[i, : len(r)] = torch.tensor(r), 1
    return model(input_ids=ids, attention_mask=attn).logits.squeeze(-1)


def reversed_demo(name, directory):
    """The demo pairs with chosen and rejected swapped. A fresh random head on the tiny LM
    already ranks the demo's own pairs right (its features separate the two styles), so
    learning is shown on the reverse: accuracy has to go from ~0 to > 0.9."""
    rows = [json.loads(x) for x in open(asset(name))]
    rows = [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]
    return write_jsonl(directory / name, rows)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """One 12-step run on the reversed demo data, shared by the learning and round-trip tests."""
    tmp = tmp_path_factory.mktemp("rm")
    trainer = RewardTrainer(rm_config(
        tiny_model_dir, tmp / "run", f"train_data={reversed_demo('demo_train.jsonl', tmp)}",
        f"eval_data={reversed_demo('demo_eval.jsonl', tmp)}", "max_steps=12", "learning_rate=2e-3",
    ))
    return trainer, trainer.run(), tmp / "run"


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_packed_scores_equal_hf_padded_forward(arch, pad_is_eos, tiny_model_dir, tiny_qwen_dir):
    model_dir = tiny_model_dir if arch == "llama" else tiny_qwen_dir
    tok = load_tokenizer(str(model_dir))
    model = load_reward_model(str(model_dir), tok).eval()
    nn.init.normal_(model.score.weight, std=1.0)  # a fresh head gives near-zero scores
    if pad_is_eos:  # what load_tokenizer sets up for tokenizers without a pad token
        model.config.pad_token_id = tok.eos_token_id
    pad_id = model.config.pad_token_id
    pairs, _ = load_pairs(asset("demo_eval.jsonl"), tok, DataOptions(max_length=128, max_prompt_length=64))
    groups = [(p.prompt_ids, [p.chosen_ids, p.rejected_ids]) for p in pairs[:6]]
    groups.append(([tok.bos_token_id], [[tok.eos_token_id], [40, 41, tok.eos_token_id]]))  # EOS-only completion
    with torch.no_grad():
        batch = pack_groups(groups)
        index = torch.tensor(score_index(groups, pad_id))
        packed = sequence_scores(model, batch, index)
        plain = padded_scores(model, groups, pad_id)
        one_prompt = score(model, tok, *groups[0][:1], groups[0][1] + groups[1][1])  # K=4 under one prompt
        plain_one = padded_scores(model, [(groups[0][0], groups[0][1] + groups[1][1])], pad_id)
        rows = pack_groups(groups, row_tokens=40)  # short rows, as the trainer runs under a dense mask
        in_rows = sequence_scores(model, rows, torch.tensor(score_index(groups, pad_id, rows.group_starts)))
    assert rows.input_ids.shape[0] > 1
    assert packed.shape == plain.shape == (14,)
    assert rel_err(packed, plain) < 1e-5
    assert rel_err(in_rows, plain) < 1e-5
    assert rel_err(one_prompt, plain_one) < 1e-5
    scored = batch.input_ids[0, index]
    if pad_is_eos:  # pools the last token before the trailing EOS
        assert (scored != tok.eos_token_id).all()
    else:  # pools the EOS that ends each completion
        assert (scored == tok.eos_token_id).all()


def test_score_index_rule():
    # group 0: prompt [1,2] at 0-1, completions at 2-4 and 5-6; group 1: prompt at 7, completion at 8-9
    groups = [([1, 2], [[3, 4, 9], [5, 9]]), ([7], [[9, 9]])]
    assert score_index(groups, pad_id=0) == [4, 6, 9]
    assert score_index(groups, pad_id=9) == [3, 5, 7]  # pad == EOS: last non-pad, the prompt if need be


class FixedScores(nn.Module):
    """Stands in for the model: returns given scores for the sequences in the batch."""

    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def forward(self, batch, index):
        assert index.numel() == batch.num_sequences == self.scores.numel()
        return self.scores


def test_bradley_terry_with_margin_and_centering_hand_worked(tiny_model_dir, tmp_path):
    """Two pairs with m = 0.5 and −1.0, c = 0.1; scores [r_w1, r_l1, r_w2, r_l2] = [2, 1, 0.5, 1.5]:
    pair 1: −logσ(2 − 1 − 0.5) + 0.1·(2 + 1)²     = log(1 + e^−0.5) + 0.9 = 0.474077 + 0.9 = 1.374077
    pair 2: −logσ(0.5 − 1.5 + 1.0) + 0.1·(0.5 + 1.5)² = log 2 + 0.4      = 0.693147 + 0.4 = 1.093147
    accuracy: pair 1 right (2 > 1), pair 2 wrong (0.5 < 1.5) → 0.5.
    """
    data = write_jsonl(tmp_path / "m.jsonl", [
        {"prompt": "Tell me about the sea.", "chosen": "Sure, it is lovely.", "rejected": "No.", "m": 0.5},
        {"prompt": "What is a lake?", "chosen": "Water.", "rejected": "Whatever.", "m": -1},
    ])
    trainer = RewardTrainer(rm_config(tiny_model_dir, tmp_path / "o", f"train_data={data}", "eval_data=null",
                                      "margin_column=m", "center_weight=0.1"))
    trainer.engine = FixedScores(torch.tensor([2.0, 1.0, 0.5, 1.5]))
    loss = trainer._forward(trainer.train_ds, [0, 1])["loss_tensor"]
    torch.testing.assert_close(loss, torch.tensor([1.374077, 1.093147]), rtol=0, atol=1e-6)
    trainer.engine = FixedScores(torch.tensor([0.5, 1.5, 2.0, 1.0]))  # pair order reversed: margins follow
    loss = trainer._forward(trainer.train_ds, [1, 0])["loss_tensor"]
    torch.testing.assert_close(loss, torch.tensor([1.093147, 1.374077]), rtol=0, atol=1e-6)
    trainer.engine = FixedScores(torch.tensor([2.0, 1.0, 0.5, 1.5]))
    metrics = trainer.evaluate(trainer.train_ds)
    assert metrics["loss"] == pytest.approx((1.374077 + 1.093147) / 2, abs=1e-6)
    assert metrics["accuracy"] == 0.5
    assert metrics["rewards/margins"] == pytest.approx(((2 - 1) + (0.5 - 1.5)) / 2)


def test_bad_margin_is_an_error_or_counted_skip(tiny_model_dir, tmp_path):
    good = {"prompt": "a", "chosen": "yes", "rejected": "no", "m": 1.0}
    missing = {k: v for k, v in good.items() if k != "m"}
    data = write_jsonl(tmp_path / "bad.jsonl", [good, {**good, "m": "big"}, missing])
    with pytest.raises(DataError, match=r"bad\.jsonl: row 2, field 'm'"):
        RewardTrainer(rm_config(tiny_model_dir, tmp_path / "e", f"train_data={data}", "eval_data=null",
                                "margin_column=m"))
    trainer = RewardTrainer(rm_config(tiny_model_dir, tmp_path / "s", f"train_data={data}", "eval_data=null",
                                      "margin_column=m", "on_bad_record=skip"))
    assert len(trainer.train_ds) == 1 and trainer.train_ds.margins.tolist() == [1.0]
    report = json.loads((tmp_path / "s" / "data_report.json").read_text())["train"]
    assert report["read"] == 3 and report["kept"] == 1 and report["dropped"] == {"bad_record:m": 2}


def test_reward_model_learns_demo_task(trained):
    trainer, history, out = trained
    rows = metrics(out)
    train = [r for r in rows if "split" not in r]
    evals = [r for r in rows if r.get("split") == "eval"]
    assert [r["step"] for r in train] == list(range(1, 13))
    for key in ["loss", "accuracy", "rewards/chosen", "rewards/rejected", "rewards/margins", "grad_norm", "lr"]:
        assert key in train[0], key
    assert set(evals[0]) == {"step", "split", "loss", "accuracy",
                             "rewards/chosen", "rewards/rejected", "rewards/margins"}
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=0.05)  # fresh head: r ≈ 0
    assert history["eval_start"]["accuracy"] < 0.1
    assert sum(r["accuracy"] for r in train[-3:]) / 3 > 0.9
    assert history["eval_end"]["accuracy"] > 0.9
    assert history["eval_end"]["loss"] < 0.2
    assert [r["step"] for r in evals] == [0, 12]
    report = json.loads((out / "data_report.json").read_text())
    assert report["train"]["kept"] == 64 and report["eval"]["kept"] == 16


def test_save_round_trip_gives_identical_scores(trained):
    from transformers import AutoModelForSequenceClassification

    trainer, _, out = trained
    assert (out / "model.safetensors").exists()
    reloaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = load_tokenizer(str(out))
    assert reloaded.config.num_labels == 1 and reloaded.config.pad_token_id == tok.pad_token_id
    trainer.model.eval()
    groups = trainer.eval_ds.groups
    for prompt, completions in groups[:4]:
        assert torch.equal(score(trainer.model, tok, prompt, completions), score(reloaded, tok, prompt, completions))
    with torch.no_grad():  # and HF's own padded forward of the saved model agrees
        ours = torch.cat([score(reloaded, tok, p, cs) for p, cs in groups])
        assert rel_err(ours, padded_scores(reloaded, groups, tok.pad_token_id)) < 1e-5
    # the saved model as a judge: chosen outranks rejected on held-out pairs
    assert (ours[0::2] > ours[1::2]).float().mean() > 0.9


class Interrupted(Exception):
    pass


def test_resume_continues_exactly(tiny_model_dir, tmp_path, monkeypatch):
    """The reward model shares the trainer's loop: a run stopped after step 5 and resumed from
    its step-4 checkpoint logs exactly the rows of the uninterrupted run."""
    from prefero.reward_model import RewardTrainer as RT

    def metrics(out):
        return [{k: v for k, v in json.loads(x).items() if k != "tokens/s"}
                for x in (out / "metrics.jsonl").read_text().splitlines()]

    common = ["max_steps=8", "save_steps=4", "eval_steps=4", "batch_size=4", "lora.r=4", "lora.dropout=0.1"]
    RT(rm_config(tiny_model_dir, tmp_path / "full", *common)).run()
    log = RT.log

    def log_then_stop(self, m, split="train"):
        log(self, m, split)
        if self.step == 5 and split == "train":
            raise Interrupted

    monkeypatch.setattr(RT, "log", log_then_stop)
    with pytest.raises(Interrupted):
        RT(rm_config(tiny_model_dir, tmp_path / "cut", *common)).run()
    monkeypatch.setattr(RT, "log", log)
    resumed = RT(rm_config(tiny_model_dir, tmp_path / "cut", *common, "resume=true"))
    assert resumed.step == 4
    resumed.run()
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "full")
    assert len([r for r in metrics(tmp_path / "full") if "split" not in r]) == 8


def test_lora_trains_head_and_merged_model_loads(tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "lora"
    trainer = RewardTrainer(rm_config(tiny_model_dir, out, "max_steps=3", "eval_data=null",
                                      "lora.r=4", "lora.merge=true", "learning_rate=1e-2"))
    head_before = trainer.model.get_base_model().score.modules_to_save["default"].weight.clone()
    trainer.run()
    assert (out / "adapter_model.safetensors").exists()
    assert not torch.equal(head_before, trainer.model.get_base_model().score.modules_to_save["default"].weight)
    merged = AutoModelForSequenceClassification.from_pretrained(out / "merged").eval()
    trainer.model.eval()
    prompt, completions = trainer.train_ds.groups[0]
    tok = trainer.tokenizer
    torch.testing.assert_close(score(merged, tok, prompt, completions), score(trainer.model, tok, prompt, completions),
                               rtol=1e-5, atol=1e-6)


def test_config_validation():
    with pytest.raises(ConfigError, match="did you mean 'center_weight'"):
        load_config(None, ["model=m", "train_data=d", "centre_weight=1"], cls=RewardConfig)
    with pytest.raises(ConfigError, match="center_weight must be >= 0"):
        load_config(None, ["model=m", "train_data=d", "center_weight=-1"], cls=RewardConfig)


def prefero(*args):
    return subprocess.run([sys.executable, "-m", "prefero", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cli_rm_end_to_end(tiny_model_dir, tmp_path):
    out = tmp_path / "rm"
    cfg = tmp_path / "rm.yaml"
    cfg.write_text(
        f"model: {tiny_model_dir}\ntrain_data: {asset('demo_train.jsonl')}\n"
        f"eval_data: {asset('demo_eval.jsonl')}\noutput_dir: {out}\n"
        "learning_rate: 1.0e-3\nbatch_size: 8\nmax_length: 128\nmax_prompt_length: 64\n"
    )
    r = prefero("rm", cfg, "max_steps=3", "seed=1")
    assert r.returncode == 0, r.stderr
    assert "eval step 3: accuracy" in r.stdout
    assert "prefero rm: done, 3 steps" in r.stdout
    assert re.search(r"\n  accuracy\s+[\d.]+\s+[\d.]+\n", r.stdout)  # eval before -> after
    rows = metrics(out)
    assert [x["step"] for x in rows if "split" not in x] == [1, 2, 3]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert json.loads((out / "reward_config.json").read_text())["seed"] == 1
    r = prefero("rm", cfg, "max_steps=3")  # never overwrite without asking
    assert r.returncode == 2 and "overwrite=true" in r.stderr and "Traceback" not in r.stderr


def test_cli_rm_help_lists_every_option(capsys):
    from prefero.cli import main
    from prefero.options import field_docs

    with pytest.raises(SystemExit) as exit_:
        main(["rm", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name, _, default, _ in field_docs(RewardConfig):
        assert name in out
    assert "lora.r" in out and "1e-05" in out
