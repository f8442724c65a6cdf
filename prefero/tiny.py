"""Tiny models and tokenizers built from a config, for the demo and the tests.

Nothing here downloads anything: the tokenizer is a byte-level BPE trained on a fixed
corpus with the `tokenizers` library, the model is a randomly initialised 2-layer
causal LM of one of the families in TINY_FAMILIES. Both are saved in Hugging Face format, so the rest of prefero loads
them exactly as it loads a hub model.
"""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "<|im_end|>", "<|im_start|>", "<unk>"]


def demo_corpus() -> list[str]:
    """Text the tiny tokenizer is trained on: the demo data plus some generic English."""
    texts = [json.dumps(r) for r in demo_records()]
    texts += [
        "The quick brown fox jumps over the lazy dog.",
        "user assistant system Describe explain summarize answer question",
        "0 1 2 3 4 5 6 7 8 9 . , ! ? : ; ' \" ( ) - + = / \\ < > [ ] { }",
    ]
    return texts


def build_tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer with BOS added on encode and a ChatML chat template.

    EOS is `<|im_end|>`, as in Qwen2-style chat models, so a chat-templated completion
    ends with exactly one EOS. BOS (`<s>`) is added by the post-processor, like Llama,
    which is what makes double-BOS bugs visible in tests.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(demo_corpus(), trainer=trainer)
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


# Tiny configs of the decoder families prefero is tested on (docs/models.md). Each keeps
# what makes its family different: sliding windows (small enough that test sequences
# cross them), logit soft-capping and scaling, tied heads, biases, MoE routing, the
# dropout GPT-2-era configs ship with. `common` holds the shared sizes.
def _tiny_families(common: dict, hidden: int) -> dict:
    head16 = dict(common, head_dim=hidden // 4)
    gpt = {k: common[k] for k in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")}
    gpt2_sizes = dict(gpt, n_embd=hidden, n_layer=2, n_head=4, n_positions=common["max_position_embeddings"])
    return {
        "llama": ("LlamaConfig", common),
        "qwen2": ("Qwen2Config", common),
        "mistral": ("MistralConfig", dict(common, sliding_window=6)),
        "mixtral": ("MixtralConfig", dict(common, num_local_experts=4, num_experts_per_tok=2, sliding_window=None)),
        "qwen3": ("Qwen3Config", head16),
        "qwen2_moe": ("Qwen2MoeConfig", dict(common, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                             shared_expert_intermediate_size=32)),
        "gemma": ("GemmaConfig", head16),
        "gemma2": ("Gemma2Config", dict(head16, sliding_window=6, final_logit_softcapping=5.0,
                                        attn_logit_softcapping=3.0, query_pre_attn_scalar=16)),
        "gemma3_text": ("Gemma3TextConfig", dict(head16, sliding_window=6, query_pre_attn_scalar=16,
                                                 layer_types=["sliding_attention", "full_attention"])),
        "phi": ("PhiConfig", dict(common, num_key_value_heads=4)),
        "phi3": ("Phi3Config", dict(common, sliding_window=6)),
        "gpt2": ("GPT2Config", gpt2_sizes),
        "gpt_neox": ("GPTNeoXConfig", common),
        "gptj": ("GPTJConfig", dict(gpt2_sizes, rotary_dim=8)),
        "opt": ("OPTConfig", dict(gpt, hidden_size=hidden, ffn_dim=2 * hidden, num_hidden_layers=2,
                                  num_attention_heads=4, word_embed_proj_dim=hidden,
                                  max_position_embeddings=common["max_position_embeddings"])),
        "falcon": ("FalconConfig", dict(gpt, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                                        new_decoder_architecture=True, num_kv_heads=2, alibi=False)),
        "stablelm": ("StableLmConfig", common),
        "olmo2": ("Olmo2Config", common),
        "granite": ("GraniteConfig", dict(common, logits_scaling=2.0, attention_multiplier=0.2,
                                          residual_multiplier=0.5, embedding_multiplier=3.0)),
        "smollm3": ("SmolLM3Config", common),
        "cohere": ("CohereConfig", dict(common, logit_scale=0.5)),
        "gpt_bigcode": ("GPTBigCodeConfig", gpt2_sizes),
        "bloom": ("BloomConfig", dict(gpt, hidden_size=hidden, n_layer=2, n_head=4)),
    }


TINY_FAMILIES = tuple(_tiny_families({"vocab_size": 0, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0,
                                      "max_position_embeddings": 0}, 64))


def tiny_config(arch: str, vocab_size: int, bos_id: int, eos_id: int, pad_id: int, hidden_size: int = 64,
                max_positions: int = 1024):
    """The transformers config of a 2-layer model of family `arch` (one of TINY_FAMILIES)."""
    import transformers

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=False,
    )
    families = _tiny_families(common, hidden_size)
    if arch not in families:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(families)}")
    config_class, kwargs = families[arch]
    return getattr(transformers, config_class)(**kwargs)


