"""The GPU path: FlexAttention forward *and* backward, bf16 autocast, the trainer on CUDA.

CPU runs cover the same rules with dense masks (test_logprobs); these tests skip without CUDA.
"""


import pytest
import torch

from jsonl_files import metrics, rel_err
from prefero.attention import choose_attention, disable_dropout
from prefero.batching import pack_groups
from prefero.logprobs import CompletionLogProbs, padded_completion_logps
from prefero.tiny import build_tiny_model, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(autouse=True)
def _exact_fp32_matmuls():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def groups(seed, n_groups=4):
    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi: torch.randint(5, 500, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()  # noqa: E731
    return [(r(1, 40), [r(1, 30), r(1, 30)]) for _ in range(n_groups)]


def flatten(gs):
    return [p for p, cs in gs for _ in cs], [c for _, cs in gs for c in cs]


def model_pair(tokenizer, arch, seed):
    """The same tiny weights twice: one with the family's padded implementation (SDPA, or
    eager where it has none) as the reference, one with FlexAttention."""
    dense = build_tiny_model(tokenizer, arch=arch, seed=seed)
    dense.set_attn_implementation("eager" if arch == "gemma2" else "sdpa")
    flex = build_tiny_model(tokenizer, arch=arch, seed=seed)
    flex.set_attn_implementation("flex_attention")
    disable_dropout(dense), disable_dropout(flex)
    return dense.cuda(), flex.cuda()


# The families `attention: auto` sends to FlexAttention on CUDA, with what each adds:
# sliding windows (mistral, gemma2), attention and final-logit soft-capping (gemma2).
# A failure here means auto must stop picking flex for that family (prefero/attention.py).
@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma2"])
def test_flex_packed_equals_padded_with_gradients(tiny_tokenizer, arch):
    dense, flex = model_pair(tiny_tokenizer, arch, seed=1)
    engine = CompletionLogProbs(flex, chunk_size=7)
    assert flex.config._attn_implementation == "flex_attention"
    # several layouts of different lengths: the compiled flex kernel must follow each one
    for seed in range(3):
        gs = groups(seed, n_groups=3 + seed)
        sums, _ = engine(pack_groups(gs).to("cuda"))
        ref = padded_completion_logps(dense, *flatten(gs), pad_id=tiny_tokenizer.pad_token_id)
        assert rel_err(sums, ref) < 1e-4
        w = torch.arange(1.0, sums.numel() + 1, device="cuda")
        g_flex = torch.autograd.grad((sums * w).sum(), list(flex.parameters()))
        g_plain = torch.autograd.grad((ref * w).sum(), list(dense.parameters()))
        for a, b in zip(g_flex, g_plain):
            assert rel_err(a, b) < 1e-4


def test_auto_on_cuda_picks_sdpa_for_a_family_without_flex():
    assert choose_attention("auto", tiny_config("gpt2", 32, 0, 1, 2))[0] == "sdpa"
    assert choose_attention("auto", tiny_config("gemma2", 32, 0, 1, 2))[0] == "flex_attention"


def test_flex_bf16_autocast_stays_close_to_fp32(tiny_tokenizer):
    _, flex = model_pair(tiny_tokenizer, "llama", seed=2)
    batch = pack_groups(groups(5)).to("cuda")
    engine = CompletionLogProbs(flex)
    exact, _ = engine(batch)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        approx, _ = engine(batch)
    assert approx.dtype == torch.float32
    assert rel_err(approx, exact) < 2e-2


def test_trainer_on_cuda_flex_matches_sdpa(tiny_model_dir, tmp_path):
    """Thirty DPO steps on CUDA: FlexAttention + prefix sharing (the default there) tracks the
    SDPA run step by step and learns the demo data."""
    from prefero.config import load_config
    from prefero.demo import asset
    from prefero.train import Trainer

    def run(attention):
        out = tmp_path / attention
        Trainer(load_config(None, [
            f"model={tiny_model_dir}", f"train_data={asset('demo_train.jsonl')}", f"output_dir={out}",
            "loss=dpo", "beta=0.1", "learning_rate=1e-3", "batch_size=8", "max_steps=30", "seed=0",
            "max_length=128", "max_prompt_length=64", "dtype=float32", f"attention={attention}",
        ])).run()
        rows = metrics(out)
        return [r["loss"] for r in rows if "split" not in r]

    flex, sdpa = run("flex"), run("sdpa")
    assert len(flex) == len(sdpa) == 30
    assert max(abs(a - b) for a, b in zip(flex[:10], sdpa[:10])) < 1e-3
    assert sum(flex[-5:]) / 5 < 0.2
