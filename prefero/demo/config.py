"""`DemoConfig`: what `prefero demo` runs, and each method's settings with the reason for them.

The defaults are the demo. Every method's hyperparameters are scaled to a 1M-parameter
model trained from scratch, not copied from the papers' 7B settings; each field's help
says why its value, and the report repeats the values used. The numbers quoted are win
rates against the SFT model, measured with the demo's own learning rates and steps: the
papers' β, ε or η dropped into this run, not their whole recipes. Numbers marked
"(earlier rules)" were measured before the task's no-repeat rule and its (topic, N)
split, on prompts that shared (topic, N) pairs with training; the others on the
validation split (never the test split the report uses).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from prefero.options import ConfigError, block, option


@dataclass
class SFTSettings:
    """Supervised fine-tuning from scratch on the task's demonstrations (the `sft:` block)."""

    max_steps: int = option(1000, "optimizer steps: 8 passes over the 3,840 demonstrations at batch 32. The count "
                             "of an unseen (topic, N) pair is what SFT learns last: at 500 steps SFT's sampled "
                             "accuracy on the validation split was 0.28, at 1,000 0.30, and the methods trained "
                             "from it gained more (SPPO iteration 2: 0.49 -> 0.63, win rate 0.63 -> 0.72; seed 0)",
                             ge=1)
    learning_rate: float = option(3e-3, "peak learning rate: a from-scratch 1M-parameter model trains at 1e-3..1e-2",
                              gt=0)
    batch_size: int = option(32, "demonstrations per step", ge=1)


@dataclass
class DPOSettings:
    """DPO on best-vs-worst pairs of the SFT model's samples (the `dpo:` block)."""

    beta: float = option(1.0, "β: at the paper's 0.1 the policy left the task's words and format (win rate 0.08-0.09, "
                          "a tenth of its answers within the rules, 2 seeds); 1 to 4 kept it there (0.70-0.74) (earlier rules)",
                    gt=0)
    learning_rate: float = option(3e-4, "peak learning rate: at 1e-3 more answers leave the rules (0.78-0.92 within "
                                    "them, against 0.96-0.97 at 3e-4; earlier rules)", gt=0)
    max_steps: int = option(216, "optimizer steps: 1.2 passes over the ~2,900 pairs of 6 rounds at batch 16 (on the "
                             "validation split, seed 0: win rate 0.60 with 4 rounds and 144 steps, 0.66 with 6 and 216)",
                             ge=1)
    batch_size: int = option(16, "pairs per step", ge=1)


@dataclass
class SimPOSettings:
    """SimPO (and its summed-log-prob ablation) on the same pairs (the `simpo:` block)."""

    beta: float = option(1.0, "β on the average log-prob: with the NLL term (cpo_lambda) 1.0 gave win rate "
                          "0.641/0.643/0.659 on the validation split (seeds 0/1/2; 8 answers per prompt), 2.0 "
                          "(the paper's) 0.625/0.623/0.646", gt=0)
    gamma_beta_ratio: float = option(0.5, "γ/β, the target margin (the paper's 0.5)", ge=0)
    label_smoothing: float = option(0.2, "ε: the loss is then smallest at a finite margin, log((1-ε)/ε) = 1.4, instead "
                                     "of rewarding a wider margin for ever. SimPO has no reference model to hold the "
                                     "policy, and without ε this model's answers ran on past their period (win rate "
                                     "0.25-0.37 on 2 seeds; 0.63 at best with fewer steps; 0.69-0.73 with ε = 0.2; earlier rules)",
                                ge=0, lt=0.5)
    cpo_lambda: float = option(1.0, "λ: weight of an NLL term on the chosen answer (CPO-SimPO). Without it SimPO, "
                                "which has no reference, drifted: shorter answers (0.5-0.8 words under the count "
                                "on average) and off-topic words; win rate 0.568/0.589/0.570 on the validation "
                                "split (seeds 0/1/2, β 2), against 0.641/0.643/0.659 with λ = 1 and β = 1", ge=0)
    learning_rate: float = option(3e-4, "peak learning rate (at 5e-4 for 216 steps 15% of the answers left the rules; "
                                    "earlier rules)", gt=0)
    max_steps: int = option(216, "optimizer steps: 1.2 passes over the ~2,900 pairs at batch 16. More is worse for "
                             "SimPO, which has no reference to hold it: 432 steps on 8 rounds' pairs gave win rate 0.49 "
                             "against 0.53 for 216 on 4 rounds' (validation split, seed 0)", ge=1)
    batch_size: int = option(16, "pairs per step", ge=1)
    ablation: bool = option(True, "also train SimPO on summed log-probs (no length normalisation) and compare lengths")


@dataclass
class SPPOSettings:
    """SPPO self-play: K samples judged, P̂ from the judge, the policy regressed on it (the `sppo:` block)."""

    iterations: int = option(3, "self-play iterations (each samples from the previous iteration's model): the "
                                "third raised the win rate on the validation split from 0.694/0.697/0.671 to "
                                "0.725/0.719/0.739 (seeds 0/1/2; 8 answers per prompt) and accuracy from "
                                "0.57/0.55/0.57 to 0.70/0.64/0.67", ge=1)
    beta: float = option(0.03, "β = 1/η, η = 33: the loss asks for log-ratios of η·(P̂ − ½); the verifier's scores "
                           "(0 to 1) put P̂ − ½ within ±0.23, so η = 33 asks for a few nats, what this model can move "
                           "(η = 10 "
                           "moved it too little: win rate 0.59-0.61 after one iteration). The paper's η = 1000 asks "
                           "for hundreds: its first iteration collapsed (win rate 0.11-0.35, 2 seeds; earlier rules)", gt=0)
    learning_rate: float = option(3e-4, "peak learning rate", gt=0)
    max_steps: int = option(216, "optimizer steps per iteration: 1.2 passes over the ~2,900 rows of the first "
                             "iteration (later ones have fewer: rows whose K answers all tie are dropped)", ge=1)
    batch_size: int = option(16, "rows per step", ge=1)


