"""`prefero eval` settings (see examples/eval.yaml and docs/evaluation.md).

Each side — the policy being evaluated and the baseline it is compared with — is either a
model that generates responses to `prompts` (the `generation:` block says how), or a file
of responses it already produced. The `judge:` block is the judges package's own
(`prefero.judges.config.JudgeConfig`); the metric settings below are this package's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from prefero.generate.config import GenerateConfig
from prefero.judges.config import TYPES as JUDGE_TYPES
from prefero.judges.config import JudgeConfig
from prefero.options import ConfigError, block, check_shorter, derived_block, option

#: How a scoring judge's two numbers become P(policy ≻ baseline) (docs/evaluation.md).
POINTWISE_RULES = ("auto", "sigmoid", "verdict")


#: `prefero generate` keys that `prefero eval` sets itself (one response per prompt, the
#: models and prompts it compares), and the openai backend's: eval answers with local models.
_GENERATE_OWN = {"model", "prompts", "prompt_column", "output", "overwrite", "num_completions", "trust_remote_code",
                 "base_url", "api_key_env", "max_concurrency", "timeout", "max_retries"}

EvalGenerationConfig = derived_block(
    "EvalGenerationConfig", GenerateConfig, _GENERATE_OWN,
    "How `model` and `baseline_model` answer the prompts (the `generation:` block): `prefero generate`'s keys, "
    "with one response per prompt and greedy decoding by default: an evaluation should measure the policy, not "
    "one lucky sample of it.", __name__,
    own={"temperature": (float, option(0.0, "sampling temperature (0 = greedy, the default for evaluation)", ge=0)),
         "backend": (str, option("transformers", "transformers | vllm (pip install 'prefero[vllm]')",
                                 choices=["transformers", "vllm"]))},
)


@dataclass
class EvalConfig:
    """Everything `prefero eval` reads."""

    # what is compared
    model: str | None = option(None, "policy model (hub id or local directory) that answers `prompts`")
    outputs: str | None = option(None, "the policy's responses, already generated (instead of `model`): rows "
                                   "{prompt, response} or {prompt, completions: [one]}")
    baseline_model: str | None = option(None, "baseline model that answers `prompts`")
    baseline_outputs: str | None = option(None, "the baseline's responses, already generated (instead of `baseline_model`)")
    prompts: str | None = option(None, "held-out prompts (.jsonl/.json/.parquet/.csv, save_to_disk folder or hub name)")
    prompt_column: str = option("prompt", "column of `prompts` (and of outputs files) holding the prompt")
    response_column: str = option("response", "column of outputs files holding the response (else `completions`: [one])")
    trust_remote_code: bool = option(False, "run model code from the hub (only if you trust it)")
    generation: EvalGenerationConfig = block(
        EvalGenerationConfig, "how model and baseline_model answer: temperature, max_new_tokens, seed, ...")
    # the judge
    judge: JudgeConfig | None = option(None, "the judge block (type and its settings, as `prefero judge` reads it); "
                                         "needed for a win rate")
    pointwise_preference: str = option(
        "auto", "how a scoring judge's two scores become P(policy ≻ baseline): sigmoid (σ(s_p − s_b)) | verdict "
                "(higher wins, equal ties) | auto (sigmoid for reward_model, verdict for callable)",
        choices=list(POINTWISE_RULES))
    batch_size: int = option(8, "prompts judged (and saved) per step; pairs per forward on `pairs`", ge=1)
    # held-out pairs
    pairs: str | None = option(None, "held-out preference pairs: reward and likelihood-ranking accuracy of `model`")
    ref_model: str | None = option(
        None, "reference model of reference-based implicit rewards (β·Δ); without it, reward accuracy only for "
              "simpo/cpo/orpo")
    loss: str = option("dpo", "the method whose implicit reward is scored on `pairs` (β·Δ for dpo, β·A for simpo, ...)")
    beta: float | None = option(None, "β of that implicit reward (default: the loss's own)", gt=0)
    max_length: int = option(1024, "pairs: prompt + completion tokens kept (truncated as training truncates)", ge=2)
    max_prompt_length: int = option(512, "pairs: prompt tokens kept, from the end", ge=1)
    dtype: str = option("float32", "pairs: precision of the policy and reference forward", choices=["float32", "bfloat16"])
    # metrics
    bootstrap_resamples: int = option(2000, "bootstrap resamples of prompts for the win-rate interval", ge=1)
    confidence: float = option(0.95, "confidence level of the bootstrap intervals", gt=0, lt=1)
    seed: int = option(0, "seed of the bootstrap", ge=0)
    lc_prior_scale: float = option(5.0, "length-control fit: std of the Gaussian prior on the length and difficulty coefficients", gt=0)
    lc_resamples: int = option(0, "bootstrap resamples for an LC win-rate interval (0 = none; each one refits)", ge=0)
    ngram: int = option(3, "n of distinct-n, the mean share of distinct n-grams per answer (see docs/evaluation.md)", ge=1)
    tokenizer: str | None = option(None, "tokenizer for token lengths (default: `model`'s; none with outputs only = characters only)")
    n_examples: int = option(4, "judged examples shown in report.md", ge=0)
    # output
    output_dir: str = option("runs/eval", "where responses, judgments, report.json, report.md and plots/ go")
    overwrite: bool = option(False, "replace an earlier evaluation in output_dir (responses and judgments made "
                                "with the same settings are reused)")

    @property
    def wants_win_rate(self) -> bool:
        return bool((self.model or self.outputs) and (self.baseline_model or self.baseline_outputs))

    @property
    def generates(self) -> bool:
        """Whether a model answers the prompts (only when a win rate is asked for)."""
        return self.wants_win_rate and bool(self.model or self.baseline_model)

    def pointwise_rule(self) -> str | None:
        """The rule in force for the judge: sigmoid | verdict, None for a comparing judge."""
        if self.judge is None or self.judge.compares:
            return None
        if self.pointwise_preference != "auto":
            return self.pointwise_preference
        return "sigmoid" if self.judge.type == "reward_model" else "verdict"

    def validate(self) -> EvalConfig:
        for a, b in [("model", "outputs"), ("baseline_model", "baseline_outputs")]:
            if getattr(self, a) and getattr(self, b):
                raise ConfigError(f"set either {a} or {b}, not both")
        policy = self.model or self.outputs
        baseline = self.baseline_model or self.baseline_outputs
        if not (policy and baseline) and not self.pairs:
            raise ConfigError("nothing to evaluate: set model (or outputs) and baseline_model (or baseline_outputs) "
                              "for a win rate, and/or model with pairs for pair metrics")
        if bool(policy) != bool(baseline) and not self.pairs:
            missing = "baseline_model or baseline_outputs" if policy else "model or outputs"
            raise ConfigError(f"a win rate needs both sides: set {missing}")
        if (self.model or self.baseline_model) and policy and baseline and not self.prompts:
            raise ConfigError("`prompts` is required when model or baseline_model generates responses")
        if self.pairs and not self.model:
            raise ConfigError("`pairs` needs `model` (its log-probs on the pairs are what is measured)")
        self._validate_judge()
        self._validate_generation()
        if self.pairs:
            self._validate_pairs()
        elif self.ref_model:
            raise ConfigError("ref_model is only read with `pairs` (reference-based implicit rewards)")
        return self

    def _validate_judge(self) -> None:
        if not self.wants_win_rate:
            if self.judge is not None:
                raise ConfigError("the judge: block is only read for a win rate (set both sides: model or outputs, "
                                  "and baseline_model or baseline_outputs)")
            return
        if self.judge is None:
            raise ConfigError(f"a win rate needs the `judge:` block (judge.type: one of {', '.join(JUDGE_TYPES)})")
        self.judge.validate()
        if self.judge.compares and self.pointwise_preference != "auto":
            raise ConfigError(f"pointwise_preference is not read by judge type {self.judge.type!r}, which compares "
                              "the two responses itself (both orders)")

    def _validate_generation(self) -> None:
        if self.generates:
            return
        changed = [f.name for f in dataclasses.fields(EvalGenerationConfig)
                   if getattr(self.generation, f.name) != getattr(EvalGenerationConfig(), f.name)]
        if changed:
            raise ConfigError(f"generation.{changed[0]} is only read when model or baseline_model answers `prompts` "
                              "for a win rate")

    def _validate_pairs(self) -> None:
        from prefero.losses import get_loss

        try:
            spec = get_loss(self.loss)
        except ValueError as e:
            raise ConfigError(f"loss: {e}") from None
        if self.beta is not None and "beta" not in spec.hyperparameters():
            raise ConfigError(f"beta is not a setting of loss {self.loss!r} (its implicit reward has no β)")
        if self.ref_model and not spec.needs_reference:
            raise ConfigError(f"ref_model is not read for loss {self.loss!r}, whose implicit reward needs no "
                              "reference model")
        check_shorter(self)
