"""Sampling with Hugging Face `model.generate`: batched, left-padded, KV-cached.

Seeding: the global torch RNG is seeded with `batch_seed(seed, b)` before batch b, and a
batch is always the same prompts in the same order, so a batch's completions depend on
nothing but the config: not on which process runs it, nor on whether the run was
resumed. (Sampling in a batch consumes one RNG stream for all its rows, so a prompt's
completions do depend on its batch-mates: batch_size is part of the config.)

K completions of a prompt share its prefill (`shared_prefill`): the prompts but their last
token run once through the decoder and their KV cache is repeated K times, where
`generate(num_return_sequences=K)` would run each prompt K times. Generation then starts
from each prompt's last token, as it would after its own prefill; the logits differ only by
float rounding (the same attention over a cache instead of inside one causal pass).
"""

from __future__ import annotations

import copy
import functools

import torch

from prefero.batching import left_padded_positions
from prefero.data.limits import context_limit
from prefero.data.tokenize import Encoder
from prefero.generate.config import GenerateConfig
from prefero.generate.prompts import (
    batch_seed,
    check_fits,
    check_room,
    encode_prompt,
    model_prompt,
    uses_chat_template,
)
from prefero.generate.sampler import Sample
from prefero.pipeline_io import Prompt

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


class TransformersSampler:
    def __init__(self, cfg: GenerateConfig, device: torch.device | str = "cpu"):
        from prefero.model import load_causal_lm, load_tokenizer

        self.cfg = cfg
        self.device = torch.device(device)
        self.tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
        self.templated = uses_chat_template(cfg.chat_template, self.tokenizer, cfg.model)
        self.encoder = Encoder(self.tokenizer)
        # SDPA (eager where the family has none) rather than FlexAttention: generation runs
        # many small, ragged decode steps
        model = load_causal_lm(cfg.model, cfg.trust_remote_code, resolve_dtype(cfg.dtype, self.device))
        self.model = model.to(self.device).eval()
        self.limit = context_limit(self.model.config, self.tokenizer)
        check_room(cfg.max_new_tokens, self.limit)
        turn_end = self.encoder.end_of_turn_id if self.templated else None
        self.eos_ids = stop_token_ids(self.tokenizer, self.model.generation_config, turn_end)
        self.pad_id = self.tokenizer.pad_token_id
        self.generation_config = generation_config(cfg, self.eos_ids, self.pad_id)
        self.one_each = copy.deepcopy(self.generation_config)  # after a shared prefill: one sequence per row
        self.one_each.num_return_sequences = 1
        # generate() merges the model's generation_config.json into every call and warns when
        # its min_length meets our min_new_tokens; ours already says everything
        self.model.generation_config = self.generation_config

    def check(self, prompts: list[Prompt]) -> None:
        for p in prompts:
            self.encode(p)

    def encode(self, prompt: Prompt) -> list[int]:
        """The prompt's ids, refused (file, row) when they and max_new_tokens pass the model's limit."""
        ids = encode_prompt(self.encoder, model_prompt(prompt, self.templated, self.cfg.prompt_column), prompt)
        check_fits(ids, prompt, self.cfg.prompt_column, self.cfg.max_new_tokens, self.limit)
        return ids

    def sample(self, prompts: list[Prompt], indices: list[int], batch: int) -> list[Sample]:
        texts = [model_prompt(p, self.templated, self.cfg.prompt_column) for p in prompts]
        ids = [self.encode(p) for p in prompts]
        input_ids, attention_mask = left_pad(ids, self.pad_id)
        generated = self.generate_ids(input_ids, attention_mask, batch).tolist()
        k = self.cfg.num_completions
        samples = []
        for i, text in enumerate(texts):
            rows = [completion_ids(g, self.eos_ids) for g in generated[i * k:(i + 1) * k]]
            samples.append(Sample(
                prompt=text,
                completions=[self.tokenizer.decode(r.ids, skip_special_tokens=True) for r in rows],
                finish_reasons=[r.finish_reason for r in rows],
                tokens=sum(r.length for r in rows),
            ))
        return samples

    def generate_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch: int) -> torch.Tensor:
        """The new tokens of batch `batch`'s left-padded prompts, K rows per prompt in order."""
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        k = self.cfg.num_completions
        with torch.inference_mode():
            if k > 1 and input_ids.shape[1] > 1:
                inputs, config = shared_prefill(self.model, input_ids, attention_mask, k), self.one_each
            else:
                inputs, config = {"input_ids": input_ids, "attention_mask": attention_mask}, self.generation_config
            torch.manual_seed(batch_seed(self.cfg.seed, batch))  # seeds CUDA too
            out = self.model.generate(**inputs, generation_config=config)
        return out[:, input_ids.shape[1]:].cpu()  # the prompt columns are the same width for all rows

    def close(self) -> None:
        self.model = None


