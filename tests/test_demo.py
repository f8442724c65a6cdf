"""`prefero demo`: the task and its judge on hand-worked answers, the shipped data, the
evaluation against SFT on answers whose verdicts are known, the config, and the reduced
demo end to end with its win rates asserted (the slow test)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from prefero.data import DataError
from prefero.demo import DemoConfig, asset
from prefero.demo.task import (
    BREAKS_RULES,
    CORRECT,
    COUNTS,
    DEMO_ACCURACY,
    EVAL_PROMPT_FILES,
    JUDGE_FUNCTION,
    LAX_JUDGE_FUNCTION,
    SPLITS,
    TEMPLATES,
    TOPICS,
    WRONG_COUNT,
    Task,
    check,
    judge,
    lax_judge,
    parse_prompt,
    score,
    split_prompts,
    task_accuracy,
    task_files,
)
from prefero.options import ConfigError, load_config

pytestmark = pytest.mark.slow  # see pyproject.toml's markers

SEA4 = "Write 4 words about the sea."


# --------------------------------------------------------------------------- the task


def test_parse_prompt_reads_topic_and_count():
    assert parse_prompt(SEA4) == Task("the sea", 4)
    assert parse_prompt([{"role": "user", "content": "List 10 words for the river."}]) == Task("the river", 10)
    with pytest.raises(ValueError, match="not a prompt of the demo task"):
        parse_prompt("Write 4 words about the moon.")  # not one of the topics


@pytest.mark.parametrize("answer, level, words, reason", [
    (" wave salt shell tide.", CORRECT, 4, None),
    ("wave salt shell tide.", CORRECT, 4, None),  # the leading space is optional
    (" wave wave wave wave.", BREAKS_RULES, 4, "repeated word 'wave'"),
    (" wave salt shell wave.", BREAKS_RULES, 4, "repeated word 'wave'"),
    (" wave tree wave tide.", BREAKS_RULES, 4, "off-topic word 'tree'"),  # the first rule broken is named
    (" wave salt shell.", WRONG_COUNT, 3, None),
    (" wave salt shell tide fish coral.", WRONG_COUNT, 6, None),
    (" wave salt tree tide.", BREAKS_RULES, 4, "off-topic word 'tree'"),
    (" Wave salt shell tide.", BREAKS_RULES, 4, "off-topic word 'Wave'"),
    (" wave salt  shell tide.", BREAKS_RULES, 4, "format: single spaces between words"),
    (" wave salt shell tide", BREAKS_RULES, 4, "format: one period, at the end"),
    (" wave salt. shell tide.", BREAKS_RULES, 4, "format: one period, at the end"),
    (" wave salt shell tide..", BREAKS_RULES, 4, "format: one period, at the end"),
    ("  ", BREAKS_RULES, 0, "empty"),
])
def test_check_judges_the_whole_answer(answer, level, words, reason):
    v = check(Task("the sea", 4), answer)
    assert (v.level, v.words, v.reason) == (level, words, reason)


def test_the_lax_judge_misses_only_repetition():
    sea = Task("the sea", 4)
    assert check(sea, " wave wave wave wave.", repetition=False) == check(sea, " wave salt shell tide.")
    assert check(sea, " wave wave tree.", repetition=False).reason == "off-topic word 'tree'"
    answers = [" tide tide tide tide.", " wave salt salt.", " wave salt shell tide.", " wave salt tree tide."]
    assert lax_judge(SEA4, answers) == [1.0, 1 / 2, 1.0, 0.0]
    assert judge(SEA4, answers) == [0.0, 0.0, 1.0, 0.0]
    assert LAX_JUDGE_FUNCTION == "prefero.demo.task:lax_judge"
    stats = task_accuracy([SEA4] * 4, answers, repetition=False)
    assert (stats.task_accuracy, stats.within_rules) == (2 / 4, 3 / 4)
    assert task_accuracy([SEA4] * 4, answers).broken == {"off-topic word": 1, "repeated word": 2}


def test_score_and_the_callable_judge_agree_with_hand_values():
    answers = [" wave salt shell tide.", " wave salt shell.", " wave salt.", " wave salt shell tide fish coral.",
               " wave salt tree tide."]
    hand = [1.0, 1 / 2, 1 / 3, 1 / 3, 0.0]  # 1/(1 + |words − 4|); 0 off the rules
    assert judge(SEA4, answers) == hand
    assert [score(Task("the sea", 4), a) for a in answers] == hand

    from prefero.data.formats import Where
    from prefero.judges import Item, build_judge
    from prefero.judges.config import JudgeConfig

    j = build_judge(load_config(None, ["type=callable", f"function={JUDGE_FUNCTION}"], cls=JudgeConfig))
    assert j.score([Item(SEA4, answers, Where("f.jsonl", 1))]) == [hand]
    # P(i ≻ j) = σ(s_i − s_j): correct over one word off is σ(½)
    p = j.compare([(Item(SEA4, answers, Where("f.jsonl", 1)), 0, 1)])[0]
    assert math.isclose(p, 1 / (1 + math.exp(-0.5)), rel_tol=1e-15)
    with pytest.raises(DataError, match="f.jsonl: row 3.*not a prompt of the demo task"):
        j.score([Item("What is 2 + 2?", ["4"], Where("f.jsonl", 3))])


def test_task_accuracy_counts_correct_and_within_rules():
    prompts = [SEA4, SEA4, SEA4, "Give 3 words about space."]
    answers = [" wave salt shell tide.", " wave salt.", " wave tree salt shell.", " star moon sun."]
    stats = task_accuracy(prompts, answers)
    assert (stats.n, stats.task_accuracy, stats.within_rules) == (4, 2 / 4, 3 / 4)
    assert stats.broken == {"off-topic word": 1}
    with pytest.raises(ValueError, match="3 answers for 4 prompts"):
        task_accuracy(prompts, answers[:3])


# --------------------------------------------------------------------------- the data


def test_shipped_files_are_what_the_code_builds():
    for name, rows in task_files().items():
        with open(asset(name), encoding="utf-8") as f:
            rebuild = "python -m prefero.demo.task prefero/assets"
            assert [json.loads(line) for line in f] == rows, f"{name} differs from the code's: {rebuild}"


def test_demonstrations_follow_the_rules_and_are_right_part_of_the_time():
    rows = task_files()["demo_task_sft.jsonl"]
    stats = task_accuracy([r["prompt"] for r in rows], [r["completion"] for r in rows])
    assert stats.within_rules == 1.0
    # each demonstration is right with probability DEMO_ACCURACY, independently: the share of
    # n draws lies within 4 binomial standard deviations (a 6e-5 chance to fail for a fair generator)
    sd = math.sqrt(DEMO_ACCURACY * (1 - DEMO_ACCURACY) / len(rows))
    assert abs(stats.task_accuracy - DEMO_ACCURACY) < 4 * sd


def test_splits_are_disjoint_in_topic_and_count():
    split = split_prompts()
    pairs = {name: {(t.topic, t.count) for _, t in split[name]} for name in SPLITS}
    assert not pairs["train"] & pairs["validation"] and not pairs["train"] & pairs["test"]
    assert not pairs["validation"] & pairs["test"]
    # every (topic, N) pair once, with all its phrasings in its split; 4 / 1 / 3 of each topic's counts
    assert sum(len(v) for v in split.values()) == len(TOPICS) * len(COUNTS) * len(TEMPLATES)
    assert {name: len(v) for name, v in pairs.items()} == {"train": 4 * len(TOPICS), "validation": len(TOPICS),
                                                           "test": 3 * len(TOPICS)}
    for name in SPLITS:  # every topic and every count in every split
        assert {t for t, _ in pairs[name]} == set(TOPICS) and {n for _, n in pairs[name]} == set(COUNTS)
    # no topic is trained on counts of one parity only: the topic must not predict the count's
    # parity, or a held-out (topic, N) asks for what training taught the topic never to do
    for topic in TOPICS:
        trained = [n for t, n in pairs["train"] if t == topic]
        assert sorted(n % 2 for n in trained) == [0, 0, 1, 1], (topic, trained)
    files = task_files()
    assert {r["prompt"] for r in files["demo_task_sft.jsonl"]} == {p for p, _ in split["train"]}
    assert [r["prompt"] for r in files["demo_task_prompts.jsonl"]] == [p for p, _ in split["train"]]
    for name, file in EVAL_PROMPT_FILES.items():
        assert [r["prompt"] for r in files[file]] == [p for p, _ in split[name]]


def test_topics_share_no_word():
    words = [w for ws in TOPICS.values() for w in ws]
    assert all(len(ws) == 12 for ws in TOPICS.values()) and len(set(words)) == len(words)


def test_every_task_word_is_one_token():
    from prefero.demo.model import build_task_tokenizer

    tok = build_task_tokenizer()
    words = [w for ws in TOPICS.values() for w in ws]
    assert all(len(tok.encode(" " + w, add_special_tokens=False)) == 1 for w in words)
    assert tok.decode(tok.encode(" wave salt.", add_special_tokens=False)) == " wave salt."


# --------------------------------------------------------------------------- config


def test_config_blocks_keep_their_own_defaults():
    cfg = load_config(None, ["dpo.beta=0.3", "sppo.iterations=3"], cls=DemoConfig)
    assert (cfg.dpo.beta, cfg.dpo.learning_rate) == (0.3, DemoConfig().dpo.learning_rate)
    assert cfg.sppo.iterations == 3 and cfg.sppo.beta == DemoConfig().sppo.beta
    with pytest.raises(ConfigError, match=r"sppo.beta must be > 0, got 0"):
        load_config(None, ["sppo.beta=0"], cls=DemoConfig)
    with pytest.raises(ConfigError, match="unknown config key 'dpo.betta'.*did you mean 'dpo.beta'"):
        load_config(None, ["dpo.betta=1"], cls=DemoConfig)
    with pytest.raises(ConfigError, match="split"):  # training prompts are never an evaluation split
        load_config(None, ["split=train"], cls=DemoConfig)


def test_the_evaluation_split_chooses_the_prompts(tmp_path):
    from prefero.demo.run import Pipeline

    for split, quick, n in [("test", False, 360), ("validation", False, 120), ("test", True, 128)]:
        cfg = load_config(None, [f"output_dir={tmp_path}", f"split={split}", f"quick={quick}"], cls=DemoConfig)
        path = Pipeline(cfg.effective(), tmp_path, None).eval_prompts()
        rows = [json.loads(x)["prompt"] for x in open(path)]
        assert rows == [r["prompt"] for r in task_files()[EVAL_PROMPT_FILES[split]]][:n]


def test_quick_and_smoke_settings_are_applied_and_reported():
    cfg = load_config(None, ["quick=true"], cls=DemoConfig).effective()
    assert (cfg.sft.max_steps, cfg.rounds, cfg.simpo.ablation) == (300, 2, False)
    assert (cfg.dpo.max_steps, cfg.simpo.max_steps, cfg.sppo.max_steps) == (108, 108, 108)
    smoke = load_config(None, ["max_steps=3"], cls=DemoConfig).effective()
    assert (smoke.sft.max_steps, smoke.dpo.max_steps, smoke.sppo.max_steps, smoke.rounds) == (60, 3, 3, 1)
    assert DemoConfig().dpo.max_steps == 216  # effective() copies, never changes the config it was asked on


# --------------------------------------------------------------------------- evaluation against SFT


def _answers(path, prompts, answers):
    path.write_text("".join(json.dumps({"index": i, "prompt": p, "completions": [a]}) + "\n"
                            for i, (p, a) in enumerate(zip(prompts, answers))))
    return path


def test_evaluate_against_sft_on_known_verdicts(tmp_path):
    """Also: repetition within the answers and what the lax judge says of them."""
    from prefero.demo.evaluate import describe, evaluate_against_sft
    from prefero.evaluate import compare

    space3 = "Give 3 words about space."
    prompts = [SEA4, SEA4, space3, space3]
    policy = [" wave salt shell tide.", " wave salt shell tide.", " star tree moon.", " star moon sun comet."]
    base = [" wave salt.", " wave salt tide fish.", " star moon.", " star."]
    # scores 1 vs 1/3 (win), 1 vs 1 (tie), 0 vs 1/2 (loss: off the rules), 1/2 vs 1/3 (win)
    verdicts = ["win", "tie", "loss", "win"]
    r = evaluate_against_sft("dpo", tmp_path / "eval", answers=_answers(tmp_path / "p.jsonl", prompts, policy),
                             sft_answers=_answers(tmp_path / "b.jsonl", prompts, base))
    assert r["win_rate"] == (1 + 0.5 + 0 + 1) / 4
    assert (r["wins"], r["ties"], r["losses"]) == (2, 1, 1)
    assert (r["task_accuracy"], r["baseline_task_accuracy"]) == (2 / 4, 1 / 4)
    assert (r["within_rules"], r["baseline_within_rules"]) == (3 / 4, 1.0)
    assert (r["mean_words"], r["baseline_mean_words"]) == ((4 + 4 + 3 + 4) / 4, (2 + 4 + 2 + 1) / 4)
    # both orders were asked and agree; the interval and the length-controlled rate are
    # compare()'s on the same verdicts
    judged = [json.loads(x) for x in open(tmp_path / "eval" / "judgments.jsonl")]
    assert [(j["p_fwd"], j["p_rev"]) for j in judged] == [(v, v) for v in (1.0, 0.5, 0.0, 1.0)]
    same = compare(prompts, policy, base, verdicts, verdicts)
    assert r["win_rate_ci"] == list(same.win.ci) and r["lc_win_rate"] == same.lc.lc_win_rate
    assert r["mean_length"] == sum(map(len, policy)) / 4
    assert describe(SEA4, " wave salt.") == "2 words, asked 4"
    assert describe(space3, " star tree moon.") == "breaks the rules: off-topic word 'tree'"
    # no answer above repeats a word: the full and the lax judge agree
    assert (r["repetition_rate"], r["degenerate"], r["baseline_repetition_rate"]) == (0.0, 0.0, 0.0)
    assert r["lax_win_rate"] == r["win_rate"] and r["lax_task_accuracy"] == r["task_accuracy"]


def test_the_lax_judges_win_is_a_loss_by_the_rules(tmp_path):
    from prefero.demo.evaluate import evaluate_against_sft

    prompts = [SEA4, SEA4]
    policy = [" tide tide tide tide.", " wave wave salt salt."]  # count right, words repeated
    base = [" wave salt.", " wave salt shell tide."]
    r = evaluate_against_sft("dpo_lax", tmp_path / "eval", answers=_answers(tmp_path / "p.jsonl", prompts, policy),
                             sft_answers=_answers(tmp_path / "b.jsonl", prompts, base))
    # lax: 1 vs 1/3 (win), 1 vs 1 (tie); full rules: 0 vs 1/3, 0 vs 1 (two losses)
    assert (r["lax_win_rate"], r["win_rate"]) == ((1 + 0.5) / 2, 0.0)
    assert (r["lax_task_accuracy"], r["task_accuracy"], r["baseline_lax_task_accuracy"]) == (1.0, 0.0, 0.5)
    assert r["broken_rules"] == {"repeated word": 2}
    # both repeat a word; "tide" x4 loops, "wave wave salt salt" does not (2 copies of each)
    assert (r["repetition_rate"], r["degenerate"], r["baseline_degenerate"]) == (1.0, 0.5, 0.0)


# --------------------------------------------------------------------------- the demo, end to end

#: The reduced demo's sampled win rates against SFT on the first 128 test prompts, measured on
#: seeds 0, 1 and 2 (seed 0 is this test's run): DPO 0.578 / 0.594 / 0.625, SimPO 0.621 / 0.641 /
#: 0.602, SPPO (3rd iteration) 0.699 / 0.641 / 0.652. Each bound is the lowest of those less 0.13
#: — twice the largest seed-to-seed sd measured over this and the engine's earlier layouts
#: (SimPO's, 0.064) — so it fails when a method collapses, not on an unlucky seed. They do not
#: assert that every method reaches the demo's target: at the reduced demo's steps none does.
QUICK_WIN_RATE_BOUND = {"dpo": 0.45, "simpo": 0.47, "sppo": 0.51}


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    from prefero.demo import run_demo

    out = tmp_path_factory.mktemp("demo") / "run"
    report = run_demo(load_config(None, [f"output_dir={out}", "quick=true"], cls=DemoConfig))
    return out, report


def _mean_preference(path) -> float:
    rows = [json.loads(x) for x in open(path)]
    return sum(r["preference"] for r in rows) / len(rows)


def test_quick_demo_aligns_every_method(quick_demo):
    from prefero.demo.evaluate import read_answers
    from prefero.evaluate.metrics import repeats_a_word, response_words

    out, report = quick_demo
    assert report["split"] == {"name": "test", "prompts": 128}  # every number names its split
    sft = report["sft"]
    for name in ("dpo", "simpo", "sppo"):
        m = report["methods"][name]
        assert {"win_rate", "win_rate_ci", "lc_win_rate", "task_accuracy", "mean_length", "repetition_rate",
                "degenerate", "greedy"} <= set(m)
        assert m["win_rate"] >= QUICK_WIN_RATE_BOUND[name], (name, m["win_rate"])
        # the headline numbers are the files' numbers: the mean preference of the compared prompts,
        # the verifier's accuracy and the share of answers repeating a word, on the saved answers
        key = m.get("iteration", name)
        assert m["win_rate"] == pytest.approx(_mean_preference(out / "eval" / key / "comparisons.jsonl"), rel=1e-12)
        assert m["greedy"]["win_rate"] == pytest.approx(
            _mean_preference(out / "eval" / f"{key}_greedy" / "comparisons.jsonl"), rel=1e-12)
        prompts, answers = read_answers(m["answers"])
        assert m["task_accuracy"] == task_accuracy(prompts, answers).task_accuracy
        assert m["repetition_rate"] == sum(repeats_a_word(response_words(a)) for a in answers) / len(answers)
        assert m["greedy"]["task_accuracy"] == task_accuracy(*read_answers(m["greedy"]["answers"])).task_accuracy
    assert report["methods"]["sppo"]["iteration"] == "sppo_3" and len(report["sppo_iterations"]) == 3
    assert 0 < sft["task_accuracy"] < 0.6  # the SFT model is right only part of the time
    # the reward-hacking ablation: judged by the full rules, and by the lax judge it was trained on,
    # which calls correct every answer the full rules do and more
    hacked = report["ablations"]["dpo_lax"]
    assert hacked["lax_task_accuracy"] >= hacked["task_accuracy"]
    assert 0 <= hacked["lax_win_rate"] <= 1 and "greedy" in hacked


def test_quick_demo_saves_models_and_reports(quick_demo):
    from prefero.model import load_causal_lm, load_tokenizer

    out, report = quick_demo
    for name in ("sft", "dpo", "simpo", "sppo/iter_1/model", "sppo/iter_2/model", "sppo/iter_3/model"):
        load_causal_lm(str(out / name))  # HF format, safetensors
        load_tokenizer(str(out / name))
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    md = (out / "report.md").read_text()
    first = report["examples"][0]
    assert first["prompt"] in md and "## Examples" in md and "| SFT |" in md and "| DPO |" in md
    assert set(first["answers"]) == {"sft", "dpo", "simpo", "sppo"}
    assert "measured on the test split: 128 prompts" in md and "Reward hacking, on purpose" in md
    assert report["hyperparameters"]["dpo"]["beta"]["why"]  # every setting says why
    assert report["passed"] == (not report["shortfalls"])


def test_resumed_demo_redoes_no_finished_stage(quick_demo, capsys):
    from prefero.demo import run_demo

    out, report = quick_demo
    again = run_demo(load_config(None, [f"output_dir={out}", "quick=true", "resume=true"], cls=DemoConfig))
    printed = capsys.readouterr().out
    assert printed.count("(done earlier)") == len(report["timing"]["seconds"])
    assert again["methods"] == report["methods"] and again["sft"] == report["sft"]
    with pytest.raises(ConfigError, match=r"holds a demo made with other settings \(config.seed: 0 -> 1\); rerun with "
                                          r"those to resume it, or run without resume=true to start over"):
        run_demo(load_config(None, [f"output_dir={out}", "quick=true", "resume=true", "seed=1"], cls=DemoConfig))


def test_killed_demo_resumes_at_the_unfinished_stage(tmp_path, monkeypatch):
    """A smoke run stopped in its SimPO stage, then resumed: SFT, DPO and SPPO's iterations
    are not trained again."""
    import prefero.selfplay.run
    import prefero.train
    from prefero.demo import run_demo
    from prefero.demo.run import Pipeline

    out = tmp_path / "run"
    # one process: the stages run here, where the test stops one and counts the trainings
    args = [f"output_dir={out}", "max_steps=1", "quick=true", "processes=1"]
    original = Pipeline.train_pair_loss

    def stop_at_simpo(self, output, *a, **kw):
        if output == "simpo":
            raise KeyboardInterrupt
        return original(self, output, *a, **kw)

    monkeypatch.setattr(Pipeline, "train_pair_loss", stop_at_simpo)
    with pytest.raises(KeyboardInterrupt):
        run_demo(load_config(None, args, cls=DemoConfig))
    dpo_weights = (out / "dpo" / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(Pipeline, "train_pair_loss", original)
    trained = []

    def counted(real):
        return lambda cfg: trained.append(str(Path(cfg.output_dir).relative_to(out))) or real(cfg)

    monkeypatch.setattr(prefero.train, "train", counted(prefero.train.train))
    monkeypatch.setattr(prefero.selfplay.run, "train", counted(prefero.selfplay.run.train))
    report = run_demo(load_config(None, args + ["resume=true"], cls=DemoConfig))
    assert trained == ["simpo", "dpo_lax"]  # SPPO's later iterations, the longest, ran first
    assert (out / "dpo" / "model.safetensors").stat().st_mtime_ns == dpo_weights
    assert set(report["methods"]) == {"dpo", "simpo", "sppo"}


def test_stages_side_by_side_give_the_one_process_run(tmp_path):
    """The demo on 2 processes (its trainings and evaluations side by side, one torch thread
    each; SFT and SPPO's first iteration alone on 2 threads) makes the models and judgments of
    the same demo on 1 process and 1 thread: each stage is the same computation whichever
    process runs it, and these models' matrix products split between threads by rows and
    columns, not by their sums."""
    from prefero.demo import run_demo

    args = ["max_steps=2", "quick=true"]
    one = run_demo(load_config(None, [f"output_dir={tmp_path / 'one'}", "processes=1", *args], cls=DemoConfig))
    two = run_demo(load_config(None, [f"output_dir={tmp_path / 'two'}", "processes=2", *args], cls=DemoConfig))
    for name in ("sft", "sppo/iter_1/model", "dpo", "simpo", "sppo/iter_2/model", "sppo/iter_3/model", "dpo_lax"):
        assert (tmp_path / "two" / name / "model.safetensors").read_bytes() == \
            (tmp_path / "one" / name / "model.safetensors").read_bytes(), name
    for name in ("dpo", "simpo", "sppo_3", "dpo_lax_greedy"):
        assert (tmp_path / "two" / "eval" / name / "comparisons.jsonl").read_bytes() == \
            (tmp_path / "one" / "eval" / name / "comparisons.jsonl").read_bytes(), name
    assert two["methods"] == json.loads(json.dumps(one["methods"]).replace(str(tmp_path / "one"), str(tmp_path / "two")))
