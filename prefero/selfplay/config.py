"""`SelfPlayConfig`: every key `prefero selfplay` reads, with its doc and valid range.

    model: runs/sft                 # π_0, the policy self-play starts from
    prompts: data/prompts.jsonl
    prompts_per_iteration: 2000     # disjoint slices in file order, one per iteration (SPPO)
    iterations: 3
    method: sppo                    # sppo | iterative
    eval_prompts: data/heldout.jsonl
    output_dir: runs/selfplay
    generation: {num_completions: 5, temperature: 0.7, max_new_tokens: 512}
    judge: {type: reward_model, model: runs/prefero-rm}
    train: {learning_rate: 5.0e-7, beta: 0.001, batch_size: 8, epochs: 1}
    eval: {generation: {max_new_tokens: 512}, bootstrap_resamples: 2000}

Each block feeds one stage: `generation:` holds `prefero generate`'s sampling keys, `judge:`
is `prefero judge`'s block, `train:` holds `prefero train`'s keys and `eval:` `prefero
eval`'s. The blocks are built from those commands' own config classes (`derived_block`), so
a key means the same thing, with the same default and range, in both places. The keys that
self-play sets itself for every iteration (model, prompts, output paths, the reference
model, resume) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefero.config import TrainConfig
from prefero.evaluate.config import EvalConfig
from prefero.generate import GenerateConfig
from prefero.judges.config import JudgeConfig, JudgeRunConfig
from prefero.options import ConfigError, block, block_values, derived_block, option, require

METHODS = ("sppo", "iterative")
REFERENCES = ("initial", "previous")


#: GenerateConfig keys self-play sets per iteration, and the openai backend's keys: a
#: server cannot serve a policy that changes every iteration.
_GENERATE_OWN = {"model", "prompts", "prompt_column", "output", "overwrite", "base_url", "api_key_env",
                 "max_concurrency", "timeout", "max_retries"}

SamplingBlock = derived_block(
    "SamplingBlock", GenerateConfig, _GENERATE_OWN,
    "How each iteration samples K completions from its policy (the `generation:` block; keys of "
    "`prefero generate`). Iteration n samples with seed `seed + n - 1`.", __name__,
    own={"backend": (str, option("transformers", "transformers | vllm: the backend sampling from the local policy",
                                 choices=["transformers", "vllm"]))},
)

#: TrainConfig keys self-play sets per iteration.
_TRAIN_OWN = {"model", "ref_model", "train_data", "train_split", "eval_data", "eval_split", "output_dir",
              "overwrite", "resume"}

TrainBlock = derived_block(
    "TrainBlock", TrainConfig, _TRAIN_OWN,
    "How each iteration trains π_(t+1) from π_t (the `train:` block; keys of `prefero train`).", __name__,
    own={"loss": (str | None, option(None, "method sppo: sppo (the default) | method iterative: any paired loss "
                                       "(dpo, the default; simpo, ipo, hinge, robust, rdpo, cpo, orpo, sppo_hard, "
                                       "nca_pair)"))},
)


#: EvalConfig keys self-play sets per iteration (what is compared, and where), and those of
#: its held-out-pairs measurement, which self-play does not run.
_EVAL_OWN = {"model", "outputs", "baseline_model", "baseline_outputs", "prompts", "prompt_column", "response_column",
             "trust_remote_code", "pairs", "ref_model", "loss", "beta", "max_length", "max_prompt_length", "dtype",
             "output_dir", "overwrite"}

EvalBlock = derived_block(
    "EvalBlock", EvalConfig, _EVAL_OWN,
    "How the win rate of each iteration's policy against π_0 is measured on eval_prompts (the `eval:` block; "
    "keys of `prefero eval`).", __name__,
    own={"judge": (JudgeConfig | None, option(None, "the judge of the win rate (none = the training judge); a judge "
                                                "that compares (llm, openai) is asked both orders"))},
)


@dataclass
class SelfPlayConfig:
    """T iterations of generate → judge → label → train from π_0 (docs/pipeline.md)."""

    model: str = option("", "π_0: the policy self-play starts from (usually an SFT model); hub id or local directory")
    prompts: str = option("", "prompt pool (.jsonl/.json/.parquet/.csv, save_to_disk folder or hub name)")
    prompt_column: str = option("prompt", "column holding the prompt (in prompts and eval_prompts)")
    iterations: int = option(3, "T: rounds of generate → judge → label → train (may be raised to continue a run)",
                         ge=1)
    prompts_per_iteration: int = option(
        0, "prompts of each iteration: disjoint slices of the pool in file order, as SPPO does "
           "(0 = every prompt in every iteration)", ge=0)
    method: str = option("sppo", "sppo: sppo loss on P̂ rows, reference π_t | iterative: a paired loss on "
                             "best-vs-worst/random pairs", choices=list(METHODS))
    reference: str | None = option(
        None, "iterative: the reference model, initial (π_0) | previous (π_t, the default); sppo always uses π_t",
        choices=list(REFERENCES))
    rejected: str = option("worst", "iterative: rejected = the worst completion, or a random one scored below "
                                "the best (sppo takes argmin P̂)", choices=["worst", "random"])
    keep_truncated: bool = option(False, "keep pairs/SPPO rows whose chosen or rejected stopped at "
                                     "generation.max_new_tokens, marked (prefero label's keep_truncated); false = "
                                     "drop them, counted as truncated in pairs.report.json")
    judge_mode: str = option("pointwise", "pointwise: a score per completion, P = σ(s_i − s_j) | pairwise: the "
                                      "judge compares every pair (llm, openai; K(K−1) prompts)",
                         choices=["pointwise", "pairwise"])
    judge_batch_size: int = option(8, "rows per judge step (saved per step)", ge=1)
    eval_prompts: str | None = option(None, "held-out prompts: after each iteration, the win rate of π_(t+1) "
                                        "against π_0 on them (none = no win rate)")
    output_dir: str = option("runs/selfplay", "where iter_1/, iter_2/, ..., summary.json and plots/ go")
    overwrite: bool = option(False, "replace an earlier run in output_dir: a finished one, or one with another "
                                "config (an unfinished run with this config is always resumed)")
    generation: SamplingBlock = block(SamplingBlock, "sampling: num_completions (K), temperature, top_p, top_k, "
                                                      "max_new_tokens, seed, batch_size, backend, ... (prefero "
                                                      "generate's keys)")
    judge: JudgeConfig | None = option(None, "the judge block: type and its settings (prefero judge's judge:)")
    train: TrainBlock = block(TrainBlock, "training of each iteration: learning_rate, beta, batch_size, "
                                           "max_steps/epochs, max_length, lora, ... (prefero train's keys)")
    eval: EvalBlock = block(EvalBlock, "the win rate against π_0: judge, generation (greedy by default), "
                                        "bootstrap settings, ... (prefero eval's keys)")

    @property
    def loss(self) -> str:
        return self.train.loss or ("sppo" if self.method == "sppo" else "dpo")

    @property
    def reference_is_initial(self) -> bool:
        return self.method == "iterative" and self.reference == "initial"

    def validate(self) -> "SelfPlayConfig":
        from prefero.losses import get_loss

        require(self, "model", "prompts", "output_dir")
        if self.judge is None:
            raise ConfigError("the `judge:` block is required (judge.type: reward_model | llm | openai | callable)")
        self.judge.validate()
        if self.eval.judge is not None:
            self.eval.judge.validate()
        if self.eval_prompts and self.eval_prompts == self.prompts:
            raise ConfigError("eval_prompts is the training prompt pool itself; the win rate needs held-out prompts")
        if self.judge_mode == "pairwise" and not self.judge.compares:
            raise ConfigError(f"judge_mode: pairwise needs a judge that compares two completions (llm or openai), "
                              f"not {self.judge.type!r}; pointwise scores give P = σ(s_i − s_j)")
        if self.generation.num_completions < 2:
            raise ConfigError("generation.num_completions must be >= 2: a preference needs two completions")
        try:
            spec = get_loss(self.loss)
        except ValueError as e:
            raise ConfigError(f"train.loss: {e}") from None
        if self.method == "sppo":
            if self.loss != "sppo":
                raise ConfigError(f"train.loss: method sppo trains with the sppo loss, not {self.loss!r}; "
                                  f"for another loss set method: iterative")
            if self.reference == "initial":
                raise ConfigError("reference: initial is not SPPO: its reference is π_t, the policy the iteration "
                                  "starts from (method: iterative takes reference: initial)")
        else:
            if spec.data != "paired" or spec.needs_win_probs:
                why = "needs P̂ rows: use method: sppo" if spec.needs_win_probs else "is not a paired loss"
                raise ConfigError(f"train.loss: {self.loss!r} {why} (method iterative trains on chosen/rejected pairs)")
            if self.reference is not None and not spec.needs_reference:
                raise ConfigError(f"reference: {self.reference} has no effect: loss {self.loss!r} uses no "
                                  f"reference model")
        if self.rejected != "worst" and self.method == "sppo":
            raise ConfigError("rejected: random is a setting of method iterative; SPPO takes argmin P̂ as rejected")
        if self.train.lora is not None and not self.train.lora.merge:
            raise ConfigError("train.lora needs lora.merge: true in self-play: the next iteration samples from "
                              "and trains the merged model")
        self._check_stage_configs()
        return self

    def _check_stage_configs(self) -> None:
        """Build the stages' configs with placeholder paths so their own checks run now,
        before anything is sampled; errors name the block."""
        checks = [
            ("generation", lambda: GenerateConfig(**block_values(self.generation), model=self.model, prompts="p",
                                                  output="o.jsonl").validate()),
            ("train", lambda: TrainConfig(**{**block_values(self.train), "loss": self.loss}, model=self.model,
                                          train_data="d.jsonl").validate()),
            ("judge", lambda: JudgeRunConfig(input="i", output="o.jsonl", judge=self.judge, mode=self.judge_mode,
                                             batch_size=self.judge_batch_size).validate()),
            ("eval", lambda: EvalConfig(**{**block_values(self.eval), "judge": self.eval.judge or self.judge},
                                        model=self.model, baseline_outputs="b.jsonl", prompts="p").validate()),
        ]
        for name, check in checks:
            try:
                check()
            except ConfigError as e:
                raise ConfigError(f"{name}: {e}") from None


#: Keys a resumed run may change: how many iterations, and what cannot change a result.
RESUMABLE_KEYS = {"iterations", "overwrite", "judge.max_concurrency", "judge.timeout", "judge.max_retries",
                  "judge.max_unparseable", "train.save_steps", "train.keep_last", "train.max_bad_steps", "train.reference_cache"}
