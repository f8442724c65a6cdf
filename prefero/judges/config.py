"""The `judge:` block and the `prefero judge` command's config.

    judge:
      type: llm                # reward_model | pairwise_model | llm | openai | callable
      model: Qwen/Qwen2.5-7B-Instruct

Each type reads some of the block's keys; a key set for a type that does not read it is an
error rather than a setting silently ignored (`TYPE_KEYS`).
"""

from __future__ import annotations

import dataclasses
import json
import string
from dataclasses import dataclass, fields

from prefero.options import ConfigError, check_shorter, option

TYPES = ("reward_model", "pairwise_model", "llm", "openai", "callable")
MODES = ("pointwise", "pairwise")

#: The keys each judge type reads (besides `type`).
TYPE_KEYS = {
    "reward_model": {"model", "trust_remote_code", "dtype", "device", "max_length", "max_prompt_length",
                     "as_messages"},
    "pairwise_model": {"model", "trust_remote_code", "dtype", "device", "as_messages"},
    "llm": {"model", "trust_remote_code", "dtype", "device", "system_prompt", "pointwise_template",
            "pairwise_template"},
    "openai": {"model", "base_url", "api_key_env", "max_concurrency", "timeout", "max_retries", "top_logprobs",
               "max_unparseable", "system_prompt", "pointwise_template", "pairwise_template"},
    "callable": {"function"},
}
#: Keys that change how a run goes, not what the judge answers (see `JudgeConfig.identity`).
RUN_ONLY_KEYS = {"max_concurrency", "timeout", "max_retries", "max_unparseable"}
#: Placeholders each template must use, and may use.
TEMPLATE_FIELDS = {"pointwise_template": {"prompt", "completion"}, "pairwise_template": {"prompt", "a", "b"}}


