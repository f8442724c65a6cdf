"""The training schema: every key `prefero train` (and the trainers built on its loop) reads,
with its doc and valid range. The machinery it is built with is `prefero.options`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from prefero.options import (
    ConfigError,
    check_shorter,
    option,
)
from prefero.options import load_config as _load_config


def default_cache_dir() -> Path:
    """Where reference log-probs are cached: $PREFERO_CACHE, else the user's cache folder."""
    root = os.environ.get("PREFERO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "prefero"
    )
    return Path(root) / "reference"



@dataclass
class LoraConfig:
    """PEFT LoRA adapter settings (the `lora:` block)."""

    r: int = option(16, "LoRA rank", ge=1)
    alpha: float = option(32, "LoRA scaling alpha", gt=0)
    dropout: float = option(0.0, "dropout on the LoRA input", ge=0, lt=1)
    target_modules: list = option("auto", "module names to adapt; auto = every projection of the family's attention "
                                      "blocks (q/k/v/o, GPT-2's c_attn/c_proj, ...); all-linear = every linear layer")
    merge: bool = option(False, "also save the merged full model in output_dir/merged")

    def validate(self) -> "LoraConfig":
        if not self.target_modules:
            raise ConfigError("lora.target_modules must name at least one module (or 'all-linear')")
        return self


@dataclass
class DataConfig:
    """How records are read (the `data:` block): column names and how scored records are paired."""

    prompt_column: str = option("prompt", "column holding the prompt")
    chosen_column: str = option("chosen", "column holding the preferred completion")
    rejected_column: str = option("rejected", "column holding the dispreferred completion")
    completion_column: str = option("completion", "SFT / unpaired (KTO): column holding the completion")
    label_column: str = option("label", "unpaired (KTO): column holding true (desirable) / false")
    messages_column: str = option("messages", "SFT: column holding a whole conversation")
    completions_column: str = option("completions", "scored records: column holding the list of completions")
    scores_column: str = option("scores", "scored records: column holding one score per completion")
    p_chosen_column: str = option("p_chosen", "SPPO: column holding the chosen completion's win probability")
    p_rejected_column: str = option("p_rejected", "SPPO: column holding the rejected completion's win probability")
    binarize: str = option("worst", "scored records: rejected = the worst or a random lower-scored completion",
                       choices=["worst", "random"])


#: Keys a resumed run may change: they do not change what the optimizer steps compute.
RESUMABLE_KEYS = {
    "max_steps", "epochs", "eval_steps", "save_steps", "keep_last", "resume", "overwrite",
    "max_bad_steps", "eval_data", "eval_split", "reference_cache", "gradient_checkpointing",
    "attention", "compile", "logprob_chunk_size", "report_to",
}


