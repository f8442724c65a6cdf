"""Completions cut at generation's token limit (issue 16.3, the training side).

The label stage marks a kept cut completion with `chosen_truncated` / `rejected_truncated`
(pairs, SPPO rows) or `completion_truncated` (SFT, unpaired rows); a scored record may
carry generate's `finish_reasons`. The reader never gives such a completion a stop token
(EOS, or the chat template's end-of-turn token) and counts the record as
`no_eos_cut_completion`.
"""

import json

import pytest

from prefero.data import DataError, DataOptions, load_examples, load_pairs

BOS, EOS = 1, 2  # <s>, <|im_end|> in the tiny tokenizer (EOS is also ChatML's end of turn)


def enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


def load(tmp_path, tok, records, kind=None):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    if kind is None:
        return load_pairs(str(path), tok, DataOptions())
    return load_examples(str(path), tok, DataOptions(), kind=kind)


def test_marked_pair_completions_get_no_stop_token(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    records = [
        {"prompt": "Hi", "chosen": "Yes and", "rejected": "No", "chosen_truncated": True, "rejected_truncated": False},
        # an SPPO row, conversational: the template's <|im_end|>\n is removed from the cut one
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": "Yes", "rejected": "No, because",
         "p_chosen": 0.7, "p_rejected": 0.3, "rejected_truncated": True},
        {"prompt": "Hi", "chosen": "Yes", "rejected": "No"},  # unmarked: both end with EOS
    ]
    (cut_chosen, cut_rejected, plain), report = load(tmp_path, tok, records)
    assert cut_chosen.chosen_ids == enc(tok, "Yes and") and cut_chosen.rejected_ids == enc(tok, "No") + [EOS]
    assert cut_rejected.chosen_ids == enc(tok, "Yes") + [EOS]
    assert cut_rejected.rejected_ids == enc(tok, "No, because") and cut_rejected.p_chosen == 0.7
    assert plain.chosen_ids[-1] == plain.rejected_ids[-1] == EOS
    assert report.truncated == {"no_eos_cut_completion": 2} and report.kept == 3


def test_marked_sft_and_unpaired_completions_get_no_stop_token(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    records = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Once upon"}],
                "completion_truncated": True},
               {"prompt": "Hi", "completion": "Yes", "completion_truncated": False}]
    (cut, whole), report = load(tmp_path, tok, records, kind="sft")
    assert cut.completion_ids == enc(tok, "Once upon") and whole.completion_ids == enc(tok, "Yes") + [EOS]
    assert report.truncated == {"no_eos_cut_completion": 1}
    records = [{"prompt": "Hi", "completion": "Yes but", "label": True, "completion_truncated": True},
               {"prompt": "Hi", "chosen": "Yes", "rejected": "No wait", "rejected_truncated": True}]
    examples, report = load(tmp_path, tok, records, kind="unpaired")
    assert [e.completion_ids for e in examples] == [enc(tok, "Yes but"), enc(tok, "Yes") + [EOS], enc(tok, "No wait")]
    assert report.truncated == {"no_eos_cut_completion": 2}


def test_scored_record_reads_generate_finish_reasons(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    record = {"prompt": "Hi", "completions": ["Yes, well", "No", "Maybe"], "scores": [3, 1, 2],
              "finish_reasons": ["length", "stop", "stop"]}
    (pair,), report = load(tmp_path, tok, [record])
    assert pair.chosen_ids == enc(tok, "Yes, well") and pair.rejected_ids == enc(tok, "No") + [EOS]
    assert report.truncated == {"no_eos_cut_completion": 1}


@pytest.mark.parametrize("record, field", [
    ({"prompt": "Hi", "chosen": "Yes", "rejected": "No", "chosen_truncated": "yes"}, "chosen_truncated"),
    ({"prompt": "Hi", "completions": ["a", "b"], "scores": [1, 0], "finish_reasons": ["stop"]}, "finish_reasons"),
])
def test_bad_marks_name_file_row_and_field(tmp_path, tiny_tokenizer, record, field):
    with pytest.raises(DataError) as e:
        load(tmp_path, tiny_tokenizer, [record])
    assert (e.value.row, e.value.field) == (1, field)
