"""The issue-4 anchor setup shared by every benchmark variant: a random-init Qwen2-shape model
saved in HF format, a tokenizer whose ids round-trip through text, and seeded synthetic pairs.

Nothing is downloaded: the model comes from a Qwen2Config, the tokenizer is built from a
word list. `build_setup` writes everything under one directory and returns its description.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

PAIRS_PER_STEP = 8

SHAPES = {
    "qwen2-0.5b": dict(
        config=dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                    num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
                    rope_theta=1e6, max_position_embeddings=32768),
        prompt=(64, 384), completion=(64, 320), max_length=1024, max_prompt_length=512,
    ),
    "tiny": dict(
        config=dict(vocab_size=8192, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                    rope_theta=1e6, max_position_embeddings=4096),
        prompt=(16, 96), completion=(16, 80), max_length=1024, max_prompt_length=512,
    ),
}


def build_tokenizer(vocab_size: int):
    """A Qwen2Tokenizer (what AutoTokenizer gives for any qwen2 model directory) whose
    byte-level BPE has one token per lowercase word of 1-4 letters, so that the text
    " ab xyz qrst" is exactly the tokens ["Ġab", "Ġxyz", "Ġqrst"] and ids round-trip
    through every tokenizer call TRL and prefero make. Returns (tokenizer, word ids)."""
    import itertools
    import string

    from transformers import Qwen2Tokenizer

    eos = "<|endoftext|>"
    vocab = {"Ġ": 0} | {c: i + 1 for i, c in enumerate(string.ascii_lowercase)}
    merges, word_ids = [], []
    for n in range(1, 5):
        for letters in itertools.product(string.ascii_lowercase, repeat=n):
            if len(vocab) == vocab_size - 1:
                break
            word = "Ġ" + "".join(letters)
            # "Ġ"+"a" -> "Ġa", "Ġa"+"b" -> "Ġab", ...: no letter-letter merges, so a word
            # always builds from its leading "Ġ" and ends as one token
            merges.append((word[:-1], word[-1]))
            word_ids.append(len(vocab))
            vocab[word] = len(vocab)
    vocab[eos] = len(vocab)
    assert len(vocab) == vocab_size
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=eos, eos_token=eos, pad_token=eos)
    return tok, word_ids


def build_setup(workdir: Path, shape_name: str, n_steps: int, seed: int) -> dict:
    """Save the random-init model + tokenizer and the synthetic pairs under `workdir`."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    shape = SHAPES[shape_name]
    vocab = shape["config"]["vocab_size"]
    tokenizer, word_ids = build_tokenizer(vocab)
    eos = tokenizer.eos_token_id
    model_dir = workdir / "model"
    torch.manual_seed(seed)
    config = Qwen2Config(**shape["config"], bos_token_id=None, eos_token_id=eos, pad_token_id=eos)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)

    rng = random.Random(seed)
    n_pairs = n_steps * PAIRS_PER_STEP
    (p_lo, p_hi), (c_lo, c_hi) = shape["prompt"], shape["completion"]

    def ids(n: int) -> list[int]:
        return [rng.choice(word_ids) for _ in range(n)]

    pairs = []
    for _ in range(n_pairs):
        prompt = ids(rng.randint(p_lo, p_hi))
        chosen = ids(rng.randint(c_lo, c_hi) - 1) + [eos]
        rejected = ids(rng.randint(c_lo, c_hi) - 1) + [eos]
        pairs.append((prompt, chosen, rejected))
    tokens_per_step = [
        sum(2 * len(p) + len(c) + len(r) for p, c, r in pairs[s * PAIRS_PER_STEP : (s + 1) * PAIRS_PER_STEP])
        for s in range(n_steps)
    ]
    # the text TRL (and prefero's file loader) tokenize back into exactly these ids
    text = lambda ids: tokenizer.decode(ids)  # noqa: E731
    rows = [{"prompt": text(p), "chosen": text(c), "rejected": text(r)} for p, c, r in pairs]
    reloaded = AutoTokenizer.from_pretrained(model_dir)
    for (p, c, r), row in zip(pairs, rows):
        enc = lambda t: reloaded(t, add_special_tokens=False)["input_ids"]  # noqa: E731
        assert enc(row["prompt"]) == p and enc(row["prompt"] + row["chosen"]) == p + c, "ids do not round-trip"
        assert enc(row["prompt"] + row["rejected"]) == p + r, "ids do not round-trip"
    (workdir / "pairs.json").write_text(json.dumps(pairs))
    (workdir / "rows.json").write_text(json.dumps(rows))
    with open(workdir / "small.jsonl", "w") as f:  # what the prefero Trainer is constructed on
        for row in rows[:PAIRS_PER_STEP]:
            f.write(json.dumps(row) + "\n")

    embed = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())  # tied weights counted once
    head = model.get_output_embeddings().weight.numel()
    setup = {
        "shape": shape_name, "config": shape["config"], "seed": seed, "n_steps": n_steps,
        "max_length": shape["max_length"], "max_prompt_length": shape["max_prompt_length"],
        "model_dir": str(model_dir), "pad_id": eos, "eos_id": eos,
        "params_total": total,
        # non-embedding + lm_head: the parameters every token multiplies through
        "params_flops": total - embed + (head if config.tie_word_embeddings else 0),
        "tokens_per_step": tokens_per_step,
    }
    (workdir / "setup.json").write_text(json.dumps(setup, indent=1))
    return setup