@dataclass
class DemoConfig:
    """Everything `prefero demo` reads."""

    output_dir: str = option("runs/demo", "where the demo writes (replaced only if an earlier demo made it)")
    resume: bool = option(False, "keep the finished stages of an interrupted demo in output_dir and run the rest")
    quick: bool = option(False, "the reduced demo (CI): SFT 300 steps, 2 rounds, half the preference steps, the first "
                            "128 prompts of the split, no SimPO ablation")
    seed: int = option(0, "seed of the model's initialisation, training order and sampling", ge=0)
    processes: int = option(2, "stages that do not read each other's output (the trainings after SPPO's first "
                               "iteration, the evaluations) run side by side on this many processes, one torch "
                               "thread each, and the stages before them (SFT, SPPO's first iteration) on this "
                               "many torch threads (at most the machine's cores); the results are the same with any number (1 = one after the "
                               "other)",
                            ge=1)
    split: str = option("test", "the prompts every reported number is measured on: test (the report's), or validation "
                            "(for tuning settings without looking at the test prompts); disjoint in (topic, N) from "
                            "each other and from training", choices=("test", "validation"))
    greedy: bool = option(True, "also judge every model's greedy answers against SFT's greedy answers (reported beside "
                            "the sampled numbers, which are the headline)")
    hacking_ablation: bool = option(True, "also train DPO (the dpo block's settings) on pairs labelled by a judge that "
                                      "checks the count and the vocabulary but not repetition, and judge it by the "
                                      "full rules: reward hacking, shown on purpose. How much shows depends on how "
                                      "hard the policy is pushed: in the reduced demo (validation split, seed 0) at "
                                      "the dpo block's 3e-4 its answers repeated a word 10% of the time (SFT 13%); "
                                      "at 1e-3, 42%, with a win rate of 0.35 by the full rules against 0.49 by the "
                                      "lax judge")
    num_samples: int = option(8, "K: answers sampled per prompt for the judge", ge=2)
    rounds: int = option(6, "times each of the 480 training prompts is sampled (K answers each time); each round gives "
                        "one best-vs-worst pair (and one SPPO row) per prompt, so 6 rounds give up to 2,880 (4 rounds "
                        "gave DPO 0.60, SPPO 0.72 on the validation split, seed 0; 6 rounds 0.66 and 0.73)", ge=1)
    temperature: float = option(1.0, "sampling temperature, for preference data and evaluation alike (the policy "
                                 "as it is, not its mode)", gt=0)
    max_steps: int = option(0, "smoke runs: train every preference stage this many steps, SFT at least 60 (at 30 "
                           "every held-out answer of seed 0 still broke the rules: nothing for the judge to rank), 1 round (0 = the blocks' own)", ge=0)
    win_rate_target: float = option(0.70, "a method whose win rate against SFT is below this is reported as short of "
                                      "the target", ge=0, le=1)
    ci_lower_target: float = option(0.60, "... and one whose win rate's 95% interval starts at or below this", ge=0, le=1)
    sft: SFTSettings = block(SFTSettings, "SFT block: max_steps, learning_rate, batch_size")
    dpo: DPOSettings = block(DPOSettings, "DPO block: beta, learning_rate, max_steps, batch_size")
    simpo: SimPOSettings = block(SimPOSettings, "SimPO block: beta, gamma_beta_ratio, label_smoothing, cpo_lambda, "
                                                 "learning_rate, max_steps, batch_size, ablation")
    sppo: SPPOSettings = block(SPPOSettings, "SPPO block: iterations, beta, learning_rate, max_steps, batch_size")

    def validate(self) -> "DemoConfig":
        if not self.output_dir:
            raise ConfigError("output_dir is required")
        return self

    def effective(self) -> "DemoConfig":
        """The settings the stages run with: `quick`'s reductions and a `max_steps` override
        applied (the report shows these, not the ones asked for)."""
        cfg = copy.deepcopy(self)
        if cfg.quick:
            cfg.sft.max_steps = min(cfg.sft.max_steps, QUICK_SFT_STEPS)
            cfg.rounds = min(cfg.rounds, QUICK_ROUNDS)
            for block in (cfg.dpo, cfg.simpo, cfg.sppo):
                block.max_steps = max(1, block.max_steps // 2)  # the same passes over half the pairs
            cfg.simpo.ablation = False
        if cfg.max_steps:
            for block in (cfg.dpo, cfg.simpo, cfg.sppo):
                block.max_steps = cfg.max_steps
            cfg.sft.max_steps = max(cfg.max_steps, SMOKE_SFT_STEPS)
            cfg.rounds = 1
        return cfg


#: The reduced demo (`quick: true`): SFT steps, sampling rounds and held-out prompts.
QUICK_SFT_STEPS, QUICK_ROUNDS, QUICK_EVAL_PROMPTS = 300, 2, 128
#: Smoke runs (`max_steps`): SFT steps after which some sampled answers differ in score (at 20 and 30
#: steps every answer to the test prompts broke the rules, all tied at 0; at 60 the model writes the format).
SMOKE_SFT_STEPS = 60
