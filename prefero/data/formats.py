"""Record shapes (README.md#data): detect each record's shape, validate it, normalize it.

Every shape becomes a `RawPair` or `RawExample` whose texts are either all plain
strings or all message lists (conversational), so tokenization has only two cases.
Shapes are detected per record, because real files mix them (a scored record among
explicit pairs is legal), and every check raises a `DataError` naming the field.

Shapes for pairs:
- explicit: {prompt, chosen, rejected}, strings or message lists. In a conversational
  record a string prompt is one user message and a string completion one assistant
  message.
- implicit prompt, conversational: {chosen, rejected} both full conversations (their
  first message is not from the assistant). The prompt is their longest common message
  prefix, cut back until it ends with a user/tool turn followed by an assistant turn
  in both; the rest of each is its completion. A prompt column, if also present, is
  ignored: UltraFeedback-binarized stores the prompt both ways.
- implicit prompt, strings (HH-RLHF): {chosen, rejected} strings of
  "\\n\\nHuman: ...\\n\\nAssistant: ..." turns. The prompt is their longest common
  prefix cut back to the end of its last "\\n\\nAssistant:"; the completions are the
  rest (usually starting with a space).
- scored: {prompt, completions[], scores[]}: chosen = the best (first on ties),
  rejected = the worst, or with binarize="random" a random completion scored
  strictly below the best (a completion tied with the best expresses no preference).
  All scores equal -> dropped as "tied_scores".
- win probabilities: any pair shape plus {p_chosen, p_rejected} floats in [0, 1].

Completions cut at generation's token limit (README.md#data: a cut answer is not a finished one)
are marked, never guessed: `chosen_truncated` / `rejected_truncated` (pairs, SPPO rows)
and `completion_truncated` (unpaired, SFT rows) are optional booleans the label stage
writes; a scored record may carry generate's `finish_reasons` ("length" = cut). A
marked completion is tokenized without a stop token (`prefero.data.tokenize`).
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from typing import Union

from prefero.data.errors import DataError
from prefero.data.options import DataOptions

ROLES = ("system", "user", "assistant", "tool")
#: A prompt may end with a tool result: the assistant's next turn is the completion.
PROMPT_END_ROLES = ("user", "tool")
HH_ASSISTANT = "\n\nAssistant:"
#: Row fields marking a completion cut at generation's token limit, by completion.
CUT_FIELDS = {"chosen": "chosen_truncated", "rejected": "rejected_truncated", "completion": "completion_truncated"}
FINISH_REASONS = "finish_reasons"  # generate's per-completion "stop" | "length", in scored records

Text = Union[str, list]  # plain text, or a list of {role, content} messages


class Dropped(Exception):
    """A well-formed record that cannot become training data; counted under `reason`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Where:
    """A record's location, so every check can name file and row."""

    file: str
    row: int

    def error(self, field: str | None, problem: str) -> DataError:
        return DataError(self.file, self.row, field, problem)


@dataclass
class RawPair:
    prompt: Text
    chosen: Text
    rejected: Text
    p_chosen: float | None = None
    p_rejected: float | None = None
    chosen_cut: bool = False  # generation stopped at its token limit: not a finished answer
    rejected_cut: bool = False


@dataclass
class RawExample:
    prompt: Text
    completion: Text
    label: bool | None = None
    cut: bool = False  # generation stopped at its token limit: not a finished answer


def is_conversational(text: Text) -> bool:
    return isinstance(text, list)


# --------------------------------------------------------------------------- pairs


