"""Training throughput benchmark for `rational train` (not a test; figures go to BENCHMARKS.md).

CPU (default): the embedded default model (qwen2.5-coder-0.5b-instruct), LoRA r=16, a few steps of the real
`rational train` command, bf16 and fp32 in the same run (each in its own process, so peak RSS is per run):

    .venv/bin/python scripts/bench_train.py --steps 4

`--method dpo` / `--method circuit-breakers` time those trainings instead (CPU mode) on the same records: DPO pairs
whose rejected side is the chosen one with its decision flipped and its sentences reversed (same length), and
circuit-breaker batches that pair each record as a rerouted and as a retained conversation. Each of their examples
is two sequences (chosen + rejected, or reroute + retain) plus a reference / frozen forward pass without gradients.

GPU (`--gpu`): random-init weights built from the public configs of Qwen2.5-0.5B and Llama-3-8B (weights do not
change speed), LoRA bf16 with gradient checkpointing, every sequence exactly --seq tokens; reports tokens/s and
model FLOPs utilisation MFU = 6 * params * tokens/s / peak bf16 FLOPs (the usual 6ND convention; LoRA skips the
weight gradients of the frozen base, so its true FLOPs are nearer 4ND and this MFU overstates the work done by ~1/3):

    python scripts/bench_train.py --gpu --steps 12 --batch 4 --seq 2048

`--gpu --shapes tiny` runs the GPU code path on a tiny shape on any machine (a dry run of the script itself).
The synthetic records are benign/refusal reasoning text only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Public configs (config.json on the hub), written inline so the benchmark needs no download.
SHAPES = {
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                         max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                         tie_word_embeddings=True),
    "llama3-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
                      rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
    # Only for checking this script on a machine without a GPU.
    "tiny": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=4096, tie_word_embeddings=False),
}

# Dense bf16 peak FLOPs (vendor datasheets, without sparsity).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}

_REASONING = [
    "Intent: the user wants to understand how a common household task works.",
    "Context and ethics: this is everyday knowledge found in any manual, and explaining it helps people stay safe.",
    "Potential impact: the answer helps the user and gives no one a new way to cause harm.",
    "Decision: comply, with a short and practical explanation.",
]
_ANSWER = ("Start by reading the instructions that came with the device, then check that it is switched off and "
           "unplugged before you clean or adjust it. Work slowly, keep small parts in a bowl, and test it once "
           "everything is back in place. ")


def make_records(tokenizer, n: int, tokens: int) -> list[dict]:
    """n benign prompt-completion records of about `tokens` tokens each (chat template included)."""
    records = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"Question {i}: how do I safely clean and maintain my coffee machine?"}]
        answer = _ANSWER
        while True:
            completion = [{"role": "assistant", "content": "<think>\n" + "\n".join(_REASONING) + "\n</think>\n\n"
                           + answer.strip()}]
            ids = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
            if len(ids) >= tokens:
                break
            answer += _ANSWER
        records.append({"prompt": prompt, "completion": completion, "meta": {"kind": "benign", "id": i}})
    return records


def write_jsonl(records, path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def method_records(records: list[dict], method: str) -> tuple[list[dict], list[str]]:
    """The benchmark records in the format of `method`, and the `rational train` flags that select it."""
    if method == "dpo":
        def flipped(text: str) -> str:
            reasoning, answer = text.replace("Decision: comply", "Decision: decline").split("</think>")
            return reasoning + "</think>\n\n" + " ".join(reversed(answer.strip().split(". ")))

        return [{"prompt": r["prompt"], "chosen": r["completion"], "meta": r["meta"],
                 "rejected": [{"role": "assistant", "content": flipped(r["completion"][0]["content"])}]}
                for r in records], ["--method", "dpo", "--learning-rate", "5e-6"]
    if method == "circuit-breakers":
        return [{**r, "meta": {**r["meta"], "set": s}} for r in records for s in ("reroute", "retain")], [
            "--baseline", "circuit-breakers", "--learning-rate", "1e-4"]
    return records, ["--learning-rate", "2e-4"]


def cpu_bench(args) -> list[dict]:
    from rational.models import load_tokenizer, resolve

    tok = load_tokenizer(resolve(args.model))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        records, flags = method_records(make_records(tok, args.batch * args.steps, args.tokens), args.method)
        data = write_jsonl(records, Path(tmp) / "data.jsonl")
        for dtype in args.dtypes:
            out = Path(tmp) / f"out-{dtype}"
            cmd = [sys.executable, "-m", "rational.cli", "train", "--model", args.model, "--data", str(data),
                   "--out", str(out), "--max-steps", str(args.steps), "--per-device-train-batch-size", str(args.batch),
                   "--gradient-accumulation-steps", "1", "--max-length", str(args.max_length), "--dtype", dtype,
                   "--save-steps", "100000", *flags]
            t0 = time.time()
            subprocess.run(cmd, check=True, capture_output=not args.verbose)
            m = json.loads((out / "train_metrics.json").read_text())
            steps = m["global_step"]
            rows.append({"mode": "cpu", "model": args.model, "method": f"{args.method}, lora r=16", "dtype": dtype,
                         "batch": args.batch, "sequences_per_step": args.batch * (1 if args.method == "sft" else 2),
                         "tokens_per_sequence": m["counts"]["tokens_per_epoch"] // m["counts"]["examples"],
                         "steps": steps, "s_per_step": round(m["train_runtime_s"] / steps, 2),
                         "train_tokens_per_s": m["train_tokens_per_s"], "peak_rss_mb": m["peak_rss_mb"],
                         "process_wall_s": round(time.time() - t0, 1), "threads": os.cpu_count()})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def gpu_bench(args) -> list[dict]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, TrainerCallback

    from rational.models import load_tokenizer, pick_device, resolve
    from rational.train import TrainConfig, build_trainer

    device = pick_device()
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next(
        (v for k, v in PEAK_BF16.items() if k in name), None)
    # Any tokenizer with a chat template will do for timing: ids stay below every shape's vocabulary.
    tok = load_tokenizer(resolve("tiny-random"))
    rows = []
    for shape in args.shapes:
        with tempfile.TemporaryDirectory() as tmp:
            data = write_jsonl(make_records(tok, args.batch * args.steps, args.seq + 64), Path(tmp) / "sft.jsonl")
            config = AutoConfig.for_model(**SHAPES[shape])
            torch.manual_seed(0)
            with torch.device(device):
                model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
            n_params = sum(p.numel() for p in model.parameters())
            cfg = TrainConfig(model=f"random-init {shape}", data=str(data), out=str(Path(tmp) / "out"),
                              dtype="bfloat16", max_steps=args.steps, per_device_train_batch_size=args.batch,
                              max_length=args.seq, gradient_checkpointing=True, save_steps=10**6, logging_steps=1,
                              warmup_ratio=0.0)
            trainer, _ = build_trainer(cfg, model=model, tokenizer=tok)
            assert all(len(r["input_ids"]) == args.seq for r in trainer.train_dataset), "sequences not full length"
            stamps = []

            class Clock(TrainerCallback):
                def on_step_end(self, *a, **k):
                    if device == "cuda":
                        torch.cuda.synchronize()
                    stamps.append(time.perf_counter())

            trainer.add_callback(Clock())
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            trainer.train()
            warm = min(args.warmup, len(stamps) - 2)  # skip compilation/allocator warm-up steps
            timed = len(stamps) - 1 - warm
            tps = timed * args.batch * args.seq / (stamps[-1] - stamps[warm])
            row = {"mode": "gpu", "device": name, "shape": shape, "params_b": round(n_params / 1e9, 3),
                   "method": "lora r=16 bf16, grad ckpt", "batch": args.batch, "seq": args.seq,
                   "timed_steps": timed, "s_per_step": round((stamps[-1] - stamps[warm]) / timed, 3),
                   "train_tokens_per_s": round(tps, 1),
                   "mfu_6nd": round(6 * n_params * tps / peak, 4) if peak else None,
                   "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None}
            print(json.dumps(row), flush=True)
            rows.append(row)
            del trainer, model
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true", help="GPU mode: random-init 0.5B and 8B shapes, tokens/s and MFU")
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="CPU mode: model spec")
    p.add_argument("--method", default="sft", choices=["sft", "dpo", "circuit-breakers"], help="CPU mode: what to "
                   "train (examples of dpo and circuit-breakers are two sequences each)")
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], help="CPU mode: dtypes to compare")
    p.add_argument("--tokens", type=int, default=300, help="CPU mode: tokens per example")
    p.add_argument("--max-length", type=int, default=768, help="CPU mode: max_length")
    p.add_argument("--shapes", nargs="+", default=["qwen2.5-0.5b", "llama3-8b"], choices=list(SHAPES))
    p.add_argument("--seq", type=int, default=2048, help="GPU mode: tokens per sequence")
    p.add_argument("--warmup", type=int, default=2, help="GPU mode: untimed first steps")
    p.add_argument("--peak-tflops", type=float, default=None, help="GPU mode: peak bf16 TFLOPs if not auto-detected")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--out", default="runs/bench_train.json", help="JSON file for the results")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows = gpu_bench(args) if args.gpu else cpu_bench(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(sys.argv), "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
