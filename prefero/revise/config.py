"""`ReviseConfig`: every key `prefero revise` reads, with its doc and valid range.

    prompts: data/prompts.jsonl
    rounds: 2
    output_dir: runs/revise
    generation:                 # the model that answers, critiques and revises
      model: Qwen/Qwen2.5-7B-Instruct
      backend: openai           # transformers | vllm | openai, as `prefero generate`
      base_url: http://localhost:8000/v1

The `generation:` block takes `prefero generate`'s keys for the model, the backend and
sampling (GenerationBlock is built from GenerateConfig's fields, so the two never drift);
the keys that say what to generate from and where it goes are revise's own.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from prefero.generate import GenerateConfig
from prefero.options import ConfigError, derived_block, option, require

#: GenerateConfig keys revise sets itself: one completion per request, its own prompts,
#: output, overwrite rule and seed.
STAGE_KEYS = ("prompts", "prompt_column", "output", "overwrite", "num_completions", "seed")

#: Sampler calls per item are numbered 0 (the answer), 1 + 2r (critique of round r) and
#: 2 + 2r (revision of round r); call key = position * STRIDE + call. The backends derive
#: their seeds from those keys, so each call is its own random stream and a call's stream
#: does not depend on `rounds` (round 1 of a 2-round run is the 1-round run).
STRIDE = 2**16
MAX_ROUNDS = (STRIDE - 1) // 2

TRANSCRIPTS = "transcripts.jsonl"
SFT = "sft.jsonl"
PAIRS = "pairs.jsonl"
REPORT = "revise_report.json"


GenerationBlock = derived_block(
    "GenerationBlock", GenerateConfig, STAGE_KEYS,
    "The model that answers, critiques and revises: `prefero generate`'s model, backend and sampling keys (the "
    "`generation:` block).", __name__)


@dataclass
class ReviseConfig:
    """Constitutional critique and revision of answers to `prompts` (docs/pipeline.md)."""

    prompts: str = option("", "prompts file (.jsonl/.json/.parquet/.csv), save_to_disk folder or hub name; "
                          "string or message-list prompts, or preference pairs (their prompts are used)")
    prompt_column: str = option("prompt", "column holding the prompt")
    response_column: str = option("response", "column holding an initial answer to critique; rows without one are "
                                          "answered by the model ('' = the model answers every prompt)")
    constitution: str = option("", "principles file (.yaml/.json: name, critique_request, revision_request each); "
                               "'' = prefero's example, prefero/assets/constitution.yaml")
    rounds: int = option(1, "critique-revision rounds per prompt, each under a principle drawn at random; "
                        "a revision is the answer the next round critiques", ge=1, le=MAX_ROUNDS)
    seed: int = option(0, "seed of the principle draws and of sampling: the same config gives the same files", ge=0)
    output_dir: str = option("", "where transcripts.jsonl, sft.jsonl, pairs.jsonl and revise_report.json go")
    overwrite: bool = option(False, "replace a finished run in output_dir (an unfinished one is always resumed)")
    drop_truncated: bool = option(True, "leave out of sft.jsonl and pairs.jsonl the prompts whose final revision (and, "
                                    "for pairs, the model's original answer) hit max_new_tokens, counted; false = "
                                    "keep them marked *_truncated, so training appends no EOS to them")
    generation: GenerationBlock | None = option(None, "the model and how to sample from it: model, backend, temperature, "
                                                  "max_new_tokens, batch_size, base_url... (the keys of prefero generate)")

    def validate(self) -> "ReviseConfig":
        require(self, "prompts", "output_dir")
        if self.generation is None:
            raise ConfigError("the `generation:` block is required (at least generation.model: the model that "
                              "answers, critiques and revises)")
        if not self.generation.model:
            raise ConfigError("generation.model is required: the model that answers, critiques and revises "
                              "(hub id or local directory; for backend openai, the served model's name)")
        if self.generation.chat_template == "false":
            raise ConfigError("generation.chat_template: false is not possible for revise: the critique and the "
                              "revision are turns of a conversation, which needs a chat template (auto or true)")
        self.generate_config()
        return self

    def generate_config(self) -> GenerateConfig:
        """The generate stage's config for the sampler: one completion per request."""
        values = dataclasses.asdict(self.generation) if self.generation is not None else {}
        cfg = GenerateConfig(**values, prompts=self.prompts, prompt_column=self.prompt_column,
                             output=self.path(TRANSCRIPTS), overwrite=self.overwrite, num_completions=1,
                             seed=self.seed)
        try:
            return cfg.validate()
        except ConfigError as e:
            raise ConfigError(f"generation: {e}") from None

    def path(self, name: str) -> str:
        return os.path.join(self.output_dir, name)
