"""The demo's report: report.json, report.md and the table printed at the end.

Every number is measured on one split of the prompts, named at the top (`split: {name,
prompts}`: test, or validation when tuning). report.json holds, at the top level,
`methods: {dpo|simpo|sppo: {win_rate, win_rate_ci, lc_win_rate, task_accuracy,
repetition_rate, degenerate, mean_length, greedy: {...}, ...}}` (sppo: its last
iteration; `greedy`: the same numbers for greedy answers against SFT's greedy answers)
and `sft: {task_accuracy, ...}`; the ablations (`ablations`: SimPO on summed log-probs,
and DPO trained by a judge blind to repetition — reward hacking — with what that judge
says of it, `lax_win_rate`); the SimPO findings measured at this scale (`simpo_findings`);
every SPPO iteration; the hyperparameters with the reason for each; what fell short of
the target (`shortfalls`, empty when every method met it); stage times; and a few
prompts answered by every model (`examples`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from prefero.demo.config import DemoConfig
from prefero.demo.evaluate import describe, read_answers
from prefero.demo.task import DEMO_ACCURACY
from prefero.files import atomic_write_text

#: The three methods the demo is about; `sppo` is the last self-play iteration.
HEADLINE = ("dpo", "simpo", "sppo")
N_EXAMPLES = 4
NAMES = {"sft": "SFT", "dpo": "DPO", "simpo": "SimPO", "simpo_summed": "SimPO (summed)", "sppo": "SPPO",
         "dpo_lax": "DPO, lax judge"}
#: Methods trained for an ablation, reported below the main rows.
ABLATIONS = ("simpo_summed", "dpo_lax")


def display_name(key: str) -> str:
    if key.startswith("sppo_"):
        return f"SPPO iteration {key.split('_')[1]}"
    return NAMES.get(key, key)


def _method_entry(result: dict, cfg: DemoConfig, sft_accuracy: float) -> dict:
    e = result["eval"]
    entry = {
        "win_rate": e["win_rate"], "win_rate_ci": e["win_rate_ci"], "lc_win_rate": e["lc_win_rate"],
        "task_accuracy": e["task_accuracy"], "mean_length": e["mean_length"], "mean_words": e["mean_words"],
        "within_rules": e["within_rules"], "broken_rules": e["broken_rules"],
        "wins": e["wins"], "ties": e["ties"], "losses": e["losses"], "n_prompts": e["n_prompts"],
        "repetition_rate": e["repetition_rate"], "distinct_n": e["distinct_n"], "degenerate": e["degenerate"],
        "lax_win_rate": e["lax_win_rate"], "lax_task_accuracy": e["lax_task_accuracy"],
        "likelihood_ranking_accuracy": e.get("likelihood_ranking_accuracy"),
        "heldout_reward_accuracy": e.get("reward_accuracy"),
        "train_loss": result["train_loss"], "steps": result["steps"], "settings": result["settings"],
        "model": result["model"], "reference": result["reference"], "report": e["report"], "answers": e["answers"],
    }
    if result.get("greedy_eval"):
        g = result["greedy_eval"]
        entry["greedy"] = {k: g[k] for k in ("win_rate", "win_rate_ci", "task_accuracy", "within_rules",
                                             "repetition_rate", "degenerate", "mean_words", "answers", "report")}
    entry["meets_target"] = bool(e["win_rate"] >= cfg.win_rate_target and e["win_rate_ci"][0] > cfg.ci_lower_target
                                 and e["task_accuracy"] > sft_accuracy)
    return entry


def _why(cfg: DemoConfig) -> dict:
    """Each method's hyperparameters with the reason for each (the config fields' help)."""
    out = {}
    for block in ("sft", "dpo", "simpo", "sppo"):
        settings = getattr(cfg, block)
        out[block] = {f.name: {"value": getattr(settings, f.name), "why": f.metadata.get("help", "")}
                      for f in dataclasses.fields(settings)}
    return out


def build_report(cfg: DemoConfig, results: dict, seconds: dict, total_seconds: float) -> dict:
    methods = results["methods"]
    split = results["split"]
    # every comparison holds SFT's numbers on the same answers as its baseline side
    first = next(iter(methods.values()))
    sft_side, sft_greedy = first["eval"], first.get("greedy_eval")
    sft_accuracy = sft_side["baseline_task_accuracy"]
    entries = {k: _method_entry(v, cfg, sft_accuracy) for k, v in methods.items()}
    final = results["final_sppo"]
    headline = {"dpo": entries["dpo"], "simpo": entries["simpo"], "sppo": {**entries[final], "iteration": final}}
    shortfalls = []
    for key, e in headline.items():
        if e["win_rate"] < cfg.win_rate_target:
            shortfalls.append(f"{display_name(key)}: win rate {e['win_rate']:.3f} is below the target "
                              f"{cfg.win_rate_target:.2f}")
        if e["win_rate_ci"][0] <= cfg.ci_lower_target:
            shortfalls.append(f"{display_name(key)}: the win rate's interval starts at {e['win_rate_ci'][0]:.3f}, "
                              f"not above {cfg.ci_lower_target:.2f}")
        if e["task_accuracy"] <= sft_accuracy:
            shortfalls.append(f"{display_name(key)}: task accuracy {e['task_accuracy']:.3f} did not rise above "
                              f"SFT's {sft_accuracy:.3f}")
    sft_lr = results["sft_eval"].get("likelihood_ranking_accuracy")
    sft = {"task_accuracy": sft_accuracy, "within_rules": sft_side["baseline_within_rules"],
           "mean_length": sft_side["baseline_mean_length"], "mean_words": sft_side["baseline_mean_words"],
           "repetition_rate": sft_side["baseline_repetition_rate"], "distinct_n": sft_side["baseline_distinct_n"],
           "degenerate": sft_side["baseline_degenerate"], "lax_task_accuracy": sft_side["baseline_lax_task_accuracy"],
           "likelihood_ranking_accuracy": sft_lr, "model": results["models"]["sft"],
           "answers": results["sft_answers"]["answers"]}
    if sft_greedy:
        sft["greedy"] = {"task_accuracy": sft_greedy["baseline_task_accuracy"],
                         "within_rules": sft_greedy["baseline_within_rules"],
                         "repetition_rate": sft_greedy["baseline_repetition_rate"],
                         "degenerate": sft_greedy["baseline_degenerate"],
                         "mean_words": sft_greedy["baseline_mean_words"],
                         "answers": results["sft_greedy_answers"]["answers"]}
    report = {
        "split": split,
        "methods": headline,
        "sft": sft,
        "win_rate_target": cfg.win_rate_target,
        "ci_lower_target": cfg.ci_lower_target,
        "passed": not shortfalls,
        "shortfalls": shortfalls,
        "sppo_iterations": [{"iteration": int(k.split("_")[1]), **e} for k, e in entries.items()
                            if k.startswith("sppo_")],
        "simpo_findings": _simpo_findings(entries, sft_lr),
        "task": {"description": "Write N words about TOPIC: exactly N words from the topic's list, no word twice, "
                                "single spaces, one period", "demonstration_accuracy": DEMO_ACCURACY,
                 "judge": "prefero.demo.task:judge (0 if an answer breaks a rule, else 1/(1+|words-N|))",
                 "lax_judge": "prefero.demo.task:lax_judge (the same without the no-repeat rule; the ablation's)",
                 "split": split["name"], "prompts": split["prompts"]},
        "model": {"parameters": results.get("base", {}).get("parameters")},
        "hyperparameters": _why(cfg),
        "data": {"pairs": results["labels"], "lax_pairs": results.get("lax_labels"),
                 "sppo_rows": {k: {"kept": m.get("training_rows"), "dropped": m.get("dropped")}
                               for k, m in methods.items() if k.startswith("sppo_")}},
        "timing": {"seconds": {k: round(v, 1) for k, v in seconds.items()}, "total_seconds": round(total_seconds, 1)},
        "config": dataclasses.asdict(cfg),
    }
    ablations = {k: entries[k] for k in ABLATIONS if k in entries}
    if ablations:
        report["ablations"] = ablations
    return report


def _simpo_findings(entries: dict, sft_likelihood_ranking: float | None) -> dict:
    """The SimPO paper's two measurements, at this scale, stated whatever they show."""
    out = {"likelihood_ranking_accuracy": {
        "sft": sft_likelihood_ranking,
        **{k: e["likelihood_ranking_accuracy"] for k, e in entries.items()}},
        "note": "share of held-out pairs (the SFT model's best vs worst answer) with A(chosen) > A(rejected); "
                "the SimPO paper finds about 50% for DPO"}
    if "simpo_summed" in entries:
        s, u = entries["simpo"], entries["simpo_summed"]
        out["length_normalization"] = {
            "simpo_mean_words": s["mean_words"], "summed_mean_words": u["mean_words"],
            "simpo_mean_length": s["mean_length"], "summed_mean_length": u["mean_length"],
            "simpo_task_accuracy": s["task_accuracy"], "summed_task_accuracy": u["task_accuracy"],
            "simpo_win_rate": s["win_rate"], "summed_win_rate": u["win_rate"]}
    return out


