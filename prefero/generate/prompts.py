"""What the model is conditioned on: prompts rendered for a backend, and the sampling seeds.

A string prompt is given to a chat model as one user message (chat template with the
generation prompt); the output row then records the prompt as that message list, so the
judging and training stages that read it apply the same template and see the exact
prompt the completions answer. With `chat_template: false` prompts stay plain text (base
models, HH-RLHF style "\\n\\nHuman: ... \\n\\nAssistant:" prompts).
"""

from __future__ import annotations

import hashlib
import json

from prefero.data.formats import Text, Where
from prefero.options import ConfigError
from prefero.pipeline_io import Prompt


def uses_chat_template(mode: str, tokenizer, model: str) -> bool:
    """Whether prompts go through the tokenizer's chat template (`mode`: auto | true | false;
    YAML reads on/off and yes/no as true/false too)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if mode == "true" and not has_template:
        raise ConfigError(f"chat_template: true, but the tokenizer of {model!r} has no chat template; "
                          "use chat_template=false for plain-text prompts")
    return has_template if mode == "auto" else mode == "true"


def model_prompt(prompt: Prompt, templated: bool, column: str) -> Text:
    """The prompt as the model sees it and as the output row records it."""
    if templated:
        return [{"role": "user", "content": prompt.text}] if isinstance(prompt.text, str) else prompt.text
    if prompt.conversational:
        raise prompt.error(column, "is a message list, which needs a chat template, but the chat template is "
                                   "off (chat_template=false, or the tokenizer has none)")
    return prompt.text


def encode_prompt(encoder, text: Text, prompt: Prompt) -> list[int]:
    """Token ids exactly as the training data reader builds a prompt (one BOS, the chat
    template with the generation prompt), so a completion sampled here continues the same
    ids it will be trained on."""
    ids, _ = encoder.encode(text, [], Where(prompt.file, prompt.row))
    return ids


def check_room(max_new_tokens: int, limit) -> None:
    """max_new_tokens must leave room for a prompt in the model's positions (a config error)."""
    if limit is not None and max_new_tokens >= limit.tokens:
        raise ConfigError(f"max_new_tokens: {max_new_tokens} leaves no room for a prompt in the model's "
                          f"{limit}; set max_new_tokens below {limit.tokens}")


def check_fits(ids: list[int], prompt: Prompt, column: str, max_new_tokens: int, limit) -> None:
    """A prompt whose ids plus max_new_tokens pass the model's limit is refused, naming file
    and row: past its positions a model writes garbage and still stops "normally". Not
    truncated: which part of a prompt may go is the user's call, not ours."""
    if limit is not None and len(ids) + max_new_tokens > limit.tokens:
        raise prompt.error(column, f"the prompt has {len(ids)} tokens; with max_new_tokens {max_new_tokens} that is "
                                   f"{len(ids) + max_new_tokens}, more than the model's {limit}; shorten the "
                                   f"prompt or lower max_new_tokens")


def prompts_sha256(prompts: list[Prompt]) -> str:
    """Fingerprint of the prompt texts in order: a resumed run must see the same items."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps(p.text, ensure_ascii=False, sort_keys=True).encode())
        h.update(b"\n")
    return h.hexdigest()


def batch_seed(seed: int, batch: int) -> int:
    """The RNG seed of batch `batch` (transformers backend): a function of the config seed
    and the batch's position only, so it is the same however batches are spread over
    processes or however often the run is resumed."""
    return _derive(seed, "batch", batch, bits=63)


def prompt_seed(seed: int, index: int) -> int:
    """The per-request seed of prompt `index` (vllm and openai backends seed each request).
    31 bits: some servers keep request seeds in a signed 32-bit integer."""
    return _derive(seed, "prompt", index, bits=31)


def _derive(seed: int, kind: str, i: int, bits: int) -> int:
    # A hash rather than seed + i: seeds 0 and 1 would otherwise share all but one stream.
    digest = hashlib.sha256(f"prefero-generate:{seed}:{kind}:{i}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**bits - 1)
