"""PairRM checkpoints as a `pairwise_model` judge, read without the llm-blender package.

PairRM (the pairwise ranker of LLM-Blender, Jiang et al., 2023; the SPPO recipe ranks its K
samples with it) is published in a Hugging Face layout (`llm-blender/PairRM-hf`): a
`config.json` whose `architectures` is `["DebertaV2PairRM"]`, a DeBERTa-v2 encoder under
`pretrained_model.*` and a head under `head_layer.*`. `judge.type: pairwise_model` with
`judge.model` pointing at such a directory loads it here; a `prefero pm` output goes to
prefero.judges.pairwise_model.

The computation, for a prompt x and candidates a, b:

- input ids, as the checkpoint's model card builds them: the checkpoint's tokenizer
  encodes `<|source|>` + x (its special tokens included, right-truncated to
  `SOURCE_MAX_LENGTH` = 1224 tokens), then `<|candidate1|>` + a and `<|candidate2|>` + b,
  each truncated to (`MAX_LENGTH` − |source|) // 2 tokens with `MAX_LENGTH` = 2048; the
  three are concatenated;
- e_s, e_1, e_2: the encoder's last hidden state at the three prefix tokens;
- l(x, a, b) = mean over the head's outputs (tasks) of h([e_s; e_1]) − h([e_s; e_2]),
  h = Linear(2H → H) → tanh → Linear(H → n_tasks) (dropout off);
- P(a ≻ b) = σ((l(x, a, b) − l(x, b, a)) / 2): both orders, so P(a ≻ b) + P(b ≻ a) = 1
  by construction and the candidates' positions cancel.

A prompt is the source text: a string, or a conversation of one user message (its text);
a longer conversation is refused naming the row (the card defines no rendering for it).
The format is checked on a tiny random checkpoint built in the tests; the published
weights could not be downloaded here, so agreement with llm-blender's own scores on them is
not tested.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from prefero.judges.base import Item, ordered, pairwise_matrices, sigmoid, unorder, win_rates
from prefero.judges.reward_model import DTYPES, resolve_device
from prefero.model import load_tokenizer
from prefero.options import ConfigError

ARCHITECTURE = "DebertaV2PairRM"
SOURCE_MAX_LENGTH = 1224
MAX_LENGTH = 2048
#: The three prefix tokens: (config key of the id, token text)
PREFIXES = (("source_prefix_id", "<|source|>"), ("cand1_prefix_id", "<|candidate1|>"),
            ("cand2_prefix_id", "<|candidate2|>"))


def is_pairrm(directory: str) -> bool:
    """Whether `directory` holds a checkpoint in PairRM's Hugging Face layout."""
    path = Path(directory).expanduser() / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return ARCHITECTURE in (config.get("architectures") or [])


class PairRM(nn.Module):
    """The encoder and the head, under the checkpoint's own parameter names."""

    def __init__(self, config):
        super().__init__()
        from transformers import DebertaV2Model

        hidden, tasks = config.hidden_size, config.n_tasks
        self.pretrained_model = DebertaV2Model(config)
        self.head_layer = nn.Sequential(nn.Dropout(0.0), nn.Linear(2 * hidden, hidden), nn.Tanh(), nn.Dropout(0.0),
                                        nn.Linear(hidden, tasks))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, marks: torch.Tensor) -> torch.Tensor:
        """l(x, a, b) per row; `marks` [n, 3]: the positions of the three prefix tokens."""
        hidden = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        source, first, second = (hidden[rows, marks[:, k]] for k in range(3))
        left = self.head_layer(torch.cat([source, first], dim=-1))
        right = self.head_layer(torch.cat([source, second], dim=-1))
        return (left - right).mean(dim=-1)


def load_pairrm(directory: str, dtype: torch.dtype = torch.float32) -> tuple[PairRM, object]:
    """(model in eval mode, its config) from a PairRM-format directory; a missing weight or
    config field is a ConfigError naming it."""
    from transformers import DebertaV2Config

    directory = str(Path(directory).expanduser())
    config = DebertaV2Config.from_pretrained(directory)
    missing = [k for k in ("n_tasks", *(key for key, _ in PREFIXES)) if getattr(config, k, None) is None]
    if missing:
        raise ConfigError(f"judge.model: {directory}/config.json names {ARCHITECTURE} but lacks {', '.join(missing)}")
    model = PairRM(config)
    state = _read_weights(Path(directory))
    result = model.load_state_dict(state, strict=False)
    absent = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if absent:
        raise ConfigError(f"judge.model: {directory} lacks the weights {', '.join(absent[:3])}"
                          f"{' ...' if len(absent) > 3 else ''} of a {ARCHITECTURE} checkpoint")
    return model.to(dtype).eval(), config