def shared_prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int) -> dict:
    """`generate` inputs for K completions of each left-padded prompt whose prefill is run once:
    the rows repeated K times (row i's copies together, as num_return_sequences=K orders them)
    and a KV cache of all but each prompt's last token, computed once per prompt and repeated.
    Positions count real tokens only, as generate derives them from the attention mask; the
    decoder alone runs (no logits over the vocabulary for the prefix)."""
    positions = left_padded_positions(attention_mask)
    name = _cache_field()
    prefix = model.base_model(input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1],
                              position_ids=positions[:, :-1], use_cache=True)
    cache = getattr(prefix, name)
    cache.batch_repeat_interleave(k)
    return {"input_ids": input_ids.repeat_interleave(k, 0), "attention_mask": attention_mask.repeat_interleave(k, 0),
            name: cache}


@functools.cache
def _cache_field() -> str:
    """The KV cache's name, as argument and output: transformers 5 renamed `past_key_values` to
    `cache` (decided once, not per batch)."""
    from transformers.modeling_outputs import BaseModelOutputWithPast

    return "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def generation_config(cfg: GenerateConfig, eos_ids: list[int], pad_id: int):
    """Sampling exactly as the config says. transformers fills every unset option from the
    model's generation_config.json (a repetition penalty, a top-k...), which would make
    the completions depend on a file the user never sees; so every option that reshapes
    the distribution is set here, to the config's value or to "off"."""
    from transformers import GenerationConfig

    greedy = cfg.temperature == 0
    return GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else cfg.temperature,
        top_p=None if greedy else cfg.top_p,
        top_k=None if greedy else cfg.top_k,
        min_p=None if greedy else 0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
        repetition_penalty=1.0, encoder_repetition_penalty=1.0, no_repeat_ngram_size=0, num_beams=1,
        # min_new_tokens alone: with min_length set as well, every call warns that both are
        min_new_tokens=0,
        max_new_tokens=cfg.max_new_tokens,
        num_return_sequences=cfg.num_completions,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        use_cache=True,  # load_causal_lm turns the cache off for training
    )


def stop_token_ids(tokenizer, model_generation_config, end_of_turn: int | None = None) -> list[int]:
    """The tokenizer's EOS, any the model declares, and the chat template's end-of-turn
    token (`end_of_turn`): chat models end a turn with a token other than EOS (Llama 3's
    <|eot_id|>, Gemma's <end_of_turn>), and a fine-tuned checkpoint does not always
    declare it; training ends chat completions at it (prefero.data.tokenize)."""
    ids = {tokenizer.eos_token_id}
    if end_of_turn is not None:
        ids.add(end_of_turn)
    declared = getattr(model_generation_config, "eos_token_id", None)
    if isinstance(declared, int):
        ids.add(declared)
    elif isinstance(declared, (list, tuple)):
        ids.update(i for i in declared if isinstance(i, int))
    return sorted(ids)


def left_pad(ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts padded on the left, so every row's next token is at the same position.
    Position ids are not needed: generate derives them from the attention mask."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, width - len(x):] = torch.tensor(x, dtype=torch.long)
        mask[row, width - len(x):] = 1
    return input_ids, mask


class CompletionIds:
    """A generated row cut at its first stop token (padding after it removed)."""

    def __init__(self, ids: list[int], length: int, finish_reason: str):
        self.ids = ids  # without the stop token (decoded text never shows it)
        self.length = length  # tokens generated, the stop token included
        self.finish_reason = finish_reason


def completion_ids(row: list[int], eos_ids: list[int]) -> CompletionIds:
    """`row` is what generate appended to one prompt: tokens, then (if the row stopped
    before the others) a stop token and padding. No stop token means the row ran to
    max_new_tokens (a batch only ends early when every row has stopped)."""
    stops = set(eos_ids)
    for i, t in enumerate(row):
        if t in stops:
            return CompletionIds(row[:i], i + 1, "stop")
    return CompletionIds(row, len(row), "length")
