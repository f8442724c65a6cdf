"""prefero.data: record shapes, tokenization rules, truncation, validation, formats, report.

Expected ids are built from the tiny tokenizer's own pieces (`enc`) so each test states
the rule it checks: e.g. "prompt = BOS + enc(prompt)", "completion = enc(text) + EOS".
"""

import copy
import json
import pickle

import pytest

from prefero.data import (
    DataError,
    DataOptions,
    DataReport,
    TokenizedExample,
    TokenizedPair,
    load_examples,
    load_pairs,
    read_records,
)
from prefero.data.tokenize import truncate
from prefero.tiny import CHAT_TEMPLATE

BOS, EOS = 1, 2  # <s>, <|im_end|> in the tiny tokenizer


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    assert (tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id) == (BOS, EOS)
    return tiny_tokenizer


def enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def write_jsonl(tmp_path, records, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return str(path)


def pairs_of(tmp_path, tok, records, **opts):
    return load_pairs(write_jsonl(tmp_path, records), tok, DataOptions(**opts))


def chat_ids(tok, messages, gen):
    return enc(tok, tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False))


# --------------------------------------------------------------------------- shapes


def test_explicit_strings(tmp_path, tok):
    (pair,), report = pairs_of(tmp_path, tok, [{"prompt": "Hi", "chosen": "Yes", "rejected": "No"}])
    assert pair == TokenizedPair([BOS] + enc(tok, "Hi"), enc(tok, "Yes") + [EOS], enc(tok, "No") + [EOS], row=1)
    assert pair.prompt_ids == [1, 44, 77]  # literal: BOS, "H", "i"
    assert (report.read, report.kept, report.dropped) == (1, 1, {})


def test_boundary_merge_tokenized_separately(tmp_path, tok):
    # "th" + "e" jointly merges into different tokens than separately.
    prompt, chosen, rejected = "Tell me about th", "e ocean.", "e sky."
    joint = tok.encode(prompt + chosen)
    separate = tok.encode(prompt) + enc(tok, chosen)
    assert joint != separate
    (pair,), _ = pairs_of(tmp_path, tok, [{"prompt": prompt, "chosen": chosen, "rejected": rejected}])
    assert pair.prompt_ids == tok.encode(prompt)
    assert pair.prompt_ids + pair.chosen_ids == separate + [EOS]
    assert pair.rejected_ids == enc(tok, rejected) + [EOS]


def test_conversational_explicit_one_bos_one_eos(tmp_path, tok):
    record = {"prompt": [user("Hi")], "chosen": [bot("Yes")], "rejected": "No"}
    (pair,), _ = pairs_of(tmp_path, tok, [record])
    prompt_text = "<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.apply_chat_template([user("Hi")], add_generation_prompt=True, tokenize=False) == prompt_text
    assert pair.prompt_ids == enc(tok, prompt_text)
    # Template emits "<s>"; encoding with special tokens would add another.
    assert pair.prompt_ids[0] == BOS and pair.prompt_ids.count(BOS) == 1
    assert tok.encode(prompt_text)[:2] == [BOS, BOS]
    # The template ends the turn with "<|im_end|>\n": cut after EOS, exactly one EOS.
    assert pair.chosen_ids == enc(tok, "Yes") + [EOS]
    assert pair.rejected_ids == enc(tok, "No") + [EOS]


def test_conversational_multi_turn_completion(tmp_path, tok):
    completion = [bot("A"), user("More"), bot("B")]
    (pair,), _ = pairs_of(tmp_path, tok, [{"prompt": [user("Hi")], "chosen": completion, "rejected": "No"}])
    expected = enc(tok, "A<|im_end|>\n<|im_start|>user\nMore<|im_end|>\n<|im_start|>assistant\nB<|im_end|>")
    assert pair.chosen_ids == expected and expected[-1] == EOS and expected[-2] != EOS


def test_implicit_prompt_from_messages(tmp_path, tok):
    sys = {"role": "system", "content": "Be kind."}
    record = {"chosen": [sys, user("Hi"), bot("Yes")], "rejected": [sys, user("Hi"), bot("No")]}
    (pair,), _ = pairs_of(tmp_path, tok, [record])
    assert pair.prompt_ids == chat_ids(tok, [sys, user("Hi")], gen=True)
    assert (pair.chosen_ids, pair.rejected_ids) == (enc(tok, "Yes") + [EOS], enc(tok, "No") + [EOS])


