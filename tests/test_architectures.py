"""The architecture matrix: every decoder family prefero supports gives the plain model's
numbers under every attention implementation it runs on CPU, or is refused at load.

Tiny random configs (prefero.tiny.TINY_FAMILIES) keep what makes each family different:
sliding windows shorter than the test sequences, Gemma-2's attention and final-logit
soft-capping, Granite's and Cohere's logit scaling, tied heads, biased heads, MoE
routing, and the 0.1 dropout GPT-2-era configs ship with.

Tolerance: relative 1e-5 in fp32. The layouts reorder reductions (a packed row has more
keys, masked to exact zeros; the chunked head sums in another order), which moves fp32
results by a few ulps per layer: 1e-7 relative is what is measured on these 2-layer
models, and 1e-5 leaves two orders of magnitude for other BLAS builds and thread counts.
The faults this guards against (a boolean mask added to eager scores, a missing sliding
window, a missing logit transform, dropout left on) are 1e-3 to 1e-1.
"""

import json
import math
import subprocess
import sys

import pytest
import torch

from jsonl_files import rel_err
from prefero.attention import choose_attention, disable_dropout, row_tokens
from prefero.batching import pack_groups
from prefero.config import LoraConfig, load_config
from prefero.demo import asset
from prefero.logprobs import CompletionLogProbs, padded_completion_logps
from prefero.model import apply_lora, load_causal_lm, load_tokenizer, save_model
from prefero.options import ConfigError
from prefero.tiny import TINY_FAMILIES, build_tiny_model, save_tiny_model, tiny_config

REFUSED = {"bloom"}
FAMILIES = [f for f in TINY_FAMILIES if f not in REFUSED]
NO_SDPA = {"gemma2"}  # this transformers has no SDPA attention for them
NO_FLEX = {"gpt2", "falcon", "stablelm", "gpt_bigcode"}  # no FlexAttention in transformers
NO_SEQUENCE_CLASSIFIER = {"granite", "cohere"}  # no *ForSequenceClassification in transformers
TOL = 1e-5


