"""`prefero label`: pairs and SPPO rows equal a hand computation on a worked example, drops
counted by reason, the random rejected independent of row order, and the labelled files load
with `load_pairs` and train with `prefero.train.train` (sppo and dpo, 2 steps each)."""

import json
import math
import random

import pytest

from jsonl_files import metrics, read_jsonl, write_jsonl
from prefero.config import load_config
from prefero.data import DataError, load_pairs
from prefero.data.formats import Dropped
from prefero.label import LabelConfig, bradley_terry_matrix, choose_pair, choose_sppo, run_label
from prefero.model import load_tokenizer
from prefero.options import ConfigError
from prefero.tiny import demo_records

LN3 = math.log(3)


def label(tmp_path, rows, *extra, name="out.jsonl"):
    write_jsonl(tmp_path / "judged.jsonl", rows)
    cfg = load_config(None, [f"input={tmp_path / 'judged.jsonl'}", f"output={tmp_path / name}", *extra],
                      cls=LabelConfig)
    return run_label(cfg), read_jsonl(tmp_path / name)


# The worked example. Row B, scores s = (0, ln 3, −ln 3), Bradley–Terry P[i][j] = σ(s_i − s_j):
#   σ(ln 3) = 3/4, σ(−ln 3) = 1/4, σ(2 ln 3) = σ(ln 9) = 9/10, σ(−ln 9) = 1/10
#   P = [[1/2, 1/4, 3/4],        P̂ = row means = [1.5/3, 2.15/3, 0.85/3] = [.5, .71667, .28333]
#        [3/4, 1/2, 9/10],       chosen = y (P̂ .71667), rejected = z (P̂ .28333)
#        [1/4, 1/10, 1/2]]
# Row C has a judge's pairwise matrix, which SPPO uses instead of the (contradicting) scores:
#   P = [[.5, .6, .2], [.4, .5, .9], [.8, .1, .5]] -> P̂ = [1.3/3, 1.8/3, 1.4/3]: chosen u1, rejected u0;
#   pairs (from the scores 3, 1, 2): chosen u0, rejected u1.
ROWS = [
    {"prompt": "A?", "completions": ["c0", "c1", "c2", "c3"], "scores": [3, 7, 7, 1], "index": 0},
    {"prompt": "B?", "completions": ["x", "y", "z"], "scores": [0, LN3, -LN3], "index": 1},
    {"prompt": "C?", "completions": ["u0", "u1", "u2"], "scores": [3, 1, 2], "index": 2,
     "pairwise": [[0.5, 0.6, 0.2], [0.4, 0.5, 0.9], [0.8, 0.1, 0.5]]},
    {"prompt": "D?", "completions": ["t0", "t1", "t2"], "scores": [2, 2, 2], "index": 3},       # all tied
    {"prompt": "E?", "completions": ["n0", "n1"], "scores": [1, None], "index": 4},             # no score
    {"prompt": "F?", "completions": ["same", "same", "other"], "scores": [5, 1, 1], "index": 5},  # same text
    {"prompt": "G?", "completions": ["only"], "scores": [1], "index": 6},                        # nothing to pair
    {"prompt": "H?", "completions": ["", "fine"], "scores": [0, 1], "index": 7},                 # blank rejected
]
DROPPED = {"blank_completion": 1, "fewer_than_two_completions": 1, "identical_chosen_rejected": 1,
           "null_scores": 1, "tied_scores": 1}


def test_pairs_worked_example(tmp_path):
    report, out = label(tmp_path, ROWS)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in out] == [
        ("A?", "c1", "c3"),  # best 7 (the first of two), worst 1
        ("B?", "y", "z"),
        ("C?", "u0", "u1"),
    ]
    assert [(r["score_chosen"], r["score_rejected"]) for r in out] == [(7, 1), (LN3, -LN3), (3, 1)]
    assert all("p_chosen" not in r for r in out)
    assert report["read"] == 8 and report["kept"] == 3 and report["dropped"] == DROPPED
    assert report["read"] == report["kept"] + sum(report["dropped"].values())
    assert report["mean_score_gap"] == pytest.approx((6 + 2 * LN3 + 2) / 3, rel=1e-12)
    assert json.loads((tmp_path / "out.report.json").read_text()) == report