def test_implicit_prompt_cut_back_to_a_user_turn(tmp_path, tok):
    # Divergence at the second user turn: the prompt must end before an assistant turn.
    chosen = [user("Hi"), bot("Yo"), user("A"), bot("x")]
    rejected = [user("Hi"), bot("Yo"), user("B"), bot("y")]
    (pair,), _ = pairs_of(tmp_path, tok, [{"chosen": chosen, "rejected": rejected}])
    assert pair.prompt_ids == chat_ids(tok, [user("Hi")], gen=True)
    assert pair.chosen_ids[: len(enc(tok, "Yo"))] == enc(tok, "Yo")


def test_ultrafeedback_shape_ignores_prompt_column(tmp_path, tok):
    record = {"prompt": "Hi", "chosen": [user("Hi"), bot("Yes")], "rejected": [user("Hi"), bot("No")]}
    (pair,), _ = pairs_of(tmp_path, tok, [record])
    assert pair.prompt_ids == chat_ids(tok, [user("Hi")], gen=True)


def test_implicit_prompt_hh_rlhf_strings(tmp_path, tok):
    head = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Why?\n\nAssistant:"
    # The common prefix runs into the responses (" I think "); it is cut back to the marker.
    record = {"chosen": head + " I think A", "rejected": head + " I think B"}
    (pair,), _ = pairs_of(tmp_path, tok, [record])
    assert pair.prompt_ids == [BOS] + enc(tok, head)
    assert pair.chosen_ids == enc(tok, " I think A") + [EOS]
    assert pair.rejected_ids == enc(tok, " I think B") + [EOS]


def test_scored_binarize_worst_and_tied(tmp_path, tok):
    records = [
        {"prompt": "Hi", "completions": ["a", "b", "c", "d"], "scores": [2, 5, 1, 1]},
        {"prompt": "Hi", "completions": ["a", "b"], "scores": [3.0, 3.0]},
        {"prompt": "Hi", "completions": ["same", "same"], "scores": [2, 1]},
    ]
    pairs, report = pairs_of(tmp_path, tok, records)
    assert [(p.chosen_ids, p.rejected_ids) for p in pairs] == [(enc(tok, "b") + [EOS], enc(tok, "c") + [EOS])]
    assert report.dropped == {"tied_scores": 1, "identical_chosen_rejected": 1}
    assert (report.read, report.kept) == (3, 1)


def test_scored_binarize_random_is_seeded_and_never_a_tie_with_best(tmp_path, tok):
    texts = ["a", "b", "c", "d", "e"]
    records = [{"prompt": "Hi", "completions": texts, "scores": [1, 9, 9, 3, 2]}] * 40
    picks = {}
    for seed in (0, 1):
        pairs, _ = pairs_of(tmp_path, tok, records, binarize="random", seed=seed)
        picks[seed] = [tok.decode(p.rejected_ids[:-1]) for p in pairs]
        assert all(p.chosen_ids == enc(tok, "b") + [EOS] for p in pairs)  # first of the best
        again, _ = pairs_of(tmp_path, tok, records, binarize="random", seed=seed)
        assert again == pairs
    assert set(picks[0]) == {"a", "d", "e"}  # never "c", which ties with the best
    assert picks[0] != picks[1]


def test_win_probabilities(tmp_path, tok):
    record = {"prompt": "Hi", "chosen": "Yes", "rejected": "No", "p_chosen": 0.75, "p_rejected": 0}
    (pair,), _ = pairs_of(tmp_path, tok, [record])
    assert (pair.p_chosen, pair.p_rejected) == (0.75, 0.0)


def test_custom_column_names(tmp_path, tok):
    (pair,), _ = pairs_of(tmp_path, tok, [{"q": "Hi", "good": "Yes", "bad": "No"}],
                          prompt_column="q", chosen_column="good", rejected_column="bad")
    assert pair.chosen_ids == enc(tok, "Yes") + [EOS]


# --------------------------------------------------------------------------- tokenizers


