"""DPO after SFT (`rational train --method dpo`): preference pairs, the SFT model as reference, one loadable adapter.

The preference step that STAIR and SaRO add after their reasoning SFT, here with TRL's `DPOTrainer` (no
hand-written loss). `train.py` runs it like any other method; this module holds what is specific to it:

1. **Pairs** (`load_pairs`): TRL's conversational preference format, one JSON object per line::

       {"prompt": [{"role": "user", "content": "..."}],
        "chosen": [{"role": "assistant", "content": "<think>...</think>\\n\\n..."}],
        "rejected": [{"role": "assistant", "content": "..."}],
        "meta": {"id": "...", "kind": "harmful", "chosen_from": "candidate", "rejected_from": "plain", ...}}

   `rational pairs` writes such a file from the model's own samples (pairs.py). Every line is checked before
   anything loads; a problem is one `UserError` naming file and line.
2. **Start from the SFT model** (`merge_init_adapter`): the SFT adapter (`--init-adapter`) is merged into the base
   weights in memory, then TRL puts a fresh LoRA on top. With PEFT, TRL's reference model is that same merged
   model with the new adapter disabled, so DPO measures its log-ratios against the SFT policy and no second copy
   of the model is held in memory.
3. **One adapter for evaluation** (`stack_adapters`): the DPO adapter only makes sense on the merged SFT weights.
   Both adapters are therefore concatenated into one LoRA on the original base (PEFT's `cat` combination: rank
   r_sft + r_dpo, W + dW_sft + dW_dpo exactly), written to `OUT/adapter`, so `rational eval --model BASE --adapter
   OUT/adapter` (and chat, serve, `--merge`) load it like any SFT adapter. The DPO adapter alone is kept in
   `OUT/dpo_adapter` (it applies to base + SFT merged).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .common import as_messages, numbered_json_lines
from .errors import UserError
from .models import attach_adapter, load_tokenizer, pick_dtype, resolve
from .reasoning import ReasoningFormat, parse_output

# TRL 1.16's DPOConfig.loss_type values (checked here so a typo fails before the model loads).
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


def load_pairs(path: str | Path, check_reasoning: bool = True,
               fmt: ReasoningFormat | None = None) -> tuple[list[dict], list[str]]:
    """Read a pairs file and validate every line. Returns (records with prompt/chosen/rejected only, kinds).

    `check_reasoning`: the chosen side must be well-formed reasoning + answer (the Rational method); the rejected
    side may be anything the model wrote, with or without reasoning.
    """
    fmt = fmt or ReasoningFormat()
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: pairs file not found; pass the pairs.jsonl written by `rational pairs` to --data")
    records, kinds = [], []
    for where, row in numbered_json_lines(path):
        if not isinstance(row, dict):
            raise UserError(f"{where}: each line must be a JSON object with 'prompt', 'chosen' and 'rejected'")
        for column in ("prompt", "chosen", "rejected"):
            if column not in row:
                raise UserError(f"{where}: missing column '{column}'; every pair needs 'prompt', 'chosen' and "
                                "'rejected' (conversational preference format)")
        sides = {"prompt": as_messages(row["prompt"], "user"), "chosen": as_messages(row["chosen"], "assistant"),
                 "rejected": as_messages(row["rejected"], "assistant")}
        for column, messages in sides.items():
            if messages is None:
                raise UserError(f"{where}: column '{column}' must be a non-empty list of {{'role', 'content'}} "
                                "messages or a string")
        if any(m["role"] == "system" for m in sides["prompt"]):
            raise UserError(f"{where}: prompt has a system message; Rational trains without a system prompt, so "
                            "remove it")
        for column in ("chosen", "rejected"):
            if sides[column][-1]["role"] != "assistant":
                raise UserError(f"{where}: '{column}' must end with an assistant message")
        if sides["chosen"] == sides["rejected"]:
            raise UserError(f"{where}: 'chosen' and 'rejected' are identical, so the pair carries no preference")
        if check_reasoning:
            parsed = parse_output(sides["chosen"][-1]["content"], fmt)
            if not parsed.well_formed:
                raise UserError(f"{where}: chosen side has malformed reasoning ({parsed.status}); it must be "
                                f"'{fmt.open_tag} reasoning {fmt.close_tag} answer' with both parts non-empty")
        meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
        kinds.append(str(meta.get("kind") or "unknown"))
        records.append(sides)
    if not records:
        raise UserError(f"{path}: no pairs in the file; run `rational pairs` first or pass another file")
    return records, kinds


def merge_init_adapter(model, adapter: str | Path):
    """The model with the SFT adapter merged into its weights (the policy DPO starts from and its reference)."""
    return attach_adapter(model, adapter, merge=True)


def build_dpo_trainer(model, tokenizer, records: list[dict], args, peft_config):
    """TRL's DPOTrainer on the (merged) model with a fresh LoRA; ref_model=None means "adapter disabled"."""
    from datasets import Dataset
    from trl import DPOTrainer

    return DPOTrainer(model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(records),
                      processing_class=tokenizer, peft_config=peft_config)


def stack_adapters(base_spec: str, first: str | Path, second: str | Path, out: str | Path,
                   dtype: str = "auto") -> Path:
    """Write one LoRA adapter equal to `first` then `second` (trained on base + first merged) on the base model.

    LoRA deltas add up: W + s1*B1@A1 + s2*B2@A2 = W + [B1 B2] @ [s1*A1; s2*A2], a LoRA of rank r1 + r2 with
    scaling 1. PEFT builds exactly that (`add_weighted_adapter(combination_type="cat")`). The only difference to
    training is rounding: DPO saw base + first merged in the training dtype.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    resolved = resolve(base_spec)
    base = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=pick_dtype(dtype, "cpu"))
    model = PeftModel.from_pretrained(base, str(first), adapter_name="first")
    model.load_adapter(str(second), adapter_name="second")
    model.add_weighted_adapter(["first", "second"], [1.0, 1.0], adapter_name="stacked", combination_type="cat")
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".stacked-"))
    try:
        model.save_pretrained(tmp, selected_adapters=["stacked"])
        saved = tmp / "stacked"  # PEFT writes a named adapter into a subfolder of that name
        load_tokenizer(resolved).save_pretrained(saved)
        if out.exists():
            shutil.rmtree(out)
        os.replace(saved, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