def test_sppo_worked_example(tmp_path):
    report, out = label(tmp_path, ROWS, "format=sppo")
    by_prompt = {r["prompt"]: r for r in out}
    b = by_prompt["B?"]
    assert (b["chosen"], b["rejected"]) == ("y", "z")
    assert b["p_chosen"] == pytest.approx(2.15 / 3, rel=1e-12)
    assert b["p_rejected"] == pytest.approx(0.85 / 3, rel=1e-12)
    c = by_prompt["C?"]
    assert (c["chosen"], c["rejected"]) == ("u1", "u0")
    assert c["p_chosen"] == pytest.approx(1.8 / 3, rel=1e-12)
    assert c["p_rejected"] == pytest.approx(1.3 / 3, rel=1e-12)
    a = by_prompt["A?"]  # c1 and c2 tie at the top: the first; c3 the lowest
    assert (a["chosen"], a["rejected"]) == ("c1", "c3")
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert a["p_chosen"] == pytest.approx((sig(4) + 0.5 + sig(0) + sig(6)) / 4, rel=1e-12)
    assert a["p_rejected"] == pytest.approx((sig(-2) + sig(-6) + sig(-6) + 0.5) / 4, rel=1e-12)
    assert report["kept"] == 3 and report["dropped"] == DROPPED
    assert report["mean_p_gap"] == pytest.approx(
        (a["p_chosen"] - a["p_rejected"] + 1.3 / 3 + 0.5 / 3) / 3, rel=1e-12)


def test_pure_choosers():
    assert bradley_terry_matrix([0.0, LN3]) == [[0.5, pytest.approx(0.25)], [pytest.approx(0.75), 0.5]]
    assert choose_pair([1, 5, 5, 0, 0]) == (1, 3)  # first of the best, first of the worst
    with pytest.raises(Dropped, match="tied_scores"):
        choose_pair([2, 2])
    with pytest.raises(Dropped, match="tied_scores"):
        choose_sppo(bradley_terry_matrix([1.5, 1.5, 1.5]))
    assert choose_sppo([[0.5, 0.9], [0.1, 0.5]])[:2] == (0, 1)


def test_random_rejected_is_lower_seeded_by_index_and_order_free(tmp_path):
    rows = [{"prompt": f"p{i}", "completions": ["c0", "c1", "c2", "c3"], "scores": [3, 7, 7, 1], "index": i}
            for i in range(40)]
    _, out = label(tmp_path, rows, "rejected=random", "seed=3")
    picked = {r["index"]: r["rejected"] for r in out}
    assert set(picked.values()) == {"c0", "c3"}  # strictly below the best (never c2, tied with it)
    assert all(r["chosen"] == "c1" for r in out)
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    _, again = label(tmp_path, shuffled, "rejected=random", "seed=3", name="shuffled.jsonl")
    assert {r["index"]: r["rejected"] for r in again} == picked
    _, other = label(tmp_path, rows, "rejected=random", "seed=4", name="seed4.jsonl")
    assert {r["index"]: r["rejected"] for r in other} != picked


# Completions cut at max_new_tokens (finish reason "length"): row 0's chosen, row 1's rejected,
# row 2's third completion (neither chosen nor rejected), row 3 none.
CUT = [{"prompt": f"q{i}", "completions": ["best", "mid", "worst"], "scores": [3, 2, 1], "index": i,
        "finish_reasons": reasons}
       for i, reasons in enumerate([["length", "stop", "stop"], ["stop", "stop", "length"],
                                    ["stop", "length", "stop"], ["stop", "stop", "stop"]])]


