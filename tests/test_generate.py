"""`prefero generate` and the resumable stage output it shares with the other pipeline stages.

Equivalences checked: same config -> same bytes; killed + resumed == uninterrupted;
2 processes == 1 process; a prompt generated alone == the same prompt in a left-padded
batch (greedy); a declared stop token cuts each greedy completion exactly where the
unstopped run emitted it. Bad input -> one line naming file, row and field, or the key.
"""

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from jsonl_files import read_jsonl, write_jsonl
from launching import ONE_THREAD_ENV, launch
from openai_server import FakeOpenAIServer
from prefero.cli import main
from prefero.data import DataError
from prefero.generate import GenerateConfig, report_path, run_generate
from prefero.generate.prompts import batch_seed, encode_prompt, model_prompt, prompt_seed, prompts_sha256
from prefero.generate.transformers_backend import TransformersSampler, completion_ids, left_pad
from prefero.openai_client import OpenAIError
from prefero.options import ConfigError, load_config
from prefero.pipeline_io import StageOutput, partial_paths, read_jsonl_rows, read_prompts
from prefero.tiny import demo_records

KEY = "sk-generate-test-5a4b3c2d1e"


def prompt_rows(n):
    """String prompts plus one conversation with a system turn (the chat template path)."""
    rows = [{"prompt": r["prompt"]} for r in demo_records()[: n - 1]]
    rows.insert(2, {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Describe a lake."}]})
    return rows


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", prompt_rows(12))


def config(model, prompts, output, *overrides) -> GenerateConfig:
    base = [f"model={model}", f"prompts={prompts}", f"output={output}", "num_completions=3",
            "max_new_tokens=12", "batch_size=4", "seed=0"]
    return load_config(None, base + list(overrides), cls=GenerateConfig)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, prompts_file, tmp_path_factory):
    """One uninterrupted single-process run that several tests compare against."""
    out = tmp_path_factory.mktemp("reference") / "gen.jsonl"
    report = run_generate(config(tiny_model_dir, prompts_file, out))
    return out, report


# --------------------------------------------------------------------------- determinism


def test_output_rows_and_report(reference):
    out, report = reference
    rows = read_jsonl(out)
    assert [r["index"] for r in rows] == list(range(12))
    assert all(len(r["completions"]) == 3 == len(r["finish_reasons"]) for r in rows)
    # a string prompt is recorded as the one user message the chat template was given
    assert rows[0]["prompt"] == [{"role": "user", "content": demo_records()[0]["prompt"]}]
    assert rows[2]["prompt"][0] == {"role": "system", "content": "Be brief."}
    # rows carry what the report sums
    assert report["prompts"] == 12 and report["completions"] == 36
    assert report["tokens_generated"] == sum(r["tokens"] for r in rows) == report["tokens_this_run"]
    assert report["hit_max_new_tokens"] == sum(r["finish_reasons"].count("length") for r in rows)
    # each completion is at most max_new_tokens long, exactly that when it hit the limit
    for r in rows:
        hits = r["finish_reasons"].count("length")
        assert 12 * hits + (3 - hits) <= r["tokens"] <= 12 * 3
    assert report["resumed_prompts"] == 0 and report["processes"] == 1
    assert json.loads(Path(report_path(str(out))).read_text()) == report
    assert sorted(p.name for p in out.parent.iterdir()) == ["gen.jsonl", "gen.report.json"]  # partials gone


def test_same_seed_same_bytes_other_seed_differs(reference, tiny_model_dir, prompts_file, tmp_path):
    out, _ = reference
    run_generate(config(tiny_model_dir, prompts_file, tmp_path / "again.jsonl"))
    assert (tmp_path / "again.jsonl").read_bytes() == out.read_bytes()
    run_generate(config(tiny_model_dir, prompts_file, tmp_path / "seed1.jsonl", "seed=1"))
    a, b = read_jsonl(out), read_jsonl(tmp_path / "seed1.jsonl")
    assert [r["prompt"] for r in a] == [r["prompt"] for r in b]
    assert all(x["completions"] != y["completions"] for x, y in zip(a, b))


def test_seeds_depend_on_position_only():
    assert batch_seed(0, 3) == batch_seed(0, 3) != batch_seed(1, 3) != batch_seed(0, 4)
    assert 0 <= prompt_seed(5, 10**6) < 2**31
    assert len({batch_seed(s, b) for s in range(20) for b in range(20)}) == 400


@pytest.mark.slow
def test_two_processes_give_the_one_process_file(reference, tiny_model_dir, prompts_file, tmp_path):
    """accelerate launch, 2 processes (gloo on CPU): batches 0, 2 on one, 1 on the other."""
    ref, _ = reference
    out = tmp_path / "two.jsonl"
    args = [f"model={tiny_model_dir}", f"prompts={prompts_file}", f"output={out}", "num_completions=3",
            "max_new_tokens=12", "batch_size=4", "seed=0"]
    r = launch("generate", args)
    assert r.stdout.startswith("prefero generate: 2 processes on cpu, 12 prompts (0 done before)")
    assert out.read_bytes() == ref.read_bytes()
    report = json.loads(Path(report_path(str(out))).read_text())
    assert report["processes"] == 2 and report["prompts_this_run"] == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.jsonl", "two.report.json"]


# --------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_bytes(tiny_model_dir, tmp_path):
    prompts = write_jsonl(tmp_path / "many.jsonl", prompt_rows(24))
    args = ["num_completions=2", "max_new_tokens=32", "batch_size=2"]
    reference = run_generate(config(tiny_model_dir, prompts, tmp_path / "ref" / "gen.jsonl", *args))
    out = tmp_path / "run" / "gen.jsonl"
    cmd = [sys.executable, "-m", "prefero", "generate", f"model={tiny_model_dir}", f"prompts={prompts}",
           f"output={out}", "seed=0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ONE_THREAD_ENV)
    partial = out.with_name("gen.partial.jsonl")
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if partial.exists() and partial.read_bytes().count(b"\n") >= 4:
            proc.send_signal(signal.SIGKILL)  # no cleanup, no flush: as a crash or an OOM kill
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not out.exists()
    kept = partial.read_bytes()
    done = kept[: kept.rfind(b"\n") + 1].count(b"\n")
    assert 4 <= done < 24
    with open(partial, "ab") as f:  # what a kill in the middle of a write leaves
        f.write(b'{"index": 23, "prompt": "cut off mid-wri')

    report = run_generate(config(tiny_model_dir, prompts, out, *args))
    assert out.read_bytes() == (tmp_path / "ref" / "gen.jsonl").read_bytes()
    assert report["resumed_prompts"] == done and report["prompts_this_run"] == 24 - done
    assert report["duplicate_rows_dropped"] == 0
    assert report["tokens_generated"] == reference["tokens_generated"]
    assert not partial.exists() and not out.with_name("gen.partial.meta.json").exists()


def test_resume_with_other_settings_is_refused(tiny_model_dir, prompts_file, tmp_path):
    out = tmp_path / "gen.jsonl"
    first = config(tiny_model_dir, prompts_file, out)
    StageOutput(out, first.settings(prompts_sha256(read_prompts(prompts_file)))).start()
    partial = out.with_name("gen.partial.jsonl")
    partial.write_text('{"index": 0}\n')
    with pytest.raises(ConfigError, match=r"different settings \(seed: 0 -> 1\); rerun with the same settings"):
        run_generate(config(tiny_model_dir, prompts_file, out, "seed=1"))
    assert partial.exists()  # nothing discarded without overwrite=true


def test_finished_output_is_not_overwritten_without_asking(reference, tiny_model_dir, prompts_file, tmp_path):
    out = tmp_path / "gen.jsonl"
    out.write_text("precious\n")
    with pytest.raises(ConfigError, match="already exists; set overwrite=true"):
        run_generate(config(tiny_model_dir, prompts_file, out))
    assert out.read_text() == "precious\n"
    run_generate(config(tiny_model_dir, prompts_file, out, "overwrite=true"))
    assert out.read_bytes() == reference[0].read_bytes()


# --------------------------------------------------------------------------- the model side


def test_model_generation_defaults_do_not_change_the_completions(reference, tiny_model_dir, prompts_file, tmp_path):
    """transformers would take these from generation_config.json for every option the
    call leaves unset; the config is the whole story, so the file must not change."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    gen_cfg = json.loads((model / "generation_config.json").read_text())
    gen_cfg.update(repetition_penalty=10.0, top_k=1, top_p=0.1, min_p=0.5, typical_p=0.2, temperature=0.01,
                   min_new_tokens=5, min_length=7, no_repeat_ngram_size=2, do_sample=False)
    (model / "generation_config.json").write_text(json.dumps(gen_cfg))
    with transformers_warnings() as warned:
        run_generate(config(model, prompts_file, tmp_path / "gen.jsonl"))
    assert (tmp_path / "gen.jsonl").read_bytes() == reference[0].read_bytes()
    # issue 16.17: "Both `min_new_tokens` and `min_length` seem to have been set" came once per call
    assert not [w for w in warned if "min_length" in w or "max_length" in w], warned


@contextlib.contextmanager
def transformers_warnings():
    """The messages transformers logs while the block runs."""
    import logging

    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    logger, handler = logging.getLogger("transformers"), Keep(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)


def test_no_length_warning_on_any_generate_call(tiny_model_dir, prompts_file, tmp_path):
    with transformers_warnings() as warned:
        run_generate(config(tiny_model_dir, prompts_file, tmp_path / "gen.jsonl", "max_new_tokens=2"))
    assert not [w for w in warned if "min_length" in w or "max_length" in w], warned


def greedy(model, prompts, output, *extra):
    return config(model, prompts, output, "temperature=0", "num_completions=1", *extra)


def test_left_padded_batch_equals_one_prompt_at_a_time(tiny_model_dir, tmp_path):
    """Greedy completions do not depend on batch-mates: padding is on the left, masked,
    and positions start at each prompt's first real token."""
    prompts = write_jsonl(tmp_path / "p.jsonl", prompt_rows(10))  # lengths differ by up to ~10 tokens
    run_generate(greedy(tiny_model_dir, prompts, tmp_path / "b1.jsonl", "batch_size=1"))
    run_generate(greedy(tiny_model_dir, prompts, tmp_path / "b5.jsonl", "batch_size=5"))
    one, five = read_jsonl(tmp_path / "b1.jsonl"), read_jsonl(tmp_path / "b5.jsonl")
    assert [r["completions"] for r in one] == [r["completions"] for r in five]
    assert [r["tokens"] for r in one] == [r["tokens"] for r in five]


def test_model_input_is_the_chat_template_left_padded(tiny_model_dir, tiny_tokenizer, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi"}, {"prompt": "Tell me a long story about the sea."}])
    cfg = greedy(tiny_model_dir, prompts, tmp_path / "g.jsonl", "max_new_tokens=3")
    sampler = TransformersSampler(cfg)
    seen = {}
    original = sampler.model.generate

    def recording_generate(**kwargs):
        seen.update(kwargs)
        return original(**kwargs)

    sampler.model.generate = recording_generate
    samples = sampler.sample(read_prompts(prompts), [0, 1], batch=0)
    tok = tiny_tokenizer
    expected = [tok.encode(tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                   tokenize=False), add_special_tokens=False)
                for text in ("Hi", "Tell me a long story about the sea.")]
    assert expected[0][0] == tok.bos_token_id != expected[0][1]  # one BOS, from the template
    assert tok.decode(expected[0]).endswith("<|im_end|>\n<|im_start|>assistant\n")  # the generation prompt
    ids, mask = seen["input_ids"].tolist(), seen["attention_mask"].tolist()
    pad = len(expected[1]) - len(expected[0])
    assert pad > 0
    assert ids[0] == [tok.pad_token_id] * pad + expected[0] and mask[0] == [0] * pad + [1] * len(expected[0])
    assert ids[1] == expected[1] and mask[1] == [1] * len(expected[1])
    assert samples[0].prompt == [{"role": "user", "content": "Hi"}]


def test_stop_tokens_cut_completions_and_limits_are_counted(tiny_model_dir, tmp_path):
    """Greedy, so a stopped run must equal the unstopped run cut at the first stop token.
    The tokenizer's EOS and the model's declared EOS ids are both stop tokens; the tiny
    random model rarely emits its EOS, so a token it does emit is declared one."""
    prompts = write_jsonl(tmp_path / "p.jsonl", prompt_rows(8))
    cfg = greedy(tiny_model_dir, prompts, tmp_path / "free.jsonl")
    sampler = TransformersSampler(cfg)
    rendered = [encode_prompt(sampler.encoder, model_prompt(p, True, "prompt"), p) for p in read_prompts(prompts)]
    input_ids, mask = left_pad(rendered, sampler.pad_id)
    with torch.inference_mode():
        out = sampler.model.generate(input_ids=input_ids, attention_mask=mask,
                                     generation_config=sampler.generation_config)
    free = out[:, input_ids.shape[1]:].tolist()
    stop = free[0][3]  # prompt 0 stops at its 4th token at the latest

    stopped_model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, stopped_model)
    gen_cfg = json.loads((stopped_model / "generation_config.json").read_text())
    gen_cfg["eos_token_id"] = [sampler.tokenizer.eos_token_id, stop]
    (stopped_model / "generation_config.json").write_text(json.dumps(gen_cfg))
    report = run_generate(greedy(stopped_model, prompts, tmp_path / "stopped.jsonl"))
    rows = read_jsonl(tmp_path / "stopped.jsonl")

    hits = tokens = 0
    for row, ids in zip(rows, free):
        cut = ids.index(stop) if stop in ids else None
        expected_ids = ids if cut is None else ids[:cut]
        assert row["completions"] == [sampler.tokenizer.decode(expected_ids, skip_special_tokens=True)]
        assert row["finish_reasons"] == ["length" if cut is None else "stop"]
        assert row["tokens"] == (12 if cut is None else cut + 1)  # the stop token counts
        hits += cut is None
        tokens += row["tokens"]
    assert rows[0]["finish_reasons"] == ["stop"] and rows[0]["tokens"] <= 4
    assert report["hit_max_new_tokens"] == hits and report["tokens_generated"] == tokens


def test_completion_ids_worked_examples():
    eos = [2, 7]
    r = completion_ids([5, 6, 7, 0, 0], eos)
    assert (r.ids, r.length, r.finish_reason) == ([5, 6], 3, "stop")
    r = completion_ids([5, 6, 8], eos)
    assert (r.ids, r.length, r.finish_reason) == ([5, 6, 8], 3, "length")
    r = completion_ids([2, 0, 0], eos)
    assert (r.ids, r.length, r.finish_reason) == ([], 1, "stop")


# --------------------------------------------------------------------------- bad input


def test_bad_keys_name_the_key_and_range(tmp_path):
    base = ["model=m", "prompts=p.jsonl", f"output={tmp_path / 'o.jsonl'}"]
    for override, message in [
        ("num_completions=0", "num_completions must be >= 1, got 0"),
        ("top_p=1.5", r"top_p must be in \(0, 1\], got 1.5"),
        ("temperature=-0.1", "temperature must be >= 0, got -0.1"),
        ("max_new_tokens=0", "max_new_tokens must be >= 1"),
        ("backend=vlm", "backend: 'vlm' is not one of"),
        ("output=gen.json", "must end in .jsonl"),
        ("max_concurrency=0", "max_concurrency must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, base + [override], cls=GenerateConfig)
    with pytest.raises(ConfigError, match="backend 'openai' needs base_url"):
        load_config(None, base + ["backend=openai"], cls=GenerateConfig)
    with pytest.raises(ConfigError, match="`prompts` is required"):
        load_config(None, ["model=m", "output=o.jsonl"], cls=GenerateConfig)
    # built in Python, not through load_config: validate() checks the declared ranges too
    with pytest.raises(ConfigError, match="num_completions must be >= 1, got 0"):
        GenerateConfig(model="m", prompts="p", output="o.jsonl", num_completions=0).validate()


def test_bad_prompt_files_are_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code = main(["generate", "model=m", f"prompts={empty}", f"output={tmp_path / 'o.jsonl'}"])
    err = capsys.readouterr().err
    assert code == 2 and err == f"prefero: error: {empty}: file is empty (no records)\n"

    rows = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "ok"}, {"prompt": "ok too"}, {"text": "no prompt"}])
    with pytest.raises(DataError, match=r"rows.jsonl: row 3, field 'prompt': missing \(the record has columns: text\)"):
        read_prompts(rows)
    with pytest.raises(DataError, match=r"row 1, field 'question': missing"):
        read_prompts(rows, column="question")
    ends = write_jsonl(tmp_path / "ends.jsonl", [{"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])
    with pytest.raises(DataError, match="row 1, field 'prompt': a conversation prompt must end with a user turn"):
        read_prompts(ends)
    blank = write_jsonl(tmp_path / "blank.jsonl", [{"prompt": "  "}])
    with pytest.raises(DataError, match="row 1, field 'prompt': empty"):
        read_prompts(blank)


def test_message_prompt_without_chat_template_is_refused_before_sampling(tiny_model_dir, prompts_file, tmp_path):
    with pytest.raises(DataError, match=r"row 3, field 'prompt': is a message list, which needs a chat template"):
        run_generate(config(tiny_model_dir, prompts_file, tmp_path / "g.jsonl", "chat_template=off"))  # YAML: off == false
    assert not partial_paths(tmp_path / "g.jsonl")  # refused before any row was written


def test_vllm_missing_is_a_config_error(tiny_model_dir, prompts_file, tmp_path):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    with pytest.raises(ConfigError, match=r"backend 'vllm' needs vllm: pip install 'prefero\[vllm\]'"):
        run_generate(config(tiny_model_dir, prompts_file, tmp_path / "g.jsonl", "backend=vllm"))


def test_vllm_backend_glue_with_a_stand_in_module(tiny_model_dir, tiny_tokenizer, prompts_file, tmp_path, monkeypatch):
    """vLLM itself is not installed here (it needs a GPU); a stand-in module records what
    prefero asks of it: prefero's prompt ids, one request per prompt with its own seed,
    n=K, the sampling settings, and reads its outputs back into rows."""
    import types

    from prefero.data.tokenize import Encoder

    calls = {}

    class SamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class LLM:
        def __init__(self, **kw):
            calls["llm"] = kw

        def generate(self, requests, params, use_tqdm):
            calls.setdefault("requests", []).extend(requests)
            calls.setdefault("params", []).extend(params)
            out = types.SimpleNamespace
            return [out(outputs=[out(index=j, text=f"seed {p.seed} #{j}", token_ids=[1] * (j + 1),
                                     finish_reason="length" if j == 0 else "stop") for j in reversed(range(p.n))])
                    for p in params]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    report = run_generate(config(tiny_model_dir, prompts_file, tmp_path / "g.jsonl", "backend=vllm"))
    rows = read_jsonl(tmp_path / "g.jsonl")
    assert calls["llm"]["model"] == str(tiny_model_dir) and calls["llm"]["generation_config"] == "vllm"
    encoder = Encoder(tiny_tokenizer)
    for p, request, params, row in zip(read_prompts(prompts_file), calls["requests"], calls["params"], rows):
        assert request["prompt_token_ids"] == encode_prompt(encoder, model_prompt(p, True, "prompt"), p)
        seed = prompt_seed(0, row["index"])
        assert (params.seed, params.n, params.temperature, params.top_k, params.max_tokens) == (seed, 3, 0.8, -1, 12)
        assert row["completions"] == [f"seed {seed} #{j}" for j in range(3)]  # in choice order
        assert row["finish_reasons"] == ["length", "stop", "stop"] and row["tokens"] == 1 + 2 + 3
    assert report["hit_max_new_tokens"] == 12 and report["tokens_generated"] == 72


# --------------------------------------------------------------------------- prompts in


def test_read_prompts_accepts_every_prompt_shape(tmp_path, reference):
    conversation = [{"role": "user", "content": "q"}]
    rows = [
        {"prompt": "plain"},
        {"prompt": conversation},
        {"prompt": "explicit pair", "chosen": "a", "rejected": "a"},  # only the prompt is read
        {"chosen": conversation + [{"role": "assistant", "content": "good"}],
         "rejected": conversation + [{"role": "assistant", "content": "bad"}]},
        {"chosen": "\n\nHuman: hey\n\nAssistant: yo", "rejected": "\n\nHuman: hey\n\nAssistant: no"},
    ]
    got = read_prompts(write_jsonl(tmp_path / "p.jsonl", rows))
    assert [p.text for p in got] == ["plain", conversation, "explicit pair", conversation, "\n\nHuman: hey\n\nAssistant:"]
    assert [p.row for p in got] == [1, 2, 3, 4, 5]
    # generate's own output is a prompts file for the next stage
    assert [p.text for p in read_prompts(reference[0])] == [r["prompt"] for r in read_jsonl(reference[0])]


# --------------------------------------------------------------------------- stage output


def test_stage_output_torn_tail_duplicates_and_missing_rows(tmp_path):
    out = tmp_path / "s.jsonl"
    stage = StageOutput(out, {"k": 1})
    assert stage.start() == set()
    stage.append([{"index": 2, "v": "c"}, {"index": 0, "v": "a"}])
    stage.append([{"index": 0, "v": "dup"}])
    partial = out.with_name("s.partial.jsonl")
    with open(partial, "ab") as f:
        f.write(b'{"index": 1, "v"')  # torn
    again = StageOutput(out, {"k": 1})
    assert again.start() == {0, 2}
    assert partial.read_bytes().endswith(b'"dup"}\n')  # the torn tail was cut before appending
    with pytest.raises(RuntimeError, match=r"missing rows for indices \[1\] \(1 in all\)"):
        again.finish(3)
    assert partial.exists()  # kept to resume from
    again.append([{"index": 1, "v": "b"}])
    summary = again.finish(3)
    assert summary == {"rows": 3, "duplicates": 1, "resumed": 2, "counts": {}}
    assert [r["v"] for r in read_jsonl(out)] == ["a", "b", "c"]  # index order, first row of a duplicate
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.jsonl"]


def test_settings_of_a_run_killed_before_its_first_row_are_replaced(tmp_path):
    out = tmp_path / "s.jsonl"
    StageOutput(out, {"seed": 0}).start()  # meta written, no row yet
    assert StageOutput(out, {"seed": 1}).start() == set()  # nothing to lose: no refusal
    assert json.loads(out.with_name("s.partial.meta.json").read_text()) == {"seed": 1}


def test_rows_of_a_version_without_a_new_unset_option_resume_and_a_set_one_is_named(tmp_path):
    out = tmp_path / "s.jsonl"
    first = StageOutput(out, {"seed": 0})
    first.start()
    first.append([{"index": 0, "v": "a"}])
    assert StageOutput(out, {"seed": 0, "new_option": None}).start() == {0}  # the same run: resumed
    with pytest.raises(ConfigError, match=r"different settings \(new_option: None -> 2\)"):
        StageOutput(out, {"seed": 0, "new_option": 2}).start()


def test_corrupt_line_before_the_end_is_an_error(tmp_path):
    path = tmp_path / "x.partial.jsonl"
    path.write_bytes(b'{"index": 0}\nnot json\n{"index": 1}\n')
    with pytest.raises(DataError, match=r"x.partial.jsonl: row 2: corrupt partial row"):
        list(read_jsonl_rows(path))
    path.write_bytes(b'{"index": 0}\n\x00\x00\x00\n')  # a zero-filled last line: torn, ignored
    assert [r["index"] for _, r in read_jsonl_rows(path)] == [0]


def test_rows_of_every_process_are_merged(tmp_path):
    """Process 1's partial file and done marker; process 0 merges both in index order, and
    sums the tallies each process hands in."""
    out = tmp_path / "m.jsonl"
    p0 = StageOutput(out, {"k": 1}, rank=0, world_size=2, barrier=lambda: None)
    p1 = StageOutput(out, {"k": 1}, rank=1, world_size=2, barrier=lambda: None)
    p0.start(), p1.start()
    p0.append([{"index": 0}, {"index": 1}])
    p1.append([{"index": 3}, {"index": 2}])
    assert [p.name for p in partial_paths(out)] == ["m.partial.jsonl", "m.partial.r1.jsonl"]
    assert p1.finish(4, counts={"truncated": 2, "empty": 1}) == {}
    merged = p0.finish(4, poll_seconds=0.01, counts={"truncated": 3})
    assert merged["rows"] == 4 and merged["counts"] == {"empty": 1, "truncated": 5}
    assert [r["index"] for r in read_jsonl(out)] == [0, 1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]


# --------------------------------------------------------------------------- openai backend


def test_openai_backend_end_to_end_with_faults_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFERO_GEN_KEY", KEY)
    prompts = write_jsonl(tmp_path / "p.jsonl", prompt_rows(6))
    # max_choices=2: a server that ignores n, so the backend asks again for the rest
    with FakeOpenAIServer(api_key=KEY, max_choices=2, model="fake-model") as server:
        server.fail("429", times=2, retry_after=0.05)
        server.fail("500", match="Describe a lake")  # prompt 2 (batch 1) fails for good in the first run
        out = tmp_path / "out" / "gen.jsonl"
        url = server.base_url
        args = ["backend=openai", f"base_url={url}", "api_key_env=PREFERO_GEN_KEY", "max_retries=2",
                "max_concurrency=3", "timeout=5", "max_new_tokens=5", "batch_size=2"]
        with pytest.raises(OpenAIError, match="HTTP 500.*gave up after 3 attempts"):
            run_generate(config("fake-model", prompts, out, *args))
        leftovers = {p.name: p.read_text() for p in out.parent.iterdir()}
        assert sorted(leftovers) == ["gen.partial.jsonl", "gen.partial.meta.json"]
        assert all(KEY not in text for text in leftovers.values())
        server.clear_faults()
        report = run_generate(config("fake-model", prompts, out, *args))

    rows = read_jsonl(out)
    assert [r["index"] for r in rows] == list(range(6)) and report["resumed_prompts"] == 2
    by_request = {}
    for req in server.requests:
        if req.fault is None:
            by_request.setdefault(json.dumps(req.body["messages"]), []).append(req.body)
    for row in rows:
        bodies = by_request[json.dumps(row["prompt"])]
        # K=3 with 2 choices per reply: n=3 then n=1, the second request on the next seed
        assert [b["n"] for b in bodies][-2:] == [3, 1]
        assert [b["seed"] for b in bodies][-2:] == [prompt_seed(0, row["index"]), prompt_seed(0, row["index"]) + 1]
        expected = [server.reply_tokens(bodies[-2], i) for i in range(2)] + [server.reply_tokens(bodies[-1], 0)]
        assert row["completions"] == ["".join(t for t, _ in toks[:5]).lstrip() for toks in expected]
        assert row["finish_reasons"] == ["length" if len(toks) > 5 else "stop" for toks in expected]
        assert row["tokens"] == sum(min(len(toks), 5) for toks in expected)
    assert all(r.headers.get("authorization") == f"Bearer {KEY}" for r in server.requests)
    assert sorted(p.name for p in out.parent.iterdir()) == ["gen.jsonl", "gen.report.json"]
    for path in out.parent.iterdir():
        assert KEY not in path.read_text()
    assert report["base_url"] == url and "PREFERO_GEN_KEY" not in json.dumps(report)


def test_greedy_with_several_completions_is_a_config_error_before_any_work(tmp_path):
    """temperature 0 with K > 1 once reached transformers' generate and raised there (in
    selfplay, after its output directory was made): K greedy answers are one answer."""
    from prefero.selfplay.config import SelfPlayConfig

    with pytest.raises(ConfigError, match="temperature 0 .* num_completions=3 would give 3 identical"):
        load_config(None, ["model=m", "prompts=p.jsonl", "output=o.jsonl", "temperature=0",
                           "num_completions=3"], cls=GenerateConfig)
    load_config(None, ["model=m", "prompts=p.jsonl", "output=o.jsonl", "temperature=0", "num_completions=1"],
                cls=GenerateConfig)
    out = tmp_path / "sp"
    with pytest.raises(ConfigError, match="^generation: temperature 0"):
        load_config(None, ["model=m", "prompts=p.jsonl", f"output_dir={out}", "generation.temperature=0",
                           "judge.type=callable", "judge.function=examples/verifiers.py:arithmetic"],
                    cls=SelfPlayConfig)
    assert not out.exists()
