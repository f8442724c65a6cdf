"""Reward-model scoring: r(x, y) from an `AutoModelForSequenceClassification`, no training.

Two ways to the same number:
- `score` / `sequence_scores` run the prefix-shared packed layout (`prefero.batching`): the
  prompt once, each completion attending to it and to itself. `prefero rm` evaluates this way.
- `padded_scores` runs HF's own right-padded forward on [prompt + completion] rows, as any user
  of the saved model would. The judge scores this way: plain, batched across prompts, no
  [T × T] mask.

Which token a score is read at (HF's pooling rule): the rightmost token that is not
`config.pad_token_id`. Completions end with EOS, so with a distinct pad token the score sits on
the EOS; a tokenizer whose pad *is* EOS (what `load_tokenizer` sets when none exists) pools the
last token before the trailing EOS. `score_index` applies the same rule to the packed layout.

`encode_group` turns texts into those ids exactly as `prefero.data.load_pairs` does (chat
template for message lists, prompt and completion tokenized apart, one EOS; truncate them
with `prefero.data.tokenize.truncate` as it does), so a judged score equals the one
`prefero rm` computes for the same pair.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from prefero.attention import unwrap_causal_lm
from prefero.batching import PackedBatch, pack_groups
from prefero.data.formats import Where, completion_messages, is_conversational, prompt_messages, text_value
from prefero.data.tokenize import Encoder
from prefero.errors import first_line
from prefero.exactness import refuse_if_inexact
from prefero.model import check_model_source, resolve_attention
from prefero.options import ConfigError
from prefero.tiny import TINY_FAMILIES


def load_reward_model(name: str, tokenizer, trust_remote_code: bool = False, dtype=torch.float32,
                      key: str = "model", trained: bool = False):
    """`AutoModelForSequenceClassification` with one output, safetensors only, its pad id set
    so HF's padded forward pools the right token. A causal LM gets a fresh head (to train);
    with `trained`, a weight missing from the checkpoint is an error instead (a judge must
    not score with a random head). `key` is the config key errors name."""
    from transformers import AutoModelForSequenceClassification

    from prefero.attention import disable_dropout

    impl, why = resolve_attention(name, "inference", trust_remote_code, key)
    _check_sequence_classifier(name, trust_remote_code, key)
    extra = check_model_source(name, key, tokenizer=False)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            name, num_labels=1, dtype=dtype, trust_remote_code=trust_remote_code,
            use_safetensors=True, attn_implementation=impl, output_loading_info=True, **extra,
        )
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load a reward model from {name!r}: {first_line(e)}") from None
    model, info = model
    missing = sorted(info.get("missing_keys") or [])
    if trained and missing:
        raise ConfigError(f"{key}: {name} is not a trained reward model: the checkpoint has no weights for "
                          f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''} (a causal LM? "
                          "train a scalar head with `prefero rm`, or judge with type: llm)")
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False
    disable_dropout(model)  # scores must be a function of the input; see disable_dropout
    model.prefero_attention = why
    _check_untested_family(model, tokenizer)
    return model


def _check_untested_family(model: nn.Module, tokenizer) -> None:
    """The reward-model side of `prefero.exactness.check_untested_family`: packed scores of
    a family outside the tested matrix must equal transformers' padded forward."""

    if getattr(model.config, "model_type", "?") in TINY_FAMILIES:
        return
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(3, len(tokenizer), (n,), generator=g).tolist()  # noqa: E731
    prompt, completions = ids(9), [ids(7), ids(5)]
    was_training = model.training
    model.eval()
    try:
        packed = score(model, tokenizer, prompt, completions).cpu()
        plain = padded_scores(model, [prompt + c for c in completions], model.config.pad_token_id)
    finally:
        model.train(was_training)
    refuse_if_inexact(packed, plain, model, "scores")


