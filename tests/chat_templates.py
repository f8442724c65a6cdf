"""Chat templates that behave like the major model families', with tokenizers to match.

Written for the tests (no downloads): each template reproduces one family's behaviour that
tokenization must get right, not the family's exact text.

- llama3: the template writes BOS itself and the tokenizer adds one too; turns end with
  `<|eot_id|>` (no newline), which is not the tokenizer's EOS (`<|end_of_text|>`, as in
  the base models' tokenizer that fine-tunes start from).
- gemma: turns end with `<end_of_turn>` and a newline, EOS is `<eos>`, BOS is written by the
  template and added by the tokenizer, the assistant's role is called `model`, and a
  system message is refused (`gemma`) or merged into the first user turn (`gemma_merged`).
- qwen25: ChatML; a default system prompt is written when none is given; no BOS at all;
  EOS is `<|endoftext|>` and turns end with `<|im_end|>` and a newline.

The end-of-turn token is given id 0 on purpose: a model whose output layer is all zeros
then greedily emits it as its first token, which makes "generation stops at the
end-of-turn token" a deterministic test.
"""

from __future__ import annotations

from dataclasses import dataclass

LLAMA3 = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + (m['content'] | trim) + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# One turn of the Gemma-like templates; `role` is the speaker's name in the template.
_GEMMA_TURN = "{{ '<start_of_turn>' + role + '\n' + (text | trim) + '<end_of_turn>\n' }}"
_GEMMA_LOOP = (
    "{% for m in turns %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{% set text = (lead + m['content']) if loop.first else m['content'] %}"
    + _GEMMA_TURN +
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('this model has no system role') }}{% endif %}"
    "{% set turns = messages %}{% set lead = '' %}"
    + _GEMMA_LOOP
)
GEMMA_MERGED = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set lead = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set lead = '' %}{% set turns = messages %}{% endif %}"
    + _GEMMA_LOOP
)

QWEN_DEFAULT_SYSTEM = "You are a helpful assistant."
QWEN25 = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + QWEN_DEFAULT_SYSTEM + "<|im_end|>\n' }}"
    "{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    template: str
    end_of_turn: str  # first special token: id 0
    specials: tuple[str, ...]  # the rest
    bos: str | None
    eos: str
    pad: str


FAMILIES = {
    "llama3": Family(LLAMA3, "<|eot_id|>", ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                            "<|end_header_id|>"), "<|begin_of_text|>", "<|end_of_text|>",
                     "<|end_of_text|>"),
    "gemma": Family(GEMMA, "<end_of_turn>", ("<pad>", "<eos>", "<bos>", "<start_of_turn>"), "<bos>", "<eos>", "<pad>"),
    "gemma_merged": Family(GEMMA_MERGED, "<end_of_turn>", ("<pad>", "<eos>", "<bos>", "<start_of_turn>"), "<bos>",
                           "<eos>", "<pad>"),
    "qwen25": Family(QWEN25, "<|im_end|>", ("<|endoftext|>", "<|im_start|>"), None, "<|endoftext|>", "<|endoftext|>"),
}


def build_family_tokenizer(name: str, vocab_size: int = 320):
    """A byte-level BPE tokenizer with family `name`'s special tokens, BOS rule and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from prefero.tiny import demo_corpus

    family = FAMILIES[name]
    specials = [family.end_of_turn, *family.specials]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(demo_corpus(), trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    if family.bos is not None:  # the tokenizer adds BOS on encode, as Llama's and Gemma's do
        tok.post_processor = processors.TemplateProcessing(single=f"{family.bos} $A", pair=f"{family.bos} $A $B",
                                                           special_tokens=[(family.bos, tok.token_to_id(family.bos))])
    others = [t for t in specials if t not in (family.bos, family.eos, family.pad)]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=family.bos, eos_token=family.eos,
                                   pad_token=family.pad, additional_special_tokens=others)
    fast.chat_template = family.template
    return fast
