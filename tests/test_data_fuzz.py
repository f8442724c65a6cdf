"""Property: whatever bytes or records arrive, the data layer fails only with DataError.

Anything else (KeyError, TypeError, a tokenizer panic) would reach the user as a stack
trace without the file/row/field they need, which README.md#data rules out.
"""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefero.data import DataError, DataOptions, load_examples, load_pairs, read_records

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

COLUMNS = ["prompt", "chosen", "rejected", "completions", "scores", "p_chosen", "p_rejected",
           "completion", "label", "messages"]
ROLES = ["system", "user", "assistant", "tool", "bot", 3]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["", " ", "<s>", "<|im_end|>", "\n\nHuman: a\n\nAssistant:", "\ud800"]),
)
message = st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": st.one_of(st.text(max_size=8), st.integers())})
messages = st.lists(message, max_size=4)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                           max_leaves=8)
field_values = st.one_of(scalars, messages, st.lists(st.one_of(st.text(max_size=6), messages, st.floats()), max_size=4),
                         json_values)
records = st.dictionaries(st.sampled_from(COLUMNS), field_values, max_size=6)

U, A = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes"}
VALID = [
    {"prompt": "Hi", "chosen": "Yes", "rejected": "No", "p_chosen": 0.7, "p_rejected": 0.2},
    {"prompt": [U], "chosen": [A], "rejected": "No"},
    {"chosen": [U, A], "rejected": [U, {"role": "assistant", "content": "No"}]},
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Yes", "rejected": "\n\nHuman: Hi\n\nAssistant: No"},
    {"prompt": "Hi", "completions": ["a", "b", "c"], "scores": [1, 3, 2]},
    {"prompt": "Hi", "completion": "Yes", "label": True},
    {"messages": [U, A]},
]


@st.composite
def near_valid_records(draw):
    """A valid record of some shape with up to two fields replaced or removed, so the
    fuzzing also reaches tokenization and truncation, not just the first check."""
    record = dict(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(sorted(record) + COLUMNS))
        if draw(st.booleans()):
            record.pop(key, None)
        else:
            record[key] = draw(field_values)
    return record


records = st.one_of(records, near_valid_records())


def _json_line(value):
    try:
        return json.dumps(value)
    except ValueError:
        return "{}"


lines = st.one_of(records.map(_json_line), json_values.map(_json_line), st.text(max_size=20))


def _run_all(path, tok):
    """Read and load `path` every way; return normally or raise DataError only."""
    try:
        list(read_records(path))
    except DataError:
        pass
    for policy in ("error", "skip"):
        opts = DataOptions(max_length=16, max_prompt_length=8, on_bad_record=policy, binarize="random")
        for load in (lambda: load_pairs(path, tok, opts),
                     lambda: load_examples(path, tok, opts, kind="sft"),
                     lambda: load_examples(path, tok, opts, kind="unpaired")):
            try:
                items, report = load()
            except DataError:
                continue
            assert report.read == report.kept + report.n_dropped
            if policy == "skip":
                assert report.kept <= len(items) <= 2 * report.kept


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".parquet"]))
def test_random_bytes_raise_only_data_error(fuzz_dir, tiny_tokenizer, data, suffix):
    path = fuzz_dir / f"bytes{suffix}"
    path.write_bytes(data)
    _run_all(str(path), tiny_tokenizer)


@FUZZ
@given(body=st.lists(lines, max_size=6))
def test_jsonish_lines_raise_only_data_error(fuzz_dir, tiny_tokenizer, body):
    path = fuzz_dir / "lines.jsonl"
    path.write_text("\n".join(body), encoding="utf-8", errors="surrogatepass")
    _run_all(str(path), tiny_tokenizer)


@FUZZ
@given(rows=st.lists(records, min_size=1, max_size=5))
def test_random_records_raise_only_data_error(fuzz_dir, tiny_tokenizer, rows):
    path = fuzz_dir / "records.json"
    path.write_text(json.dumps(rows))
    _run_all(str(path), tiny_tokenizer)
