"""Sampling cost: rational's exact top-p (`TemperatureTopP`) vs transformers' top-p warper, same batch, one run.

    .venv/bin/python scripts/bench_sampling.py --model qwen2.5-coder-0.5b-instruct --batch 32 --max-new-tokens 64

The prompts are self-check chats (the rejection system prompt + a short request), as in `rational generate`.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()

    import torch

    from rational.backends import HFGenerator, SamplingParams
    from rational.generate import GenerateConfig, self_check
    from rational.prompts import PromptRecord

    gen = HFGenerator.load(args.model, batch_size=args.batch)
    system = self_check(GenerateConfig(), PromptRecord("bench", "x", "harmful", "weapons"))[0]
    chats = [[{"role": "system", "content": system}, {"role": "user", "content": f"Request {i}: how do I pick a lock?"}]
             for i in range(args.batch)]
    gen.generate(chats[:2], SamplingParams(max_new_tokens=4), progress=False)  # warm-up

    t = time.perf_counter()
    outs = gen.generate(chats, SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.7, top_p=0.95),
                        progress=False)
    ours = time.perf_counter() - t

    # The same batch through transformers' own temperature + top-p warpers.
    enc = [gen.encode(c) for c in chats]
    width = max(map(len, enc))
    ids = torch.full((len(enc), width), gen.tokenizer.pad_token_id)
    mask = torch.zeros((len(enc), width), dtype=torch.long)
    for r, e in enumerate(enc):
        ids[r, width - len(e):] = torch.tensor(e)
        mask[r, width - len(e):] = 1
    torch.manual_seed(0)
    t = time.perf_counter()
    with torch.inference_mode():
        gen.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.max_new_tokens, do_sample=True,
                           temperature=0.7, top_p=0.95, top_k=0, pad_token_id=gen.tokenizer.pad_token_id,
                           eos_token_id=gen.eos_ids)
    theirs = time.perf_counter() - t
    print(f"batch {args.batch}, {width} prompt tokens/row, {args.max_new_tokens} new tokens")
    print(f"rational TemperatureTopP: {ours:.1f} s ({sum(o.completions[0].num_tokens for o in outs)} tokens)")
    print(f"transformers top-p warper: {theirs:.1f} s  -> ratio {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
