"""The engine's log-probs and gradients equal the plain padded computation (fp32)."""

import pytest
import torch
from torch import nn

from jsonl_files import rel_err
from prefero.batching import pack_groups
from prefero.logprobs import CompletionLogProbs, padded_completion_logps, token_logprobs
from prefero.model import enable_gradient_checkpointing
from prefero.tiny import build_tiny_model


def random_groups(seed, n_groups=4, completions=2):
    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi: torch.randint(5, 500, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()  # noqa: E731
    return [(r(1, 12), [r(1, 10) for _ in range(completions)]) for _ in range(n_groups)]


def flatten(groups, shared=True):
    prompts, comps = [], []
    for p, cs in groups:
        for c in cs:
            prompts.append(p)
            comps.append(c)
    return prompts, comps


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("chunk", [3, 1024])
def test_prefix_shared_packed_equals_padded(tiny_tokenizer, arch, chunk):
    model = build_tiny_model(tiny_tokenizer, arch=arch, seed=1)
    groups = random_groups(seed=2)
    sums, _ = CompletionLogProbs(model, chunk_size=chunk)(pack_groups(groups))
    ref = padded_completion_logps(model, *flatten(groups), pad_id=tiny_tokenizer.pad_token_id)
    assert sums.shape == ref.shape == (8,)
    assert rel_err(sums, ref) < 1e-5
    params = [p for p in model.parameters()]
    g_engine = torch.autograd.grad((sums * torch.arange(1.0, 9.0)).sum(), params)
    g_plain = torch.autograd.grad((ref * torch.arange(1.0, 9.0)).sum(), params)
    for a, b in zip(g_engine, g_plain):
        assert rel_err(a, b) < 1e-5


def test_unshared_layout_equals_shared(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer, seed=3)
    groups = random_groups(seed=4)
    engine = CompletionLogProbs(model, chunk_size=5)
    shared, _ = engine(pack_groups(groups))
    separate, _ = engine(pack_groups([(p, [c]) for p, cs in groups for c in cs]))
    assert rel_err(shared, separate) < 1e-5


def test_rejected_does_not_see_chosen(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer, seed=5)
    engine = CompletionLogProbs(model)
    a, _ = engine(pack_groups([([7, 8, 9], [[10, 11, 12], [20, 21]])]))
    b, _ = engine(pack_groups([([7, 8, 9], [[300, 301, 302, 303], [20, 21]])]))
    assert a[1].item() == pytest.approx(b[1].item(), abs=1e-6)
    assert a[0].item() != pytest.approx(b[0].item(), abs=1e-3)


def test_layout_positions_and_sources():
    b = pack_groups([([1, 2], [[3, 4], [5]]), ([6], [[7]])])
    assert b.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 2, 0, 1]]
    # chosen 3 ← pos 1 (last prompt), 4 ← 3; rejected 5 ← last prompt again; 7 ← 6
    assert b.source_index.tolist() == [1, 2, 1, 5]
    assert b.targets.tolist() == [3, 4, 5, 7]
    assert b.lengths.tolist() == [2, 1, 1]
    m = b.dense_mask()[0, 0]
    assert not m[4, 2] and not m[4, 3] and m[4, 1] and m[4, 4]  # rejected: prompt + itself
    assert not m[5, 4] and m[6, 5]  # groups do not see each other


def test_rows_layout_keeps_groups_whole_and_sequences_in_order():
    groups = [([1, 2], [[3, 4], [5]]), ([6], [[7]]), ([8, 9, 10], [[11]])]  # 5, 2 and 4 tokens
    b = pack_groups(groups, row_tokens=6)
    # first fit by decreasing size: [group 0 | pad], [group 2 | group 1]
    assert b.input_ids.tolist() == [[1, 2, 3, 4, 5, 0], [6, 7, 8, 9, 10, 11]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 2, 0], [0, 1, 0, 1, 2, 3]]
    assert b.group_starts == (0, 6, 8)
    # sequences keep the groups' order (0: 3 4, 1: 5, 2: 7, 3: 11), indices run over the rows end to end
    assert b.targets.tolist() == [3, 4, 5, 7, 11]
    assert b.source_index.tolist() == [1, 2, 1, 6, 10]
    assert b.lengths.tolist() == [2, 1, 1, 1] and b.num_tokens == 11
    m = b.dense_mask()
    assert m.shape == (2, 1, 6, 6)
    assert m[0, 0, 5].tolist() == [False] * 5 + [True]  # padding sees only itself
    assert not m[1, 0, 2, 1] and m[1, 0, 3, 2]  # group 2 does not see group 1
    # a group longer than row_tokens gets a row of its own; None keeps one row
    assert pack_groups(groups, row_tokens=3).input_ids.shape == (3, 5)
    assert pack_groups(groups).input_ids.shape == (1, 11)