def parse_pair(record: dict, opts: DataOptions, where: Where) -> RawPair:
    """Detect the record's pair shape and return it validated and normalized."""
    if _present(record, opts.completions_column):
        pair = _scored_pair(record, opts, where)
    else:
        for column in (opts.chosen_column, opts.rejected_column):
            if not _present(record, column):
                hint = ""
                if _present(record, opts.completion_column):
                    hint = "; this looks like an unpaired (prompt, completion, label) record: train it with loss=kto (unpaired) or loss=sft"
                raise where.error(column, f"missing (expected {{prompt, chosen, rejected}} or {{prompt, completions, scores}}){hint}")
        chosen = text_value(record[opts.chosen_column], opts.chosen_column, where)
        rejected = text_value(record[opts.rejected_column], opts.rejected_column, where)
        if chosen == rejected:
            raise where.error(opts.chosen_column, f"identical to '{opts.rejected_column}'")
        has_prompt = _present(record, opts.prompt_column)
        full = _is_full_conversation(chosen) and _is_full_conversation(rejected)
        if full or (not has_prompt and (is_conversational(chosen) or is_conversational(rejected))):
            pair = _implicit_messages_pair(chosen, rejected, opts, where)
        elif not has_prompt:
            pair = _implicit_string_pair(chosen, rejected, opts, where)
        else:
            prompt = text_value(record[opts.prompt_column], opts.prompt_column, where)
            pair = _normalize_pair(prompt, chosen, rejected, opts, where)
        pair.chosen_cut = cut_flag(record, CUT_FIELDS["chosen"], where)
        pair.rejected_cut = cut_flag(record, CUT_FIELDS["rejected"], where)
    pair.p_chosen, pair.p_rejected = _win_probabilities(record, opts, where)
    return pair


def cut_flag(record: dict, field: str, where: Where) -> bool:
    """An optional boolean marking a completion as cut at the token limit (absent: not cut)."""
    value = record.get(field)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise where.error(field, f"expected true or false, got {value!r}")
    return value


def was_cut(finish_reason) -> bool:
    """Whether a completion stopped at the token limit instead of ending itself: finish
    reason "length", as prefero's samplers and OpenAI-compatible servers report it. The
    one rule for the data reader, the judges, label, revise and self-play."""
    return finish_reason == "length"


def _finish_reasons(record: dict, n: int, where: Where) -> list[bool]:
    """Which of a scored record's `n` completions were cut, from generate's finish_reasons."""
    reasons = record.get(FINISH_REASONS)
    if reasons is None:
        return [False] * n
    if not isinstance(reasons, list) or len(reasons) != n or not all(isinstance(r, str) for r in reasons):
        raise where.error(FINISH_REASONS, f"expected a list of {n} strings (one per completion), got {reasons!r}")
    return [was_cut(r) for r in reasons]


def _normalize_pair(prompt: Text, chosen: Text, rejected: Text, opts: DataOptions, where: Where) -> RawPair:
    if any(is_conversational(t) for t in (prompt, chosen, rejected)):
        prompt = prompt_messages(prompt, opts.prompt_column, where)
        chosen = completion_messages(chosen, opts.chosen_column, where)
        rejected = completion_messages(rejected, opts.rejected_column, where)
        if chosen == rejected:
            raise where.error(opts.chosen_column, f"identical to '{opts.rejected_column}'")
    return RawPair(prompt, chosen, rejected)


def _is_full_conversation(text: Text) -> bool:
    return is_conversational(text) and text[0]["role"] != "assistant"


def _implicit_messages_pair(chosen: Text, rejected: Text, opts: DataOptions, where: Where) -> RawPair:
    if not (is_conversational(chosen) and is_conversational(rejected)):
        bad = opts.rejected_column if is_conversational(chosen) else opts.chosen_column
        raise where.error(bad, "must be a message list like the other completion (a full conversation)")
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1

    def splits_at(i: int) -> bool:
        return (
            chosen[i - 1]["role"] in PROMPT_END_ROLES
            and i < len(chosen) and chosen[i]["role"] == "assistant"
            and i < len(rejected) and rejected[i]["role"] == "assistant"
        )

    while k > 0 and not splits_at(k):
        k -= 1
    if k == 0:
        raise where.error(
            opts.prompt_column,
            f"missing, and '{opts.chosen_column}'/'{opts.rejected_column}' share no message prefix "
            "ending with a user turn followed by an assistant turn to derive it from",
        )
    return _normalize_pair(chosen[:k], chosen[k:], rejected[k:], opts, where)


def _implicit_string_pair(chosen: Text, rejected: Text, opts: DataOptions, where: Where) -> RawPair:
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(HH_ASSISTANT)
    if cut < 0:
        raise where.error(
            opts.prompt_column,
            f"missing, and '{opts.chosen_column}'/'{opts.rejected_column}' share no prefix ending with "
            f"{HH_ASSISTANT!r} (HH-RLHF format) to derive it from",
        )
    end = cut + len(HH_ASSISTANT)
    prompt, chosen, rejected = chosen[:end], chosen[end:], rejected[end:]
    for column, text in ((opts.chosen_column, chosen), (opts.rejected_column, rejected)):
        if not text.strip():
            raise where.error(column, "empty after removing the shared prompt")
    return RawPair(prompt, chosen, rejected)