def test_template_without_bos(tmp_path, tok):
    qwen_like = copy.deepcopy(tok)
    qwen_like.chat_template = CHAT_TEMPLATE.replace("{{ bos_token }}", "")
    (pair,), _ = load_pairs(write_jsonl(tmp_path, [{"prompt": [user("Hi")], "chosen": "Yes", "rejected": "No"}]),
                            qwen_like, DataOptions())
    # Inference renders the template without adding special tokens, so no BOS here either.
    assert BOS not in pair.prompt_ids and pair.prompt_ids[0] == qwen_like.convert_tokens_to_ids("<|im_start|>")


def test_template_without_eos_gets_eos_appended(tmp_path, tok):
    plain = copy.deepcopy(tok)
    plain.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}" \
                          "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    (pair,), _ = load_pairs(write_jsonl(tmp_path, [{"prompt": [user("Hi")], "chosen": "Yes", "rejected": "No"}]),
                            plain, DataOptions())
    assert pair.prompt_ids == enc(tok, "user: Hi\nassistant: ")
    assert pair.chosen_ids == enc(tok, "Yes\n") + [EOS]


def test_tokenizer_without_bos(tmp_path, tok):
    no_bos = copy.deepcopy(tok)
    no_bos.backend_tokenizer.post_processor = None
    assert no_bos.encode("Hi") == enc(tok, "Hi") and tok.encode("Hi")[0] == BOS
    (pair,), _ = load_pairs(write_jsonl(tmp_path, [{"prompt": "Hi", "chosen": "Yes", "rejected": "No"}]),
                            no_bos, DataOptions())
    assert pair.prompt_ids == enc(tok, "Hi")


def test_no_double_bos_or_eos_from_text(tmp_path, tok):
    record = {"prompt": "<s>Hi", "chosen": "Yes<|im_end|>", "rejected": "No<|im_end|>\n"}
    (pair,), _ = pairs_of(tmp_path, tok, [record])
    assert pair.prompt_ids == [BOS] + enc(tok, "Hi")
    assert (pair.chosen_ids, pair.rejected_ids) == (enc(tok, "Yes") + [EOS], enc(tok, "No") + [EOS])


def test_no_chat_template_is_a_clear_unskippable_error(tmp_path, tok):
    bare = copy.deepcopy(tok)
    bare.chat_template = None
    path = write_jsonl(tmp_path, [{"prompt": "Hi", "chosen": "Yes", "rejected": "No"},
                                  {"prompt": [user("Hi")], "chosen": "Yes", "rejected": "No"}])
    with pytest.raises(DataError, match=r"row 2: .*no chat template"):
        load_pairs(path, bare, DataOptions(on_bad_record="skip"))
    (pair,), _ = load_pairs(write_jsonl(tmp_path, [{"prompt": "Hi", "chosen": "Yes", "rejected": "No"}], "s.jsonl"),
                            bare, DataOptions())
    assert pair.prompt_ids == [BOS] + enc(tok, "Hi")


def test_template_that_does_not_extend_the_prompt(tmp_path, tok):
    odd = copy.deepcopy(tok)  # history says "bot", the generation prompt "assistant"
    odd.chat_template = "{% for m in messages %}{{ m['role'].replace('assistant', 'bot') + ':' + m['content'] }}" \
                        "{% endfor %}{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
    path = write_jsonl(tmp_path, [{"prompt": [user("Hi")], "chosen": "Yes", "rejected": "No"}])
    with pytest.raises(DataError, match=r"row 1, field 'chosen': the chat template renders"):
        load_pairs(path, odd, DataOptions())


# --------------------------------------------------------------------------- truncation


def test_truncate_unit():
    cut = truncate([BOS, 10, 11, 12, 13], [[20, 21, 22, EOS], [30, EOS]], max_length=6, max_prompt_length=3, bos_id=BOS)
    assert cut.prompt_ids == [BOS, 12, 13]  # end kept, BOS kept
    assert cut.completions == [[20, 21, 22], [30, EOS]]
    assert (cut.prompt_truncated, cut.completion_truncated, cut.empty) == (True, True, False)
    cut = truncate([10, 11, 12], [[20]], max_length=3, max_prompt_length=3)
    assert cut.completions == [[]] and cut.empty and not cut.prompt_truncated