# --------------------------------------------------------------------------- examples


def examples(report: dict, names: list[str], n: int = N_EXAMPLES) -> list[dict]:
    """The first `n` held-out prompts (in file order, not picked), every model's answer and
    the judge's verdict on it; and each method's verdict against SFT's answer."""
    from prefero.demo.task import parse_prompt, score, verdict_of_pair

    files = {"sft": report["sft"]["answers"], **{k: report["methods"][k]["answers"] for k in names}}
    answers = {name: read_answers(path)[1] for name, path in files.items()}
    prompts = read_answers(files["sft"])[0]
    rows = []
    for i in range(min(n, len(prompts))):
        task = parse_prompt(prompts[i])
        base = score(task, answers["sft"][i])
        row = {"prompt": prompts[i], "answers": {}}
        for name, texts in answers.items():
            entry = {"answer": texts[i], "judge": describe(prompts[i], texts[i])}
            if name != "sft":
                entry["vs_sft"] = verdict_of_pair(score(task, texts[i]), base)
            row["answers"][name] = entry
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- files


def write_demo_report(out: Path, report: dict) -> None:
    """report.md, then report.json (last: its presence means the report is whole)."""
    report["examples"] = examples(report, list(HEADLINE))
    atomic_write_text(out / "report.md", render_markdown(report))
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _ci(ci) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _greedy(e: dict, key: str, fmt) -> str:
    g = e.get("greedy")
    return fmt(g[key]) if g else "-"


