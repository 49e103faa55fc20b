"""Where a CPU training step spends its time (torch.profiler), and the speed of the options that change it.

    PYTHONPATH=src .venv/bin/python scripts/profile_train.py --steps 6 --batch 4           # every variant, timed
    PYTHONPATH=src .venv/bin/python scripts/profile_train.py --variants before after --profile before after

Records have realistic, varying lengths (a short or long request, four reasoning lines, an answer of 20-200
words), benign text only. Each variant trains the same records for the same steps in its own process (so peak
RSS is per variant) and reports s/step, trained tokens/s (tokens in the batches, padding excluded) and the final
loss; the first step is a warm-up and is not timed. Variants named by --profile are profiled on two steps
(op self-times grouped into matmul, attention, LM head and loss, optimizer, LoRA dropout and the rest); the
profiler slows them, so time variants in a run without --profile.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    # name: extra TrainConfig fields. "before" is the trainer as it was (TRL's CPU LM head over every position,
    # padded batches, LoRA dropout 0.05); each other variant changes one thing, "after" all of them.
    "before": {"compact_lm_head": False},
    "padding_free": {"compact_lm_head": False, "padding_free": True},
    "compact_lm_head": {},
    "no_lora_dropout": {"compact_lm_head": False, "lora_dropout": 0.0},
    "group_by_length": {"compact_lm_head": False, "group_by_length": True},
    "after_keep_dropout": {"padding_free": True},
    "after": {"padding_free": True, "lora_dropout": 0.0},
}

_WORDS = ("the tool needs a clean workspace before you start and a second pair of hands helps when the parts "
          "are heavy so plan the steps write them down check each one and keep the instructions nearby").split()


def make_records(n: int, seed: int = 0) -> list[dict]:
    """n benign records whose token lengths vary like real rationales (about 120 to 450 tokens)."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        ask = " ".join(rng.choices(_WORDS, k=rng.randint(8, 60)))
        answer = " ".join(rng.choices(_WORDS, k=rng.randint(20, 200))).capitalize() + "."
        reasoning = ("Intent: the user wants practical advice about a household task.\nContext and ethics: this is "
                     "everyday knowledge.\nPotential impact: it helps and harms no one.\nDecision: comply")
        records.append({"prompt": [{"role": "user", "content": f"Question {i}: {ask}?"}],
                        "completion": [{"role": "assistant", "content": f"<think>\n{reasoning}\n</think>\n\n{answer}"}],
                        "meta": {"kind": "benign", "id": i}})
    return records


def child(args) -> None:
    """One variant in this process: train, time every step after the first, optionally profile two steps."""
    import resource

    import torch
    from transformers import TrainerCallback

    from rational.train import TrainConfig, build_trainer

    extra = json.loads(args.child)
    cfg = TrainConfig(model=args.model, data=args.data, out=args.out, max_steps=args.steps,
                      per_device_train_batch_size=args.batch, max_length=args.max_length, save_steps=10**6,
                      logging_steps=1, warmup_ratio=0.0, learning_rate=2e-4, dtype=args.dtype, seed=0, **extra)
    trainer, _ = build_trainer(cfg)
    stamps, tokens = [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            stamps.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    trainer.add_callback(Clock())
    profile = None
    if args.profile_child:
        from torch.profiler import ProfilerActivity, schedule
        from torch.profiler import profile as torch_profile

        profile = torch_profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=1, warmup=0, active=2))

        class Step(TrainerCallback):
            def on_step_end(self, *a, **k):
                profile.step()

        trainer.add_callback(Step())
        profile.start()
    # Tokens actually in each batch (attention mask), to count padding separately from work.
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        if "attention_mask" in batch:
            tokens.append((int(batch["attention_mask"].sum()), int(batch["attention_mask"].numel())))
        else:  # padding-free: one row, every position a real token
            tokens.append((int(batch["input_ids"].numel()), int(batch["input_ids"].numel())))
        return batch

    trainer.data_collator = counting
    trainer.train()
    if profile is not None:
        profile.stop()
    steps = [stamps[i + 1] - stamps[i] for i in range(0, len(stamps) - 1, 2)][1:]  # first step = warm-up
    real = sum(t for t, _ in tokens[1 : len(steps) + 1])
    padded = sum(p for _, p in tokens[1 : len(steps) + 1])
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    row = {"variant": args.name, "s_per_step": round(sum(steps) / len(steps), 2),
           "tokens_per_s": round(real / sum(steps), 1), "padding_share": round(1 - real / padded, 3),
           "final_loss": losses[-1], "loss_curve": losses, "peak_rss_mb": round(
               resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "threads": torch.get_num_threads()}
    if profile is not None:
        row["profile"] = _breakdown(profile)
    Path(args.result).write_text(json.dumps(row))


def _breakdown(prof) -> dict:
    """Self CPU time of the profiled steps, grouped by what the ops do."""
    groups = {"matmul (linear layers, LoRA A/B, LM head tiles)": ("addmm", "mm", "bmm", "matmul", "linear"),
              "attention": ("_scaled_dot_product", "scaled_dot_product", "_flash_attention", "softmax"),
              "LM head + loss (TRL chunked log-prob, log-softmax)": ("chunkedlogprob", "log_softmax", "logsumexp",
                                                                     "gather", "nll", "cross_entropy"),
              "optimizer (AdamW)": ("adam", "_foreach", "lerp", "addcdiv"),
              "dropout": ("dropout", "bernoulli"),
              "copies, casts, layout": ("copy_", "to", "contiguous", "clone", "cat", "empty", "fill_", "zero_"),
              "elementwise (norms, activations, rotary)": ("mul", "add", "silu", "rsqrt", "pow", "mean", "neg",
                                                           "div", "sub", "sigmoid", "exp")}
    totals = {g: 0.0 for g in groups}
    totals["other"] = 0.0
    top = []
    for e in prof.key_averages():
        name = e.key.lower().replace("aten::", "")
        t = e.self_cpu_time_total / 1e6
        top.append((t, e.key))
        g = next((g for g, keys in groups.items() if any(k == name or name.startswith(k) for k in keys)), "other")
        totals[g] += t
    total = sum(totals.values())
    return {"seconds_profiled": round(total, 2), "share": {g: round(v / total, 3) for g, v in totals.items()},
            "top_ops": [[k, round(t, 3)] for t, k in sorted(top, reverse=True)[:15]]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=768)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--profile", nargs="*", default=[], choices=list(VARIANTS), help="variants to profile")
    p.add_argument("--out", default="runs/profile_train.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--name", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--profile-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        return child(args)
    variants = args.variants
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "sft.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in make_records(args.batch * args.steps)))
        for name in variants:
            result = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, __file__, "--child", json.dumps(VARIANTS[name]), "--name", name, "--data", str(data),
                   "--result", str(result), "--out", str(Path(tmp) / name), "--model", args.model, "--dtype",
                   args.dtype, "--steps", str(args.steps), "--batch", str(args.batch), "--max-length",
                   str(args.max_length)] + (["--profile-child"] if name in args.profile else [])
            subprocess.run(cmd, check=True)
            rows.append(json.loads(result.read_text()))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "profile"}), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(sys.argv), "load": os.getloadavg(), "results": rows}, indent=2))
    for row in rows:
        if "profile" in row:
            print(row["variant"], json.dumps(row["profile"], indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
