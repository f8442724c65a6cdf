"""The chat templates users bring (tests/chat_templates.py): Llama-3, Gemma and Qwen2.5
behaviours beside the ChatML test template.

For each: the prompt ids are exactly the template's rendering (what the model reads at
inference), shared by chosen and rejected, with one BOS at most; each completion ends with
the template's end-of-turn token and nothing after it (no EOS, no newline: generation stops
at that token); `prefero generate` stops there too.
"""

import json
import shutil

import pytest
import torch

from chat_templates import FAMILIES, QWEN_DEFAULT_SYSTEM, build_family_tokenizer
from jsonl_files import read_jsonl, write_jsonl
from prefero.cli import main
from prefero.data import DataError, DataOptions, load_pairs
from prefero.data.tokenize import Encoder
from prefero.generate import GenerateConfig, run_generate

PROMPT = [{"role": "user", "content": "Tell me about the sea."},
          {"role": "assistant", "content": "It is large."},
          {"role": "user", "content": "And the moon?"}]
CHOSEN = [{"role": "assistant", "content": "The moon is bright tonight."}]
REJECTED = [{"role": "assistant", "content": "No."}]
ALL = [*FAMILIES, "chatml"]


@pytest.fixture(scope="module")
def tokenizers(tiny_tokenizer):
    return {**{name: build_family_tokenizer(name) for name in FAMILIES}, "chatml": tiny_tokenizer}


def rendered_ids(tok, messages, generation_prompt):
    """The template's text tokenized as transformers' apply_chat_template(tokenize=True) does:
    no special tokens added, the template wrote the ones it wants."""
    text = tok.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
    return tok.encode(text, add_special_tokens=False)


def load_one(tmp_path, tok, record, **opts):
    pairs, report = load_pairs(write_jsonl(tmp_path / "pairs.jsonl", [record]), tok, DataOptions(**opts))
    return pairs[0], report


