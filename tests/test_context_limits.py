"""Context limits (issue 15.4) and the error when no record survives (15.6).

One rule finds a model's limit (prefero.data.limits); train and rm refuse a max_length
above it at load, defaults included; the reward-model judge refuses judge.max_length
above it. generate's refusal is in tests/test_chat_templates.py.
"""

import json
import shutil
import types

import pytest
from transformers import GPT2Config, LlamaConfig, PretrainedConfig

from jsonl_files import write_jsonl
from prefero.cli import main
from prefero.data.limits import ContextLimit, check_max_length, context_limit
from prefero.options import ConfigError
from prefero.tiny import demo_records


class SeqLengthConfig(PretrainedConfig):  # ChatGLM-style remote code names it seq_length
    model_type = "seq-length-test"

    def __init__(self, seq_length=256, **kw):
        self.seq_length = seq_length
        super().__init__(**kw)


def test_limit_comes_from_the_config_then_a_real_tokenizer_limit():
    tok = types.SimpleNamespace(model_max_length=300)
    llama = LlamaConfig(max_position_embeddings=128)
    assert context_limit(llama, tok) == ContextLimit(128, "config.max_position_embeddings")
    assert context_limit(GPT2Config(n_positions=96), tok).tokens == 96  # GPT-2 calls it n_positions
    assert context_limit(SeqLengthConfig(), tok) == ContextLimit(256, "config.seq_length")
    assert context_limit(PretrainedConfig(), tok) == ContextLimit(300, "tokenizer.model_max_length")
    # transformers writes 1e30 when the tokenizer's limit was never set: that is no limit
    assert context_limit(PretrainedConfig(), types.SimpleNamespace(model_max_length=int(1e30))) is None
    assert context_limit(None, None) is None


def test_check_max_length_names_key_value_and_limit():
    check_max_length(128, ContextLimit(128, "config.n_positions"))  # at the limit: fine
    check_max_length(4096, None)  # no limit known: nothing to check
    with pytest.raises(ConfigError) as e:
        check_max_length(1024, ContextLimit(128, "config.n_positions"), "judge.max_length", 1024, "judge.model")
    assert str(e.value) == ("judge.max_length: 1024 (the default) is above the limit of judge.model, 128 positions "
                            "(config.n_positions); set judge.max_length=128 or less (and judge.max_prompt_length "
                            "below it)")


@pytest.fixture(scope="module")
def short_model(tiny_model_dir, tmp_path_factory):
    """The tiny model, told it has 128 positions."""
    model = tmp_path_factory.mktemp("short") / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 128}))
    return model


def run(argv, capsys) -> tuple[int, list[str]]:
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("prefero: error:")]


@pytest.mark.parametrize("command", ["train", "rm"])
def test_max_length_above_the_model_limit_is_a_config_error_at_load(command, short_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", demo_records()[:4])
    base = [command, f"model={short_model}", f"train_data={data}", "max_steps=1", "batch_size=2",
            f"output_dir={tmp_path / 'run'}"]
    code, lines = run(base, capsys)  # the defaults: 1024 / 512
    assert code == 2 and lines == [
        "prefero: error: max_length: 1024 (the default) is above the limit of model, 128 positions "
        "(config.max_position_embeddings); set max_length=128 or less (and max_prompt_length below it)"]
    code, lines = run(base + ["max_length=200", "max_prompt_length=100"], capsys)
    assert code == 2 and lines[0].startswith("prefero: error: max_length: 200 is above the limit of model, 128")
    assert not (tmp_path / "run" / "data_report.json").exists()  # refused before reading the data


def test_reward_model_judge_refuses_max_length_above_its_model(tiny_model_dir, tiny_tokenizer):
    from prefero.judges.reward_model import RewardModelJudge
    from prefero.scoring import load_reward_model

    model = load_reward_model(str(tiny_model_dir), tiny_tokenizer)
    model.config.max_position_embeddings = 64
    cfg = types.SimpleNamespace(max_length=100, max_prompt_length=50)
    with pytest.raises(ConfigError, match=r"^judge.max_length: 100 is above the limit of judge.model, 64 positions"):
        RewardModelJudge(cfg, model=model, tokenizer=tiny_tokenizer)


def test_no_usable_records_names_the_drop_reasons(tiny_model_dir, tmp_path, capsys):
    tied = {"prompt": "Hi.", "completions": ["a", "b"], "scores": [1, 1]}
    data = write_jsonl(tmp_path / "pairs.jsonl", [tied, tied, tied, {"prompt": "Hi.", "chosen": 3, "rejected": "b"}])
    code, lines = run(["train", f"model={tiny_model_dir}", f"train_data={data}", "max_steps=1",
                       "on_bad_record=skip", f"output_dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"prefero: error: {data}: no usable records: read 4, kept 0; dropped: tied_scores 3, "
                               "bad_record:chosen 1 (every completion of a prompt has the same score: nothing to "
                               f"prefer); first skipped: {data}: row 4, field 'chosen': ")
    assert "data report" not in lines[0]


def test_llm_judge_reads_the_limit_by_the_same_rule(tiny_tokenizer):
    """A config with no position limit (ALiBi/remote-code models) and a tokenizer that
    states one: a judge prompt that does not fit is one error naming file, row and the
    limit, before any forward."""
    import copy

    from prefero.data.formats import Where
    from prefero.judges import Item
    from prefero.judges.config import JudgeConfig
    from prefero.judges.llm import LLMJudge

    class NoForward:
        config = PretrainedConfig()

        def eval(self):
            return self

        def __call__(self, **kw):
            raise AssertionError("a prompt past the limit reached the model")

    tok = copy.deepcopy(tiny_tokenizer)
    tok.model_max_length = 40
    judge = LLMJudge(JudgeConfig(type="llm", model="unused"), model=NoForward(), tokenizer=tok)
    assert judge.max_tokens == 40
    item = Item("Tell me about the sea. " * 10, ["It is large."], Where("judged.jsonl", 7))
    with pytest.raises(Exception, match=r"^judged.jsonl: row 7, field 'completions': the judge prompt has \d+ "
                                        r"tokens, more than the judge model's context of 40$"):
        judge.score([item])


def test_eval_pair_metrics_refuse_max_length_above_the_model(short_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", demo_records()[:4])
    code, lines = run(["eval", f"model={short_model}", f"pairs={data}", f"output_dir={tmp_path / 'eval'}"], capsys)
    assert code == 2 and lines[0].startswith(
        "prefero: error: max_length: 1024 (the default) is above the limit of model, 128 positions")