def test_truncation_counts_and_drops(tmp_path, tok):
    long_prompt = "one two three four five six seven eight nine ten"
    p = [BOS] + enc(tok, long_prompt)
    records = [
        {"prompt": long_prompt, "chosen": "Yes", "rejected": "No"},  # prompt truncated
        {"prompt": "Hi", "chosen": "Sure! The ocean is a fascinating place.", "rejected": "No"},  # completion truncated
        {"prompt": "Hi", "chosen": "Sure! The ocean is big.", "rejected": "Sure! The ocean is small."},  # equal after cut
    ]
    pairs, report = pairs_of(tmp_path, tok, records, max_length=8, max_prompt_length=4)
    assert pairs[0].prompt_ids == [BOS] + p[-3:]
    assert pairs[0].chosen_ids == enc(tok, "Yes") + [EOS]
    assert pairs[1].chosen_ids == enc(tok, "Sure! The ocean is a fascinating place.")[:5]  # no EOS
    assert pairs[1].rejected_ids == enc(tok, "No") + [EOS]
    assert report.truncated == {"prompt_truncated": 1, "completion_truncated": 1}
    assert report.dropped == {"identical_after_truncation": 1}
    _, report = pairs_of(tmp_path, tok, records[:1], max_length=4, max_prompt_length=4)
    assert report.dropped == {"completion_empty_after_truncation": 1} and report.kept == 0


# --------------------------------------------------------------------------- validation

MSG = [user("Hi")]
BAD_PAIRS = [
    ({"prompt": "Hi", "rejected": "No"}, "chosen", "missing"),
    ({"prompt": "Hi", "chosen": "Yes"}, "rejected", "missing"),
    ({"prompt": "Hi", "chosen": 3, "rejected": "No"}, "chosen", "got int"),
    ({"prompt": "  \n", "chosen": "Yes", "rejected": "No"}, "prompt", "empty"),
    ({"prompt": "Hi", "chosen": "", "rejected": "No"}, "chosen", "empty"),
    ({"prompt": "Hi", "chosen": "Yes", "rejected": " "}, "rejected", "empty"),
    ({"prompt": "Hi", "chosen": "Same", "rejected": "Same"}, "chosen", "identical to 'rejected'"),
    ({"prompt": "Hi", "chosen": "Yes", "rejected": "No", "p_chosen": 1.5, "p_rejected": 0.1}, "p_chosen", "[0, 1]"),
    ({"prompt": "Hi", "chosen": "Yes", "rejected": "No", "p_chosen": "0.5", "p_rejected": 0.1}, "p_chosen", "probability"),
    ({"prompt": "Hi", "chosen": "Yes", "rejected": "No", "p_chosen": True, "p_rejected": 0.1}, "p_chosen", "probability"),
    ({"prompt": "Hi", "chosen": "Yes", "rejected": "No", "p_chosen": 0.5}, "p_rejected", "missing"),
    ({"prompt": [{"role": "bot", "content": "Hi"}], "chosen": "Y", "rejected": "N"}, "prompt", "role 'bot'"),
    ({"prompt": [{"role": "user", "content": 5}], "chosen": "Y", "rejected": "N"}, "prompt", "content is int"),
    ({"prompt": [user("Hi"), bot("Yo")], "chosen": "Y", "rejected": "N"}, "prompt", "must end with a user turn"),
    ({"prompt": MSG, "chosen": [user("Y")], "rejected": "N"}, "chosen", "start with an assistant"),
    ({"prompt": MSG, "chosen": [bot(" ")], "rejected": "N"}, "chosen", "empty"),
    ({"prompt": MSG, "chosen": [], "rejected": "N"}, "chosen", "empty list"),
    ({"chosen": "Yes", "rejected": "No"}, "prompt", "missing"),
    ({"chosen": [user("Hi"), bot("Y")], "rejected": [user("Yo"), bot("N")]}, "prompt", "share no message prefix"),
    ({"prompt": "Hi", "completions": ["a", "b"], "scores": [1]}, "scores", "1 scores for 2 completions"),
    ({"prompt": "Hi", "completions": ["a", "b"], "scores": [1, "x"]}, "scores", "finite number"),
    ({"prompt": "Hi", "completions": ["a"], "scores": [1]}, "completions", "at least 2"),
    ({"prompt": "Hi", "completions": ["a", 7], "scores": [1, 2]}, "completions[1]", "got int"),
    ({"prompt": "Hi", "completion": "Yes", "label": True}, "chosen", "train it with loss=kto"),
    ({"prompt": "Hi\ud800", "chosen": "Yes", "rejected": "No"}, "prompt", "lone surrogate"),
]


