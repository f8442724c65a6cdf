"""Tiny models and tokenizers built from a config, for the demo and the tests.

Nothing here downloads anything: the tokenizer is a byte-level BPE trained on a fixed
corpus with the `tokenizers` library, the model is a randomly initialised 2-layer
Llama or Qwen2. Both are saved in Hugging Face format, so the rest of prefero loads
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


def build_tiny_model(tokenizer, arch: str = "llama", seed: int = 0, hidden_size: int = 64):
    """A randomly initialised 2-layer causal LM (`llama` or `qwen2`) sized to the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        config = LlamaConfig(**common)
    elif arch == "qwen2":
        config = Qwen2Config(**common)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose 'llama' or 'qwen2'")
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def save_tiny_model(directory: str | Path, arch: str = "llama", seed: int = 0) -> Path:
    """Build the tiny tokenizer and model and save both to `directory` in HF format."""
    directory = Path(directory)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, arch=arch, seed=seed)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
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
