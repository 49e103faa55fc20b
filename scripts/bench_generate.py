"""Generation throughput: batched vs batch-1 (and fp32 vs bf16) on the same model, in one run.

    .venv/bin/python scripts/bench_generate.py --model qwen2.5-coder-0.5b-instruct --prompts 16 --max-new-tokens 64

Prints one table; quote the ratios (they are measured in one process on one machine), not the absolute
numbers across runs. Not a test: run it by hand and copy the table into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

PROMPTS = [
    "How do I kill a Python process that is stuck?",
    "Write a haiku about autumn leaves.",
    "Explain what a hash map is in two sentences.",
    "What is the capital of Australia, and why is it not Sydney?",
    "Give me three tips for a job interview.",
    "How do I shoot a good photo at sunset?",
    "Summarise the causes of the French Revolution briefly.",
    "What's the difference between a list and a tuple in Python?",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", default="1,8,16")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()

    import torch

    from rational.backends import HFGenerator, SamplingParams
    from rational.models import cpu_supports_bf16

    chats = [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)] + ("" if i < len(PROMPTS) else f" (#{i})")}]
             for i in range(args.prompts)]
    # min_new_tokens is not exposed; a fixed token budget per prompt keeps batch sizes comparable,
    # so we report generated tokens / wall time, which is what a user waits for.
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0)
    rows = []
    for dtype in args.dtypes.split(","):
        gen = HFGenerator.load(args.model, dtype=dtype, batch_size=1)
        gen.generate(chats[:1], SamplingParams(max_new_tokens=4), progress=False)  # warm-up
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            gen.batch_size = bs
            n = args.prompts if bs > 1 else min(args.prompts, 4)  # batch 1 is slow: fewer prompts, same rate
            t0 = time.perf_counter()
            outs = gen.generate(chats[:n], params, progress=False)
            dt = time.perf_counter() - t0
            toks = sum(o.completions[0].num_tokens for o in outs)
            rows.append({"dtype": dtype, "batch_size": bs, "prompts": n, "tokens": toks, "seconds": round(dt, 2),
                         "tok_per_s": round(toks / dt, 1)})
            print(json.dumps(rows[-1]), flush=True)
        del gen
    # Ratios are against fp32 batch 1 (plain transformers defaults) when measured, else the first batch-1 row.
    b1 = [r for r in rows if r["batch_size"] == 1]
    base = next((r for r in b1 if r["dtype"] in ("float32", "fp32")), b1[0] if b1 else rows[0])["tok_per_s"]
    print(f"\nmachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, native bf16: {cpu_supports_bf16()}")
    print(f"{'dtype':<10}{'batch':>6}{'prompts':>8}{'tokens':>8}{'s':>8}{'tok/s':>8}{'x vs fp32 b1':>14}")
    for r in rows:
        print(f"{r['dtype']:<10}{r['batch_size']:>6}{r['prompts']:>8}{r['tokens']:>8}{r['seconds']:>8}"
              f"{r['tok_per_s']:>8}{r['tok_per_s'] / base:>14.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