@pytest.mark.parametrize("record,field,problem", BAD_PAIRS)
def test_bad_pair_names_file_row_field(tmp_path, tok, record, field, problem):
    path = write_jsonl(tmp_path, [{"prompt": "Hi", "chosen": "Yes", "rejected": "No"}, "", record])
    with pytest.raises(DataError) as info:
        load_pairs(path, tok, DataOptions())
    err = info.value
    assert (err.file, err.row, err.field) == (path, 3, field)  # jsonl rows are line numbers
    assert str(err).startswith(f"{path}: row 3, field '{field}': ") and problem in str(err)
    assert "\n" not in str(err)


BAD_EXAMPLES = [
    ("unpaired", {"prompt": "Hi", "completion": "Yes", "label": 1}, "label", "true or false"),
    ("unpaired", {"prompt": "Hi", "completion": "Yes"}, "label", "missing"),
    ("sft", {"messages": [user("Hi"), bot("Yo"), user("Again")]}, "messages", "last message must be the assistant"),
    ("sft", {"messages": [bot("Yo")]}, "messages", "no prompt"),
    ("sft", {"completion": "Yes"}, "prompt", "missing"),
    ("sft", {"prompt": "Hi"}, "chosen", "missing"),
]


@pytest.mark.parametrize("kind,record,field,problem", BAD_EXAMPLES)
def test_bad_example_names_file_row_field(tmp_path, tok, kind, record, field, problem):
    path = write_jsonl(tmp_path, [record])
    with pytest.raises(DataError, match=rf"^.*data\.jsonl: row 1, field '{field}': .*{problem}"):
        load_examples(path, tok, DataOptions(), kind=kind)


def test_skip_policy_counts_and_keeps_messages(tmp_path, tok):
    good = {"prompt": "Hi", "chosen": "Yes", "rejected": "No"}
    path = write_jsonl(tmp_path, [good, {"prompt": "Hi", "chosen": 1, "rejected": "No"}, "{not json", good,
                                  {"prompt": "Hi", "completions": ["a", "b"], "scores": [1, 1]}])
    pairs, report = load_pairs(path, tok, DataOptions(on_bad_record="skip"))
    assert [p.row for p in pairs] == [1, 4]
    assert report.dropped == {"bad_record:chosen": 1, "bad_record": 1, "tied_scores": 1}
    assert (report.read, report.kept, report.skipped) == (5, 2, 2)
    assert report.read == report.kept + report.n_dropped
    assert [(m["row"], m["field"]) for m in report.messages] == [(2, "chosen"), (3, None)]
    assert report.messages[1]["message"].startswith(f"{path}: row 3: invalid JSON")


# --------------------------------------------------------------------------- examples


def test_load_examples_sft_shapes(tmp_path, tok):
    records = [
        {"prompt": "Hi", "completion": "Yes"},
        {"messages": [{"role": "system", "content": "S"}, user("Hi"), bot("Yes")]},
        {"prompt": "Hi", "chosen": "Yes", "rejected": "No"},
        {"prompt": "Hi", "completion": "Bad", "label": False},
    ]
    examples, report = load_examples(write_jsonl(tmp_path, records), tok, DataOptions(), kind="sft")
    assert examples[0] == TokenizedExample([BOS] + enc(tok, "Hi"), enc(tok, "Yes") + [EOS], None, 1)
    assert examples[1].prompt_ids == chat_ids(tok, [{"role": "system", "content": "S"}, user("Hi")], gen=True)
    assert examples[1].completion_ids == enc(tok, "Yes") + [EOS]
    assert examples[2] == TokenizedExample([BOS] + enc(tok, "Hi"), enc(tok, "Yes") + [EOS], None, 3)
    assert report.dropped == {"sft_undesirable_label": 1} and report.kept == 3