def random_groups(seed, n_groups=3):
    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi: torch.randint(5, 400, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()  # noqa: E731
    # prompts and completions longer than the tiny configs' sliding window of 6
    return [(r(4, 12), [r(3, 10), r(3, 10)]) for _ in range(n_groups)]


def tiny(tokenizer, family, implementation, seed=1):
    model = build_tiny_model(tokenizer, arch=family, seed=seed)
    model.set_attn_implementation(implementation)
    with torch.no_grad():  # wider weights than the default init make mask errors large
        for p in model.parameters():
            p.mul_(3.0)
    disable_dropout(model)
    return model.train()  # train mode: any dropout left on would break the equalities


def grads(model, sums):
    params = [p for p in model.parameters() if p.requires_grad]
    weights = torch.arange(1.0, sums.numel() + 1)
    return torch.autograd.grad((sums * weights).sum(), params, allow_unused=True)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_engine_equals_padded_forward(tiny_tokenizer, family, implementation):
    if implementation == "sdpa" and family in NO_SDPA:
        pytest.skip("no SDPA in transformers for this family; refused at load (test_choice_per_family)")
    model = tiny(tiny_tokenizer, family, implementation)
    groups = random_groups(seed=2)
    prompts = [p for p, cs in groups for _ in cs]
    completions = [c for _, cs in groups for c in cs]
    ref = padded_completion_logps(model, prompts, completions, pad_id=tiny_tokenizer.pad_token_id)
    ref_grads = grads(model, ref)
    engine = CompletionLogProbs(model, chunk_size=4)
    layouts = {
        "prefix-shared": pack_groups(groups),
        "packed, unshared": pack_groups([(p, [c]) for p, c in zip(prompts, completions)]),
        # what the engine runs under a dense mask: short rows, padded (row_tokens)
        "rows of 16 tokens": pack_groups(groups, row_tokens=16),
        "the model's rows": pack_groups(groups, row_tokens=row_tokens(model)),
    }
    assert pack_groups(groups, row_tokens=16).input_ids.shape[0] > 1
    # A gradient that is exactly zero in exact arithmetic (a key bias: it adds the same
    # amount to every score a query sees, which softmax ignores) is pure rounding noise,
    # so each tensor is held to its own scale floored at 1% of the largest gradient.
    floor = 1e-2 * max(b.abs().max().item() for b in ref_grads if b is not None)
    for name, batch in layouts.items():
        sums, _ = engine(batch)
        assert rel_err(sums, ref) < TOL, name
        for a, b in zip(grads(model, sums), ref_grads):
            if b is not None:
                assert (a - b).abs().max().item() / max(b.abs().max().item(), floor) < TOL, name
    # unpacked: one sequence per forward
    one = torch.cat([engine(pack_groups([(p, [c])]))[0] for p, c in zip(prompts, completions)])
    assert rel_err(one, ref) < TOL


# the families whose masks differ from the plain causal one (sliding windows, soft-capping);
# the plain rule is checked on CPU in tests/test_logprobs.py, every family on a GPU
@pytest.mark.parametrize("family", ["mistral", "gemma2", "gemma3_text", "phi3"])
def test_flex_block_mask_forward_equals_padded(tiny_tokenizer, family):
    """FlexAttention's BlockMask (sliding windows included) against the plain forward.
    FlexAttention has no CPU backward: gradients are checked in tests/test_gpu.py."""
    model = tiny(tiny_tokenizer, family, "flex_attention")
    groups = random_groups(seed=4)
    prompts = [p for p, cs in groups for _ in cs]
    completions = [c for _, cs in groups for c in cs]
    assert row_tokens(model) is None  # FlexAttention runs the whole batch in one row
    with torch.no_grad():
        sums, _ = CompletionLogProbs(model)(pack_groups(groups))
        model.set_attn_implementation("eager")
        ref = padded_completion_logps(model, prompts, completions, pad_id=tiny_tokenizer.pad_token_id)
    assert rel_err(sums, ref) < TOL


def test_choice_per_family():
    """auto: FlexAttention on CUDA where the family has it, else SDPA, else eager; a
    family's missing implementation is refused naming what to set."""
    import transformers

    for family in TINY_FAMILIES:
        config = tiny_config(family, 32, 0, 1, 2)
        if family in REFUSED:
            with pytest.raises(ConfigError, match="not supported"):
                choose_attention("auto", config)
            continue
        cpu, _ = choose_attention("auto", config, cuda=False)
        gpu, why = choose_attention("auto", config, cuda=True)
        assert cpu == ("eager" if family in NO_SDPA else "sdpa"), family
        assert gpu == ("sdpa" if family in NO_FLEX else "flex_attention"), (family, why)
        if family in NO_SDPA:
            with pytest.raises(ConfigError, match="attention: sdpa is not available .* set attention: auto"):
                choose_attention("sdpa", config)
    with pytest.raises(ConfigError, match="flex needs a CUDA GPU"):
        choose_attention("flex", transformers.LlamaConfig(), cuda=False)


def save_untested_family(tokenizer, directory):
    """A tiny OLMo (1): a family prefero does not list, built like the tiny ones."""
    import transformers

    config = transformers.OlmoConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                     pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                     eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_a_family_outside_the_matrix_is_checked_at_load_and_refused_when_wrong(tiny_tokenizer, tmp_path,
                                                                               monkeypatch):
    import prefero.attention as attention

    d = save_untested_family(tiny_tokenizer, tmp_path / "olmo")
    model = load_causal_lm(str(d), attention="eager")
    assert "olmo is outside the tested families; packed == plain checked at load" in model.prefero_attention
    assert "outside" not in (getattr(load_causal_lm(str(d)), "prefero_attention") or "")  # inference: no engine

    def boolean_mask_for_eager(batch, config, implementation, dtype):  # the fault this check exists for
        return batch.dense_mask()

    from prefero.scoring import load_reward_model

    load_reward_model(str(d), tiny_tokenizer)  # its packed scores pass the same check
    monkeypatch.setattr(attention, "packed_attention_mask", boolean_mask_for_eager)
    with pytest.raises(ConfigError, match="olmo is not in prefero's tested families, and its packed log-probs "
                                          "differ from its plain forward by"):
        load_causal_lm(str(d), attention="eager")


def test_bloom_refused_at_load(tmp_path):
    d = save_tiny_model(tmp_path / "bloom", arch="bloom")
    with pytest.raises(ConfigError, match="bloom models are not supported: its ALiBi"):
        load_causal_lm(str(d), attention="auto")


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {f: save_tiny_model(root / f, arch=f, seed=3) for f in FAMILIES}


@pytest.fixture(scope="module")
def four_pairs(tmp_path_factory):
    """The first four demo pairs: each run below needs one step, not the whole file."""
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(open(asset("demo_train.jsonl")).readlines()[:4]))
    return path


