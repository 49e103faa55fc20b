"""Generation engines on the project's real workloads (self-check rows of `generate`, eval rows), one table.

    PYTHONPATH=src .venv/bin/python scripts/bench_engine.py --rows 64 --naive-rows 4 --json runs/bench/engine.json

Workloads, built from the project's seed pool (src/rational/resources/seed_pool.jsonl):
  selfcheck  [self-check system prompt, user prompt] chats as `rational generate` sends them (the rejection or
             compliance prompt by kind), temperature 0.7, top_p 0.95, 224 new tokens (recipes/demo-cpu.yaml); one
             `generate` call per chunk of `batch` prompts, seeded like generate's chunks.
  eval       [user prompt] chats as `rational eval` sends them (other prompts of the pool), greedy, 176 new tokens,
             one call per 4 x batch prompts.

A variant is ENGINE:DTYPE:BATCH[:OPTION...] with OPTION noprefix (no shared-prefix prefill), noretire (finished
rows stay in the batch), norefill (free rows are not refilled from the queue: static batches), refillN (refill
once N% of the rows are free; default 25), t1 (one torch thread) or passive (OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep
instead of spinning; --env sets variables for every run). `llamacpp:gguf:1` runs the GGUF as shipped through
llama-cpp-python (the `llamacpp` backend). `naive` is hf:float32:1 (plain transformers, fp32, batch 1) on the
first --naive-rows rows; every ratio is against the naive run of the same round and workload. Each run is its own process (its own peak
RSS), variants run in rounds whose order alternates, and the load average is recorded before and after each run:
on a shared machine compare ratios within a round, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

DEFAULT_VARIANTS = ("naive,hf:bfloat16:32,fast:bfloat16:32,fast:bfloat16:32:noprefix,fast:bfloat16:32:noretire,"
                    "fast:bfloat16:64")


def _load() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def _status_mb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith(field + ":"))


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def workload(name: str, rows: int):
    """(chats, SamplingParams, prompts per generate call as a function of batch size, seeds per call)."""
    from rational.backends import SamplingParams
    from rational.common import balanced_take
    from rational.generate import GenerateConfig, _chunk_seed, system_prompt
    from rational.prompts import load_pool

    pool = load_pool("seed")
    selfcheck = balanced_take(pool, rows)
    if name == "selfcheck":
        cfg = GenerateConfig()
        chats = [[{"role": "system", "content": system_prompt(cfg, r)}, {"role": "user", "content": r.prompt}]
                 for r in selfcheck]
        params = SamplingParams(max_new_tokens=224, temperature=cfg.temperature, top_p=cfg.top_p)
        return chats, params, lambda batch: batch, lambda chunk: _chunk_seed(cfg.seed, 0, chunk)
    used = {r.id for r in selfcheck}
    rest = balanced_take([r for r in pool if r.id not in used], rows)
    chats = [[{"role": "user", "content": r.prompt}] for r in rest]
    return chats, SamplingParams(max_new_tokens=176), lambda batch: max(batch * 4, 8), lambda chunk: 0


def child(spec: dict) -> dict:
    """One measurement, in this process."""
    import dataclasses

    import torch

    from rational.backends import HFGenerator, SamplingParams

    engine, dtype, batch, *opts = spec["variant"].split(":")
    if "t1" in opts:
        torch.set_num_threads(1)
    options = {"share_prefix": "noprefix" not in opts, "retire": "noretire" not in opts,
               "refill": "norefill" not in opts} if engine == "fast" else {}
    for o in opts:
        if o.startswith("refill") and o[6:].isdigit():  # refillN: refill once N% of the rows are free
            options["refill_at"] = int(o[6:]) / 100
    if engine == "llamacpp":  # llamacpp:gguf:1 - the GGUF as shipped, one sequence at a time
        from rational.backends import LlamaCppGenerator

        gen = LlamaCppGenerator(spec["model"], n_threads=torch.get_num_threads())
    else:
        gen = HFGenerator.load(spec["model"], dtype=dtype, batch_size=int(batch), engine=engine,
                               engine_options=options)
    chats, params, per_call, seed_of = workload(spec["workload"], spec["rows"])
    chats = chats[: spec["rows"]]
    gen.generate(chats[:2], SamplingParams(max_new_tokens=2), progress=False)  # warm-up
    # Loading the model peaks far above what generation needs; reset the high-water mark to see generation's own.
    rss_before = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    load_before, cpu0, t0 = _load(), _cpu_seconds(), time.perf_counter()
    outs = []
    size = per_call(int(batch))
    for c, lo in enumerate(range(0, len(chats), size)):
        outs += gen.generate(chats[lo : lo + size], dataclasses.replace(params, seed=seed_of(c)), progress=False)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    comps = [o.completions[0] for o in outs]
    tokens = sum(c.num_tokens for c in comps)
    return {**spec, "engine": getattr(gen, "engine", engine), "tokens": tokens, "seconds": round(wall, 1),
            "cpu_seconds": round(cpu, 1),
            "tok_per_s": round(tokens / wall, 2), "load_before": load_before, "load_after": _load(),
            "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
            "rss_before_mb": rss_before, "peak_rss_mb": _status_mb("VmHWM"),
            "stopped": sum(c.finish_reason == "stop" for c in comps), "num_tokens": [c.num_tokens for c in comps],
            "texts": [c.text for c in comps]}


def machine() -> dict:
    import torch
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
        flags = next(line for line in lscpu.splitlines() if line.startswith("Flags")).split()
        info["bf16_flags"] = [f for f in flags if "bf16" in f or f.startswith("amx")]
    except (OSError, StopIteration):
        pass
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--workloads", default="selfcheck,eval")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--naive-rows", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment of every run")
    ap.add_argument("--json", default=None, help="write every run (with its outputs) to this JSON file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return

    variants = ["hf:float32:1" if v == "naive" else v for v in args.variants.split(",")]
    runs = []
    for rnd in range(args.rounds):
        for wl in args.workloads.split(","):
            order = variants if rnd % 2 == 0 else variants[::-1]
            for v in order:
                rows = args.naive_rows if v == "hf:float32:1" else args.rows
                spec = {"model": args.model, "workload": wl, "variant": v, "rows": rows, "round": rnd}
                env = dict(os.environ, **dict(kv.split("=", 1) for kv in args.env))
                if "passive" in v.split(":"):
                    env["OMP_WAIT_POLICY"] = "PASSIVE"
                out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                     text=True, env=env)
                if out.returncode != 0:
                    sys.exit(f"{v} on {wl} failed:\n{out.stderr[-3000:]}")
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                r = runs[-1]
                print(f"round {rnd} {wl:<9} {v:<28} {r['tokens']:>6} tok {r['seconds']:>7} s {r['tok_per_s']:>7} tok/s"
                      f" {r['cpu_seconds']:>7} cpu-s  load {r['load_before']}->{r['load_after']}  RSS {r['rss_before_mb']}"
                      f"->{r['peak_rss_mb']} MB", flush=True)
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump({"machine": machine(), "args": vars(args), "runs": runs}, f, indent=1)
    print_table(runs)


def print_table(runs: list[dict]) -> None:
    """Markdown table: each run against the naive run (and, for exact matches, the hf bf16 run) of its round."""
    def same(r, variant):
        return next((x for x in runs if x["round"] == r["round"] and x["workload"] == r["workload"]
                     and x["variant"] == variant), None)

    print("\n| workload | variant | rows | tokens | stopped | s | tok/s | × naive | CPU s | tok/CPU-s | × naive (CPU) "
          "| RSS MB: before, peak | load | greedy = hf |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        base = same(r, "hf:float32:1")
        ratio = f"{r['tok_per_s'] / base['tok_per_s']:.1f}" if base else "-"
        per_cpu = r["tokens"] / max(r["cpu_seconds"], 1e-9)
        cpu_ratio = f"{per_cpu / (base['tokens'] / max(base['cpu_seconds'], 1e-9)):.1f}" if base else "-"
        ref = next((x for x in runs if x["round"] == r["round"] and x["workload"] == r["workload"] == "eval"
                    and x["variant"].startswith("hf:bfloat16") and x["rows"] == r["rows"]), None)
        match = (f"{sum(a == b for a, b in zip(r['texts'], ref['texts']))}/{r['rows']}"
                 if ref and r is not ref and r["variant"].split(":")[1] == "bfloat16" else "-")
        print(f"| {r['workload']} | {r['variant']} | {r['rows']} | {r['tokens']} | {r['stopped']} | {r['seconds']} | "
              f"{r['tok_per_s']} | {ratio} | {r['cpu_seconds']} | {per_cpu:.1f} | {cpu_ratio} | "
              f"{r['rss_before_mb']}, {r['peak_rss_mb']} | "
              f"{r['load_before']}-{r['load_after']} | {match} |")


if __name__ == "__main__":
    main()