def _scored_pair(record: dict, opts: DataOptions, where: Where) -> RawPair:
    c_col, s_col = opts.completions_column, opts.scores_column
    prompt = text_value(_required(record, opts.prompt_column, where), opts.prompt_column, where)
    completions = record[c_col]
    if not isinstance(completions, list):
        raise where.error(c_col, f"expected a list of completions, got {_type(completions)}")
    if len(completions) < 2:
        raise where.error(c_col, f"needs at least 2 completions to form a pair, got {len(completions)}")
    completions = [text_value(c, f"{c_col}[{i}]", where) for i, c in enumerate(completions)]
    scores = _required(record, s_col, where)
    if not isinstance(scores, list):
        raise where.error(s_col, f"expected a list of numbers, got {_type(scores)}")
    if len(scores) != len(completions):
        raise where.error(s_col, f"has {len(scores)} scores for {len(completions)} completions")
    for i, s in enumerate(scores):
        # isfinite only on floats: a huge JSON int would overflow the conversion.
        if not _is_real(s) or (isinstance(s, float) and not math.isfinite(s)):
            raise where.error(s_col, f"score {i} is {s!r}; expected a finite number")
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))  # first of the best
    lower = [i for i in range(len(scores)) if scores[i] < scores[best]]
    if not lower:
        raise Dropped("tied_scores")
    if opts.binarize == "worst":
        worst = min(lower, key=lambda i: (scores[i], i))
    else:
        # Seeded by row, not by position in the stream, so the choice does not change
        # when the file is filtered, shuffled or read in parallel.
        worst = random.Random(f"{opts.seed}:{where.row}").choice(lower)
    chosen, rejected = completions[best], completions[worst]
    if chosen == rejected:
        raise Dropped("identical_chosen_rejected")
    cut = _finish_reasons(record, len(completions), where)
    try:
        pair = _normalize_pair(prompt, chosen, rejected, opts, where)
        pair.chosen_cut, pair.rejected_cut = cut[best], cut[worst]
        return pair
    except DataError as e:
        if e.field not in (opts.chosen_column, opts.rejected_column):
            raise
        # Name the completions column: chosen/rejected are not columns of this record.
        raise where.error(c_col, e.problem) from e


def _win_probabilities(record: dict, opts: DataOptions, where: Where) -> tuple[float | None, float | None]:
    columns = (opts.p_chosen_column, opts.p_rejected_column)
    if not any(_present(record, c) for c in columns):
        return None, None
    values = []
    for column in columns:
        p = _required(record, column, where)
        if not _is_real(p) or not (0.0 <= p <= 1.0):
            raise where.error(column, f"expected a probability (a number in [0, 1]), got {p!r}")
        values.append(float(p))
    return values[0], values[1]


# --------------------------------------------------------------------------- examples


def parse_examples(record: dict, opts: DataOptions, kind: str, where: Where) -> list[RawExample]:
    """SFT (`kind="sft"`) or unpaired KTO (`kind="unpaired"`) examples from one record.

    SFT: {prompt, completion}; {messages} (the last message is the completion and must
    be the assistant's; everything before is the prompt); or any pair shape (its chosen
    completion). A record labelled False is not a demonstration: dropped as
    "sft_undesirable_label".
    Unpaired: {prompt, completion, label} or {messages, label}; or any pair shape, which
    gives (chosen, True) and (rejected, False).
    """
    if _present(record, opts.messages_column):
        prompt, completion = _split_messages(record[opts.messages_column], opts, where)
    elif _present(record, opts.completion_column):
        prompt = text_value(_required(record, opts.prompt_column, where), opts.prompt_column, where)
        completion = text_value(record[opts.completion_column], opts.completion_column, where)
        if is_conversational(prompt) or is_conversational(completion):
            prompt = prompt_messages(prompt, opts.prompt_column, where)
            completion = completion_messages(completion, opts.completion_column, where)
    else:
        pair = parse_pair(record, opts, where)
        if kind == "sft":
            return [RawExample(pair.prompt, pair.chosen, cut=pair.chosen_cut)]
        return [RawExample(pair.prompt, pair.chosen, True, pair.chosen_cut),
                RawExample(pair.prompt, pair.rejected, False, pair.rejected_cut)]

    label = None
    if kind == "unpaired" or _present(record, opts.label_column):
        label = _required(record, opts.label_column, where)
        if not isinstance(label, bool):
            raise where.error(opts.label_column, f"expected true or false, got {label!r}")
    if kind == "sft":
        if label is False:
            raise Dropped("sft_undesirable_label")
        label = None
    return [RawExample(prompt, completion, label, cut_flag(record, CUT_FIELDS["completion"], where))]