def _read_weights(directory: Path) -> dict:
    files = sorted(directory.glob("*.safetensors"))
    if files:
        from safetensors.torch import load_file

        return {k: v for f in files for k, v in load_file(str(f)).items()}
    files = sorted(directory.glob("pytorch_model*.bin"))
    if not files:
        raise ConfigError(f"judge.model: {directory} has no weight file (*.safetensors or pytorch_model*.bin)")
    return {k: v for f in files for k, v in torch.load(f, map_location="cpu", weights_only=True).items()}


def pair_ids(tokenizer, prefix_ids: list[int], source: str, first: str, second: str,
             source_max_length: int = SOURCE_MAX_LENGTH, max_length: int = MAX_LENGTH) -> tuple[list[int], list[int]]:
    """(input ids, positions of the three prefix tokens) of one ordered pair, as the module
    docstring says; `prefix_ids`: the ids of the three prefix tokens."""
    (_, source_prefix), (_, first_prefix), (_, second_prefix) = PREFIXES
    source_ids = tokenizer.encode(source_prefix + source, max_length=source_max_length, truncation=True)
    budget = (max_length - len(source_ids)) // 2
    if min(budget, source_max_length) < 2:  # [CLS] and the prefix token (0 would mean no limit at all)
        raise ConfigError(f"judge: a PairRM input of {max_length} tokens (source {source_max_length}) leaves "
                          f"{min(budget, source_max_length)} per part, too few to keep each part's prefix token")
    parts = [source_ids] + [tokenizer.encode(prefix + text, max_length=budget, truncation=True)
                            for prefix, text in ((first_prefix, first), (second_prefix, second))]
    ids, marks = [], []
    for part, token_id in zip(parts, prefix_ids):
        marks.append(len(ids) + part.index(token_id))
        ids += part
    return ids, marks


class PairRMJudge:
    """compare: P(a ≻ b) from both orders (module docstring); score: mean win probability."""

    def __init__(self, cfg, model=None, tokenizer=None):
        self.cfg = cfg
        self.tokenizer = tokenizer or load_tokenizer(cfg.model, cfg.trust_remote_code, key="judge.model")
        if model is None:
            model, config = load_pairrm(cfg.model, DTYPES[cfg.dtype])
            model = model.to(resolve_device(cfg.device))
        else:
            config = model.pretrained_model.config
        self.model = model.eval()
        self.prefix_ids = [getattr(config, key) for key, _ in PREFIXES]
        for (key, token), token_id in zip(PREFIXES, self.prefix_ids):
            if self.tokenizer.convert_ids_to_tokens(token_id) != token:
                raise ConfigError(f"judge.model: config.json's {key} = {token_id} is not the tokenizer's {token} token")
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.batch_size = 8  # sequences per forward; the run sets it from its batch_size
        self.stats: Counter = Counter()

    def _source(self, item: Item) -> str:
        prompt = item.prompt
        if isinstance(prompt, str):
            return prompt
        if len(prompt) == 1 and prompt[0].get("role") == "user":
            return prompt[0]["content"]
        raise item.where.error(item.column(), "a PairRM judge reads a prompt that is one user message; this one is a "
                                              f"conversation of {len(prompt)} messages")

    @staticmethod
    def _text(completion) -> str:
        if isinstance(completion, str):
            return completion
        return "".join(m["content"] for m in completion if m.get("role") == "assistant")

    @torch.no_grad()
    def logits(self, rows: list[tuple[list[int], list[int]]]) -> list[float]:
        """l(x, a, b) per (ids, marks), right-padded batches of like lengths."""
        device = next(self.model.parameters()).device
        out = [0.0] * len(rows)
        order = sorted(range(len(rows)), key=lambda r: len(rows[r][0]))
        for s in range(0, len(order), self.batch_size):
            chunk = order[s:s + self.batch_size]
            width = max(len(rows[r][0]) for r in chunk)
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for n, r in enumerate(chunk):
                ids[n, :len(rows[r][0])] = torch.tensor(rows[r][0])
                mask[n, :len(rows[r][0])] = 1
            marks = torch.tensor([rows[r][1] for r in chunk], dtype=torch.long)
            values = self.model(ids.to(device), mask.to(device), marks.to(device)).float().tolist()
            for r, v in zip(chunk, values):
                out[r] = v
        return out

    def compare(self, requests) -> list[float | None]:
        canonical, flipped = ordered(requests)
        rows = []
        for item, i, j in canonical:
            source = self._source(item)
            a, b = self._text(item.completions[i]), self._text(item.completions[j])
            rows += [pair_ids(self.tokenizer, self.prefix_ids, source, a, b),
                     pair_ids(self.tokenizer, self.prefix_ids, source, b, a)]
        values = self.logits(rows)
        # a NaN stays NaN: the run refuses it naming the row (prefero.judges.run.check_finite)
        probs = [sigmoid((values[2 * n] - values[2 * n + 1]) / 2) for n in range(len(canonical))]
        return unorder(probs, flipped)

    def score(self, items: Sequence[Item]) -> list[list[float | None]]:
        return [win_rates(m) for m in pairwise_matrices(self, items)]