def _check_sequence_classifier(name: str, trust_remote_code: bool, key: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    from prefero.model import load_model_config

    config = load_model_config(name, trust_remote_code, key)
    if not trust_remote_code and type(config) not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        raise ConfigError(f"{key}: {config.model_type} models have no sequence-classification head in "
                          "transformers, so they cannot be a reward model; use another family, or judge "
                          "with type: llm")


def score_index(groups: Sequence, pad_id: int | None, starts: Sequence[int] = ()) -> list[int]:
    """Index, in the packed batch of `groups` whose groups start at `starts` (its
    `group_starts`; default: one row), of the token each completion is scored at: the
    rightmost token of [prompt | completion] that is not `pad_id` (HF's pooling rule,
    including its 0 when every token is pad)."""
    out, start = [], 0
    for g, (prompt, completions) in enumerate(groups):
        start = starts[g] if starts else start
        offset = start + len(prompt)
        for c in completions:
            seq = list(prompt) + list(c)
            last = max((i for i, t in enumerate(seq) if t != pad_id), default=0)
            out.append(start + last if last < len(prompt) else offset + last - len(prompt))
            offset += len(c)
        start = offset
    return out


def sequence_scores(model: nn.Module, batch: PackedBatch, index: Tensor) -> Tensor:
    """r(x, y) [S] float32: the score head on the backbone's hidden states at `index`."""
    from prefero.attention import completion_hidden

    lm = unwrap_causal_lm(model)
    hidden = completion_hidden(model, batch)
    head = getattr(lm, "score", None) or getattr(lm, "classifier", None)
    if head is None:
        raise ConfigError(f"{type(lm).__name__} has no `score` head; not a sequence classifier")
    return head(hidden[index]).float().squeeze(-1)


@torch.no_grad()
def score(model: nn.Module, tokenizer, prompt_ids: Sequence[int],
          completion_ids_list: Sequence[Sequence[int]]) -> Tensor:
    """r(x, y) for each completion of one prompt ([K] float32, on the model's device).

    Token ids as `load_pairs` makes them (completion ends with EOS); the prompt runs once.
    Equals `AutoModelForSequenceClassification`'s padded forward on [prompt + completion].
    """
    pad_id = unwrap_causal_lm(model).config.pad_token_id
    pad_id = tokenizer.pad_token_id if pad_id is None else pad_id
    groups = [(list(prompt_ids), [list(c) for c in completion_ids_list])]
    device = next(model.parameters()).device
    index = torch.tensor(score_index(groups, pad_id), device=device)
    return sequence_scores(model, pack_groups(groups).to(device), index)


@torch.no_grad()
def padded_scores(model: nn.Module, rows: Sequence[Sequence[int]], pad_id: int) -> Tensor:
    """r for each token row ([N] float32, on CPU): one right-padded HF forward, the model's
    own pooling. Rows should be of similar length (the caller sorts): padding is compute."""
    device = next(model.parameters()).device
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        attn[i, : len(r)] = 1
    logits = model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False).logits
    return logits.float().squeeze(-1).cpu()


def encode_group(encoder: Encoder, prompt, completions: Sequence, where: Where,
                 fields: Sequence[str], cut: Sequence[bool] = ()) -> tuple[list[int], list[list[int]]]:
    """Prompt ids and each completion's ids, as `load_pairs` builds a pair's before truncation:
    texts validated (a `DataError` names `where` and the field: `fields` are the prompt's,
    then each completion's; unlike training data, a blank completion is allowed), all turned into messages when any is a message list, tokenized
    apart, each completion ending with its stop token unless `cut[k]` says it was cut at the
    token limit (it is scored as generated, with no stop token it never produced). Cut them with `prefero.data.tokenize.truncate`."""
    prompt = text_value(prompt, fields[0], where)
    # a blank string is a completion too (the policy said nothing): it is scored on its EOS
    texts = [c if isinstance(c, str) else text_value(c, f, where) for c, f in zip(completions, fields[1:])]
    if is_conversational(prompt) or any(is_conversational(t) for t in texts):
        prompt = prompt_messages(prompt, fields[0], where)
        texts = [completion_messages(t, f, where) for t, f in zip(texts, fields[1:])]
    return encoder.encode(prompt, list(zip(fields[1:], texts)), where, cut)


# --------------------------------------------------------------------------- pairwise models



def pairwise_group(prompt_ids: Sequence[int], a_ids: Sequence[int], b_ids: Sequence[int],
                   max_length: int) -> tuple[list[int], list[list[int]]]:
    """The two orders a pairwise preference model reads one comparison in:
    (prompt, [A ⊕ B, B ⊕ A]), each candidate ending with its stop token, as tokenized for
    training. Each candidate keeps its start within half the room the prompt leaves, so
    both orders hold the same tokens and P(A ≻ B) + P(B ≻ A) = 1 holds after truncation."""
    room = max(1, (max_length - len(prompt_ids)) // 2)
    a, b = list(a_ids[:room]), list(b_ids[:room])
    return list(prompt_ids), [a + b, b + a]


def pairwise_logits(scores: Tensor) -> Tensor:
    """d = s(A ⊕ B) − s(B ⊕ A) per comparison from the scores of `pairwise_group`'s two
    orders ([2N], orders interleaved): P(A ≻ B) = σ(d), and swapping A and B negates d
    exactly, so the model is antisymmetric by construction whatever its weights."""
    return scores[0::2] - scores[1::2]