@dataclass
class JudgeConfig:
    """Which judge scores completions, and its settings (the `judge:` block)."""

    type: str | None = option(None, "reward_model | pairwise_model | llm | openai | callable", choices=list(TYPES))
    model: str | None = option(None, "reward_model: a sequence classifier (e.g. a `prefero rm` output); "
                                 "pairwise_model: a `prefero pm` output or a PairRM checkpoint (llm-blender/PairRM-hf layout); "
                                 "llm: a causal LM; openai: the model name the server serves")
    trust_remote_code: bool = option(False, "run model code from the hub (only if you trust it)")
    dtype: str = option("float32", "float32 | bfloat16 weights of a local judge model", choices=["float32", "bfloat16"])
    device: str = option("auto", "auto (cuda if available) | cpu | cuda | cuda:N for a local judge model")
    max_length: int = option(1024, "reward_model: prompt + completion tokens kept (as `prefero rm` truncates)", ge=2)
    max_prompt_length: int = option(512, "reward_model: prompt tokens kept, from the end", ge=1)
    as_messages: bool = option(False, "reward_model: read string prompts as a user message (so through the chat "
                                  "template, as a hub chat reward model expects); false = as prefero.data does")
    system_prompt: str | None = option(None, "llm/openai: a system message before the judge prompt")
    pointwise_template: str | None = option(
        None, "llm/openai: rating prompt with {prompt} and {completion}; none = the shipped one")
    pairwise_template: str | None = option(
        None, "llm/openai: comparison prompt with {prompt}, {a} and {b}; none = the shipped one")
    base_url: str | list | None = option(None, "openai: server URL up to the version, e.g. http://localhost:8000/v1, or "
                                           "a list of them (requests spread over those that are up)")
    api_key_env: str | None = option(None, "openai: environment variable holding the API key (none = no key)")
    max_concurrency: int = option(8, "openai: requests in flight at once", ge=1)
    timeout: float = option(60.0, "openai: seconds per request attempt", gt=0)
    max_retries: int = option(5, "openai: retries of a failed request (429, 5xx, timeouts)", ge=0)
    top_logprobs: int = option(20, "openai: candidates per answer token asked for (0 = parse the text only)",
                           ge=0, le=20)
    max_unparseable: float = option(0.05, "openai: the largest share of answers that may be unreadable (no rating or "
                                      "choice at the reply's start, or a malformed reply after its retries) "
                                      "before the run fails", ge=0, le=1)
    function: str | None = option(None, "callable: `module:function` or `path/to/file.py:function`, "
                                    "called as fn(prompt, completions) -> K floats")

    def validate(self) -> "JudgeConfig":
        if self.type is None:
            raise ConfigError(f"judge.type is required: one of {', '.join(TYPES)}")
        defaults = JudgeConfig()
        reads = TYPE_KEYS[self.type]
        for f in fields(self):
            if f.name != "type" and f.name not in reads and getattr(self, f.name) != getattr(defaults, f.name):
                raise ConfigError(f"judge.{f.name} is not a setting of judge type {self.type!r} "
                                  f"(it reads: {', '.join(sorted(reads))})")
        if self.type in ("reward_model", "pairwise_model", "llm", "openai") and not self.model:
            raise ConfigError(f"judge.model is required for judge type {self.type!r}")
        if self.type == "openai" and not self.base_url:
            raise ConfigError("judge.base_url is required for judge type 'openai' (e.g. http://localhost:8000/v1)")
        if self.type == "openai":
            from prefero.openai_client import check_base_urls

            check_base_urls(self.base_url, "judge.base_url")
        if self.type == "callable" and not self.function:
            raise ConfigError("judge.function is required for judge type 'callable' (module:function)")
        if self.type == "reward_model":
            check_shorter(self, prefix="judge.")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"judge.device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")
        for key, allowed in TEMPLATE_FIELDS.items():
            if getattr(self, key) is not None:
                check_template(getattr(self, key), allowed, f"judge.{key}")
        return self

    def identity(self) -> dict:
        """The keys that decide what the judge answers, for a resumable stage's settings: how
        patiently a server is asked (concurrency, timeout, retries) and how many unreadable
        answers a run tolerates change no answer, so a run may resume with them changed."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RUN_ONLY_KEYS}

    @property
    def compares(self) -> bool:
        """Whether the judge compares two completions itself (else P comes from its scores)."""
        return self.type in ("pairwise_model", "llm", "openai")


def type_switch_overrides(values: dict, overrides: list[str]) -> list[str]:
    """`key=value` overrides that reset, in each judge block of a YAML file's `values` whose
    `type` an override changes, the file's keys the new type does not read.

    `prefero judge judge.yaml judge.type=callable judge.function=...` switches a reward-model
    judge to a verifier: the file's `model:` belongs to the type it had, not to a setting the
    user asked the new type to ignore, so it is dropped rather than refused. Keys given as
    overrides are kept (and checked), as are keys set in a file that names its type itself."""
    given = {item.split("=", 1)[0].strip() for item in overrides if "=" in item}
    resets = []
    for item in overrides:
        key, _, new_type = (part.strip() for part in item.partition("="))
        if not (key == "judge.type" or key.endswith(".judge.type")) or new_type not in TYPE_KEYS:
            continue
        block: object = values
        for part in key.split(".")[:-1]:
            block = block.get(part) if isinstance(block, dict) else None
        if not isinstance(block, dict) or block.get("type") == new_type:
            continue
        prefix = key[: -len("type")]
        defaults = JudgeConfig()
        for name in block:
            if name != "type" and name not in TYPE_KEYS[new_type] and prefix + name not in given \
                    and hasattr(defaults, name):
                resets.append(f"{prefix}{name}={json.dumps(getattr(defaults, name))}")
    return resets


def check_template(template: str, required: set[str], key: str) -> None:
    """`template` uses each of `required` as a {placeholder} and no other; literal braces
    are written {{ and }}."""
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise ConfigError(f"{key}: not a valid template ({e}); write literal braces as {{{{ and }}}}") from None
    unknown = used - required
    if unknown:
        raise ConfigError(f"{key}: unknown placeholder(s) {sorted(unknown)}; it may use {sorted(required)}")
    missing = required - used
    if missing:
        raise ConfigError(f"{key}: must contain {', '.join('{' + m + '}' for m in sorted(missing))}")


@dataclass
class JudgeRunConfig:
    """Everything `prefero judge` reads: rows of {prompt, completions} in, the same rows with
    `scores` (and, pairwise, the `pairwise` matrix) out."""

    input: str = option("", "rows with a prompt and a list of completions (e.g. `prefero generate` output)")
    output: str = option("", "where the judged rows go (.jsonl); a report is written next to it")
    judge: JudgeConfig | None = option(None, "the judge block: type and its settings")
    mode: str = option("pointwise", "pointwise: a score per completion | pairwise: P(y_i ≻ y_j) for every pair "
                                "(llm/openai judges, both orders)", choices=list(MODES))
    prompt_column: str = option("prompt", "column holding the prompt")
    completions_column: str = option("completions", "column holding the list of completions")
    batch_size: int = option(8, "rows judged (and saved) per step; local models run at most this many "
                            "sequences per forward", ge=1)
    overwrite: bool = option(False, "replace an existing output (a partial output is resumed, not replaced)")

    def validate(self) -> "JudgeRunConfig":
        if not self.input:
            raise ConfigError("`input` is required (rows with a prompt and completions)")
        if not self.output:
            raise ConfigError("`output` is required (a .jsonl file)")
        if not self.output.endswith(".jsonl"):
            raise ConfigError(f"output: {self.output!r} must end in .jsonl")
        if self.judge is None:
            raise ConfigError(f"the `judge:` block is required (judge.type: one of {', '.join(TYPES)})")
        self.judge.validate()
        if self.mode == "pairwise" and not self.judge.compares:
            raise ConfigError(
                f"mode: pairwise needs a judge that compares two completions (pairwise_model, llm or openai), not "
                f"{self.judge.type!r}; judge pointwise: `prefero label` turns scores into P = σ(s_i − s_j)")
        return self