def table_rows(report: dict) -> list[list[str]]:
    """The comparison as rows of cells: SFT, the three methods, the earlier SPPO
    iterations, then the ablations."""
    sft = report["sft"]
    rows = [["SFT (baseline)", "-", "-", "-", f"{_pct(sft['task_accuracy'])} / {_greedy(sft, 'task_accuracy', _pct)}",
             _pct(sft["within_rules"]), _pct(sft["repetition_rate"]), _pct(sft["degenerate"]),
             f"{sft['mean_words']:.2f}", _pct(sft["likelihood_ranking_accuracy"]), ""]]
    entries = [(k, e) for k, e in report["methods"].items()]
    entries += [(f"sppo_{it['iteration']}", it) for it in report["sppo_iterations"][:-1]]
    entries += [(k, e) for k, e in report.get("ablations", {}).items()]
    for key, e in entries:
        name = display_name(e.get("iteration", key)) if key == "sppo" else display_name(key)
        if key in ABLATIONS:
            name += " (ablation)"
        rows.append([name, f"{_pct(e['win_rate'])} {_ci(e['win_rate_ci'])}", _pct(e["lc_win_rate"]),
                     _greedy(e, "win_rate", _pct),
                     f"{_pct(e['task_accuracy'])} / {_greedy(e, 'task_accuracy', _pct)}",
                     _pct(e["within_rules"]), _pct(e["repetition_rate"]), _pct(e["degenerate"]),
                     f"{e['mean_words']:.2f}", _pct(e["likelihood_ranking_accuracy"]),
                     ("meets target" if e["meets_target"] else "SHORT of target") if key in report["methods"] else ""])
    return rows


HEADER = ["model", "win rate vs SFT [95% CI]", "LC win rate", "greedy win rate", "task accuracy (sampled / greedy)",
          "within rules", "repeats a word", "degenerate", "mean words", "likelihood ranking", ""]


