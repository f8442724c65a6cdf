"""Tokens/s of `prefero generate` (transformers backend) against a plain `model.generate` loop.

    python benchmarks/generate_tokens.py [--hidden 256] [--prompts 80] [--k 4] [--max-new-tokens 64]

Both sides sample the same prompts with the same settings and the same model: a random
2-layer Llama built by prefero.tiny (nothing is downloaded). The baseline is what one
writes by hand: the tokenizer's chat template, left padding, `model.generate` per batch
with `num_return_sequences=K`, tokens counted up to the first EOS. prefero's side is
`run_generate`, so its figure includes everything the stage adds per batch (rendering
through the training tokenizer, per-batch seeding, decoding, JSON rows appended and
fsynced). Model loading is excluded from both. Printed: tokens/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def build_model(directory: Path, hidden: int) -> Path:
    from prefero.tiny import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=hidden)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def write_prompts(path: Path, n: int) -> Path:
    from prefero.tiny import demo_records

    records = demo_records()
    rows = [{"prompt": records[i % len(records)]["prompt"]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def plain_loop(model_dir: Path, prompts: list[str], args) -> dict:
    """The hand-written baseline."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    eos = tokenizer.eos_token_id
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in prompts]
    tokens = 0
    start = time.perf_counter()
    for b in range(0, len(texts), args.batch_size):
        batch = tokenizer(texts[b:b + args.batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(b)
        with torch.inference_mode():
            out = model.generate(**batch, do_sample=True, temperature=args.temperature, top_p=1.0, top_k=0,
                                 max_new_tokens=args.max_new_tokens, num_return_sequences=args.k,
                                 eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        for row in out[:, batch["input_ids"].shape[1]:].tolist():
            tokens += row.index(eos) + 1 if eos in row else len(row)
            tokenizer.decode(row, skip_special_tokens=True)
    seconds = time.perf_counter() - start
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds}


def prefero_run(model_dir: Path, prompts_path: Path, out: Path, args) -> dict:
    from prefero.generate import GenerateConfig, run_generate
    from prefero.options import load_config

    cfg = load_config(None, [f"model={model_dir}", f"prompts={prompts_path}", f"output={out}", "overwrite=true",
                             f"num_completions={args.k}", f"max_new_tokens={args.max_new_tokens}",
                             f"batch_size={args.batch_size}", f"temperature={args.temperature}", "dtype=float32"],
                      cls=GenerateConfig)
    report = run_generate(cfg)
    return {"tokens": report["tokens_this_run"], "seconds": report["seconds_this_run"],
            "tokens_per_second": report["tokens_per_second"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the random model (2 layers)")
    parser.add_argument("--prompts", type=int, default=80)
    parser.add_argument("--k", type=int, default=4, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side; the fastest is reported")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default); "
                        "1 gives steadier figures on a shared machine")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_model(tmp / "model", args.hidden)
        prompts_path = write_prompts(tmp / "prompts.jsonl", args.prompts)
        prompts = [json.loads(line)["prompt"] for line in prompts_path.read_text().splitlines()]
        results = {"plain": [], "prefero": []}
        for _ in range(args.repeats):  # interleaved, so drifting machine load hits both alike
            results["plain"].append(plain_loop(model_dir, prompts, args))
            results["prefero"].append(prefero_run(model_dir, prompts_path, tmp / "gen.jsonl", args))
    best = {k: max(v, key=lambda r: r["tokens_per_second"]) for k, v in results.items()}
    print(f"model: random Llama, 2 layers, hidden {args.hidden}; {args.prompts} prompts x K={args.k}, "
          f"max_new_tokens {args.max_new_tokens}, batch {args.batch_size}; torch threads {torch.get_num_threads()}")
    for name, r in best.items():
        print(f"{name:>8}: {r['tokens']} tokens in {r['seconds']:.2f} s = {r['tokens_per_second']:.0f} tokens/s")
    print(f"ratio prefero / plain: {best['prefero']['tokens_per_second'] / best['plain']['tokens_per_second']:.3f}")


if __name__ == "__main__":
    main()
