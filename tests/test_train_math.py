"""What the trainer computes, checked against independent computations: KTO's in-batch KL
pairs and z0, token-level NLL (exact under accumulation), weight decay only on matrices,
RMSprop with exact resume, file-order data."""

import json

import pytest
import torch
import torch.nn.functional as F

from jsonl_files import metrics
from prefero.config import load_config
from prefero.demo import asset
from prefero.loop import step_order
from prefero.losses import PairStats, cpo, orpo, sft
from prefero.optim import fused_adam, make_optimizer
from prefero.train import Trainer, kl_partners

EPS = torch.finfo(torch.float32).eps


def config(model_dir, out, *extra):
    return load_config(None, [
        f"model={model_dir}", f"train_data={asset('demo_train.jsonl')}", f"output_dir={out}",
        "learning_rate=1e-3", "batch_size=8", "max_steps=4", "seed=0", "warmup_ratio=0",
        "max_length=128", "max_prompt_length=64", *extra,
    ])


def padded_logp(model, prompt, completion) -> float:
    """S(y|x) by the plainest route: one unpacked forward, full-vocabulary log-softmax."""
    ids = torch.tensor([list(prompt) + list(completion)])
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    n = len(prompt)
    return sum(logp[n + t - 1, tok].item() for t, tok in enumerate(completion))


# --------------------------------------------------------------------------- KTO


def test_kl_partners_cycle_the_batch_by_one():
    assert kl_partners([5, 3, 9]) == [9, 5, 3]
    assert kl_partners([4, 7]) == [7, 4]


