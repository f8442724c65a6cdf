"""One model against the SFT model on held-out prompts, by `prefero eval`, plus the task's own numbers.

`prefero eval` (prefero.evaluate.run) makes the model's answers, has the task's verifier
judge each (model, SFT) pair in both orders — the verifier scores each answer alone, so
the orders agree, but it is asked as any judge would be — and turns the two scores into a
verdict: the higher score wins, equal scores tie (`pointwise_preference: verdict`), a tie
counting ½ in the win rate, with its bootstrap interval and the length-controlled win
rate. On the held-out pairs it measures the model's likelihood-ranking accuracy and the
reward accuracy of the method's own implicit reward.

What `prefero eval` does not know is the task: how many answers are correct
(`task_accuracy`) and how many keep to the rules (`within_rules`), and what the judge with
a hole (`lax_judge`, blind to repeated words) would say of the same answers
(`lax_win_rate`, `lax_task_accuracy`); those are added here from the same answer files.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefero.demo.task import JUDGE_FUNCTION, check, parse_prompt, score, task_accuracy, verdict_of_pair

#: What the report keeps of `prefero eval`'s report.json.
EVAL_KEYS = ("win_rate", "win_rate_ci", "lc_win_rate", "mean_length", "baseline_mean_length", "repetition_rate",
             "baseline_repetition_rate", "distinct_n", "baseline_distinct_n", "degenerate", "baseline_degenerate",
             "n_prompts", "likelihood_ranking_accuracy", "reward_accuracy", "spearman_avg_logp_length")


def read_answers(path: str | Path) -> tuple[list[str], list[str]]:
    """(prompts, answers) of a `prefero generate` output with one completion per prompt."""
    prompts, answers = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            prompts.append(row["prompt"])
            answers.append(row["completions"][0])
    return prompts, answers


def describe(prompt: str, answer: str) -> str:
    """A verdict on one answer a person can read: correct, N words (asked M), or the broken rule."""
    task = parse_prompt(prompt)
    v = check(task, answer)
    if v.level == "correct":
        return "correct"
    if v.level == "wrong_count":
        return f"{v.words} words, asked {task.count}"
    return f"breaks the rules: {v.reason}"


def eval_config(output_dir: str | Path, *, model: str | None = None, answers: str | Path | None = None,
                sft_answers: str | Path | None = None, prompts: str | None = None, generation=None,
                pairs: str | Path | None = None, method: dict | None = None):
    """`prefero eval`'s config: `model` (or its `answers`) against `sft_answers` with the
    task's verifier; with `pairs`, the model's metrics on them under `method`'s loss."""
    from prefero.evaluate.config import EvalConfig
    from prefero.options import load_config

    values: list[str] = [f"output_dir={output_dir}", "overwrite=true", "max_length=48", "max_prompt_length=16"]
    values.append(f"model={model}" if model else f"outputs={answers}")
    if sft_answers is not None:
        values += [f"baseline_outputs={sft_answers}", "judge.type=callable", f"judge.function={JUDGE_FUNCTION}",
                   "pointwise_preference=verdict", "batch_size=64"]
        if prompts is not None:
            values.append(f"prompts={prompts}")
    if pairs is not None:
        loss = method["loss"] if method else "simpo"  # SFT: only its likelihood ranking is read
        values += [f"pairs={pairs}", f"loss={loss}"]
        if method:
            values.append(f"beta={method['settings']['beta']}")
            if method.get("reference"):
                values.append(f"ref_model={method['reference']}")
    cfg = load_config(None, values, cls=EvalConfig)
    if generation is not None and model and sft_answers is not None:
        cfg.generation = generation
    return cfg.validate()


def evaluate_against_sft(name: str, output_dir: str | Path, *, model: str | None = None,
                         answers: str | Path | None = None, sft_answers: str | Path | None = None,
                         prompts: str | None = None, generation=None, pairs: str | Path | None = None,
                         method: dict | None = None) -> dict:
    """`prefero eval` of one model (see `eval_config`), and the task's numbers on its
    answers and on SFT's. Without `sft_answers` (the SFT model itself): pair metrics only."""
    from prefero.evaluate.responses import responses_path
    from prefero.evaluate.run import run_eval

    cfg = eval_config(output_dir, model=model, answers=answers, sft_answers=sft_answers, prompts=prompts,
                      generation=generation, pairs=pairs, method=method)
    report = run_eval(cfg)
    out = {k: report.get(k) for k in EVAL_KEYS if k in report}
    out["report"] = str(Path(output_dir) / "report.json")
    if method is not None and method.get("length_normalize") is False:
        out["reward_accuracy"] = None  # eval scores SimPO's length-normalised reward, not this variant's
    if sft_answers is None:
        return out
    policy_file = responses_path(output_dir, "policy") if model else Path(answers)
    prompts_, policy = read_answers(policy_file)
    base_prompts, baseline = read_answers(sft_answers)
    if base_prompts != prompts_:
        raise ValueError(f"{policy_file} and {sft_answers} answer different prompts")
    mine, theirs = task_accuracy(prompts_, policy), task_accuracy(prompts_, baseline)
    lax_mine, lax_theirs = (task_accuracy(prompts_, a, repetition=False) for a in (policy, baseline))
    out.update({
        "answers": str(policy_file), "wins": report["judgments"]["wins"], "ties": report["judgments"]["ties"],
        "losses": report["judgments"]["losses"],
        "task_accuracy": mine.task_accuracy, "within_rules": mine.within_rules, "broken_rules": mine.broken,
        "baseline_task_accuracy": theirs.task_accuracy, "baseline_within_rules": theirs.within_rules,
        "mean_words": mean_words(policy), "baseline_mean_words": mean_words(baseline),
        "lax_win_rate": lax_win_rate(prompts_, policy, baseline), "lax_task_accuracy": lax_mine.task_accuracy,
        "baseline_lax_task_accuracy": lax_theirs.task_accuracy,
    })
    return out


def lax_win_rate(prompts: list, policy: list[str], baseline: list[str]) -> float:
    """The win rate `lax_judge` (no repetition rule) would report: the mean over prompts
    of 1 / ½ / 0 as the policy's answer scores above, equal to or below the baseline's."""
    value = {"win": 1.0, "tie": 0.5, "loss": 0.0}
    total = 0.0
    for p, a, b in zip(prompts, policy, baseline):
        task = parse_prompt(p)
        total += value[verdict_of_pair(score(task, a, repetition=False), score(task, b, repetition=False))]
    return total / len(prompts)


def mean_words(answers: list[str]) -> float:
    return sum(len(a.strip().rstrip(".").split()) for a in answers) / len(answers)