def test_load_examples_unpaired(tmp_path, tok):
    records = [{"prompt": "Hi", "completion": "Yes", "label": True},
               {"prompt": [user("Hi")], "chosen": "Yes", "rejected": "No"}]
    examples, report = load_examples(write_jsonl(tmp_path, records), tok, DataOptions(), kind="unpaired")
    assert [(e.label, e.row) for e in examples] == [(True, 1), (True, 2), (False, 2)]
    assert examples[1].prompt_ids == examples[2].prompt_ids == chat_ids(tok, [user("Hi")], gen=True)
    assert examples[2].completion_ids == enc(tok, "No") + [EOS]
    assert (report.read, report.kept) == (2, 2)
    with pytest.raises(ValueError, match="kind"):
        load_examples(write_jsonl(tmp_path, records), tok, DataOptions(), kind="dpo")


# --------------------------------------------------------------------------- reading

RECORDS = [{"prompt": "Hi", "chosen": "Yes", "rejected": "No", "p_chosen": 0.9, "p_rejected": 0.1},
           {"prompt": "Yo", "chosen": "A", "rejected": "B", "p_chosen": 0.5, "p_rejected": 0.25}]


def _expected(tok):
    return [TokenizedPair([BOS] + enc(tok, r["prompt"]), enc(tok, r["chosen"]) + [EOS], enc(tok, r["rejected"]) + [EOS],
                          r["p_chosen"], r["p_rejected"], row=i) for i, r in enumerate(RECORDS, start=1)]


@pytest.mark.parametrize("fmt", ["json_list", "json_data", "json_lines", "parquet", "csv", "dataset", "dataset_dict"])
def test_file_formats(tmp_path, tok, fmt):
    import datasets
    import pandas as pd

    if fmt == "json_list":
        path = tmp_path / "d.json"
        path.write_text(json.dumps(RECORDS))
    elif fmt == "json_data":
        path = tmp_path / "d.json"
        path.write_text(json.dumps({"data": RECORDS}))
    elif fmt == "json_lines":  # what Dataset.to_json writes under a .json name
        path = tmp_path / "d.json"
        datasets.Dataset.from_list(RECORDS).to_json(str(path))
    elif fmt == "parquet":
        path = tmp_path / "d.parquet"
        pd.DataFrame(RECORDS).to_parquet(path)
    elif fmt == "csv":
        path = tmp_path / "d.csv"
        pd.DataFrame(RECORDS).to_csv(path, index=False)
    elif fmt == "dataset":
        path = tmp_path / "ds"
        datasets.Dataset.from_list(RECORDS).save_to_disk(str(path))
    else:
        path = tmp_path / "dsd"
        ds = datasets.Dataset.from_list(RECORDS)
        datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(path))
    pairs, report = load_pairs(str(path), tok, DataOptions(split="train"))
    assert pairs == _expected(tok) and report.read == 2


def test_parquet_conversational_and_csv_labels(tmp_path, tok):
    import pandas as pd

    pd.DataFrame([{"prompt": [user("Hi")], "chosen": [bot("Yes")], "rejected": [bot("No")]}]).to_parquet(tmp_path / "c.parquet")
    (pair,), _ = load_pairs(str(tmp_path / "c.parquet"), tok, DataOptions())
    assert pair.prompt_ids == chat_ids(tok, [user("Hi")], gen=True)
    pd.DataFrame([{"prompt": "7", "completion": "Yes", "label": True},
                  {"prompt": "Hi", "completion": "No", "label": False}]).to_csv(tmp_path / "u.csv", index=False)
    examples, _ = load_examples(str(tmp_path / "u.csv"), tok, DataOptions(), kind="unpaired")
    assert [(e.prompt_ids, e.label) for e in examples] == [([BOS] + enc(tok, "7"), True), ([BOS] + enc(tok, "Hi"), False)]


def test_dataset_dict_without_train_names_splits(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(RECORDS)
    datasets.DatasetDict({"validation": ds, "test": ds}).save_to_disk(str(tmp_path / "dsd"))
    with pytest.raises(DataError, match="no split 'train' \\(splits: test, validation\\)"):
        list(read_records(str(tmp_path / "dsd"), split="train"))
    # several splits and none named: never a silent pick
    with pytest.raises(DataError, match="several splits \\(test, validation\\); name the one"):
        list(read_records(str(tmp_path / "dsd")))
    assert len(list(read_records(str(tmp_path / "dsd"), split="test"))) == len(RECORDS)


def test_hub_name_goes_to_load_dataset(monkeypatch):
    import datasets

    seen = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name: seen.append(name) or {"train": RECORDS})
    assert list(read_records("someone/prefs")) == [(1, RECORDS[0]), (2, RECORDS[1])]
    assert seen == ["someone/prefs"]


