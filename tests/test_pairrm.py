"""PairRM checkpoints (llm-blender's ranker, Hugging Face layout) as a `pairwise_model` judge.

The checkpoint here is a tiny random one written in the published layout by the test itself:
the encoder and the head are built from torch/transformers classes apart from prefero's, their
weights saved under the layout's names (`pretrained_model.*`, `head_layer.*`), and the
reference logit is computed below by hand, one unpadded pair at a time. Agreement with the
published weights is not tested (nothing is downloaded).
"""

import json
import math

import pytest
import torch
from torch import nn

from jsonl_files import write_jsonl
from prefero.cli import main
from prefero.data.errors import DataError
from prefero.data.formats import Where
from prefero.judges import Item
from prefero.judges.config import JudgeConfig
from prefero.judges.pairrm import PairRMJudge, is_pairrm, pair_ids
from prefero.options import ConfigError
from prefero.tiny import demo_corpus

SPECIAL = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "<|source|>", "<|candidate1|>", "<|candidate2|>"]


def build_tokenizer():
    """Byte-level BPE with DeBERTa-v3's framing and special tokens: every encode is [CLS] ... [SEP],
    [CLS] and [SEP] are also its BOS and EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(demo_corpus(), trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL,
                                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                                   unk_token="[UNK]", bos_token="[CLS]", eos_token="[SEP]")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(directory, encoder, head): 2 layers, hidden 32, 2 tasks (so the mean over tasks counts)."""
    from safetensors.torch import save_file
    from transformers import DebertaV2Config, DebertaV2Model

    directory = tmp_path_factory.mktemp("pairrm")
    tok = build_tokenizer()
    ids = tok.convert_tokens_to_ids(SPECIAL)
    config = DebertaV2Config(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=512, relative_attention=True, position_buckets=64, pos_att_type=["p2c", "c2p"],
        position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True, pad_token_id=ids[0],
        initializer_range=0.5,  # weights large enough that the context moves the prefix tokens' states
        architectures=["DebertaV2PairRM"], n_tasks=2, drop_out=0.05, sep_token_id=ids[2],
        source_prefix_id=ids[4], cand1_prefix_id=ids[5], cand2_prefix_id=ids[6])
    torch.manual_seed(0)
    encoder = DebertaV2Model(config).eval()
    head = nn.Sequential(nn.Dropout(0.05), nn.Linear(64, 32), nn.Tanh(), nn.Dropout(0.05), nn.Linear(32, 2)).eval()
    nn.init.normal_(head[1].weight, std=0.5), nn.init.normal_(head[4].weight, std=0.5)  # spread the logits
    state = {f"pretrained_model.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"head_layer.{k}": v for k, v in head.state_dict().items()})
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    config.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory, encoder, head, tok


def reference_logit(encoder, head, tok, x, a, b):
    """l(x, a, b), written out from the model card: encode the three parts apart, concatenate,
    one forward without padding, the head on [source; candidate] at each prefix token."""
    src = tok.encode("<|source|>" + x, max_length=1224, truncation=True)
    budget = (2048 - len(src)) // 2
    c1 = tok.encode("<|candidate1|>" + a, max_length=budget, truncation=True)
    c2 = tok.encode("<|candidate2|>" + b, max_length=budget, truncation=True)
    ids = src + c1 + c2
    with torch.no_grad():
        h = encoder(input_ids=torch.tensor([ids])).last_hidden_state[0]
        e_s, e_1, e_2 = (h[ids.index(tok.convert_tokens_to_ids(t))] for t in SPECIAL[4:])
        return (head(torch.cat([e_s, e_1])) - head(torch.cat([e_s, e_2]))).mean().item()


ITEMS = [Item("Describe the sea.", ["The sea is wide and deep.", "No.", "Waves, salt and tides all day long."],
              Where("gen.jsonl", 1)),
         Item([{"role": "user", "content": "Explain a storm."}],
              ["A storm is wind and rain.", [{"role": "assistant", "content": "Rain."}]], Where("gen.jsonl", 2))]


def test_the_layout_is_recognised_and_loaded(checkpoint):
    directory = checkpoint[0]
    assert is_pairrm(str(directory)) and not is_pairrm(str(directory / "missing"))
    judge = PairRMJudge(JudgeConfig(type="pairwise_model", model=str(directory)).validate())
    assert judge.prefix_ids == checkpoint[3].convert_tokens_to_ids(SPECIAL[4:])


def test_probabilities_equal_the_hand_computation_in_both_orders(checkpoint):
    directory, encoder, head, tok = checkpoint
    judge = PairRMJudge(JudgeConfig(type="pairwise_model", model=str(directory)).validate())
    judge.batch_size = 4  # rows of several lengths share a padded forward
    requests = [(ITEMS[0], 0, 1), (ITEMS[0], 2, 0), (ITEMS[0], 1, 2), (ITEMS[1], 0, 1), (ITEMS[1], 1, 0)]
    got = judge.compare(requests)
    texts = {0: ("Describe the sea.", ITEMS[0].completions), 1: ("Explain a storm.", ["A storm is wind and rain.",
                                                                                      "Rain."])}
    spread = []
    for (item, i, j), p in zip(requests, got):
        x, comps = texts[ITEMS.index(item)]
        forward = reference_logit(encoder, head, tok, x, comps[i], comps[j])
        backward = reference_logit(encoder, head, tok, x, comps[j], comps[i])
        want = 1 / (1 + math.exp(-(forward - backward) / 2))
        # float32 forwards of a padded batch and of one unpadded row differ in the last bits (~1e-7
        # relative); 1e-5 leaves room for the sum over hidden units, and is far below any spread
        assert p == pytest.approx(want, rel=1e-5, abs=1e-6)
        spread.append(abs(p - 0.5))
    assert max(spread) > 0.05  # the weights separate the candidates: the check above is not ½ == ½
    assert got[3] + got[4] == 1.0  # one question per pair: the other order is exactly 1 − P


def test_inputs_are_cut_as_the_model_card_cuts_them(checkpoint):
    tok = checkpoint[3]
    prefix_ids = tok.convert_tokens_to_ids(SPECIAL[4:])
    long = " ".join(["waves"] * 40)
    ids, marks = pair_ids(tok, prefix_ids, long, long, "short", source_max_length=10, max_length=30)
    source = tok.encode("<|source|>" + long, max_length=10, truncation=True)
    assert len(source) == 10 and ids[:10] == source
    budget = (30 - 10) // 2
    first = tok.encode("<|candidate1|>" + long, max_length=budget, truncation=True)
    second = tok.encode("<|candidate2|>short")
    assert len(first) == budget and ids == source + first + second
    assert marks == [1, 10 + 1, 10 + budget + 1]  # each prefix right after its part's [CLS]


def test_a_length_too_small_for_the_prefix_tokens_is_refused_in_one_line(checkpoint):
    tok = checkpoint[3]
    prefix_ids = tok.convert_tokens_to_ids(SPECIAL[4:])
    # 10 source tokens leave (11 - 10) // 2 = 0 per candidate: [CLS] and the prefix cannot both fit
    with pytest.raises(ConfigError, match=r"^judge: a PairRM input of 11 tokens .* too few to keep each part's prefix"):
        pair_ids(tok, prefix_ids, "sea " * 20, "wave", "tide", source_max_length=10, max_length=11)


def test_a_conversation_prompt_is_refused_naming_the_row(checkpoint):
    judge = PairRMJudge(JudgeConfig(type="pairwise_model", model=str(checkpoint[0])).validate())
    chat = Item([{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."},
                 {"role": "user", "content": "Describe the sea."}], ["Wide.", "Deep."], Where("gen.jsonl", 3))
    with pytest.raises(DataError, match=r"gen\.jsonl: row 3, field 'prompt': .*conversation of 3 messages"):
        judge.compare([(chat, 0, 1)])


def test_a_config_without_the_prefix_ids_is_refused(checkpoint, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(checkpoint[0], broken)
    config = json.loads((broken / "config.json").read_text())
    del config["cand2_prefix_id"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="lacks cand2_prefix_id"):
        PairRMJudge(JudgeConfig(type="pairwise_model", model=str(broken)).validate())


def test_judge_command_matrix_feeds_label(checkpoint, tmp_path):
    rows = [{"index": 4, "prompt": "Describe the sea.", "completions": ITEMS[0].completions},
            {"index": 8, "prompt": "Explain a storm.", "completions": ["A storm is wind and rain.", "Rain."]}]
    gen = write_jsonl(tmp_path / "gen.jsonl", rows)
    judged = tmp_path / "judged.jsonl"
    assert main(["judge", f"input={gen}", f"output={judged}", "judge.type=pairwise_model",
                 f"judge.model={checkpoint[0]}", "mode=pairwise"]) == 0
    out = [json.loads(line) for line in judged.read_text().splitlines()]
    for r in out:
        m = r["pairwise"]
        assert all(m[i][j] + m[j][i] == 1.0 for i in range(len(m)) for j in range(len(m)) if i != j)
    assert main(["label", f"input={judged}", f"output={tmp_path / 'sppo.jsonl'}", "format=sppo"]) == 0
    labelled = [json.loads(line) for line in (tmp_path / "sppo.jsonl").read_text().splitlines()]
    assert len(labelled) == 2