@dataclass
class LoopConfig:
    """What every training command reads: model, data, optimisation, checkpoints (the loop's knobs)."""

    # model and data
    model: str = option("", "model: hub id or local directory (HF format)")
    train_data: str = option("", "training data file (.jsonl/.json/.parquet/.csv), save_to_disk folder or hub name")
    train_split: str = option("train", "split of train_data to train on (hub datasets and save_to_disk folders)")
    eval_data: str | None = option(None, "held-out data evaluated every eval_steps and at the end")
    eval_split: str | None = option(
        None, "split of eval_data; with no eval_data, a held-out split of train_data (e.g. test_prefs)")
    output_dir: str = option("runs/prefero", "where metrics, data report and the trained model go")
    overwrite: bool = option(False, "replace an earlier prefero run in output_dir (all of it)")
    trust_remote_code: bool = option(False, "run model code from the hub (only if you trust it)")
    # optimisation
    optimizer: str = option("adamw", "adamw | rmsprop (the DPO paper's and the SPPO recipe's optimizer)",
                        choices=["adamw", "rmsprop"])
    learning_rate: float = option(5e-7, "peak learning rate", gt=0)
    weight_decay: float = option(0.0, "weight decay (decoupled for adamw, L2 for rmsprop); 1-D params exempt", ge=0)
    adam_betas: list = option([0.9, 0.999], "AdamW (β1, β2)", ge=0, lt=1)
    rmsprop_alpha: float = option(0.99, "RMSprop smoothing constant α", ge=0, lt=1)
    lr_scheduler: str = option("cosine", "cosine | linear | constant (after warmup)",
                           choices=["cosine", "linear", "constant"])
    warmup_ratio: float = option(0.1, "fraction of the steps spent warming up linearly", ge=0, lt=1)
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 = off)", ge=0)
    batch_size: int = option(8, "pairs per micro-step per process", ge=1)
    grad_accum: int = option(1, "micro-steps per optimizer step", ge=1)
    max_steps: int = option(0, "optimizer steps (0 = derive from epochs)", ge=0)
    epochs: float = option(1.0, "passes over train_data when max_steps is 0", ge=0)
    shuffle: bool = option(True, "seeded shuffling of the data order (false = file order, e.g. curricula)")
    max_bad_steps: int = option(5, "consecutive non-finite steps before the run stops (0 = never stop)", ge=0)
    seed: int = option(42, "seed for initialisation, data order and dropout", ge=0)
    # sequences
    max_length: int = option(1024, "prompt + completion tokens per sequence", ge=2)
    max_prompt_length: int = option(512, "prompt tokens kept (from the end)", ge=1)
    on_bad_record: str = option("error", "error | skip: what a malformed record does", choices=["error", "skip"])
    data: DataConfig | None = option(None, "data block: column names (prompt_column, chosen_column, ...) and binarize")
    dtype: str = option("float32", "float32 | bfloat16 (autocast on float32 master weights)",
                    choices=["float32", "bfloat16"])
    # logging and saving
    eval_steps: int = option(0, "evaluate every N optimizer steps (0 = only at start and end)", ge=0)
    save_steps: int = option(0, "checkpoint every N optimizer steps (0 = only the final model)", ge=0)
    keep_last: int = option(0, "keep only the newest N checkpoints (0 = keep all)", ge=0)
    resume: bool = option(False, "continue from the newest complete checkpoint in output_dir")
    report_to: str = option("none", "none | tensorboard | wandb: also log metrics there (metrics.jsonl always)",
                        choices=["none", "tensorboard", "wandb"])
    lora: LoraConfig | None = option(None, "LoRA adapter block (r, alpha, dropout, target_modules, merge); none = full fine-tune")

    def validate(self):
        if not self.model:
            raise ConfigError("`model` is required (hub id or local directory)")
        if not self.train_data:
            raise ConfigError("`train_data` is required")
        if self.max_steps == 0 and self.epochs <= 0:
            raise ConfigError("set max_steps > 0 or epochs > 0")
        check_shorter(self)
        if len(self.adam_betas) != 2:
            raise ConfigError(f"adam_betas must be two numbers (β1, β2) in [0, 1), got {self.adam_betas}")
        same_data = (self.eval_data or self.train_data) == self.train_data
        if same_data and (self.eval_data or self.eval_split) and (self.eval_split or "train") == self.train_split:
            raise ConfigError(
                f"eval would read the training data itself (split {self.train_split!r} of {self.train_data}); "
                "set eval_split to a held-out split or eval_data to another file")
        return self


