"""Prompt/completion tokenization and truncation (SPEC §4), the subtle part of the data.

Rules, each with its reason:
- Prompt and completion are tokenized separately and concatenated. Tokenizing
  prompt+completion jointly lets BPE merge tokens across the boundary, so the prompt
  ids would differ between chosen and rejected (breaking prefix sharing) and the
  completion would start mid-token.
- Plain strings: the prompt gets the tokenizer's own leading special tokens (BOS where
  the tokenizer adds one; never a trailing one such as EOS/SEP, which would sit in
  the middle of the sequence); the completion is encoded without special tokens.
- Conversations: the prompt is the chat template rendered with the generation prompt;
  the completion is the template of prompt+completion minus that text. The template
  text already holds BOS when the template emits it, so it is encoded without special
  tokens: encoding it with them gives the double BOS many trainers ship.
- Every completion ends with exactly one EOS: an EOS the template put last (possibly
  followed by a newline) is kept and the whitespace after it cut; otherwise EOS is
  appended. Training on the trailing newline would teach the model to emit it after
  EOS; training without EOS would teach it never to stop.
- Truncation: the prompt keeps its end (the question is at the end; a leading BOS is
  kept too, as models are trained to see it first), completions keep their start.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefero.data.errors import DataError
from prefero.data.formats import Text, Where, is_conversational


class Encoder:
    """Tokenizes prompts and completions for one tokenizer (HF `PreTrainedTokenizerBase`)."""

    def __init__(self, tokenizer):
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token so completions can end")
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.bos_id = tokenizer.bos_token_id
        self.prefix = self._special_prefix()
        self._is_blank: dict[int, bool] = {}

    def _special_prefix(self) -> list[int]:
        """The special tokens the tokenizer puts before a text (e.g. [BOS]), found by
        encoding a probe with and without them rather than trusting `add_bos_token`
        flags, which differ between tokenizer classes and versions."""
        probe = "Hello"
        plain = self.tokenizer.encode(probe, add_special_tokens=False)
        full = self.tokenizer.encode(probe, add_special_tokens=True)
        for start in range(len(full) - len(plain) + 1):
            if full[start:start + len(plain)] == plain:
                return full[:start]
        return []

    def encode(self, prompt: Text, completions: list[tuple[str, Text]], where: Where) -> tuple[list[int], list[list[int]]]:
        """Token ids of `prompt` and of each `(field, completion)` continuing it."""
        if is_conversational(prompt):
            return self._encode_chat(prompt, completions, where)
        prompt_ids = self._dedupe_bos(self.prefix + self._plain(prompt))
        return prompt_ids, [self._one_eos(self._plain(text)) for _, text in completions]

    def _plain(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _encode_chat(self, prompt: list, completions: list[tuple[str, Text]], where: Where):
        if not getattr(self.tokenizer, "chat_template", None):
            raise DataError(
                where.file, where.row, None,
                "record is conversational (a message list) but the tokenizer has no chat template; "
                "set tokenizer.chat_template, or use a chat model's tokenizer, or give plain-string fields",
                skippable=False,
            )
        prompt_text = self._render(prompt, True, where, "prompt")
        completion_ids = []
        for field, messages in completions:
            full_text = self._render(prompt + messages, False, where, field)
            if not full_text.startswith(prompt_text):
                raise where.error(
                    field,
                    "the chat template renders prompt+completion so that it does not start with the "
                    "rendered prompt; cannot split the completion off it",
                )
            completion_ids.append(self._one_eos(self._plain(full_text[len(prompt_text):])))
        return self._dedupe_bos(self._plain(prompt_text)), completion_ids

    def _render(self, messages: list, generation_prompt: bool, where: Where, field: str) -> str:
        try:
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=generation_prompt, tokenize=False
            )
        except Exception as e:  # jinja raises TemplateError, and templates raise_exception()
            raise where.error(field, f"chat template failed: {e}") from e
        if not isinstance(text, str):
            raise where.error(field, f"chat template returned {type(text).__name__}, expected text")
        return text

    def _dedupe_bos(self, ids: list[int]) -> list[int]:
        # A prompt text that itself starts with the BOS string would otherwise get a
        # second BOS from the tokenizer's prefix.
        while self.bos_id is not None and len(ids) >= 2 and ids[0] == ids[1] == self.bos_id:
            ids = ids[1:]
        return ids

    def _blank(self, token_id: int) -> bool:
        if token_id not in self._is_blank:
            special = token_id in self.tokenizer.all_special_ids
            self._is_blank[token_id] = not special and not self.tokenizer.decode([token_id]).strip()
        return self._is_blank[token_id]

    def _one_eos(self, ids: list[int]) -> list[int]:
        """End `ids` with exactly one EOS (see the module docstring)."""
        if self.eos_id in ids:
            last = len(ids) - 1 - ids[::-1].index(self.eos_id)
            if all(self._blank(t) for t in ids[last + 1:]):
                return ids[: last + 1]
        return ids + [self.eos_id]


@dataclass
class Truncation:
    """Result of `truncate`: the ids kept and which truncations happened."""

    prompt_ids: list[int]
    completions: list[list[int]]
    prompt_truncated: bool
    completion_truncated: bool

    @property
    def empty(self) -> bool:
        return any(not c for c in self.completions)


def truncate(
    prompt_ids: list[int],
    completions: list[list[int]],
    max_length: int,
    max_prompt_length: int,
    bos_id: int | None = None,
) -> Truncation:
    """Cut the prompt to `max_prompt_length` keeping its end (and a leading BOS), then
    each completion to `max_length - len(prompt)` keeping its start.

    A truncated completion loses its EOS; that is the honest label: the model did not
    stop there. A completion cut to nothing is left empty for the caller to drop.
    """
    prompt_truncated = len(prompt_ids) > max_prompt_length
    if prompt_truncated:
        keep_bos = bos_id is not None and prompt_ids[0] == bos_id
        head = prompt_ids[:1] if keep_bos else []
        keep = max_prompt_length - len(head)
        prompt_ids = head + (prompt_ids[len(prompt_ids) - keep:] if keep > 0 else [])
    budget = max(0, max_length - len(prompt_ids))
    completion_truncated = any(len(c) > budget for c in completions)
    return Truncation(prompt_ids, [c[:budget] for c in completions], prompt_truncated, completion_truncated)