def test_kto_kl_pairs_are_in_batch_and_their_reference_is_exact(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    trainer = Trainer(config(tiny_model_dir, tmp_path / "kto", "loss=kto"))
    ds = trainer.train_ds
    assert len(ds) == 128  # 64 pairs split into desirable + undesirable examples
    pairs = sorted(ds.kl_ref)
    # every pair the run forms is pre-scored, and each is (item, previous item of its micro-batch)
    for step in range(trainer.total_steps):
        for micro in trainer.micro_batches(trainer.step_items(step), 0):
            assert all((i, j) in ds.kl_ref for i, j in zip(micro, kl_partners(micro)))
    # file-order neighbours pair a prompt with its own rejected answer half the time; shuffled
    # in-batch pairs share a prompt only by chance (64 prompts, 2 items each: ~1/127)
    same_prompt = sum(ds.groups[i][0] == ds.groups[j][0] for i, j in pairs) / len(pairs)
    assert same_prompt < 0.1
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for i, j in pairs[:3]:
        expected = padded_logp(ref, ds.groups[i][0], ds.groups[j][1][0])
        assert ds.kl_ref[(i, j)] == pytest.approx(expected, rel=1e-4)  # chunked vs full softmax


def test_kto_z0_equals_a_hand_computation(tiny_model_dir, tmp_path):
    trainer = Trainer(config(tiny_model_dir, tmp_path / "kto", "loss=kto", "learning_rate=1e-2"))
    history = trainer.run()
    rows = metrics(tmp_path / "kto")
    assert all("kl" in r and "logps/chosen" in r and "logps/rejected" in r for r in rows)
    assert rows[0]["kl"] < 1e-3  # policy == reference at step 1: z0 = max(0, ~0)
    assert history["train_last"]["kl"] == rows[-1]["kl"]
    # the last step's first micro-batch under the trained policy, by hand: z0 = max(0, mean_i S_θ(y_{i−1}|x_i) − S_ref(...))
    ds, micro = trainer.train_ds, trainer.micro_batches(trainer.step_items(trainer.step - 1), 0)[0]
    trainer.engine.eval()
    diffs = [padded_logp(trainer.model, ds.groups[i][0], ds.groups[j][1][0]) - ds.kl_ref[(i, j)]
             for i, j in zip(micro, kl_partners(micro))]
    hand = max(0.0, sum(diffs) / len(diffs))
    with torch.no_grad():
        row = trainer._forward(ds, micro, micro)
    assert row["kl"].item() == pytest.approx(hand, rel=1e-3, abs=1e-4)
    assert hand > 0  # after training the policy has moved: the check is not 0 == 0


# --------------------------------------------------------------------------- NLL


def test_nll_token_and_sequence_means_by_hand():
    # S = (−10, −3) over (5, 1) tokens: token mean 13/6; per-sequence mean (2 + 3)/2
    s = PairStats(chosen_logps=torch.tensor([-10.0, -3.0]), chosen_lengths=torch.tensor([5.0, 1.0]),
                  rejected_logps=torch.tensor([-10.0, -3.0]), rejected_lengths=torch.tensor([5.0, 1.0]))
    assert sft(s).loss.mean().item() == pytest.approx(13 / 6)
    assert sft(s, nll_reduction="sequence").loss.mean().item() == pytest.approx(2.5)
    s.nll_scale = torch.tensor(4.0)  # the step's mean length: per-example −S/4
    assert sft(s).loss.tolist() == pytest.approx([2.5, 0.75])
    # chosen == rejected: CPO's preference term is −logσ(0) = ln 2, ORPO's −λ·logσ(0) = λ ln 2
    ln2 = torch.log(torch.tensor(2.0)).item()
    assert cpo(s, cpo_lambda=0.5).loss.tolist() == pytest.approx([ln2 + 1.25, ln2 + 0.375])
    assert orpo(s, orpo_lambda=0.1).loss.tolist() == pytest.approx([2.5 + 0.1 * ln2, 0.75 + 0.1 * ln2])


def test_sft_step_loss_is_the_token_mean_of_the_step(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    trainer = Trainer(config(tiny_model_dir, tmp_path / "sft", "loss=sft", "max_steps=1"))
    idx = trainer.step_items(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    groups = [trainer.train_ds.groups[i] for i in idx]
    total = sum(padded_logp(model, p, cs[0]) for p, cs in groups)
    tokens = sum(len(cs[0]) for _, cs in groups)
    trainer.run()
    row = json.loads((tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["loss"] == pytest.approx(-total / tokens, rel=1e-5)


@pytest.mark.parametrize("loss", ["sft", "orpo", "simpo cpo_lambda=1.0", "dpo rpo_alpha=1.0"])
def test_token_nll_is_exact_under_accumulation(loss, tiny_model_dir, tmp_path):
    loss, *extra = loss.split()
    big = Trainer(config(tiny_model_dir, tmp_path / "big", f"loss={loss}", "max_steps=3", *extra))
    acc = Trainer(config(tiny_model_dir, tmp_path / "acc", f"loss={loss}", "max_steps=3",
                         "batch_size=2", "grad_accum=4", *extra))
    big.run()
    acc.run()
    a = metrics(tmp_path / "big")
    b = metrics(tmp_path / "acc")
    # the same sums in other reduction orders (packed row lengths, matmul blocking): 100 eps
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=100 * EPS)
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1000 * EPS)
    for pa, pb in zip(big.model.parameters(), acc.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)  # Adam amplifies noise on ~0 grads


# --------------------------------------------------------------------------- optimizer


def test_weight_decay_spares_biases_and_norms(tiny_model_dir, tmp_path):
    trainer = Trainer(config(tiny_model_dir, tmp_path / "wd", "weight_decay=0.1", "learning_rate=1e-2",
                             "lr_scheduler=constant"))
    opt = trainer.optimizer.optimizer
    decayed, spared = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and spared["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim == 1 for p in spared["params"])
    assert len(spared["params"]) == sum(p.ndim == 1 for p in trainer.model.parameters()) > 0
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    for p in trainer.model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # a zero gradient: Adam's update is 0, only the decoupled decay moves weights
    for n, p in trainer.model.named_parameters():
        expected = before[n] * (1 - 1e-2 * 0.1) if p.ndim >= 2 else before[n]
        torch.testing.assert_close(p.detach(), expected, rtol=2 * EPS, atol=0)


def test_adamw_is_the_fused_kernel_and_steps_as_adamw(tiny_model_dir, tmp_path):
    """On CPU (torch >= 2.4) as on CUDA the trainer's AdamW is torch's fused kernel; its
    first step is AdamW's by hand: m̂ = g, v̂ = g², so each weight moves by
    lr·g/(|g| + ε) after the decoupled decay."""
    trainer = Trainer(config(tiny_model_dir, tmp_path / "fused", "weight_decay=0.1", "learning_rate=1e-2",
                             "lr_scheduler=constant"))
    opt = trainer.optimizer.optimizer
    assert opt.defaults["fused"] is fused_adam(torch.device("cpu")) is True
    g = torch.Generator().manual_seed(0)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    grads = {n: torch.randn(p.shape, generator=g) for n, p in trainer.model.named_parameters()}
    for n, p in trainer.model.named_parameters():
        p.grad = grads[n].clone()
    opt.step()
    for n, p in trainer.model.named_parameters():
        decay = 0.1 if p.ndim >= 2 else 0.0
        expected = before[n] * (1 - 1e-2 * decay) - 1e-2 * grads[n] / (grads[n].abs() + 1e-8)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7)


def test_rmsprop_trains_and_resumes_exactly(tiny_model_dir, tmp_path):
    out = tmp_path / "rms"
    trainer = Trainer(config(tiny_model_dir, out, "optimizer=rmsprop", "learning_rate=1e-4",
                             "save_steps=2", "max_steps=4"))
    assert isinstance(trainer.optimizer.optimizer, torch.optim.RMSprop)
    trainer.run()
    first = (out / "metrics.jsonl").read_text().splitlines()
    assert json.loads(first[-1])["loss"] < json.loads(first[0])["loss"]
    Trainer(config(tiny_model_dir, out, "optimizer=rmsprop", "learning_rate=1e-4", "save_steps=2",
                   "max_steps=4", "resume=true")).run()
    again = (out / "metrics.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(x).items() if k != "tokens/s"} for x in first]
    assert [{k: v for k, v in json.loads(x).items() if k != "tokens/s"} for x in again] == strip


def test_make_optimizer_without_one_dimensional_params():
    class Cfg:
        optimizer, learning_rate, weight_decay, adam_betas = "adamw", 1e-3, 0.1, [0.9, 0.999]

    opt = make_optimizer(Cfg, [torch.nn.Parameter(torch.ones(2, 2))])
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.1


# --------------------------------------------------------------------------- data order


def test_shuffle_false_keeps_file_order(tiny_model_dir, tmp_path):
    assert step_order(10, 0, 4, seed=1, shuffle=False) == [0, 1, 2, 3]
    assert step_order(10, 2, 4, seed=1, shuffle=False) == [8, 9, 0, 1]  # wraps into epoch 2
    assert sorted(step_order(10, 0, 10, seed=1)) == list(range(10)) != step_order(10, 0, 10, seed=1)
    trainer = Trainer(config(tiny_model_dir, tmp_path / "ordered", "shuffle=false"))
    assert trainer.step_items(0) == list(range(8)) and trainer.step_items(8) == list(range(8))