def test_rows_layout_equals_one_row_with_gradients(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer, seed=11)
    groups = random_groups(seed=12, n_groups=6)
    engine = CompletionLogProbs(model, chunk_size=7)
    one, _ = engine(pack_groups(groups))
    rows, _ = engine(pack_groups(groups, row_tokens=20))
    assert rel_err(rows, one) < 1e-5
    params = list(model.parameters())
    w = torch.arange(1.0, one.numel() + 1)
    for a, b in zip(torch.autograd.grad((rows * w).sum(), params), torch.autograd.grad((one * w).sum(), params)):
        assert rel_err(a, b) < 1e-5


@pytest.mark.parametrize("bias,softcap", [(False, None), (True, None), (False, 5.0)])
def test_token_logprobs_matches_full_logits(bias, softcap):
    torch.manual_seed(0)
    head = nn.Linear(16, 50, bias=bias)
    h = torch.randn(13, 16, requires_grad=True)
    t = torch.randint(0, 50, (13,))
    out = token_logprobs(h, head, t, chunk_size=4, softcap=softcap)
    logits = head(h)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    ref = torch.log_softmax(logits, -1).gather(1, t[:, None]).squeeze(1)
    assert rel_err(out, ref) < 1e-6
    w = torch.randn(13)
    ga = torch.autograd.grad((out * w).sum(), [h, head.weight])
    gb = torch.autograd.grad((ref * w).sum(), [h, head.weight])
    for a, b in zip(ga, gb):
        assert rel_err(a, b) < 1e-5


def test_flex_block_mask_equals_dense_forward(tiny_model_dir):
    """The GPU path's FlexAttention block mask gives the dense-mask log-probs. FlexAttention
    has no CPU backward, so on CPU this checks the forward; GPU runs check both."""
    from transformers import AutoModelForCausalLM

    dense = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    flex = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="flex_attention")
    batch = pack_groups(random_groups(seed=7, n_groups=3))
    engine = CompletionLogProbs(flex)
    assert flex.config._attn_implementation == "flex_attention"
    with torch.no_grad():
        a, _ = CompletionLogProbs(dense)(batch)
        b, _ = engine(batch)
    assert rel_err(b, a) < 1e-5


def test_gradient_checkpointing_gives_the_same_gradients(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer, seed=9)
    batch = pack_groups(random_groups(seed=10))
    model.train()
    sums, _ = CompletionLogProbs(model)(batch)
    plain = torch.autograd.grad(sums.sum(), list(model.parameters()))
    enable_gradient_checkpointing(model)
    calls = []
    # the MLP inside a checkpointed layer runs again in backward
    hook = model.model.layers[0].mlp.register_forward_pre_hook(lambda *a: calls.append(1))
    sums2, _ = CompletionLogProbs(model)(batch)
    ckpt = torch.autograd.grad(sums2.sum(), list(model.parameters()))
    hook.remove()
    assert len(calls) == 2  # forward, then recomputed in backward: checkpointing is active
    for a, b in zip(plain, ckpt):
        assert rel_err(b, a) < 1e-5


def test_bf16_autocast_matmuls_in_bf16_and_stays_close():
    """Under autocast the head's matmuls run in bf16 (as autocast would), sums in fp32."""
    torch.manual_seed(0)
    head = nn.Linear(32, 300, bias=False)
    h = torch.randn(40, 32, requires_grad=True)
    t = torch.randint(0, 300, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = token_logprobs(h, head, t, chunk_size=16)
        ref = torch.log_softmax(head(h).float(), -1).gather(1, t[:, None]).squeeze(1)
    assert out.dtype == torch.float32
    assert rel_err(out, ref) < 2e-2
    ga = torch.autograd.grad(out.sum(), [h, head.weight])
    gb = torch.autograd.grad(ref.sum(), [h, head.weight])
    assert ga[1].dtype == torch.float32 and ga[0].dtype == torch.float32
    for a, b in zip(ga, gb):
        assert rel_err(a, b) < 5e-2