@pytest.mark.parametrize("fmt", ["pairs", "sppo"])
def test_cut_completions_are_dropped_and_counted_or_kept_marked(tmp_path, fmt):
    report, out = label(tmp_path, CUT, f"format={fmt}")
    assert [r["index"] for r in out] == [2, 3]
    assert report["dropped"] == {"truncated": 2} and report["kept"] == 2 and report["truncated_kept"] == 0
    assert all("chosen_truncated" not in r and "rejected_truncated" not in r for r in out)
    report, out = label(tmp_path, CUT, f"format={fmt}", "keep_truncated=true", name="kept.jsonl")
    assert report["dropped"] == {} and report["kept"] == 4 and report["truncated_kept"] == 2
    marks = [{k: r[k] for k in ("chosen_truncated", "rejected_truncated") if k in r} for r in out]
    assert marks == [{"chosen_truncated": True}, {"rejected_truncated": True}, {}, {}]


def test_no_row_kept_fails_in_one_line_with_the_reasons(tmp_path, capsys):
    from prefero.cli import main

    rows = [{"prompt": f"t{i}", "completions": ["a", "b"], "scores": [1, 1]} for i in range(3)]
    rows += [{"prompt": "n", "completions": ["a", "b"], "scores": [1, None]}]
    write_jsonl(tmp_path / "judged.jsonl", rows)
    code = main(["label", f"input={tmp_path / 'judged.jsonl'}", f"output={tmp_path / 'out.jsonl'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "no row kept of 4 read (tied_scores: 3, null_scores: 1)" in err
    assert not (tmp_path / "out.jsonl").exists()
    assert json.loads((tmp_path / "out.report.json").read_text())["dropped"] == {"null_scores": 1, "tied_scores": 3}


def test_huge_scores_give_a_valid_json_report(tmp_path):
    """Scores of ±1e308 are finite, but their gap is not a float: null, never `Infinity`."""
    rows = [{"prompt": "p", "completions": ["a", "b"], "scores": [1e308, -1e308], "index": 0},
            {"prompt": "q", "completions": ["a", "b"], "scores": [1e308, -1e308], "index": 1}]
    report, out = label(tmp_path, rows, "format=sppo")
    text = (tmp_path / "out.report.json").read_text()
    strict = json.loads(text, parse_constant=lambda c: pytest.fail(f"report holds {c}"))
    assert strict["mean_score_gap"] is None
    assert report["mean_p_gap"] == pytest.approx(0.5, rel=1e-12)  # P̂ = (½ + 1)/2 and (0 + ½)/2
    _, out2 = label(tmp_path, [{**r, "scores": [3e307, -3e307]} for r in rows], name="finite.jsonl")
    assert json.loads((tmp_path / "finite.report.json").read_text())["mean_score_gap"] == pytest.approx(6e307)


def test_bad_rows_name_file_row_and_field(tmp_path):
    good = {"prompt": "p", "completions": ["a", "b"], "scores": [1, 0]}
    cases = [
        ({"prompt": "p", "completions": ["a", "b"]}, "scores", "missing"),
        ({**good, "scores": [1]}, "scores", "has 1 scores for 2 completions"),
        ({**good, "scores": [1, "high"]}, "scores", "score 1 is 'high'; expected a finite number or null"),
        ({**good, "scores": [1, True]}, "scores", "score 1 is True"),
        ({**good, "pairwise": [[0.5, 0.7]]}, "pairwise", r"expected a 2×2 matrix"),
        ({**good, "pairwise": [[0.5, 1.5], [0.0, 0.5]]}, "pairwise", r"P\[0\]\[1\] is 1.5; expected a probability"),
        ({"completions": ["a", "b"], "scores": [1, 0]}, "prompt", "missing"),
        ({**good, "finish_reasons": ["stop"]}, "finish_reasons", "expected a list of 2 strings"),
    ]
    for bad, field, problem in cases:
        write_jsonl(tmp_path / "bad.jsonl", [good, bad])
        cfg = load_config(None, [f"input={tmp_path / 'bad.jsonl'}", f"output={tmp_path / 'o.jsonl'}"], cls=LabelConfig)
        with pytest.raises(DataError, match=rf"bad\.jsonl: row 2, field '{field}': {problem}"):
            run_label(cfg)
        assert not (tmp_path / "o.jsonl").exists()  # nothing half-written


def test_config_errors_and_overwrite(tmp_path):
    base = [f"input={tmp_path / 'j.jsonl'}", f"output={tmp_path / 'o.jsonl'}"]
    for extra, message in [(["format=dpo"], r"format: 'dpo' is not one of \['pairs', 'sppo'\]"),
                           (["rejected=best"], r"rejected: 'best' is not one of"),
                           (["format=sppo", "rejected=random"], r"rejected: 'random' is a setting of format 'pairs'"),
                           (["seed=-1"], r"seed must be >= 0"),
                           ([f"output={tmp_path / 'o.json'}"], r"must end in \.jsonl")]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, base + extra, cls=LabelConfig)
    label(tmp_path, ROWS[:1], name="o.jsonl")
    with pytest.raises(ConfigError, match="already exists; set overwrite=true"):
        label(tmp_path, ROWS[:1], name="o.jsonl")
    label(tmp_path, ROWS[:2], "overwrite=true", name="o.jsonl")
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 2


def demo_judged(n=8):
    """Judged rows built from the demo pairs: [good, bad, a second bad], scored (2, 0, 1)."""
    rows = []
    for i, r in enumerate(demo_records()[:n]):
        rows.append({"prompt": r["prompt"], "completions": [r["chosen"], r["rejected"], "I refuse to answer that."],
                     "scores": [2.0, 0.0, 1.0], "index": i})
    return rows


@pytest.mark.parametrize("loss", ["sppo", "dpo"])
def test_labelled_file_loads_and_trains(loss, tmp_path, tiny_model_dir):
    from prefero.train import train

    fmt = "sppo" if loss == "sppo" else "pairs"
    _, out = label(tmp_path, demo_judged(), f"format={fmt}")
    tok = load_tokenizer(str(tiny_model_dir))
    pairs, report = load_pairs(tmp_path / "out.jsonl", tok)
    assert len(pairs) == report.kept == 8 and report.read == 8
    if loss == "sppo":
        s = [2.0, 0.0, 1.0]
        phat = [sum(1 / (1 + math.exp(s[j] - s[i])) for j in range(3)) / 3 for i in range(3)]
        assert all(p.p_chosen == pytest.approx(phat[0], rel=1e-12) for p in pairs)
        assert all(p.p_rejected == pytest.approx(phat[1], rel=1e-12) for p in pairs)
    else:
        assert all(p.p_chosen is None for p in pairs)
    cfg = load_config(None, [f"model={tiny_model_dir}", f"train_data={tmp_path / 'out.jsonl'}",
                             f"output_dir={tmp_path / 'run'}", f"loss={loss}", "max_steps=2", "batch_size=4",
                             "max_length=128", "max_prompt_length=64", "learning_rate=1e-4", "seed=0"])
    train(cfg)
    rows = metrics(tmp_path / "run")
    steps = [m for m in rows if "split" not in m]
    assert [m["step"] for m in steps] == [1, 2]
    # step 1: policy == reference, so Δ_w = Δ_l = 0 and the loss is set by the labels alone
    #   dpo:  −logσ(0) = ln 2;   sppo (η = 1/β = 1000): η²[(P̂_w − ½)² + (P̂_l − ½)²]
    # Δ is a difference of two float32 log-prob sums of ~20 tokens that are computed the same
    # way (≈1e-5 apart at most); dL/dΔ ≤ 2η·½ = 1e3 for sppo, ½ for dpo, relative to the
    # loss's size that is < 1e-4.
    if loss == "sppo":
        want = 1000.0 ** 2 * ((phat[0] - 0.5) ** 2 + (phat[1] - 0.5) ** 2)
    else:
        want = math.log(2)
    assert steps[0]["loss"] == pytest.approx(want, rel=1e-4)