@dataclass
class TrainConfig(LoopConfig):
    """Everything `prefero train` reads: the loop's keys, then the loss and the engine."""

    model: str = option("", "policy model: hub id or local directory (HF format)")
    ref_model: str | None = option(None, "reference model; DPO-family losses default to `model`")
    # the loss
    loss: str = option("dpo", "dpo | robust | ipo | hinge | rdpo | nca_pair | simpo | cpo | orpo | sppo | sppo_hard | kto | sft")
    beta: float | None = option(None, "β; default per loss (dpo 0.1, simpo 2.0, sppo 1/η = 0.001)", gt=0)
    gamma_beta_ratio: float | None = option(None, "SimPO γ/β (default 0.5)", ge=0)
    simpo_length_normalize: bool | None = option(
        None, "SimPO on average log-probs (default true); false = summed, the paper's ablation")
    label_smoothing: float | None = option(
        None, "ε: cDPO/SimPO label smoothing (default 0), rDPO flip rate (default 0.1)", ge=0, lt=0.5)
    rdpo_alpha: float | None = option(None, "length-regularized DPO α (default 0.01)", ge=0)
    cpo_lambda: float | None = option(None, "λ, weight of the chosen answer's NLL term: CPO's (default 1.0), "
                                      "SimPO's (default 0; λ > 0 is CPO-SimPO)", ge=0)
    rpo_alpha: float | None = option(None, "α, weight of the chosen answer's NLL term in DPO (default 0; α > 0 "
                                     "is RPO)", ge=0)
    orpo_lambda: float | None = option(None, "ORPO weight of the odds-ratio term (default 0.1)", ge=0)
    ipo_average: bool | None = option(None, "IPO on length-averaged log-ratios (default true)")
    kto_desirable_weight: float | None = option(None, "KTO λ_D (default 1.0)", ge=0)
    kto_undesirable_weight: float | None = option(None, "KTO λ_U (default 1.0)", ge=0)
    nll_reduction: str | None = option(
        None, "sft/cpo/orpo/simpo/dpo NLL: token (mean over the step's completion tokens, default) | sequence",
        choices=["token", "sequence"])
    # numerics and engine
    gradient_checkpointing: bool = option(False, "recompute activations in backward to save memory")
    attention: str = option("auto", "auto (per family: flex on CUDA where it has it, else sdpa, else eager) | flex | sdpa | eager",
                        choices=["auto", "flex", "sdpa", "eager"])
    compile: bool = option(False, "torch.compile the transformer body (dynamic shapes; first step compiles)")
    logprob_chunk_size: int = option(0, "completion tokens per log-prob chunk (0 = auto: ~32M logits per chunk)", ge=0)
    reference_cache: str = option("auto", "reference log-prob cache: auto (~/.cache/prefero or $PREFERO_CACHE), a directory, or off")

    @property
    def reference_cache_dir(self) -> Path | None:
        if self.reference_cache.lower() in ("off", "false", "none", "no"):
            return None
        if self.reference_cache == "auto":

            return default_cache_dir()
        return Path(self.reference_cache)

    def loss_hyperparameters(self) -> dict:
        """The loss keys set in this config (None = the loss's own default)."""
        return {k: getattr(self, k) for k in LOSS_KEYS if getattr(self, k) is not None}

    def validate(self) -> "TrainConfig":
        from prefero.losses import get_loss

        super().validate()
        try:
            spec = get_loss(self.loss)
        except ValueError as e:
            raise ConfigError(f"loss: {e}") from None
        takes = spec.hyperparameters()
        for key in self.loss_hyperparameters():
            if key not in takes:
                # a key the loss does not read would otherwise be dropped without a word
                raise ConfigError(f"{key} is not a setting of loss {self.loss!r} "
                                  f"(it takes: {', '.join(takes) or 'none'})")
        weight = OPTIONAL_NLL.get(self.loss)
        if weight and self.nll_reduction is not None and not getattr(self, weight):
            # the check above reads the signature, which cannot tell a key read only when another is set
            raise ConfigError(f"nll_reduction is a setting of {self.loss}'s NLL term, which {weight} > 0 adds "
                              f"({weight} is 0)")
        if spec.data == "unpaired" and self.batch_size < 2:
            raise ConfigError("loss 'kto' needs batch_size >= 2: its KL estimate pairs each prompt "
                              "with another item's completion in the micro-batch")
        return self


#: TrainConfig keys that are loss hyperparameters (passed to the loss function by name).
LOSS_KEYS = ("beta", "gamma_beta_ratio", "simpo_length_normalize", "label_smoothing", "rdpo_alpha", "cpo_lambda",
             "rpo_alpha", "orpo_lambda", "ipo_average", "kto_desirable_weight", "kto_undesirable_weight",
             "nll_reduction")
#: Losses whose NLL term is optional, and the key that adds it (nll_reduction means nothing without it).
OPTIONAL_NLL = {"simpo": "cpo_lambda", "dpo": "rpo_alpha"}


def load_config(path: str | Path | None, overrides: list[str] = (), cls=None):
    """`prefero.options.load_config`, reading a `TrainConfig` unless `cls` says otherwise."""
    return _load_config(path, overrides, cls=cls or TrainConfig)
