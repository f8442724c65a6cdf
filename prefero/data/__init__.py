"""Reading, validating and tokenizing preference, SFT and unpaired data (README.md#data).

    pairs, report = load_pairs("prefs.jsonl", tokenizer, DataOptions(max_length=1024))
    report.write("out/data_report.json")

Modules: `read` (files, saved datasets, hub -> records), `formats` (record shapes and
validation), `tokenize` (chat templates, EOS/BOS and end-of-turn rules, truncation),
`load` (the loaders), `report` (counts by reason), `limits` (a model's context limit),
`errors` (`DataError`).
"""

from prefero.data.errors import DataError
from prefero.data.load import load_examples, load_pairs
from prefero.data.options import DataOptions, TokenizedExample, TokenizedPair
from prefero.data.read import read_records
from prefero.data.report import DataReport

__all__ = [
    "DataError",
    "DataOptions",
    "DataReport",
    "TokenizedExample",
    "TokenizedPair",
    "load_examples",
    "load_pairs",
    "read_records",
]
