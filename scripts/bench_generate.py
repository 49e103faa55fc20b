"""Generation throughput: batched vs batch-1 (and fp32 vs bf16) on the same model, in one run.

    .venv/bin/python scripts/bench_generate.py --model qwen2.5-coder-0.5b-instruct --prompts 16 --max-new-tokens 64

Prints one table; quote the ratios (they are measured in one process on one machine), not the absolute
numbers across runs. Not a test: run it by hand and copy the table into BENCHMARKS.md.

On a GPU without the model's weights, `--random-init` builds one of `bench_train.py`'s public shapes with random
weights (speed does not depend on the values; tiny-random's tokenizer supplies the ids) and `--engines fast,hf`
times the fast engine against `model.generate`, reporting how many greedy outputs the two engines share:

    python scripts/bench_generate.py --random-init llama3-8b --engines fast,hf --dtypes bfloat16 \
        --prompts 64 --batch-sizes 1,16,64 --max-new-tokens 256
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
    ap.add_argument("--random-init", default=None, help="a shape of bench_train.py (qwen2.5-0.5b, llama3-8b, tiny) "
                    "with random weights instead of --model")
    ap.add_argument("--engines", default="fast", help="generation engines to time: fast, hf or both")
    args = ap.parse_args()

    import torch

    from rational.backends import HFGenerator, SamplingParams
    from rational.models import cpu_supports_bf16

    chats = [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)] + ("" if i < len(PROMPTS) else f" (#{i})")}]
             for i in range(args.prompts)]
    # min_new_tokens is not exposed; a fixed token budget per prompt keeps batch sizes comparable,
    # so we report generated tokens / wall time, which is what a user waits for.
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0)
    rows, texts = [], {}
    for dtype in args.dtypes.split(","):
        for engine in args.engines.split(","):
            gen = _generator(args, dtype, engine)
            gen.generate(chats[:1], SamplingParams(max_new_tokens=4), progress=False)  # warm-up
            for bs in [int(b) for b in args.batch_sizes.split(",")]:
                gen.batch_size = bs
                n = args.prompts if bs > 1 else min(args.prompts, 4)  # batch 1 is slow: fewer prompts, same rate
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                outs = gen.generate(chats[:n], params, progress=False)
                dt = time.perf_counter() - t0
                toks = sum(o.completions[0].num_tokens for o in outs)
                got = texts[(dtype, engine, bs)] = [o.completions[0].text for o in outs]
                fast = texts.get((dtype, "fast", bs)) if engine != "fast" else None  # greedy: should be the same
                rows.append({"dtype": dtype, "engine": engine, "batch_size": bs, "prompts": n, "tokens": toks,
                             "seconds": round(dt, 2), "tok_per_s": round(toks / dt, 1),
                             "same_as_fast": None if fast is None else sum(map(str.__eq__, fast, got))})
                print(json.dumps(rows[-1]), flush=True)
            del gen
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    # Ratios are against fp32 batch 1 (plain transformers defaults) when measured, else the first batch-1 row.
    b1 = [r for r in rows if r["batch_size"] == 1]
    base = next((r for r in b1 if r["dtype"] in ("float32", "fp32")), b1[0] if b1 else rows[0])["tok_per_s"]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or platform.machine()
    print(f"\nmachine: {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"native bf16 CPU: {cpu_supports_bf16()}, model: {args.random_init or args.model}")
    print(f"{'dtype':<10}{'engine':>7}{'batch':>6}{'prompts':>8}{'tokens':>8}{'s':>8}{'tok/s':>9}{'x vs b1':>9}")
    for r in rows:
        print(f"{r['dtype']:<10}{r['engine']:>7}{r['batch_size']:>6}{r['prompts']:>8}{r['tokens']:>8}{r['seconds']:>8}"
              f"{r['tok_per_s']:>9}{r['tok_per_s'] / base:>9.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.random_init or args.model, "device": device, "rows": rows}, f, indent=2)


def _generator(args, dtype: str, engine: str):
    """The model under test: --model through the resolver, or a --random-init shape on the best device."""
    from rational.backends import HFGenerator

    if not args.random_init:
        return HFGenerator.load(args.model, dtype=dtype, batch_size=1, engine=engine)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from bench_train import SHAPES  # scripts/ is on sys.path when this file runs as a script
    from rational.models import load_tokenizer, pick_device, pick_dtype, resolve

    torch.manual_seed(0)
    with torch.device(pick_device()):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**SHAPES[args.random_init]),
                                                 dtype=pick_dtype(dtype))
    return HFGenerator(model.eval(), load_tokenizer(resolve("tiny-random")), batch_size=1, engine=engine)


if __name__ == "__main__":
    main()
