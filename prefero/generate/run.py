"""`run_generate`: read prompts, sample K completions for each, write them resumably.

Work is cut into batches of `batch_size` prompts in input order. Under several processes
(`accelerate launch` / `torchrun`) process p takes batches p, p+P, p+2P, ... and appends
its rows to its own partial file; process 0 merges all rows in input order at the end
(prefero.pipeline_io). A batch is the unit of seeding, so the output is the same for any
number of processes and across kills and resumptions.

A resumed run must be the same run: the settings kept beside the partial rows include the
prompts' fingerprint (`GenerateConfig.settings`). One run writes an output at a time (a lock), and a run killed after its output but before
its report writes the report on rerun without sampling again (prefero.pipeline_io).
"""

from __future__ import annotations

import json
import math
import time

from prefero.files import atomic_write_json, scrub_credentials
from prefero.generate.config import GenerateConfig
from prefero.generate.prompts import prompts_sha256
from prefero.generate.sampler import Sample, Sampler
from prefero.pipeline_io import Prompt, StageOutput, read_prompts
from prefero.processes import Processes, position_batches, stage_processes


def run_generate(cfg: GenerateConfig, sampler: Sampler | None = None) -> dict:
    """Generate `cfg.output` (and its report, returned; {} on processes other than 0).

    `sampler` replaces the backend the config names (tests, or a model already loaded).
    """
    cfg.validate()
    prompts = read_prompts(cfg.prompts, cfg.prompt_column)
    procs = stage_processes(needs_torch=cfg.backend != "openai")
    out = StageOutput(cfg.output, cfg.settings(prompts_sha256(prompts)), cfg.overwrite, procs.rank, procs.world,
                      procs.barrier, report=report_path(cfg.output))
    done = out.start()
    procs.say(f"prefero generate: {procs.describe()}, {len(prompts)} prompts ({len(done)} done before), "
              f"backend {cfg.backend}")
    try:
        return _run(cfg, sampler, prompts, out, done, procs)
    finally:
        out.close()


def _run(cfg: GenerateConfig, sampler: Sampler | None, prompts: list[Prompt], out: StageOutput, done: set[int],
         procs: Processes) -> dict:
    if done and not out.complete:
        procs.say(f"prefero generate: resuming, {len(done)} of {len(prompts)} prompts already done in {out.partial}")
    batches = position_batches(len(prompts), cfg.batch_size)
    mine = procs.pending(batches, done)

    load_start = time.perf_counter()
    if sampler is None and mine:
        sampler = make_sampler(cfg, procs.device)
    if sampler is not None:
        sampler.check([prompts[i] for b in mine for i in batches[b]])  # bad prompts fail now, not hours in
    start = time.perf_counter()
    for b in _progress(mine, procs.rank, len(batches)):
        samples = sampler.sample([prompts[i] for i in batches[b]], batches[b], b)
        # A batch cut short by a kill is regenerated whole (same seed, same rows) and only
        # its missing rows appended.
        out.append([_row(i, s, cfg) for i, s in zip(batches[b], samples) if i not in done])
    client = getattr(sampler, "client", None)
    endpoints = client.endpoint_report() if client is not None and hasattr(client, "endpoint_report") else None
    if sampler is not None:
        sampler.close()
    merged = out.finish(len(prompts))
    if not procs.main:
        return {}
    report = _report(cfg, prompts, done, merged, seconds=time.perf_counter() - start,
                     load_seconds=start - load_start, processes=procs.world)
    if endpoints and len(endpoints) > 1:  # a fleet: which servers answered, which went down
        report["endpoints"] = endpoints
        report["endpoints_down"] = sum(e["down"] is not None for e in endpoints.values())
    atomic_write_json(report_path(cfg.output), report)
    return report


def make_sampler(cfg: GenerateConfig, device=None) -> Sampler:
    if cfg.backend == "openai":
        from prefero.generate.openai_backend import OpenAISampler

        return OpenAISampler(cfg)
    if cfg.backend == "vllm":
        from prefero.generate.vllm_backend import VLLMSampler

        return VLLMSampler(cfg)
    from prefero.generate.transformers_backend import TransformersSampler

    return TransformersSampler(cfg, device or "cpu")


def report_path(output: str) -> str:
    """`DIR/NAME.jsonl` -> `DIR/NAME.report.json`."""
    return output[: -len(".jsonl")] + ".report.json"


def _row(index: int, sample: Sample, cfg: GenerateConfig) -> dict:
    if len(sample.completions) != cfg.num_completions:
        raise RuntimeError(f"backend returned {len(sample.completions)} completions for prompt {index}, "
                           f"expected {cfg.num_completions}")
    return {"index": index, "prompt": sample.prompt, "completions": sample.completions,
            "finish_reasons": sample.finish_reasons, "tokens": sample.tokens}


def _progress(batches: list[int], rank: int, total: int):
    if rank != 0 or not batches:
        return batches
    from tqdm.auto import tqdm

    return tqdm(batches, desc="generate", unit="batch", total=len(batches), dynamic_ncols=True)


def _report(cfg: GenerateConfig, prompts: list[Prompt], done: set[int], merged: dict, seconds: float,
            load_seconds: float, processes: int) -> dict:
    """Counts over the whole output (earlier runs' rows included) and speed of this run."""
    completions = tokens = tokens_this_run = hit_max = empty = chars = unknown = 0
    with open(cfg.output, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            completions += len(row["completions"])
            hit_max += row["finish_reasons"].count("length")
            empty += sum(not c.strip() for c in row["completions"])
            chars += sum(len(c) for c in row["completions"])
            if row["tokens"] is None:
                unknown += 1
                continue
            tokens += row["tokens"]
            if row["index"] not in done:
                tokens_this_run += row["tokens"]
    report = {
        "stage": "generate",
        "output": cfg.output,
        "prompts_file": cfg.prompts,
        "backend": cfg.backend,
        "model": cfg.model,
        "seed": cfg.seed,
        "num_completions": cfg.num_completions,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "top_k": cfg.top_k,
        "max_new_tokens": cfg.max_new_tokens,
        "batch_size": cfg.batch_size,
        "chat_template": cfg.chat_template,
        "prompts": len(prompts),
        "completions": completions,
        "tokens_generated": tokens,
        "rows_without_token_count": unknown,  # the server reported no usage
        "hit_max_new_tokens": hit_max,
        "empty_completions": empty,
        "mean_completion_chars": chars / completions if completions else 0.0,
        "resumed_prompts": len(done),
        "prompts_this_run": len(prompts) - len(done),
        "tokens_this_run": tokens_this_run,
        "seconds_this_run": round(seconds, 3),
        "tokens_per_second": tokens_this_run / seconds if seconds > 0 else math.nan,
        "load_seconds": round(load_seconds, 3),
        "processes": processes,
        "duplicate_rows_dropped": merged.get("duplicates", 0),
    }
    if cfg.backend == "openai":
        report["base_url"] = scrub_credentials(cfg.base_url)
    return report
