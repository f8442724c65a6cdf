"""Prompt/completion tokenization and truncation (README.md#data), the subtle part of the data.

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
- Every completion ends with exactly one stop token, the token the model ends its turn
  with at inference. Plain strings: EOS (an EOS the text already ends with is kept,
  otherwise one is appended). Conversations: the template's end-of-turn token (the
  special token it closes every assistant turn with: `<|im_end|>`, `<|eot_id|>`,
  `<end_of_turn>`; see `end_of_turn_id`) is kept and the whitespace the template writes
  after it is cut, with no EOS after it: generation stops at that token (prefero
  generate adds it to the stop tokens), so the model never gets to emit anything after
  it. A template that closes turns with no special token gets EOS appended. Training
  on the trailing newline would teach the model to emit it after stopping; training
  without a stop token would teach it never to stop.
- A completion marked as cut (generation hit its token limit) gets no stop token: the
  template's end-of-turn token and what follows it are removed, and no EOS is added.
  The model did not stop there, and must not learn that it did.
- Truncation: the prompt keeps its end (the question is at the end; a leading BOS is
  kept too, as models are trained to see it first), completions keep their start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from prefero.data.errors import DataError
from prefero.data.formats import Text, Where, is_conversational

#: The conversation `end_of_turn_id` renders to find how a template closes an assistant turn.
_PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


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
        self._special = set(tokenizer.all_special_ids) | {
            i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)
        }
        self._end_of_turn: list[int | None] = []  # computed on first use: [id or None]

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

    @property
    def end_of_turn_id(self) -> int | None:
        """The special token the chat template closes an assistant turn with, or None (no
        template, or one that closes turns with plain text).

        Read off a rendered probe conversation rather than a table of model families: the
        last special token after the assistant's text, whitespace after it ignored
        (`<|im_end|>\\n`, `<|eot_id|>`, `<end_of_turn>\\n`). It may be EOS itself (ChatML
        models whose EOS is `<|im_end|>`) or another token (Llama 3, Gemma).
        """
        if not self._end_of_turn:
            self._end_of_turn.append(self._probe_end_of_turn())
        return self._end_of_turn[0]

    def _probe_end_of_turn(self) -> int | None:
        if not getattr(self.tokenizer, "chat_template", None):
            return None
        try:
            prompt = self.tokenizer.apply_chat_template(_PROBE[:1], add_generation_prompt=True, tokenize=False)
            full = self.tokenizer.apply_chat_template(_PROBE, add_generation_prompt=False, tokenize=False)
        except Exception:  # a template that cannot render the probe: real records will say why
            return None
        if not (isinstance(full, str) and isinstance(prompt, str) and full.startswith(prompt)):
            return None
        reply = full[len(prompt):]
        content = _PROBE[1]["content"]
        if content not in reply:
            return None
        ids = self._plain(reply[reply.rindex(content) + len(content):])
        end = self._non_blank_end(ids)
        return ids[end - 1] if end and ids[end - 1] in self._special else None

    def encode(self, prompt: Text, completions: list[tuple[str, Text]], where: Where,
               cut: Sequence[bool] = ()) -> tuple[list[int], list[list[int]]]:
        """Token ids of `prompt` and of each `(field, completion)` continuing it.

        `cut[k]` true: completion k was cut at generation's token limit (no stop token).
        """
        cut = list(cut) + [False] * (len(completions) - len(cut))
        if is_conversational(prompt):
            return self._encode_chat(prompt, completions, where, cut)
        prompt_ids = self._dedupe_bos(self.prefix + self._plain(prompt))
        stops = {self.eos_id}
        return prompt_ids, [self._end(self._plain(text), stops, c) for (_, text), c in zip(completions, cut)]

    def _plain(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _encode_chat(self, prompt: list, completions: list[tuple[str, Text]], where: Where, cut: list[bool]):
        if not getattr(self.tokenizer, "chat_template", None):
            raise DataError(
                where.file, where.row, None,
                "record is conversational (a message list) but the tokenizer has no chat template; "
                "set tokenizer.chat_template, or use a chat model's tokenizer, or give plain-string fields",
                skippable=False,
            )
        prompt_text = self._render(prompt, True, where, "prompt")
        stops = {self.eos_id, self.end_of_turn_id} - {None}
        completion_ids = []
        for (field, messages), is_cut in zip(completions, cut):
            full_text = self._render(prompt + messages, False, where, field)
            if not full_text.startswith(prompt_text):
                raise where.error(
                    field,
                    "the chat template renders prompt+completion so that it does not start with the "
                    "rendered prompt; cannot split the completion off it",
                )
            completion_ids.append(self._end(self._plain(full_text[len(prompt_text):]), stops, is_cut))
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
            special = token_id in self._special
            self._is_blank[token_id] = not special and not self.tokenizer.decode([token_id]).strip()
        return self._is_blank[token_id]

    def _non_blank_end(self, ids: list[int]) -> int:
        end = len(ids)
        while end and self._blank(ids[end - 1]):
            end -= 1
        return end

    def _end(self, ids: list[int], stops: set[int], cut: bool) -> list[int]:
        """End `ids` with exactly one stop token, or, if `cut`, with none (module docstring)."""
        end = self._non_blank_end(ids)
        ends_with_stop = end > 0 and ids[end - 1] in stops
        if cut:
            return ids[:end - 1] if ends_with_stop else ids
        return ids[:end] if ends_with_stop else ids + [self.eos_id]


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