def render_markdown(report: dict) -> str:
    split = report["split"]
    lines = ["# prefero demo: DPO, SimPO and SPPO against the SFT model", "",
             f"**Every number below is measured on the {split['name']} split: {split['prompts']} prompts whose "
             f"(topic, N) pairs no training prompt has** "
             + ("(the report's own prompts; settings were tuned on the validation split)." if split["name"] == "test"
                else "(the tuning split; the report's numbers are the test split's).") + "",
             "",
             f"Task: {report['task']['description']}. The SFT model learned from demonstrations that are right "
             f"{report['task']['demonstration_accuracy']:.0%} of the time. Judge: {report['task']['judge']}. "
             "One sampled answer per model and prompt, at the training temperature (the headline), and one greedy "
             "answer (reported beside it, against SFT's greedy answer); each method's answer is judged against SFT's "
             "in both orders, a tie counts ½.", ""]
    lines += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(report)]
    lines += ["", "*within rules*: share of answers keeping every rule but the count (topic words, no word twice, "
                  "format); *repeats a word*: share of answers with a word twice; *degenerate*: share of answers "
                  "looping one word or a short n-gram (docs/evaluation.md); *likelihood ranking*: held-out pairs "
                  "with A(chosen) > A(rejected). Sampled numbers unless marked greedy.", ""]
    if report["shortfalls"]:
        lines += ["## Short of the target", ""] + [f"- {s}" for s in report["shortfalls"]] + [""]
    else:
        lines += [f"Every method's win rate against SFT is at least {report['win_rate_target']:.2f}, its interval "
                  f"starts above {report['ci_lower_target']:.2f}, and its task accuracy is above SFT's.", ""]
    lines += _hacking_md(report)
    lines += _findings_md(report["simpo_findings"], report["hyperparameters"]["simpo"]["cpo_lambda"]["value"])
    lines += [f"## Examples (the first {split['name']} prompts, not picked)", ""]
    for k, ex in enumerate(report.get("examples", []), start=1):
        lines += [f"**{k}. {ex['prompt']}**", "", "| model | answer | judge | vs SFT |", "|---|---|---|---|"]
        for name, a in ex["answers"].items():
            text = a["answer"].strip().replace("|", "\\|") or "(empty)"
            lines.append(f"| {display_name(name)} | `{text}` | {a['judge']} | {a.get('vs_sft', '')} |")
        lines.append("")
    lines += _how_md(report)
    lines += ["## Hyperparameters, and why", "",
              "Each method's settings are scaled to this model, not copied from the papers' 7B runs"
              + (" (this is the reduced demo: steps and rounds are cut as `quick` and `max_steps` say, the values "
                 "below are the ones used)" if report["config"]["quick"] or report["config"]["max_steps"] else "")
              + ":", ""]
    for block, fields in report["hyperparameters"].items():
        lines.append(f"- **{block}**: " + "; ".join(f"`{k}` = {v['value']} ({v['why']})" for k, v in fields.items()))
    return "\n".join(lines) + "\n"


def _hacking_md(report: dict) -> list[str]:
    """The reward-hacking ablation in words: what the lax judge says, what the rules say."""
    e = report.get("ablations", {}).get("dpo_lax")
    if not e:
        return []
    dpo, sft = report["methods"]["dpo"], report["sft"]
    return ["## Reward hacking, on purpose (the lax-judge ablation)", "",
            f"DPO trained on pairs labelled by a judge that checks the count, the vocabulary and the format but not "
            f"repetition. By that judge it beats SFT {_pct(e['lax_win_rate'])} of the time, with "
            f"{_pct(e['lax_task_accuracy'])} of its answers \"correct\" (SFT: {_pct(sft['lax_task_accuracy'])}). "
            f"By the full rules its win rate is {_pct(e['win_rate'])} {_ci(e['win_rate_ci'])} and its task accuracy "
            f"{_pct(e['task_accuracy'])}; {_pct(e['repetition_rate'])} of its answers repeat a word and "
            f"{_pct(e['degenerate'])} are degenerate (DPO with the full judge: {_pct(dpo['repetition_rate'])} and "
            f"{_pct(dpo['degenerate'])}; SFT: {_pct(sft['repetition_rate'])} and {_pct(sft['degenerate'])}"
            + (f"; greedy, the lax-judge model's answers repeat a word {_pct(e['greedy']['repetition_rate'])} of "
               f"the time, {_pct(e['greedy']['degenerate'])} degenerate" if e.get("greedy") else "")
            + f"). The lax judge rates it {100 * (e['lax_win_rate'] - e['win_rate']):+.1f} points above what the full "
            f"rules give it, and its share of answers repeating a word is "
            f"{100 * (e['repetition_rate'] - dpo['repetition_rate']):+.1f} points against DPO's with the full judge: "
            "how much of the hole it found. (A policy learns the rules "
            "its judge checks, holes included; how far it exploits one here depends on how hard it is pushed: "
            "`prefero demo --help`, hacking_ablation.)", ""]