def train_config(model_dir, data, out, *extra):
    return load_config(None, [
        f"model={model_dir}", f"train_data={data}", f"output_dir={out}",
        "learning_rate=1e-3", "batch_size=2", "max_steps=1", "seed=0", "eval_steps=0",
        "max_length=64", "max_prompt_length=32", "lora.r=4", *extra,
    ])


@pytest.mark.parametrize("family", FAMILIES)
def test_train_step_generate_rm_and_round_trip(family, family_dirs, four_pairs, tmp_path):
    """One DPO step with default LoRA (policy == reference: loss ln 2, logged log-probs
    equal a plain forward of the saved model), generation, the reward-model head against
    transformers' padded forward, and save -> from_pretrained."""
    from prefero.generate import GenerateConfig, run_generate
    from prefero.train import Trainer

    model_dir = family_dirs[family]
    out = tmp_path / "dpo"
    trainer = Trainer(train_config(model_dir, four_pairs, out, "loss=dpo", "beta=0.1", "shuffle=false"))
    trainer.run()
    step = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert step["loss"] == pytest.approx(math.log(2), rel=1e-5)
    tok = load_tokenizer(str(model_dir))
    plain = load_causal_lm(str(model_dir)).eval()
    groups = trainer.train_ds.groups  # (prompt ids, [chosen ids, rejected ids]), file order
    with torch.no_grad():
        chosen = padded_completion_logps(plain, [p for p, _ in groups[:2]], [cs[0] for _, cs in groups[:2]],
                                         pad_id=tok.pad_token_id)
    assert step["logps/chosen"] == pytest.approx(chosen.mean().item(), rel=TOL)
    assert (out / "adapter_config.json").exists()

    # generation through the sampler users run
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": r}) + "\n" for r in ["Tell me about the moon.", "Hi"]))
    gen_out = tmp_path / "gen.jsonl"
    report = run_generate(load_config(None, [f"model={model_dir}", f"prompts={prompts}", f"output={gen_out}",
                                             "num_completions=2", "max_new_tokens=4", "seed=0"], cls=GenerateConfig))
    assert report["completions"] == 4

    # save -> from_pretrained gives the same logits
    saved = tmp_path / "saved"
    save_model(plain, tok, saved)
    again = load_causal_lm(str(saved)).eval()
    ids = torch.tensor([groups[0][0] + groups[0][1][0]])
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, again(input_ids=ids).logits)

    if family in NO_SEQUENCE_CLASSIFIER:
        from prefero.scoring import load_reward_model

        with pytest.raises(ConfigError, match="no sequence-classification head"):
            load_reward_model(str(model_dir), tok)
        return
    check_reward_head(model_dir, tok, groups[:3])
    check_rm_command(model_dir, four_pairs, tok, tmp_path / "rm", groups[:3])


def check_reward_head(model_dir, tok, groups):
    from prefero.scoring import load_reward_model, padded_scores, score

    model = load_reward_model(str(model_dir), tok).eval()
    for prompt, completions in groups:
        packed = score(model, tok, prompt, completions)
        plain = padded_scores(model, [prompt + c for c in completions], tok.pad_token_id)
        assert rel_err(packed, plain) < TOL


