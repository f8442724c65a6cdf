"""prefero vs TRL 1.16 on one setup: tokens/s, peak GPU memory and MFU per variant.

    python benchmarks/dpo_vs_trl.py --device cuda [--steps 20 --warmup 5] [--out results/dpo_vs_trl]
    python benchmarks/dpo_vs_trl.py --device cpu --tiny          # smoke test, a few minutes on CPU

The setup (every variant sees exactly the same model, data and step order):
  model   Qwen2-0.5B shape, random init from a Qwen2Config (never downloaded), saved once
          in HF format with a Qwen2 byte-level BPE tokenizer that has one token per short
          word, so token ids round-trip exactly through TRL's text-only data preparation;
  data    seeded synthetic pairs: prompt 64-384 tokens, chosen and rejected 64-320 each
          (uniform, completions end with EOS), 8 pairs per step, max_length 1024;
  numerics bf16 autocast on fp32 master weights, AdamW, gradient clipping at 1.0.

tokens/s counts the non-pad tokens of prompt+chosen and prompt+rejected (the prompt twice),
the same count for every variant: step s of every variant trains on the same 8 pairs
(TRL with a sequential sampler; prefero by placing pair k where its seeded step order
reads it), and each worker asserts its per-step token counts against the expected ones.
Step times are taken with torch.cuda.synchronize around each optimizer step (a
TrainerCallback for TRL); the first --warmup steps are excluded.

Each variant runs in its own subprocess, so peak memory (torch.cuda.max_memory_allocated,
reset when training starts: the one-time reference pass is reported separately) is clean.

MFU = k × N × tokens/s / peak bf16 dense FLOP/s, N = non-embedding + lm_head parameters,
k = 6 (forward + backward), 8 for variants that run the reference forward every step.
Attention FLOPs are not counted. Peak: 989 TFLOP/s for H100 SXM and H200 (detected from
torch.cuda.get_device_name), otherwise --peak-tflops.

TRL is needed only here (pip install trl==1.16.0); it is never a prefero dependency.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:  # run as a script (benchmarks/ on sys.path) or as benchmarks.dpo_vs_trl
    from anchor_setup import PAIRS_PER_STEP, build_setup
except ImportError:
    from benchmarks.anchor_setup import PAIRS_PER_STEP, build_setup

BETA_DPO = 0.1
# SimPO defaults as prefero sets them (β = 2, γ/β = 0.5); TRL's CPO takes γ itself
BETA_SIMPO, GAMMA_BETA_RATIO = 2.0, 0.5
LEARNING_RATE = 5e-7
H100_BF16_DENSE = 989e12  # H100 SXM and H200 (same compute), dense bf16

# name -> (method, reference forward every step, description)
VARIANTS = {
    "trl_dpo": ("dpo", True, "TRL DPOTrainer, no gradient checkpointing, reference model forward each step"),
    "trl_dpo_precompute": ("dpo", False, "TRL DPOTrainer, precompute_ref_log_probs=True"),
    "trl_dpo_liger": ("dpo", True, "TRL DPOTrainer, use_liger_kernel=True, reference forward each step"),
    "trl_simpo": ("simpo", False, "TRL CPOTrainer loss_type=simpo, cpo_alpha=0"),
    "plain_dpo": ("dpo", True, "plain PyTorch: padded batch, full logits, reference forward each step"),
    "prefero_dpo": ("dpo", False, "prefero Trainer.train_step, reference log-probs precomputed once"),
    "prefero_simpo": ("simpo", False, "prefero Trainer.train_step, SimPO"),
}


# --------------------------------------------------------------------------- worker helpers


class Clock:
    """Per-step wall time with the device synchronised at both ends."""

    def __init__(self, device):
        import torch

        self.cuda = device.type == "cuda"
        self.torch = torch
        self.times: list[float] = []
        self.t0 = 0.0

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def start(self):
        self.sync()
        self.t0 = time.perf_counter()

    def stop(self):
        self.sync()
        self.times.append(time.perf_counter() - self.t0)


def reset_peak(device) -> float:
    """Peak so far (GiB), then start measuring afresh."""
    import torch

    if device.type != "cuda":
        return _rss_gib()
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return peak


def peak_gib(device) -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else _rss_gib()


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def load_model(setup: dict, device):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(setup["model_dir"], dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    return model.to(device)


# --------------------------------------------------------------------------- variants


def run_trl(variant: str, setup: dict, args, device) -> dict:
    import datasets
    from transformers import AutoTokenizer, TrainerCallback

    if variant == "trl_dpo_liger":
        if importlib.util.find_spec("liger_kernel") is None:
            return {"status": "not installed (liger_kernel)"}
        if device.type != "cuda":
            return {"status": "skipped (liger kernels need CUDA)"}
    pairs = json.loads((Path(args.workdir) / "pairs.json").read_text())
    rows = json.loads((Path(args.workdir) / "rows.json").read_text())
    total = setup["n_steps"]
    clock = Clock(device)
    losses: list[float] = []
    extra: dict = {}

    class StepTimer(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            extra["setup_peak_gib"] = reset_peak(device)

        def on_step_begin(self, a, state, control, **kw):
            clock.start()

        def on_step_end(self, a, state, control, **kw):
            clock.stop()

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    common = dict(
        output_dir=str(Path(args.workdir) / f"run_{variant}"), per_device_train_batch_size=PAIRS_PER_STEP,
        gradient_accumulation_steps=1, max_steps=total, learning_rate=LEARNING_RATE, max_grad_norm=1.0,
        gradient_checkpointing=False, bf16=args.precision == "bf16", max_length=setup["max_length"],
        train_sampling_strategy="sequential", logging_steps=1, save_strategy="no", report_to="none",
        disable_tqdm=True, dataloader_num_workers=0, seed=setup["seed"], use_cpu=device.type == "cpu",
    )
    tokenizer = AutoTokenizer.from_pretrained(setup["model_dir"])
    model = load_model(setup, device)
    train = datasets.Dataset.from_list(rows)

    if variant == "trl_simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        cfg = CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0, beta=BETA_SIMPO,
                        simpo_gamma=GAMMA_BETA_RATIO * BETA_SIMPO)
        trainer = CPOTrainer(model=model, args=cfg, train_dataset=train, processing_class=tokenizer,
                             callbacks=[StepTimer()])
        for k, (p, c, r) in enumerate(pairs):  # TRL's tokenization reproduced the ids exactly
            row = trainer.train_dataset[k]
            assert row["chosen_input_ids"] == p + c and row["rejected_input_ids"] == p + r, f"row {k} re-tokenized"
        count = lambda b: int(b["chosen_attention_mask"].sum() + b["rejected_attention_mask"].sum())  # noqa: E731
    else:
        from trl import DPOConfig, DPOTrainer

        class TimedDPOTrainer(DPOTrainer):  # only adds a clock around TRL's own precompute pass
            def _precompute_ref_logps(self, dataset, name, batch_size):
                t = Clock(device)
                t.start()
                out = super()._precompute_ref_logps(dataset, name, batch_size)
                t.stop()
                extra["ref_pass_s"] = t.times[0]
                return out

        cfg = DPOConfig(**common, beta=BETA_DPO, loss_type=["sigmoid"],
                        precompute_ref_log_probs=variant == "trl_dpo_precompute",
                        use_liger_kernel=variant == "trl_dpo_liger")
        trainer = TimedDPOTrainer(model=model, args=cfg, train_dataset=train, processing_class=tokenizer,
                                  callbacks=[StepTimer()])
        for k, (p, c, r) in enumerate(pairs):
            row = trainer.train_dataset[k]
            assert (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]) == (p, c, r), f"row {k} re-tokenized"
        count = lambda b: int(b["attention_mask"].sum())  # noqa: E731
    # the batches TRL will train on, in order, hold exactly the expected tokens
    seen = [count(b) for b in trainer.get_train_dataloader()]
    assert seen == setup["tokens_per_step"], f"TRL batches hold {seen[:4]}..., expected {setup['tokens_per_step'][:4]}..."

    trainer.train()
    if len(clock.times) != total:
        raise RuntimeError(f"timed {len(clock.times)} steps, expected {total}")
    return {"status": "ok", "step_times": clock.times, "losses": losses, "peak_gib": peak_gib(device), **extra}


def run_plain_dpo(setup: dict, args, device) -> dict:
    """The textbook step: right-padded [prompt, completion] rows, full-vocabulary logits,
    a second model in memory for the reference forward."""
    import torch
    import torch.nn.functional as F

    pairs = json.loads((Path(args.workdir) / "pairs.json").read_text())
    torch.manual_seed(setup["seed"])
    policy, ref = load_model(setup, device), load_model(setup, device)
    ref.eval().requires_grad_(False)
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    pad = setup["pad_id"]
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")  # noqa: E731

    def batch(step):
        chunk = pairs[step * PAIRS_PER_STEP : (step + 1) * PAIRS_PER_STEP]
        seqs = [(p, c) for p, c, _ in chunk] + [(p, r) for p, _, r in chunk]  # chosen rows, then rejected
        width = max(len(p) + len(c) for p, c in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for i, (p, c) in enumerate(seqs):
            ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            attn[i, : len(p) + len(c)] = 1
            mask[i, len(p) : len(p) + len(c)] = True
        return ids.to(device), attn.to(device), mask.to(device)

    def seq_logps(model, ids, attn, mask):
        logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits.float()
        logp = F.log_softmax(logits[:, :-1], dim=-1).gather(2, ids[:, 1:, None]).squeeze(2)
        return (logp * mask[:, 1:]).sum(-1)

    clock, losses = Clock(device), []
    setup_peak = reset_peak(device)
    for step in range(setup["n_steps"]):
        clock.start()
        ids, attn, mask = batch(step)
        assert int(attn.sum()) == setup["tokens_per_step"][step]
        with autocast():
            pi = seq_logps(policy, ids, attn, mask)
            with torch.no_grad():
                rf = seq_logps(ref, ids, attn, mask)
        pc, pr = pi.chunk(2)
        rc, rr = rf.chunk(2)
        loss = -F.logsigmoid(BETA_DPO * ((pc - rc) - (pr - rr))).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        clock.stop()
    return {"status": "ok", "step_times": clock.times, "losses": losses, "peak_gib": peak_gib(device),
            "setup_peak_gib": setup_peak}


def run_prefero(loss: str, setup: dict, args, device) -> dict:
    """prefero's real path: a Trainer (built on an 8-pair file), its train_ds replaced by
    the synthetic pairs in the order its seeded step order reads them, reference log-probs
    from prefero.reference.precompute_logps, and Trainer.train_step() timed."""

    from prefero.config import TrainConfig
    from prefero.reference import precompute_logps
    from prefero.train import Dataset, Trainer, step_order

    pairs = json.loads((Path(args.workdir) / "pairs.json").read_text())
    n, total = len(pairs), setup["n_steps"]
    cfg = TrainConfig(
        model=setup["model_dir"], train_data=str(Path(args.workdir) / "small.jsonl"),
        output_dir=str(Path(args.workdir) / f"run_prefero_{loss}"), overwrite=True, loss=loss,
        beta=BETA_DPO if loss == "dpo" else BETA_SIMPO,
        gamma_beta_ratio=GAMMA_BETA_RATIO if loss == "simpo" else None,
        learning_rate=LEARNING_RATE, batch_size=PAIRS_PER_STEP, grad_accum=1, max_steps=total,
        max_length=setup["max_length"], max_prompt_length=setup["max_prompt_length"],
        dtype="bfloat16" if args.precision == "bf16" else "float32", reference_cache="off", seed=setup["seed"],
    ).validate()
    trainer = Trainer(cfg)
    # prefero's own tokenization of the text gives the synthetic ids back exactly
    for k, (prompt, completions) in enumerate(trainer.train_ds.groups):
        assert (list(prompt), [list(c) for c in completions]) == (pairs[k][0], pairs[k][1:]), f"row {k} re-tokenized"

    order = [i for s in range(total) for i in step_order(n, s, trainer.per_step, cfg.seed)]
    assert sorted(order) == list(range(n))
    groups = [None] * n
    for k, i in enumerate(order):  # step s reads pairs[8s : 8s+8], as every other variant does
        p, c, r = pairs[k]
        groups[i] = (p, [c, r])
    ds = Dataset(items=list(range(n)), groups=groups)
    for s in range(total):
        idx = step_order(n, s, trainer.per_step, cfg.seed)
        assert sum(len(groups[i][0]) * 2 + sum(map(len, groups[i][1])) for i in idx) == setup["tokens_per_step"][s]

    out: dict = {"setup_peak_gib": reset_peak(device)}
    if trainer.spec.needs_reference:
        # before any step the policy is the reference; prefero scores it once and caches
        clock = Clock(device)
        clock.start()
        with trainer.autocast():
            ds.ref = precompute_logps(trainer.model, groups, 2 * cfg.batch_size, cfg.logprob_chunk_size, trainer.device)
        clock.stop()
        out["ref_pass_s"] = clock.times[0]
        out["ref_pass_peak_gib"] = reset_peak(device)
    trainer.train_ds = ds

    clock, losses = Clock(device), []
    for _ in range(total):
        clock.start()
        metrics = trainer.train_step()
        clock.stop()
        losses.append(metrics["loss"])
    out["attention"] = getattr(trainer.model.config, "_attn_implementation", None)
    return {"status": "ok", "step_times": clock.times, "losses": losses, "peak_gib": peak_gib(device), **out}


def worker(args) -> None:
    import torch

    setup = json.loads((Path(args.workdir) / "setup.json").read_text())
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(setup["seed"])
    v = args.worker
    try:
        if v.startswith("trl_"):
            res = run_trl(v, setup, args, device)
        elif v == "plain_dpo":
            res = run_plain_dpo(setup, args, device)
        else:
            res = run_prefero(v.removeprefix("prefero_"), setup, args, device)
    except ImportError as e:
        res = {"status": f"not installed ({e.name or e})"}
    res["precision"] = args.precision
    res["device_name"] = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    Path(args.result).write_text(json.dumps(res))


# --------------------------------------------------------------------------- driver


def run_variant(variant: str, args, precision: str) -> dict:
    workdir = Path(args.workdir)
    result, log = workdir / f"result_{variant}_{precision}.json", workdir / f"log_{variant}_{precision}.txt"
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(workdir / "hf_datasets"), WANDB_DISABLED="true",
               PREFERO_CACHE=str(workdir / "prefero_cache"))
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [sys.executable, __file__, "--worker", variant, "--workdir", str(workdir), "--device", args.device,
           "--precision", precision, "--result", str(result)]
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0 or not result.exists():
        tail = log.read_text().strip().splitlines()[-1:] or ["no output"]
        return {"status": f"failed: {tail[0][:200]}", "log": str(log), "precision": precision}
    res = json.loads(result.read_text())
    res["wall_s"] = round(time.time() - t0, 1)
    res["log"] = str(log)
    return res


def _dtype_failure(res: dict) -> bool:
    """A failure that looks like bf16 autocast on CPU, not like a broken setup."""
    if not res["status"].startswith("failed") or "log" not in res:
        return False
    tail = "\n".join(Path(res["log"]).read_text().splitlines()[-30:]).lower()
    return any(w in tail for w in ("bfloat16", "bf16", "dtype", "autocast", "half"))


def summarize(variant: str, res: dict, setup: dict, args) -> dict:
    method, ref_each_step, desc = VARIANTS[variant]
    row = {"variant": variant, "method": method, "description": desc, **res}
    if res.get("status") != "ok":
        return row
    timed = res["step_times"][args.warmup :]
    tokens = sum(setup["tokens_per_step"][args.warmup :])
    row["tokens_per_s"] = tokens / sum(timed)
    row["step_s"] = sum(timed) / len(timed)
    row["loss_step1"] = res["losses"][0] if res["losses"] else None
    k = 8 if ref_each_step else 6
    row["flops_factor"] = k
    peak = args.peak_tflops * 1e12 if args.peak_tflops else _detect_peak(res.get("device_name", ""))
    row["peak_flops"] = peak
    row["mfu"] = k * setup["params_flops"] * row["tokens_per_s"] / peak if peak else None
    return row


def _detect_peak(name: str) -> float | None:
    return H100_BF16_DENSE if any(g in name for g in ("H100", "H200")) else None


def add_ratios(rows: list[dict]) -> None:
    """Speed vs the fastest TRL variant of the same method; memory vs the leanest one."""
    for method in {r["method"] for r in rows}:
        trl = [r for r in rows if r["method"] == method and r["variant"].startswith("trl_") and "tokens_per_s" in r]
        if not trl:
            continue
        fastest = max(trl, key=lambda r: r["tokens_per_s"])
        leanest = min(trl, key=lambda r: r["peak_gib"])
        for r in rows:
            if r["method"] == method and "tokens_per_s" in r:
                r["speed_vs_trl"] = r["tokens_per_s"] / fastest["tokens_per_s"]
                r["speed_vs"] = fastest["variant"]
                r["memory_vs_trl"] = r["peak_gib"] / leanest["peak_gib"]
                r["memory_vs"] = leanest["variant"]


def markdown(rows: list[dict], setup: dict, args) -> str:
    mem = "peak GiB (max_memory_allocated)" if args.device == "cuda" else "peak RSS GiB (whole process, CPU)"
    head = ["variant", "status", "precision", "tokens/s", "step s", mem, "MFU", "FLOPs/token",
            "speed vs best TRL", "memory vs best TRL", "loss @ step 1", "one-time ref pass s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    f = lambda x, fmt: "—" if x is None else format(x, fmt)  # noqa: E731
    for r in rows:
        ok = "tokens_per_s" in r
        cells = [
            r["variant"], r.get("status", "?"), r.get("precision", ""),
            f(r.get("tokens_per_s"), ",.0f"), f(r.get("step_s"), ".3f"), f(r.get("peak_gib"), ".2f"),
            f(r["mfu"] * 100, ".1f") + "%" if ok and r.get("mfu") is not None else "—",
            f"{r['flops_factor']}N" if ok else "—",
            f(r.get("speed_vs_trl"), ".2f") + "×" if "speed_vs_trl" in r else "—",
            f(r.get("memory_vs_trl"), ".2f") + "×" if "memory_vs_trl" in r else "—",
            f(r.get("loss_step1"), ".4f"), f(r.get("ref_pass_s"), ".2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    cfg = setup["config"]
    n_tok = sum(setup["tokens_per_step"][args.warmup :])
    notes = [
        "",
        f"Model: Qwen2 shape `{setup['shape']}` ({cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, "
        f"vocab {cfg['vocab_size']}), random init, {setup['params_total'] / 1e6:.1f}M parameters; "
        f"N (non-embedding + lm_head) = {setup['params_flops'] / 1e6:.1f}M. "
        f"{PAIRS_PER_STEP} pairs/step, {args.warmup} warm-up + {args.steps} timed steps, "
        f"{n_tok:,} tokens timed (prompt counted twice, identical for every variant). Device: {args.device}"
        f" ({next((r['device_name'] for r in rows if r.get('device_name')), '?')}).",
        "MFU = (FLOPs/token) × tokens/s / peak; 6N for training, 8N where the reference model runs forward "
        "every step (trl_dpo, trl_dpo_liger, plain_dpo); attention FLOPs not counted. "
        + ("Peak: " + f"{rows[0].get('peak_flops') / 1e12:.0f} TFLOP/s bf16 dense." if rows and rows[0].get("peak_flops")
           else "No peak FLOP/s known for this device (pass --peak-tflops): MFU not reported."),
        "Ratios: tokens/s over the fastest TRL variant of the same method; peak memory over the TRL variant "
        "of the same method with the lowest peak. Peak memory is measured over the training steps only "
        "(one-time reference passes excluded; their time is the last column).",
        "TRL runs with its defaults apart from the shared settings (fused AdamW, SDPA attention, padded batches); "
        "prefero with its defaults (AdamW, fused on CUDA as TRL's; FlexAttention on CUDA / SDPA on CPU, packed prefix-shared batches, "
        "chunked log-probs). prefero's timed step includes building the packed batch on the host; TRL's collation "
        "happens before its on_step_begin.",
    ]
    return "\n".join(lines + notes) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="2-layer, small-vocab model and short sequences (CPU smoke test)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20; 5 with --tiny)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; 2 with --tiny)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                   help="bf16 autocast on fp32 weights, or plain fp32; on CPU a variant that fails in bf16 is rerun in fp32")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s for MFU (default: 989 on H100/H200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="where the model, data and logs go (default: a temporary directory)")
    p.add_argument("--out", default=None, help="write OUT.json (all results) and OUT.md (the table)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    args.steps = args.steps or (5 if args.tiny else 20)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.tiny else 5)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda but no GPU is visible; use --device cpu --tiny for a smoke test")
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="dpo_vs_trl_")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    shape = "tiny" if args.tiny else "qwen2-0.5b"
    print(f"setting up {shape} in {args.workdir} ...", flush=True)
    setup = build_setup(Path(args.workdir), shape, args.warmup + args.steps, args.seed)

    rows = []
    for v in variants:
        print(f"running {v} ...", flush=True)
        res = run_variant(v, args, args.precision)
        if args.device == "cpu" and args.precision == "bf16" and _dtype_failure(res):
            print(f"  {v} failed under bf16 autocast on CPU ({res['status']}); rerunning in fp32", flush=True)
            failed = res["status"]
            res = run_variant(v, args, "fp32")
            res["precision"] = f"fp32 (bf16 failed on CPU: {failed[8:80]})"
        row = summarize(v, res, setup, args)
        print(f"  {row['status']}" + (f": {row['tokens_per_s']:,.0f} tokens/s, peak {row['peak_gib']:.2f} GiB, "
                                      f"loss@1 {row['loss_step1']:.4f}" if "tokens_per_s" in row else ""), flush=True)
        rows.append(row)
    add_ratios(rows)
    table = markdown(rows, setup, args)
    print()
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: v for k, v in setup.items() if k != "tokens_per_step"}
        payload = {"setup": meta, "tokens_per_step": setup["tokens_per_step"], "args": vars(args), "results": rows}
        out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
        out.with_suffix(".md").write_text(table)
        print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
