"""`GenerateConfig`: every key `prefero generate` reads, with its doc and valid range."""

from __future__ import annotations

from dataclasses import dataclass

from prefero.openai_client import check_base_urls
from prefero.options import ConfigError, check_fields, option, require

BACKENDS = ("transformers", "vllm", "openai")
#: Keys that decide what is generated. A resumed run must agree on them (the partial
#: rows would otherwise mix two configurations); the others (concurrency, timeouts,
#: overwrite) may change between a run and its resumption.
_OUTPUT_KEYS = ("model", "prompt_column", "num_completions", "temperature", "top_p", "top_k",
                "max_new_tokens", "seed", "backend", "chat_template", "dtype")


@dataclass
class GenerateConfig:
    """Sample `num_completions` completions for every prompt of `prompts` (docs/pipeline.md)."""

    # what to generate from, and where it goes
    model: str = option("", "policy: hub id or local directory (HF format); for backend=openai, the served model's name")
    prompts: str = option("", "prompts file (.jsonl/.json/.parquet/.csv), save_to_disk folder or hub name; "
                          "string or message-list prompts, or preference pairs (their prompts are used)")
    prompt_column: str = option("prompt", "column holding the prompt")
    output: str = option("", "output .jsonl: one row per prompt {index, prompt, completions, finish_reasons, tokens}")
    overwrite: bool = option(False, "replace an existing finished output (an unfinished one is always resumed)")
    # sampling
    num_completions: int = option(4, "K: completions sampled per prompt", ge=1)
    temperature: float = option(0.8, "sampling temperature (0 = greedy)", ge=0)
    top_p: float = option(1.0, "nucleus sampling: smallest token set with this much probability (1 = off)", gt=0, le=1)
    top_k: int = option(0, "sample from the k most likely tokens only (0 = off)", ge=0)
    max_new_tokens: int = option(512, "longest completion, in tokens (hits are counted in the report)", ge=1)
    seed: int = option(0, "sampling seed: the same config gives the same completions", ge=0)
    chat_template: str = option("auto", "auto (the tokenizer's, if it has one) | true | false (plain-text prompts; "
                                    "backend=openai: the /completions endpoint)", choices=["auto", "true", "false"])
    # engine
    backend: str = option("transformers", "transformers | vllm (pip install 'prefero[vllm]') | openai (HTTP server)",
                      choices=list(BACKENDS))
    batch_size: int = option(8, "prompts per batch (transformers: per forward; sets the seeding, so part of the config)",
                         ge=1)
    dtype: str = option("auto", "auto (bfloat16 on GPU, float32 on CPU) | float32 | bfloat16 | float16",
                    choices=["auto", "float32", "bfloat16", "float16"])
    trust_remote_code: bool = option(False, "run model code from the hub (only if you trust it)")
    tensor_parallel_size: int = option(1, "vllm: GPUs one model is split over", ge=1)
    # openai backend
    base_url: str | list = option("", "openai: server URL up to the version, e.g. http://localhost:8000/v1, or a list "
                                  "of them (requests spread over those that are up)")
    api_key_env: str = option("", "openai: name of the environment variable holding the API key ('' = no key)")
    max_concurrency: int = option(8, "openai: requests in flight at once", ge=1)
    timeout: float = option(120.0, "openai: seconds to wait for one reply before retrying", gt=0)
    max_retries: int = option(5, "openai: retries of a failed request (429, 5xx, timeouts) before giving up", ge=0)

    def validate(self) -> "GenerateConfig":
        check_fields(self)  # also when built in Python rather than by load_config
        require(self, "model", "prompts", "output")
        if self.temperature == 0 and self.num_completions > 1:
            # greedy decoding is deterministic: K copies of one answer give a judge nothing to rank
            raise ConfigError(f"temperature 0 (greedy) with num_completions={self.num_completions} would give "
                              f"{self.num_completions} identical completions; set temperature > 0 or num_completions=1")
        if not self.output.endswith(".jsonl"):
            raise ConfigError(f"output: {self.output!r} must end in .jsonl (one JSON row per prompt)")
        if self.backend == "openai":
            if not self.base_url:
                raise ConfigError("backend 'openai' needs base_url (e.g. http://localhost:8000/v1)")
            check_base_urls(self.base_url, "base_url")
        elif self.base_url:
            raise ConfigError(f"base_url is only read by backend 'openai' (backend is {self.backend!r})")
        return self

    def settings(self, prompts_sha256: str) -> dict:
        """What the output depends on: stored beside the partial output so a resumed run
        with different settings is refused. No secret is in it (the key's variable name
        is not even needed: it does not change the completions)."""
        values = {k: getattr(self, k) for k in _OUTPUT_KEYS}
        if self.backend == "transformers":
            values["batch_size"] = self.batch_size  # batches are the unit of seeding
        values["prompts_sha256"] = prompts_sha256
        return values
