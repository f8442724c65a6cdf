"""`prefero selfplay`: a 2-iteration SPPO run on a tiny model with a callable judge, its P̂,
chosen and rejected against a hand computation; a kill at every stage boundary resumed to
the same files with no stage run twice; iterative DPO's reference model (initial vs
previous); the config's checks; the run directory's resume / refuse / overwrite rules."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from jsonl_files import read_jsonl, write_jsonl
from prefero.data import DataError
from prefero.label import choose_pair
from prefero.options import ConfigError, load_config
from prefero.selfplay import SelfPlayConfig, run_selfplay
from prefero.selfplay import run as sp_run
from prefero.selfplay.config import EvalBlock, SamplingBlock, TrainBlock
from prefero.stages import MANIFEST, Runner, Stage, finished_stages

pytestmark = pytest.mark.slow  # see pyproject.toml's markers

STAGE_FUNCTIONS = ("run_generate", "run_judge", "run_label", "train", "run_eval")
POOL = [f"Tell me about {t}." for t in ("the ocean", "a volcano", "the moon", "a forest", "the desert", "a river")]
HELD_OUT = ["What is a glacier like?", "Describe the wind briefly.", "Explain a canyon to a child."]
# float64 sums of K ≤ 3 terms, each σ within an ulp or two of another σ implementation:
# a few float64 ulps (eps 2.2e-16) of agreement, so 1e-12 relative is generous and still exact
REL = 1e-12


def length_judge(prompt, completions):
    """The callable judge: distinct characters, with a small length term to break ties."""
    return [len(set(c)) + 0.01 * len(c) for c in completions]


def sigmoid(x):
    return 1 / (1 + math.exp(-x))




def sppo_overrides(model, data, out, *extra):
    return [
        f"model={model}", f"prompts={data / 'prompts.jsonl'}", f"eval_prompts={data / 'heldout.jsonl'}",
        "iterations=2", "prompts_per_iteration=3", f"output_dir={out}",
        "keep_truncated=true",  # a tiny random model never ends an answer itself
        "judge.type=callable", f"judge.function={Path(__file__)}:length_judge",
        "generation.num_completions=3", "generation.max_new_tokens=8", "generation.batch_size=3",
        # a tiny random model needs a small η (β = 1/η = 0.5): the paper's η = 1000 would
        # ask for log-ratios of ±500 and blow the policy up
        "train.beta=0.5", "train.learning_rate=1e-4", "train.batch_size=3", "train.max_steps=2",
        "train.max_length=48", "train.max_prompt_length=24", "train.reference_cache=off",
        "eval.generation.max_new_tokens=8", "eval.bootstrap_resamples=200", *extra,
    ]


def prompt_files(directory):
    directory.mkdir(parents=True, exist_ok=True)
    write_jsonl(directory / "prompts.jsonl", [{"prompt": p} for p in POOL])
    write_jsonl(directory / "heldout.jsonl", [{"prompt": p} for p in HELD_OUT])
    return directory


class Killed(Exception):
    """Stands for a kill: raised by an instrumented stage function."""


def instrument(monkeypatch, calls: list, kill=None):
    """Wrap the stage functions self-play calls: each call is recorded as (function, output);
    `kill` = (k, "before" | "after") raises Killed when global call number k starts, or
    once it has returned (after the stage's files, before self-play's marker)."""
    for name in STAGE_FUNCTIONS:
        real = getattr(sp_run, name)

        def wrapper(cfg, _real=real, _name=name):
            k = len(calls)
            if kill == (k, "before"):
                raise Killed(f"before call {k}")
            calls.append((_name, getattr(cfg, "output", None) or cfg.output_dir))
            result = _real(cfg)
            if kill == (k, "after"):
                raise Killed(f"after call {k}")
            return result

        monkeypatch.setattr(sp_run, name, wrapper)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir):
    """A 2-iteration SPPO run, moved away after it finished so the kill test can run in the
    same directory (paths are part of some files); returns (its directory, the stage calls)."""
    torch.use_deterministic_algorithms(True, warn_only=True)  # as the function-scoped fixture does
    base = tmp_path_factory.mktemp("selfplay")
    data = prompt_files(base / "data")
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        instrument(mp, calls)
        cfg = load_config(None, sppo_overrides(tiny_model_dir, data, base / "run"), cls=SelfPlayConfig)
        summary = run_selfplay(cfg)
    shutil.move(base / "run", base / "uninterrupted")
    return base, calls, summary


# --------------------------------------------------------------------------- the SPPO run


def test_sppo_two_iterations_equal_a_hand_computation(uninterrupted, tiny_model_dir):
    base, calls, summary = uninterrupted
    run = base / "uninterrupted"
    # each stage ran once, in order; the baseline's answers once for both iterations
    outputs = [Path(o).relative_to(base / "run").as_posix() for _, o in calls]
    assert outputs == ["iter_1/generated.jsonl", "iter_1/judged.jsonl", "iter_1/pairs.jsonl", "iter_1/model",
                       "baseline/baseline_responses.jsonl", "iter_1/eval",
                       "iter_2/generated.jsonl", "iter_2/judged.jsonl", "iter_2/pairs.jsonl", "iter_2/model",
                       "iter_2/eval"]

    # disjoint prompt slices in file order
    for n, first in ((1, 0), (2, 3)):
        assert [r["prompt"] for r in read_jsonl(run / f"iter_{n}/prompts.jsonl")] == POOL[first:first + 3]

    # iteration 1 by hand: P[i][j] = σ(s_i − s_j) (P[i][i] = ½), P̂_i = mean_j P[i][j],
    # chosen = argmax P̂, rejected = argmin P̂ (first on ties)
    judged = read_jsonl(run / "iter_1/judged.jsonl")
    pairs = {r["index"]: r for r in read_jsonl(run / "iter_1/pairs.jsonl")}
    assert len(judged) == 3
    for row in judged:
        s = length_judge(row["prompt"], row["completions"])
        assert row["scores"] == s
        phat = [sum(sigmoid(si - sj) for sj in s) / len(s) for si in s]
        hi = max(range(3), key=lambda i: (phat[i], -i))
        lo = min(range(3), key=lambda i: (phat[i], i))
        if phat[hi] == phat[lo] or row["completions"][hi] == row["completions"][lo]:
            assert row["index"] not in pairs  # dropped, and counted below
            continue
        got = pairs[row["index"]]
        assert got["chosen"] == row["completions"][hi] and got["rejected"] == row["completions"][lo]
        assert math.isclose(got["p_chosen"], phat[hi], rel_tol=REL)
        assert math.isclose(got["p_rejected"], phat[lo], rel_tol=REL)
    assert len(pairs) >= 2  # the comparison above is not empty
    label_report = json.loads((run / "iter_1/pairs.report.json").read_text())
    assert label_report["read"] == 3 == label_report["kept"] + sum(label_report["dropped"].values())

    # SPPO's reference is π_t: iteration n starts from and is regularised towards π_(n−1)
    for n, start in ((1, str(tiny_model_dir)), (2, str(base / "run/iter_1/model"))):
        tc = json.loads((run / f"iter_{n}/model/train_config.json").read_text())
        assert (tc["model"], tc["ref_model"], tc["loss"], tc["beta"]) == (start, start, "sppo", 0.5)
        gen = json.loads((run / f"iter_{n}/generated.report.json").read_text())
        assert (gen["model"], gen["seed"], gen["num_completions"]) == (start, n - 1, 3)

    # the win rate: a callable judge's scores become a verdict (higher wins, equal ties), asked
    # in both orders; the win rate is the mean over held-out prompts, by hand
    baseline = [r["completions"][0] for r in read_jsonl(run / "baseline/baseline_responses.jsonl")]
    for n in (1, 2):
        policy = [r["completions"][0] for r in read_jsonl(run / f"iter_{n}/eval/policy_responses.jsonl")]
        verdicts = []
        for p, b in zip(policy, baseline):
            sp, sb = length_judge(None, [p, b])
            verdicts.append(1.0 if sp > sb else 0.5 if sp == sb else 0.0)
        judgments = read_jsonl(run / f"iter_{n}/eval/judgments.jsonl")
        assert [(j["p_fwd"], j["p_rev"]) for j in judgments] == [(v, v) for v in verdicts]
        report = json.loads((run / f"iter_{n}/eval/report.json").read_text())
        assert report["win_rate"] == pytest.approx(sum(verdicts) / 3, rel=REL)
        assert report["meta"]["policy"] == str(base / f"run/iter_{n}/model")
        entry = summary["per_iteration"][n - 1]
        assert entry["win_rate"] == report["win_rate"] and entry["win_rate_ci"] == report["win_rate_ci"]
        assert entry["lc_win_rate"] == report["lc_win_rate"] and entry["mean_length"] == report["mean_length"]
        assert entry["stages_done"] == ["generate", "judge", "label", "train", "eval"]
        losses = [m["loss"] for m in read_jsonl(run / f"iter_{n}/model/metrics.jsonl") if "split" not in m]
        assert (entry["train_loss_first"], entry["train_loss_last"], entry["train_steps"]) == (losses[0], losses[-1], 2)
    assert summary["iterations_done"] == 2 and summary["final_model"] == "iter_2/model"
    assert json.loads((run / "summary.json").read_text()) == summary
    for png in ("win_rates.png", "training_iter_1.png", "training_iter_2.png"):
        assert (run / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- kill and resume

#: Files that hold the time a stage took (reports, metrics.jsonl, the manifests) or the
#: modification times of the model's files (an evaluation's manifest, so a model retrained in
#: place is not reused): compared without those fields; every other file byte for byte.
NOT_BYTE_IDENTICAL = {"generated.report.json", "baseline_responses.report.json", "policy_responses.report.json",
                      "judged.report.json", "metrics.jsonl", MANIFEST}


def _without_times(path: Path):
    if path.name == MANIFEST:  # the stages, in order, all finished (their times and models' metrics differ)
        return [(name, record["finished"]) for name, record in json.loads(path.read_text())["stages"].items()]
    if path.name == "metrics.jsonl":
        return [{k: v for k, v in row.items() if k != "tokens/s"} for row in read_jsonl(path)]
    report = json.loads(path.read_text())
    for key in ("seconds_this_run", "tokens_per_second", "load_seconds", "this_run", "model_files"):
        report.pop(key, None)
    return report


def test_a_kill_at_every_stage_boundary_resumes_to_the_same_files(uninterrupted, tiny_model_dir, monkeypatch):
    base, expected_calls, _ = uninterrupted
    run = base / "run"  # the uninterrupted run's own path, now free
    cfg = load_config(None, sppo_overrides(tiny_model_dir, base / "data", run), cls=SelfPlayConfig)
    # every boundary: as call k starts (after the previous stage's marker) and, except for the
    # trainer (which has no report to show it finished: it would resume from its checkpoint),
    # right after call k returned, before its marker
    kills = []
    for k, (name, _) in enumerate(expected_calls):
        kills.append((k, "before"))
        if name != "train":
            kills.append((k, "after"))
    calls = []
    for kill in kills:
        instrument(monkeypatch, calls, kill)
        with pytest.raises(Killed):
            run_selfplay(cfg)
        monkeypatch.undo()
    instrument(monkeypatch, calls)
    run_selfplay(cfg)  # the last stage's marker and the summary
    # no stage ran twice: the calls over all the runs are the uninterrupted run's calls
    assert calls == expected_calls

    reference = base / "uninterrupted"
    files = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(run) for p in run.rglob("*") if p.is_file())
    assert len(files) > 60
    for rel in files:
        a, b = reference / rel, run / rel
        if rel.name in NOT_BYTE_IDENTICAL:
            assert _without_times(a) == _without_times(b), rel
        else:
            assert a.read_bytes() == b.read_bytes(), rel  # weights, rows, reports, plots: byte for byte


# --------------------------------------------------------------------------- iterative


def iterative_cfg(model, data, out, *extra):
    return load_config(None, [
        f"model={model}", f"prompts={data / 'prompts.jsonl'}", "iterations=2", "prompts_per_iteration=2",
        f"output_dir={out}", "method=iterative", "judge.type=callable", "keep_truncated=true",
        f"judge.function={Path(__file__)}:length_judge", "generation.num_completions=2",
        "generation.max_new_tokens=6", "train.learning_rate=1e-4", "train.batch_size=2", "train.max_steps=1",
        "train.max_length=48", "train.max_prompt_length=24", "train.reference_cache=off", *extra,
    ], cls=SelfPlayConfig)


def test_iterative_reference_is_the_initial_or_the_previous_model():
    cfg = load_config(None, ["model=sft", "prompts=p.jsonl", "output_dir=out", "method=iterative",
                             "judge.type=callable", "judge.function=m:f"], cls=SelfPlayConfig)
    it1, it2 = Path("out/iter_1/model"), Path("out/iter_2/model")
    refs = {}
    for reference in ("initial", "previous", None):
        cfg.reference = reference
        refs[reference] = [(sp_run.train_config(cfg, n).model, sp_run.train_config(cfg, n).ref_model) for n in (1, 2)]
    assert refs["initial"] == [("sft", "sft"), (str(it1), "sft")]
    assert refs["previous"] == refs[None] == [("sft", "sft"), (str(it1), str(it1))]
    assert sp_run.train_config(cfg, 2).output_dir == str(it2) and sp_run.train_config(cfg, 2).loss == "dpo"
    cfg.reference, cfg.train.loss = None, "simpo"  # no reference model at all
    assert sp_run.train_config(cfg, 2).ref_model is None
    cfg.method, cfg.train.loss = "sppo", None
    assert [sp_run.train_config(cfg, n).ref_model for n in (1, 2)] == ["sft", str(it1)]


def test_iterative_dpo_with_the_initial_reference_runs(tmp_path, tiny_model_dir, monkeypatch):
    data = prompt_files(tmp_path / "data")
    seen = []
    real_train = sp_run.train
    monkeypatch.setattr(sp_run, "train", lambda c: (seen.append(c), real_train(c))[1])
    out = tmp_path / "run"
    summary = run_selfplay(iterative_cfg(tiny_model_dir, data, out, "reference=initial", "rejected=worst"))
    assert [(c.model, c.ref_model, c.loss) for c in seen] == [
        (str(tiny_model_dir), str(tiny_model_dir), "dpo"), (str(out / "iter_1/model"), str(tiny_model_dir), "dpo")]
    # best vs worst pairs, by hand from the judged scores
    compared = 0
    for n in (1, 2):
        pairs = {r["index"]: r for r in read_jsonl(out / f"iter_{n}/pairs.jsonl")}
        for row in read_jsonl(out / f"iter_{n}/judged.jsonl"):
            s = row["scores"]
            if s[0] == s[1]:
                assert row["index"] not in pairs
                continue
            best, worst = (0, 1) if s[0] > s[1] else (1, 0)
            assert (pairs[row["index"]]["chosen"], pairs[row["index"]]["rejected"]) == \
                   (row["completions"][best], row["completions"][worst])
            assert choose_pair(s) == (best, worst)
            compared += 1
    assert compared >= 2
    assert summary["reference"] == "π_0" and summary["iterations_done"] == 2
    assert "win_rate" not in summary["per_iteration"][0]  # no eval_prompts, no evaluation


# --------------------------------------------------------------------------- config and run directory


BASE = ["model=m", "prompts=p.jsonl", "judge.type=callable", "judge.function=m:f"]


@pytest.mark.parametrize("extra, message", [
    (["reference=initial"], r"reference: initial is not SPPO: its reference is π_t"),
    (["train.loss=dpo"], r"train.loss: method sppo trains with the sppo loss, not 'dpo'"),
    (["method=iterative", "train.loss=kto"], r"train.loss: 'kto' is not a paired loss"),
    (["method=iterative", "train.loss=sppo"], r"train.loss: 'sppo' needs P̂ rows: use method: sppo"),
    (["method=iterative", "train.loss=simpo", "reference=initial"], r"reference: initial has no effect: loss 'simpo'"),
    (["method=iterative", "train.loss=simpo", "train.gamma_beta_ratio=0.5", "train.rdpo_alpha=0.1"],
     r"^train: rdpo_alpha is not a setting of loss 'simpo'"),
    (["rejected=random"], r"rejected: random is a setting of method iterative"),
    (["generation.num_completions=1"], r"generation.num_completions must be >= 2"),
    (["generation.backend=openai"], r"generation.backend: 'openai' is not one of \['transformers', 'vllm'\]"),
    (["generation.base_url=http://x"], r"unknown config key 'generation.base_url'"),
    (["train.output_dir=x"], r"unknown config key 'train.output_dir'"),
    (["train.learning_rate=0"], r"train.learning_rate must be > 0, got 0"),
    (["eval.confidence=1"], r"eval.confidence must be in \(0, 1\), got 1"),
    (["eval.generation.temperature=-1"], r"eval.generation.temperature must be >= 0, got -1"),
    (["eval.model=x"], r"unknown config key 'eval.model'"),
    (["judge_mode=pairwise"], r"judge_mode: pairwise needs a judge that compares two completions"),
    (["eval_prompts=p.jsonl"], r"eval_prompts is the training prompt pool itself"),
    (["iterations=0"], r"iterations must be >= 1, got 0"),
    (["train.lora.r=4"], r"train.lora needs lora.merge: true"),
    (["eval.judge.type=llm"], r"judge.model is required for judge type 'llm'"),
])
def test_config_errors_name_the_key(extra, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, BASE + extra, cls=SelfPlayConfig)


def test_blocks_are_the_stage_commands_keys():
    from dataclasses import fields

    from prefero.config import TrainConfig
    from prefero.evaluate.config import EvalConfig
    from prefero.generate import GenerateConfig

    gen = {f.name: f.default for f in fields(GenerateConfig)}
    assert {f.name: f.default for f in fields(SamplingBlock)} == {k: gen[k] for k in (
        "num_completions", "temperature", "top_p", "top_k", "max_new_tokens", "seed", "chat_template",
        "backend", "batch_size", "dtype", "trust_remote_code", "tensor_parallel_size")}
    evaluation = {f.name for f in fields(EvalConfig)}
    assert {f.name for f in fields(EvalBlock)} == evaluation - {
        "model", "outputs", "baseline_model", "baseline_outputs", "prompts", "prompt_column", "response_column",
        "trust_remote_code", "pairs", "ref_model", "loss", "beta", "max_length", "max_prompt_length", "dtype",
        "output_dir", "overwrite"}
    train = {f.name for f in fields(TrainConfig)}
    assert {f.name for f in fields(TrainBlock)} == train - {
        "model", "ref_model", "train_data", "train_split", "eval_data", "eval_split", "output_dir", "overwrite",
        "resume"}
    cfg = load_config(None, BASE + ["train.beta=0.5", "train.lora.merge=true"], cls=SelfPlayConfig)
    assert (cfg.train.beta, cfg.loss, cfg.train.lora.merge, cfg.train.lora.r) == (0.5, "sppo", True, 16)
    assert sp_run.policy_path(cfg, 1).endswith("iter_1/model/merged")  # the next iteration's policy


def test_prompt_slices():
    assert sp_run.prompt_slices(7, 3, 2) == [range(0, 2), range(2, 4), range(4, 6)]
    assert sp_run.prompt_slices(5, 2, 0) == [range(5), range(5)]
    with pytest.raises(ConfigError, match=r"p.jsonl has 5 prompts; 3 iterations x prompts_per_iteration 2 need 6"):
        sp_run.prompt_slices(5, 3, 2, "p.jsonl")


def prepare(cfg):
    """`prepare_output_dir` as `run_selfplay` calls it: holding the run directory."""
    with Runner(cfg.output_dir, cfg.overwrite) as runner:
        sp_run.prepare_output_dir(cfg, runner)


def test_run_directory_resumes_refuses_or_replaces(tmp_path):
    out = tmp_path / "run"
    cfg = load_config(None, BASE + [f"output_dir={out}", "iterations=1"], cls=SelfPlayConfig)
    prepare(cfg)
    with Runner(out) as runner:
        runner.run(Stage("iter_1/generate", lambda: None))
    more = load_config(None, BASE + [f"output_dir={out}", "iterations=3"], cls=SelfPlayConfig)
    prepare(more)  # more iterations: the same run, continued
    assert finished_stages(out) == {"iter_1/generate"}
    assert json.loads((out / MANIFEST).read_text())["run"]["iterations"] == 3
    other = load_config(None, BASE + [f"output_dir={out}", "train.beta=0.2"], cls=SelfPlayConfig)
    with pytest.raises(ConfigError, match=r"holds a self-play run with another config \(train.beta: None -> 0.2\)"):
        prepare(other)
    other.overwrite = True
    prepare(other)
    assert not (out / "iter_1").exists() and finished_stages(out) == set()
    assert json.loads((out / MANIFEST).read_text())["run"]["train"]["beta"] == 0.2
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    cfg.output_dir, cfg.overwrite = str(foreign), True
    with pytest.raises(ConfigError, match="holds files prefero did not write"):
        prepare(cfg)


def test_an_iteration_without_a_preference_is_an_error_naming_the_judged_file(tmp_path, monkeypatch, tiny_model_dir):
    def same_completions(cfg):  # a policy that says the same thing K times: all tied
        rows = [{"index": i, "prompt": r["prompt"], "completions": ["same answer"] * cfg.num_completions,
                 "finish_reasons": ["stop"] * cfg.num_completions, "tokens": 4}
                for i, r in enumerate(read_jsonl(cfg.prompts))]
        write_jsonl(Path(cfg.output), rows)
        Path(cfg.output[:-6] + ".report.json").write_text("{}")

    monkeypatch.setattr(sp_run, "run_generate", same_completions)
    data = prompt_files(tmp_path / "data")
    cfg = iterative_cfg(tiny_model_dir, data, tmp_path / "run")  # checked before anything is created, never loaded
    with pytest.raises(DataError, match=r"judged.jsonl: field 'scores': no row gives a preference \(2 read, dropped: "
                                        r"\{'tied_scores': 2\}\); iteration 1 has nothing to train on"):
        run_selfplay(cfg)


def test_the_example_config_loads():
    cfg = load_config(Path(__file__).parents[1] / "examples" / "selfplay.yaml", cls=SelfPlayConfig)
    assert (cfg.method, cfg.loss, cfg.generation.num_completions, cfg.train.optimizer) == ("sppo", "sppo", 5, "rmsprop")
    assert cfg.train.beta is None  # the sppo loss's own default, η = 1000
    assert sp_run.train_config(cfg, 2).ref_model == sp_run.train_config(cfg, 2).model == "runs/selfplay/iter_1/model"