@pytest.mark.parametrize("name,content,row,problem", [
    ("a.jsonl", b'{"prompt": "x"}\n\n{"prompt": \n', 3, "invalid JSON"),
    ("a.jsonl", b'{"prompt": "x"}\n{"prompt": "\xff"}\n', 2, "invalid UTF-8"),
    ("a.jsonl", b'{"prompt": "x"}\n[1, 2]\n', 2, "expected a JSON object"),
    ("a.jsonl", b"  \n", None, "empty"),
    ("a.json", b'[{"prompt": "x"},\n {"prompt": }]', 2, "invalid JSON on line 2"),
    ("a.json", b"[]", None, "no records"),
    ("a.csv", b"prompt,chosen\nx,\xfe\n", 2, "invalid UTF-8"),
    ("a.csv", b"prompt,chosen\n", None, "only a header"),
    ("a.parquet", b"not parquet", None, "cannot read parquet"),
    ("a.txt", b"hello", None, "unsupported file type"),
])
def test_read_errors_name_file_and_row(tmp_path, name, content, row, problem):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        list(read_records(str(path)))
    assert (info.value.file, info.value.row) == (str(path), row) and problem in str(info.value)


def test_missing_file_is_not_a_hub_lookup(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        list(read_records(str(tmp_path / "nope.jsonl")))
    with pytest.raises(DataError, match="file not found"):
        list(read_records("data/prefs.parquet"))


# --------------------------------------------------------------------------- report & misc


def test_report_write_merge_and_shared_report(tmp_path, tok):
    report = DataReport()
    a = write_jsonl(tmp_path, [{"prompt": "Hi", "chosen": "Yes", "rejected": "No"}], "a.jsonl")
    b = write_jsonl(tmp_path, [{"prompt": "Hi", "completions": ["a", "b"], "scores": [1, 1]}], "b.jsonl")
    load_pairs(a, tok, DataOptions(), report)
    _, same = load_pairs(b, tok, DataOptions(), report)
    assert same is report and (report.read, report.kept, report.dropped) == (2, 1, {"tied_scores": 1})
    merged = DataReport(read=1, kept=0, dropped={"tied_scores": 1}, truncated={"prompt_truncated": 2}).merge(report)
    assert merged.to_dict() == {"read": 3, "kept": 1, "truncated": {"prompt_truncated": 2},
                                "dropped": {"tied_scores": 2}, "skipped": 0, "messages": []}
    report.write(tmp_path / "out" / "data_report.json")
    assert json.loads((tmp_path / "out" / "data_report.json").read_text()) == report.to_dict()
    for i in range(150):
        report.count_skipped(DataError("f", i + 1, "chosen", "bad"))
    assert report.skipped == 150 and len(report.messages) == 100 and report.dropped["bad_record:chosen"] == 150


def test_data_error_pickles_and_options_validate():
    err = pickle.loads(pickle.dumps(DataError("f.jsonl", 4, "chosen", "bad\nthing")))
    assert (err.file, err.row, err.field, str(err)) == ("f.jsonl", 4, "chosen", "f.jsonl: row 4, field 'chosen': bad thing")
    with pytest.raises(ValueError, match="on_bad_record"):
        DataOptions(on_bad_record="ignore").validate()
    with pytest.raises(ValueError, match="binarize"):
        DataOptions(binarize="best").validate()


def test_every_module_imports():
    import importlib

    for name in ("errors", "report", "options", "read", "formats", "tokenize", "load", "limits"):
        importlib.import_module(f"prefero.data.{name}")


def test_json_single_record_is_not_mistaken_for_a_wrapper(tmp_path, tok):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"messages": [user("Hi"), bot("Yes")]}))
    (example,), _ = load_examples(str(path), tok, DataOptions(), kind="sft")
    assert example.completion_ids == enc(tok, "Yes") + [EOS]