def check_rm_command(model_dir, data, tok, out, groups):
    """`prefero rm`: one Bradley-Terry step, then the saved classifier loads as a trained
    judge and scores as transformers' own padded forward of it does."""
    from prefero.reward_model import RewardConfig, RewardTrainer
    from prefero.scoring import load_reward_model, padded_scores, score

    cfg = load_config(None, [f"model={model_dir}", f"train_data={data}", f"output_dir={out}",
                             "batch_size=2", "max_steps=1", "max_length=64", "max_prompt_length=32", "seed=0"],
                      cls=RewardConfig)
    RewardTrainer(cfg).run()
    model = load_reward_model(str(out), tok, trained=True).eval()
    prompt, completions = groups[0]
    packed = score(model, tok, prompt, completions)
    assert rel_err(packed, padded_scores(model, [prompt + c for c in completions], tok.pad_token_id)) < TOL


@pytest.mark.parametrize("family", ["gemma2", "gpt2", "phi3"])
def test_default_lora_targets_the_attention_projections(tiny_tokenizer, family):
    model = apply_lora(build_tiny_model(tiny_tokenizer, arch=family), LoraConfig())
    adapted = {n.split(".lora_A")[0].rsplit(".", 2)[-2:][0] + "." + n.split(".lora_A")[0].rsplit(".", 1)[-1]
               for n, _ in model.named_parameters() if "lora_A" in n}
    expected = {"gemma2": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"},
                "gpt2": {"attn.c_attn", "attn.c_proj"},  # Conv1D; the MLP's c_proj is left alone
                "phi3": {"self_attn.qkv_proj", "self_attn.o_proj"}}[family]
    assert adapted == expected


def test_wrong_lora_name_lists_conv1d_layers(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer, arch="gpt2")
    with pytest.raises(ConfigError, match=r"did you mean 'c_attn'\?.*c_attn, c_fc, c_proj"):
        apply_lora(model, LoraConfig(target_modules=["c_atn"]))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gemma2"])
def test_readme_train_command_with_default_lora(family, family_dirs, tmp_path):
    """The README's command line on a family other than Llama: one DPO step with LoRA."""
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "prefero", "train", "examples/dpo.yaml", f"model={family_dirs[family]}",
                        f"train_data={asset('demo_train.jsonl')}", "eval_data=null", f"output_dir={out}",
                        "max_steps=1", "batch_size=2", "lora.r=4", "max_length=64", "max_prompt_length=32"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "attention eager" in r.stdout  # the world line says what was picked
    assert (out / "adapter_config.json").exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefill_samples_what_generate_samples(family, family_dirs, tmp_path):
    """K completions from one prefill per prompt (its KV cache repeated K times) are the
    tokens `generate(num_return_sequences=K)` samples from the same seed: left padding,
    prompts longer than the sliding window, every family's cache. The logits differ by
    rounding only (~1e-6 here), which moves a sampled token only when the uniform draw
    lands that close to a boundary."""
    from prefero.generate import GenerateConfig
    from prefero.generate.prompts import batch_seed
    from prefero.generate.transformers_backend import TransformersSampler, left_pad

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("")
    cfg = load_config(None, [f"model={family_dirs[family]}", f"prompts={prompts}", f"output={tmp_path / 'g.jsonl'}",
                             "num_completions=3", "max_new_tokens=6", "seed=4", "temperature=1.0"],
                      cls=GenerateConfig)
    sampler = TransformersSampler(cfg)
    input_ids, mask = left_pad([[5, 17, 30, 41, 52, 63, 74, 85, 96], [7, 8, 9]], sampler.pad_id)
    shared = sampler.generate_ids(input_ids, mask, batch=2)
    torch.manual_seed(batch_seed(4, 2))
    with torch.inference_mode():
        plain = sampler.model.generate(input_ids=input_ids, attention_mask=mask,
                                       generation_config=sampler.generation_config)[:, input_ids.shape[1]:]
    assert shared.shape[0] == 6
    assert torch.equal(shared, plain)
