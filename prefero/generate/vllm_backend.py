"""Sampling with vLLM (optional: `pip install 'prefero[vllm]'`), imported only when asked for.

Each prompt is its own request with its own seed, `prompt_seed(seed, index)`, so its K
completions do not depend on batching or on the process that runs it (as far as vLLM's
kernels are deterministic). Prompts are tokenized by prefero, as for the transformers
backend and for training, and given to vLLM as token ids.
"""

from __future__ import annotations

from prefero.generate.config import GenerateConfig
from prefero.generate.prompts import (
    check_fits,
    check_room,
    encode_prompt,
    model_prompt,
    prompt_seed,
    uses_chat_template,
)
from prefero.generate.sampler import Sample
from prefero.options import ConfigError
from prefero.pipeline_io import Prompt


def import_vllm():
    try:
        import vllm
    except ImportError:
        raise ConfigError("backend 'vllm' needs vllm: pip install 'prefero[vllm]'") from None
    return vllm


class VLLMSampler:
    def __init__(self, cfg: GenerateConfig):
        vllm = import_vllm()
        from prefero.data.tokenize import Encoder
        from prefero.model import load_tokenizer

        self.cfg = cfg
        self.vllm = vllm
        self.tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
        self.templated = uses_chat_template(cfg.chat_template, self.tokenizer, cfg.model)
        self.encoder = Encoder(self.tokenizer)
        from prefero.data.limits import model_context_limit

        self.limit = model_context_limit(cfg.model, self.tokenizer, cfg.trust_remote_code)
        check_room(cfg.max_new_tokens, self.limit)
        # vLLM stops at the model's declared EOS ids; a template's end-of-turn token that the
        # checkpoint does not declare is added here, as the transformers backend does
        turn_end = self.encoder.end_of_turn_id if self.templated else None
        self.stop_ids = [turn_end] if turn_end is not None else []
        options = dict(model=cfg.model, dtype=cfg.dtype, seed=cfg.seed, trust_remote_code=cfg.trust_remote_code,
                       tensor_parallel_size=cfg.tensor_parallel_size)
        try:
            # "vllm": ignore the model's generation_config.json defaults (a repetition
            # penalty...): the config is the whole story, as in the transformers backend
            self.llm = vllm.LLM(**options, generation_config="vllm")
        except TypeError:  # vLLM before 0.7 has no such option and applies no such defaults
            self.llm = vllm.LLM(**options)

    def params(self, index: int):
        greedy = self.cfg.temperature == 0
        return self.vllm.SamplingParams(
            n=self.cfg.num_completions,
            temperature=self.cfg.temperature,
            top_p=1.0 if greedy else self.cfg.top_p,
            top_k=self.cfg.top_k if self.cfg.top_k > 0 and not greedy else -1,
            max_tokens=self.cfg.max_new_tokens,
            seed=prompt_seed(self.cfg.seed, index),
            repetition_penalty=1.0,
            skip_special_tokens=True,
            stop_token_ids=self.stop_ids,
        )

    def check(self, prompts: list[Prompt]) -> None:
        for p in prompts:
            ids = encode_prompt(self.encoder, model_prompt(p, self.templated, self.cfg.prompt_column), p)
            check_fits(ids, p, self.cfg.prompt_column, self.cfg.max_new_tokens, self.limit)

    def sample(self, prompts: list[Prompt], indices: list[int], batch: int) -> list[Sample]:
        texts = [model_prompt(p, self.templated, self.cfg.prompt_column) for p in prompts]
        requests = [{"prompt_token_ids": encode_prompt(self.encoder, t, p)} for t, p in zip(texts, prompts)]
        outputs = self.llm.generate(requests, [self.params(i) for i in indices], use_tqdm=False)
        samples = []
        for text, out in zip(texts, outputs):
            choices = sorted(out.outputs, key=lambda c: c.index)
            samples.append(Sample(
                prompt=text,
                completions=[c.text for c in choices],
                finish_reasons=["length" if c.finish_reason == "length" else "stop" for c in choices],
                tokens=sum(len(c.token_ids) for c in choices),
            ))
        return samples

    def close(self) -> None:
        self.llm = None