def _findings_md(f: dict, cpo_lambda: float) -> list[str]:
    """The two SimPO measurements in words, with the numbers; said whichever way they fall."""
    lines = ["## The SimPO paper's findings, measured at this scale", ""]
    lr = f["likelihood_ranking_accuracy"]
    dpo, simpo = lr.get("dpo"), lr.get("simpo")
    if dpo is not None and simpo is not None:
        gap = 100 * (simpo - dpo)
        verdict = (f"SimPO ranks {gap:.1f} points more pairs right than DPO" if gap >= 1 else
                   f"DPO ranks {-gap:.1f} points more pairs right than SimPO" if gap <= -1 else
                   "DPO and SimPO rank the pairs alike (within a point)")
        lines.append(f"- Likelihood ranking (held-out pairs with A(chosen) > A(rejected), the pairs being the SFT "
                     f"model's best and worst answers): DPO {_pct(dpo)}, SimPO {_pct(simpo)}, "
                     f"SFT {_pct(lr.get('sft'))}. "
                     f"{verdict}. The SimPO paper measures about 50% for DPO; "
                     + ("not so here." if dpo > 0.6 else "so does this run."))
    ln = f.get("length_normalization")
    if ln:
        longer = ln["summed_mean_words"] > ln["simpo_mean_words"]
        lines.append(f"- Length normalisation: SimPO on summed log-probs answers with {ln['summed_mean_words']:.2f} "
                     f"words on average ({ln['summed_mean_length']:.1f} characters), SimPO with "
                     f"{ln['simpo_mean_words']:.2f} ({ln['simpo_mean_length']:.1f}); "
                     f"{'longer' if longer else 'shorter or as long'} without it, and task accuracy "
                     f"{_pct(ln['summed_task_accuracy'])} against {_pct(ln['simpo_task_accuracy'])}, win rate "
                     f"{_pct(ln['summed_win_rate'])} against {_pct(ln['simpo_win_rate'])}. (The paper's ablation "
                     "finds that without it SimPO's reward favours longer responses."
                     + (f" Both runs here carry λ·NLL(chosen), λ = {cpo_lambda:g}, which the paper's "
                        "runs did not." if cpo_lambda else "")
                     + ")")
    return lines + [""]


def _how_md(report: dict) -> list[str]:
    """What ran, with the counts: where every number above comes from."""
    d, t = report["data"], report["timing"]
    pairs = d["pairs"]
    lines = ["## How it ran", "",
             f"- Model: a Llama of {report['model']['parameters'] / 1e6:.2f}M parameters, trained from scratch; "
             f"SFT for {report['hyperparameters']['sft']['max_steps']['value']} steps on the task's demonstrations.",
             f"- The SFT model answered every training prompt {report['config']['num_samples']} times in each of "
             f"{report['config']['rounds']} round(s); the verifier scored the answers; {pairs['read']} (prompt, "
             f"round) groups gave {pairs['kept']} best-vs-worst pairs for DPO and SimPO (dropped: "
             f"{_counts(pairs['dropped'])}). SPPO's first iteration trained on the same judged answers "
             "(`prefero selfplay`, in sppo/), each later iteration on fresh answers of the previous one: "
             + "; ".join(f"{display_name(k)} {v['kept']} rows" for k, v in d["sppo_rows"].items()) + ".",
             f"- Each model answered the {report['split']['prompts']} {report['split']['name']} prompts once sampled, "
             "as in training, with the same seed for every model (answers differ only where the models do), and "
             "once greedily; `prefero eval` judged each against SFT's answer in both orders (eval/NAME/report.md, "
             "eval/NAME_greedy/report.md).",
             f"- Time: {t['total_seconds']:.0f} s in all; "
             + ", ".join(f"{k} {v:.0f} s" for k, v in t["seconds"].items()) + "."]
    return lines + [""]


def _counts(counter: dict) -> str:
    return ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counter.items()) or "none"


def print_summary(report: dict, out: Path) -> None:
    """The table, two examples side by side, what fell short, and where the report is."""
    rows = [HEADER] + table_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    split = report["split"]
    print(f"\nOn the {split['name']} split ({split['prompts']} prompts, (topic, N) pairs training never saw):")
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    for ex in report.get("examples", [])[:2]:
        print(f"\n{ex['prompt']}")
        for name, a in ex["answers"].items():
            vs = f" [{a['vs_sft']} vs SFT]" if "vs_sft" in a else ""
            print(f"  {display_name(name):<18} {a['answer'].strip()!r:<60} {a['judge']}{vs}")
    print()
    if report["shortfalls"]:
        print("Short of the target:")
        for s in report["shortfalls"]:
            print(f"  - {s}")
    else:
        print(f"Every method beats SFT (win rate >= {report['win_rate_target']:.2f}, interval above "
              f"{report['ci_lower_target']:.2f}) and raises task accuracy.")
    print(f"\nreport: {out / 'report.md'}  ({out / 'report.json'})")
    print("models (HF format): " + ", ".join(
        f"{display_name(k)} {m['model']}" for k, m in [("sft", report["sft"]), *report["methods"].items()]))
    print(f"time: {report['timing']['total_seconds']:.0f} s")