@pytest.mark.parametrize("family", ALL)
def test_prompt_ids_are_the_rendered_template_with_one_bos(family, tokenizers, tmp_path):
    tok = tokenizers[family]
    pair, _ = load_one(tmp_path, tok, {"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED})
    assert pair.prompt_ids == rendered_ids(tok, PROMPT, True)  # one prompt_ids: shared by construction
    bos = tok.bos_token_id
    if bos is None:
        assert FAMILIES.get(family) and FAMILIES[family].bos is None
    else:
        assert pair.prompt_ids[0] == bos and pair.prompt_ids.count(bos) == 1  # template's BOS, not the tokenizer's too
        assert tok.encode("x")[0] == bos  # ...although the tokenizer does add one to plain text
    # prompt + completion is the whole conversation's rendering, cut after the end-of-turn token
    for completion, ids in ((CHOSEN, pair.chosen_ids), (REJECTED, pair.rejected_ids)):
        full = rendered_ids(tok, PROMPT + completion, False)
        assert pair.prompt_ids + ids == full[:len(pair.prompt_ids) + len(ids)]
        assert all(not tok.decode([t]).strip() for t in full[len(pair.prompt_ids) + len(ids):])


@pytest.mark.parametrize("family", ALL)
def test_completion_ends_with_the_end_of_turn_token_and_nothing_after(family, tokenizers, tmp_path):
    tok = tokenizers[family]
    end_of_turn = tok.convert_tokens_to_ids(FAMILIES[family].end_of_turn if family in FAMILIES else "<|im_end|>")
    assert Encoder(tok).end_of_turn_id == end_of_turn
    pair, _ = load_one(tmp_path, tok, {"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED})
    for ids in (pair.chosen_ids, pair.rejected_ids):
        assert ids[-1] == end_of_turn and ids.count(end_of_turn) == 1
        if end_of_turn != tok.eos_token_id:  # llama3, gemma, qwen25: no EOS after the turn's end
            assert tok.eos_token_id not in ids
    # a plain-string record is not a turn: the tokenizer's BOS once, EOS appended
    pair, _ = load_one(tmp_path, tok, {"prompt": "Hi.", "chosen": "Hello there.", "rejected": "No."})
    assert pair.chosen_ids[-1] == tok.eos_token_id and pair.chosen_ids.count(tok.eos_token_id) == 1
    assert pair.prompt_ids.count(tok.bos_token_id) == (tok.bos_token_id is not None)


def test_gemma_system_message_is_refused_or_merged_as_the_template_does(tokenizers, tmp_path, capsys):
    record = {"prompt": [{"role": "system", "content": "Be brief."}, *PROMPT], "chosen": CHOSEN, "rejected": REJECTED}
    with pytest.raises(DataError) as e:
        load_one(tmp_path, tokenizers["gemma"], record)
    assert str(e.value) == (f"{tmp_path / 'pairs.jsonl'}: row 1, field 'prompt': chat template failed: "
                            "this model has no system role")
    merged, _ = load_one(tmp_path, tokenizers["gemma_merged"], record)
    text = tokenizers["gemma_merged"].decode(merged.prompt_ids)
    assert text.startswith("<bos><start_of_turn>user\nBe brief.\n\nTell me about the sea.<end_of_turn>\n")
    assert merged.prompt_ids.count(tokenizers["gemma_merged"].bos_token_id) == 1


def test_qwen_default_system_prompt_is_in_the_prompt_only_when_none_is_given(tokenizers, tmp_path):
    tok = tokenizers["qwen25"]
    default, _ = load_one(tmp_path, tok, {"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED})
    assert tok.decode(default.prompt_ids).startswith(f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}<|im_end|>\n")
    own, _ = load_one(tmp_path, tok, {"prompt": [{"role": "system", "content": "Be brief."}, *PROMPT],
                                      "chosen": CHOSEN, "rejected": REJECTED})
    assert QWEN_DEFAULT_SYSTEM not in tok.decode(own.prompt_ids)
    assert (default.chosen_ids, default.rejected_ids) == (own.chosen_ids, own.rejected_ids)


@pytest.fixture(scope="module")
def silent_models(tokenizers, tmp_path_factory):
    """Tiny models whose output layer is zero: every logit ties, so greedy decoding emits id 0,
    the end-of-turn token (tests/chat_templates.py), first; only EOS is declared a stop token."""
    from prefero.tiny import build_tiny_model

    out = {}
    for family in ("llama3", "gemma"):
        tok = tokenizers[family]
        model = build_tiny_model(tok, hidden_size=16)
        with torch.no_grad():
            model.lm_head.weight.zero_()
        assert model.generation_config.eos_token_id == tok.eos_token_id != 0
        out[family] = tmp_path_factory.mktemp(family)
        model.save_pretrained(out[family])
        tok.save_pretrained(out[family])
    return out


@pytest.mark.parametrize("family", ["llama3", "gemma"])
def test_generate_stops_at_the_end_of_turn_token(family, silent_models, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Tell me about the sea."}])
    for template, reason, tokens in (("auto", "stop", 1), ("false", "length", 4)):
        cfg = GenerateConfig(model=str(silent_models[family]), prompts=str(prompts),
                             output=str(tmp_path / f"{template}.jsonl"), num_completions=1, temperature=0.0,
                             max_new_tokens=4, chat_template=template)
        run_generate(cfg)
        [row] = read_jsonl(cfg.output)
        # templated: the end-of-turn token ends the turn; plain text: it is just a token
        assert (row["finish_reasons"], row["tokens"]) == ([reason], tokens)


def test_generate_refuses_a_prompt_past_the_model_positions(silent_models, tmp_path, capsys):
    """A 64-position model given a longer prompt: one line naming file, row and the limit,
    before anything is generated (it would otherwise write garbage with finish "stop")."""
    model = tmp_path / "short"
    shutil.copytree(silent_models["llama3"], model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 64}))
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi."}, {"prompt": "the ocean is deep " * 20}])
    args = ["generate", f"model={model}", f"prompts={prompts}", f"output={tmp_path / 'g.jsonl'}", "num_completions=1"]
    assert main(args + ["max_new_tokens=16"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("prefero: error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith(f"prefero: error: {prompts}: row 2, field 'prompt': the prompt has ")
    assert "more than the model's 64 positions (config.max_position_embeddings)" in lines[0]
    assert main(args + ["max_new_tokens=64"]) == 2
    assert "max_new_tokens: 64 leaves no room for a prompt in the model's 64 positions" in capsys.readouterr().err
    assert not (tmp_path / "g.jsonl").exists()