def build_tiny_model(tokenizer, arch: str = "llama", seed: int = 0, hidden_size: int = 64,
                     max_positions: int = 1024):
    """A randomly initialised 2-layer causal LM of family `arch` sized to the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                         tokenizer.pad_token_id, hidden_size, max_positions)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def save_tiny_model(directory: str | Path, arch: str = "llama", seed: int = 0, max_positions: int = 1024) -> Path:
    """Build the tiny tokenizer and model and save both to `directory` in HF format."""
    directory = Path(directory)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, arch=arch, seed=seed, max_positions=max_positions)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def save_tiny_scorer(directory: str | Path, pairwise: bool = False, seed: int = 0, hidden_size: int = 64,
                     layers: int = 2) -> Path:
    """A tiny Llama with a random scalar head (a sequence classifier) and the tokenizer, in
    HF format: a reward model to judge with, or with `pairwise` a pairwise preference model
    (the settings file `prefero pm` writes beside it). Its scores are noise; the plumbing is real."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from prefero.outputs import PAIRWISE_MODEL_FILE

    directory = Path(directory)
    tokenizer = build_tiny_tokenizer()
    config = tiny_config("llama", len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                         tokenizer.pad_token_id, hidden_size)
    config.num_hidden_layers, config.num_labels = layers, 1
    torch.manual_seed(seed)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    if pairwise:
        (directory / PAIRWISE_MODEL_FILE).write_text(json.dumps({"max_length": 1024, "max_prompt_length": 512}))
    return directory


# ---------------------------------------------------------------------------
# The demo's preference data: a small, learnable task. Each prompt asks about a
# topic; the chosen answer is helpful and on-topic, the rejected one dismissive.
_TOPICS = [
    "the ocean", "a volcano", "the moon", "a forest", "the desert", "a river", "the sun",
    "a glacier", "the rainforest", "a mountain", "the city", "a garden", "the sky", "a lake",
    "the wind", "a storm", "the stars", "a meadow", "the tide", "a canyon",
]
_ASKS = ["Tell me about {t}.", "What is {t} like?", "Describe {t} briefly.", "Explain {t} to a child."]
_GOOD = [
    "Sure! {T} is a fascinating place, full of life and wonder.",
    "Happy to help: {T} is beautiful and worth learning about.",
    "Of course. {T} changes with the seasons and is full of surprises.",
]
_BAD = [
    "No. I do not want to talk about {t}.",
    "Whatever, {t} is boring.",
    "I refuse to answer that.",
]


def demo_records() -> list[dict]:
    """The demo's preference pairs (explicit string triples), deterministic."""
    records = []
    for i, topic in enumerate(_TOPICS):
        for j, ask in enumerate(_ASKS):
            k = (i + j) % 3
            records.append({
                "prompt": ask.format(t=topic),
                "chosen": _GOOD[k].format(T=topic[0].upper() + topic[1:]),
                "rejected": _BAD[(k + 1) % 3].format(t=topic),
            })
    return records


def main(argv: list[str] | None = None) -> int:
    """`python -m prefero.tiny DIR [--arch FAMILY]`: write a tiny random chat model (ChatML
    template, 2 layers) to try every command offline. Its answers are noise; the plumbing
    is real."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m prefero.tiny", description=main.__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="where to write the model (HF format, safetensors)")
    parser.add_argument("--arch", default="llama", choices=TINY_FAMILIES, help="decoder family (default llama)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.directory)
    if out.exists() and any(out.iterdir()):
        parser.error(f"{out} exists and is not empty")
    save_tiny_model(out, arch=args.arch, seed=args.seed)
    print(f"wrote a tiny {args.arch} chat model to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