def _split_messages(value, opts: DataOptions, where: Where) -> tuple[list, list]:
    column = opts.messages_column
    messages = _messages(value, column, where)
    if messages[-1]["role"] != "assistant":
        raise where.error(column, f"last message must be the assistant's (the completion), got role '{messages[-1]['role']}'")
    if len(messages) < 2:
        raise where.error(column, "has no prompt: needs at least one user message before the assistant's")
    prompt = prompt_messages(messages[:-1], column, where)
    return prompt, completion_messages(messages[-1:], column, where)


# --------------------------------------------------------------------------- validation


def _present(record: dict, column: str) -> bool:
    # Columnar formats (parquet, saved datasets) give every record every column, with
    # None where a record has no value: that is "missing", not "wrong type".
    return record.get(column) is not None


def _required(record: dict, column: str, where: Where):
    if not _present(record, column):
        raise where.error(column, "missing")
    return record[column]


def _type(value) -> str:
    return "null" if value is None else type(value).__name__


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def text_value(value, field: str, where: Where) -> Text:
    """A non-blank string, or a valid non-empty message list."""
    if isinstance(value, str):
        if not value.strip():
            raise where.error(field, "empty (blank string)")
        return _unicode(value, field, where)
    if isinstance(value, list):
        return _messages(value, field, where)
    raise where.error(field, f"expected a string or a list of {{role, content}} messages, got {_type(value)}")


def _messages(value, field: str, where: Where) -> list:
    if not isinstance(value, list) or not value:
        raise where.error(field, f"expected a non-empty list of {{role, content}} messages, got {_type(value) if not isinstance(value, list) else 'an empty list'}")
    for i, m in enumerate(value, start=1):
        if not isinstance(m, dict):
            raise where.error(field, f"message {i} is {_type(m)}, expected an object with 'role' and 'content'")
        if m.get("role") not in ROLES:
            raise where.error(field, f"message {i} has role {m.get('role')!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise where.error(field, f"message {i} content is {_type(m.get('content'))}, expected a string")
        _unicode(m["content"], field, where)
    return value


def _unicode(text: str, field: str, where: Where) -> str:
    # JSON can spell lone surrogates ("\ud800"), which Python accepts but no tokenizer
    # can encode; catch them here, where the error can still name the field.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise where.error(field, f"invalid Unicode (lone surrogate at character {e.start})") from e
    return text


def prompt_messages(text: Text, field: str, where: Where) -> list:
    """A prompt as chat messages: a string is one user turn; a conversation must end with a
    turn the model answers and not be blank."""
    if isinstance(text, str):
        return [{"role": "user", "content": text}]
    last = text[-1]["role"]
    if last not in PROMPT_END_ROLES:
        raise where.error(field, f"a conversation prompt must end with a user turn, it ends with '{last}'")
    if not any(m["content"].strip() for m in text):
        raise where.error(field, "empty (all messages are blank)")
    return text


def completion_messages(text: Text, field: str, where: Where) -> list:
    """A completion as chat messages: a string is one assistant turn; a message list must
    start with the assistant's turn and say something."""
    if isinstance(text, str):
        return [{"role": "assistant", "content": text}]
    if text[0]["role"] != "assistant":
        raise where.error(field, f"a completion must start with an assistant message, it starts with '{text[0]['role']}'")
    if not any(m["content"].strip() for m in text if m["role"] == "assistant"):
        raise where.error(field, "empty (the assistant messages are blank)")
    return text
