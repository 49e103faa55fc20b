"""`rational train`: supervised fine-tuning on safety rationales with TRL (LoRA or full), plus baselines.

Also DPO after SFT (`--method dpo`: TRL's DPOTrainer, dpo.py) and the circuit-breaker baseline (`--baseline
circuit-breakers`: representation rerouting, circuit_breakers.py); this module runs them like SFT (checks, resume,
artifacts, metrics) and builds their trainers in `build_trainer`.

What happens, in order (`run_train`):

1. **Read and check the data** (`load_records`). `sft.jsonl` holds conversational prompt-completion records::

       {"prompt": [{"role": "user", "content": "..."}],
        "completion": [{"role": "assistant", "content": "<think>\\n...\\n</think>\\n\\n..."}],
        "meta": {"kind": "harmful" | "adversarial" | "benign", ...}}

   Every problem (a missing column, an empty file, unclosed reasoning tags, ...) is one `UserError` line that
   names the file and line. `meta` is dropped before training; its `kind` is counted in the metrics and, with
   `balance_decisions`, used to repeat the smaller side (decline vs comply) until both sides are equal.
2. **Apply the method's target transform** (`BASELINES`). The Rational method trains on the completions as they
   are (reasoning + answer). The `refusal-sft` baseline keeps the same prompts but strips the reasoning, so the
   comparison uses the same candidate pool.
3. **Build a TRL `SFTTrainer`** (`build_trainer`): the model is loaded with `from_pretrained(dtype=...)`, LoRA goes
   through `peft_config=LoraConfig(target_modules="all-linear")`. Loss is on the completion only: TRL tokenizes
   `prompt` with the generation prompt and `prompt + completion`, and masks the prompt tokens with -100
   (`completion_only_loss=True`). No system prompt is added by us. Note that some chat templates add one of
   their own when none is given (Qwen2.5: "You are Qwen, created by Alibaba Cloud. ..."); the same template is
   used at inference by `rational chat` / the generation engine, so training and inference see the same text.
4. **Train** with checkpoints every `save_steps` in `OUT/checkpoints`; `resume=True` continues from the last one
   (`trainer.train(resume_from_checkpoint=...)` restores weights, optimizer, scheduler, RNG and data position).
5. **Write artifacts**: `OUT/adapter/` (LoRA) or `OUT/model/` (full), optional `OUT/merged/`,
   `OUT/train_metrics.json`, `OUT/config.yaml`. The adapter/model folder is renamed into place last, so its
   presence (`is_trained`) means the stage finished.

Scale-out works like `trl sft`: `--accelerate-config NAME|PATH` re-launches `rational train`
(`python -m rational.cli train --config OUT/launch_config.yaml`) under `accelerate launch` with a packaged profile
(`accelerate_configs/*.yaml`). The training code is plain `Trainer`
code, so DDP, FSDP2 and DeepSpeed ZeRO-3 come from accelerate, not from us.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, Callable

import yaml

from .circuit_breakers import build_cb_trainer, load_cb_records, target_layers
from .common import (
    as_messages,
    clear_outputs,
    input_hashes,
    library_versions,
    numbered_json_lines,
    output_lock,
    write_json,
)
from .config import check, check_choice, check_range, record_provenance, resume_difference, setting
from .dpo import LOSS_TYPES, build_dpo_trainer, load_pairs, merge_init_adapter, stack_adapters
from .errors import UserError
from .models import DEFAULT_MODEL, load_tokenizer, pick_device, pick_dtype, resolve
from .reasoning import ReasoningFormat, extract_decision, parse_output

METHODS = ("lora", "full", "dpo")
TRUNCATION_MODES = ("truncate", "drop")
PACKED_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")
# Prompt kinds whose correct behaviour is to decline (the rest, e.g. "benign", should be answered).
DECLINE_KINDS = frozenset({"harmful", "adversarial", "jailbreak", "unsafe"})
COMPLY_KINDS = frozenset({"benign", "borderline", "safe"})
# The fixed target used by refusal-sft when a harmful/adversarial record has no usable plain answer.
PLAIN_REFUSAL = "I'm sorry, but I can't help with that request."
PROFILES = ("single_gpu", "ddp", "fsdp2", "zero3")
PROFILE_ALIASES = {"multi_gpu": "ddp", "fsdp": "fsdp2", "deepspeed": "zero3"}
# What train_metrics.json keeps of each logging step: SFT's, then DPO's (TRL's names), then circuit breakers'.
CURVE_KEYS = ("step", "epoch", "loss", "learning_rate", "grad_norm", "mean_token_accuracy", "num_tokens",
              "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
              "logps/rejected", "reroute_loss", "retain_loss", "reroute_coef", "retain_coef", "reroute_cos")


def _numbers(cfg: Any, name: str, cast: type, example: str) -> list | None:
    """A comma-separated setting ('10,20', from the command line) as a list of numbers; a list stays as it is."""
    value = getattr(cfg, name)
    if not isinstance(value, str):
        return value
    try:
        return [cast(n) for n in value.split(",") if n.strip()] or None
    except ValueError:
        raise UserError(f"'{name}' is {value!r}; give {example}") from None


def _names(value: str | list[str]) -> str | list[str]:
    """'a,b' or [a, b] -> a list of names; a single name stays a plain string (as older runs recorded it)."""
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else map(str, value))]
    items = [v for v in items if v]
    return items if len(items) > 1 else (items[0] if items else value)


@dataclass
class TrainConfig:
    """`rational train`: SFT on rationales with TRL (LoRA or full). Names follow TRL's `SFTConfig` where one exists."""

    model: str = setting(DEFAULT_MODEL, "Model spec: registry name, local folder, .gguf or hub id.",
                         same_on_resume=True)
    data: str = setting("", "sft.jsonl written by `rational generate` (conversational prompt-completion records).",
                        same_on_resume=True)
    out: str = setting("", "Output folder (adapter/, train_metrics.json; checkpoints in OUT/checkpoints).")
    method: str = setting("lora", "lora | full | dpo (LoRA DPO on preference pairs, after SFT: --init-adapter).",
                          same_on_resume=True)
    baseline: str | None = setting(None, "None = Rational (reasoning + answer); refusal-sft = the same prompts (or "
                                   "pairs) with the answers only; circuit-breakers = representation rerouting "
                                   "(--data circuit_breakers.jsonl).", same_on_resume=True)
    # --method dpo (names as in TRL's DPOConfig)
    init_adapter: str | None = setting(None, "--method dpo: the SFT adapter (OUT/adapter of an SFT run) merged into "
                                       "the base first; DPO starts from it and uses it as the reference.",
                                       same_on_resume=True)
    beta: float = setting(0.1, "--method dpo: how far the policy may move from the reference (DPOConfig.beta).",
                          same_on_resume=True)
    loss_type: str | list[str] = setting("sigmoid", "--method dpo: DPOConfig.loss_type (sigmoid = the DPO paper; "
                                         "ipo, hinge, robust, ...); several are summed, e.g. sigmoid,sft (RPO: DPO "
                                         "plus the chosen side's NLL).", same_on_resume=True)
    loss_weights: str | list[float] | None = setting(None, "--method dpo: a weight per loss_type, e.g. 1,1 "
                                                     "(DPOConfig.loss_weights; default 1 each).",
                                                     same_on_resume=True)
    # --baseline circuit-breakers (Zou et al. 2024)
    cb_alpha: float = setting(10.0, "circuit-breakers: alpha of the loss schedule, c_reroute = alpha (1 - t/2T), "
                              "c_retain = alpha t/2T (paper: 10 for Llama-3-8B, 5 for Mistral-7B).",
                              same_on_resume=True)
    cb_layers: str | list[int] | None = setting(None, "circuit-breakers: hidden states to reroute, e.g. 10,20 "
                                                "(default: the paper's 10 and 20 of 32 layers, scaled to the "
                                                "model's depth).", same_on_resume=True)
    epochs: float = setting(2.0, "Number of epochs (SFTConfig.num_train_epochs).", same_on_resume=True)
    max_steps: int = setting(-1, "Stop after N optimizer steps; -1 = train for `epochs`.", same_on_resume=True)
    learning_rate: float | None = setting(None, "Learning rate (default 2e-4 for LoRA, 2e-5 for full fine-tuning, "
                                          "the usual 10x rule; 5e-6 for LoRA DPO; 1e-4 for circuit-breakers, as "
                                          "published).", same_on_resume=True, old_flags=("--lr",))
    per_device_train_batch_size: int = setting(4, "Examples per device and step.", same_on_resume=True,
                                               old_flags=("--batch-size",))
    gradient_accumulation_steps: int = setting(1, "Steps whose gradients are summed before an update.",
                                               same_on_resume=True, old_flags=("--grad-accum",))
    max_length: int = setting(1024, "Max tokens of prompt + completion.", same_on_resume=True)
    truncation: str = setting("truncate", "Longer sequences: truncate (keep the start) or drop; counted in "
                              "train_metrics.json.", same_on_resume=True)
    lora_r: int = setting(16, "LoRA rank.", same_on_resume=True)
    lora_alpha: int = setting(32, "LoRA scaling numerator (the update is scaled by alpha / r).", same_on_resume=True)
    lora_dropout: float = setting(0.05, "Dropout on the LoRA input.", same_on_resume=True)
    lora_target_modules: str | list[str] = setting("all-linear", "all-linear, or module names (a list, or "
                                                   "comma-separated: q_proj,v_proj).", same_on_resume=True)
    dtype: str = setting("auto", "auto | float32 | bfloat16 | float16 (auto: bf16 on a GPU or a CPU with native "
                         "bf16, else fp32).", same_on_resume=True)
    gradient_checkpointing: bool | None = setting(None, "Recompute activations in the backward pass (default: on "
                                                  "for GPU, off for CPU, where it only costs time).")
    attn_implementation: str | None = setting(None, "transformers attention kernel (default sdpa; "
                                              "flash_attention_2 on a GPU).", same_on_resume=True)
    packing: bool = setting(False, "TRL BFD packing: examples share rows with no padding, each attending only to "
                            "itself (flash attention, or sdpa/eager with a block-diagonal mask).", same_on_resume=True)
    group_by_length: bool = setting(False, "Batch examples of similar length together (less padding; the loss and "
                                    "its completion-only mask are unchanged).", same_on_resume=True)
    padding_free: bool = setting(False, "Padding-free batches: a batch is one row of its examples end to end "
                                 "(no padding; loss and mask unchanged; without packing, examples longer than "
                                 "max_length are dropped, not truncated).", same_on_resume=True)
    compact_lm_head: bool = setting(True, "On CPU, put only the labelled (completion) positions through the LM "
                                    "head, as TRL does on GPU; the loss is the same, prompt and padding cost "
                                    "nothing.")
    save_steps: int = setting(50, "Checkpoint every N steps.")
    save_total_limit: int | None = setting(2, "Checkpoints kept (oldest deleted first).")
    logging_steps: int = setting(1, "Log loss every N steps.")
    seed: int = setting(0, "Seed for LoRA init, dropout and data order.", same_on_resume=True)
    warmup_ratio: float = setting(0.03, "Share of the steps spent warming up the learning rate.",
                                  same_on_resume=True)
    lr_scheduler_type: str = setting("cosine", "Learning-rate schedule (transformers' names).", same_on_resume=True)
    # At tiny data sizes the majority decision otherwise becomes the model's default answer (see BENCHMARKS.md).
    balance_decisions: bool = setting(False, "Repeat the smaller side (decline vs comply records), seeded, until "
                                      "both are equal (the same as comply_share 0.5).", same_on_resume=True)
    comply_share: float | None = setting(None, "Share of comply records (benign look-alikes) in the training mix, "
                                         "reached by repeating records of one side (seeded); the knob behind the "
                                         "safety / over-refusal frontier. None: the data as it is.",
                                         same_on_resume=True)
    weight_decay: float = setting(0.0, "AdamW weight decay.", same_on_resume=True)
    report_to: str = setting("none", "none | wandb | trackio | tensorboard; no network calls unless asked.")
    resume: bool = setting(False, "Continue from the last checkpoint in OUT/checkpoints (fresh start if none).")
    overwrite: bool = setting(False, "Delete a finished OUT/adapter (or model) and train again.")
    merge: bool = setting(False, "Also write OUT/merged: base + adapter merged, loadable by plain transformers.")
    accelerate_config: str | None = setting(None, "Launch under accelerate with a profile: single_gpu, ddp, fsdp2, "
                                            "zero3, or a YAML path.")
    num_processes: int | None = setting(None, "Processes for the accelerate launch (overrides the profile).")
    reasoning_open: str = setting("<think>", "Tag that opens the reasoning block.", same_on_resume=True)
    reasoning_close: str = setting("</think>", "Tag that closes the reasoning block.", same_on_resume=True)

    @property
    def loss_types(self) -> list[str]:
        """`loss_type` as a list (a single name is kept as a string in the config, as older runs recorded it)."""
        return self.loss_type if isinstance(self.loss_type, list) else [self.loss_type]

    def __post_init__(self):
        if self.baseline in ("none", "", "rational"):
            self.baseline = None
        check_choice(self, "method", METHODS)
        check_choice(self, "truncation", TRUNCATION_MODES)
        for name in ("max_length", "per_device_train_batch_size", "gradient_accumulation_steps", "save_steps",
                     "logging_steps", "lora_r", "lora_alpha"):
            check_range(self, name, 1)
        check_range(self, "epochs", 0, lo_open=True)
        check_range(self, "max_steps", 1, allow=(-1,))
        check_range(self, "learning_rate", 0, lo_open=True, allow=(None,))
        check_range(self, "lora_dropout", 0, 1, hi_open=True)
        check_range(self, "warmup_ratio", 0, 1)
        check_range(self, "weight_decay", 0)
        check_range(self, "save_total_limit", 1, allow=(None,))
        check_range(self, "num_processes", 1, allow=(None,))
        check_range(self, "comply_share", 0, 1, lo_open=True, hi_open=True, allow=(None,))
        check(not (self.merge and self.method == "full"),
              "--merge applies to LoRA adapters; a full fine-tune is already a complete model in OUT/model")
        check_range(self, "beta", 0, lo_open=True)
        check_range(self, "cb_alpha", 0, lo_open=True)
        self.loss_type = _names(self.loss_type)
        for name in self.loss_types:
            check(name in LOSS_TYPES, f"unknown loss_type '{name}'; use one of {', '.join(LOSS_TYPES)}")
        self.loss_weights = _numbers(self, "loss_weights", float, "weights like 1,0.5")
        check(self.loss_weights is None or len(self.loss_weights) == len(self.loss_types),
              f"loss_weights has {len(self.loss_weights or [])} values for {len(self.loss_types)} loss_type(s); "
              "give one each")
        self.cb_layers = _numbers(self, "cb_layers", int, "hidden-state indices like 10,20")
        check(self.init_adapter is None or self.method == "dpo",
              "--init-adapter applies to --method dpo (the SFT adapter DPO starts from)")
        if self.baseline in BASELINES:
            check(self.method in BASELINES[self.baseline].methods,
                  f"baseline {self.baseline} trains with --method {' or '.join(BASELINES[self.baseline].methods)}, "
                  f"not {self.method}")
        # Packed rows carry no attention mask: flash kernels split them by position_ids, and sdpa/eager get a
        # block-diagonal mask that transformers builds from the restarting position_ids
        # (masking_utils.find_packed_sequence_indices); tests/test_train.py checks the loss is unchanged.
        check(not ((self.packing or self.padding_free) and self.attn_implementation
                   and self.attn_implementation.split(":")[-1] not in PACKED_ATTENTION),
              f"packing/padding_free need an attention kernel that keeps packed examples apart "
              f"({', '.join(PACKED_ATTENTION)}), not {self.attn_implementation}")

    @property
    def fmt(self) -> ReasoningFormat:
        return ReasoningFormat(self.reasoning_open, self.reasoning_close)

    def lr(self) -> float:
        if self.learning_rate is not None:
            return float(self.learning_rate)
        if self.baseline == CIRCUIT_BREAKERS:
            return 1e-4  # the paper's value for both models
        return {"lora": 2e-4, "full": 2e-5, "dpo": 5e-6}[self.method]  # DPO: TRL's guidance for LoRA

    def target_modules(self) -> str | list[str]:
        t = self.lora_target_modules
        if isinstance(t, str):
            return t if t == "all-linear" else [s.strip() for s in t.split(",") if s.strip()]
        return list(t)


# ------------------------------------------------------------------------------------------------ data


@dataclass
class Prepared:
    """The records ready for TRL plus the counts that go into train_metrics.json."""

    records: list[dict[str, Any]]  # {"prompt": [...], "completion": [...]} only
    kinds: list[str]  # meta.kind per record (parallel to records)
    counts: dict[str, Any]


def load_records(path: str | Path, check_reasoning: bool = True,
                 fmt: ReasoningFormat | None = None) -> tuple[list[dict], list[str]]:
    """Read `sft.jsonl` and validate every line. Returns (records without meta, kinds).

    We read the file line by line (not through `datasets.load_dataset`) so that every error names the exact line
    number, and so that a `meta` column of mixed types never trips Arrow's schema inference.
    """
    fmt = fmt or ReasoningFormat()
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: data file not found; pass the sft.jsonl written by `rational generate` to --data")
    records, kinds = [], []
    for where, row in numbered_json_lines(path):
        if not isinstance(row, dict):
            raise UserError(f"{where}: each line must be a JSON object with 'prompt' and 'completion'")
        for column in ("prompt", "completion"):
            if column not in row:
                raise UserError(f"{where}: missing column '{column}'; every record needs 'prompt' and "
                                "'completion' (conversational prompt-completion format)")
        prompt = as_messages(row["prompt"], "user")
        completion = as_messages(row["completion"], "assistant")
        if prompt is None or completion is None:
            bad = "prompt" if prompt is None else "completion"
            raise UserError(f"{where}: column '{bad}' must be a non-empty list of "
                            "{'role', 'content'} messages or a string")
        if any(m["role"] == "system" for m in prompt):
            raise UserError(f"{where}: prompt has a system message; Rational trains without a system "
                            "prompt (the reasoning must not depend on it), so remove it")
        if completion[-1]["role"] != "assistant":
            raise UserError(f"{where}: the completion must end with an assistant message")
        meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
        retain = meta.get("retain") is True  # a retain-set record: a plain answer, no reasoning by design
        if check_reasoning and not retain:
            parsed = parse_output(completion[-1]["content"], fmt)
            if not parsed.well_formed:
                raise UserError(
                    f"{where}: completion has malformed reasoning ({parsed.status}); it must be "
                    f"'{fmt.open_tag} reasoning {fmt.close_tag} answer' with both parts non-empty")
        # Retain records count on neither decision side (mix_decisions never repeats them).
        kinds.append("retain" if retain else str(meta.get("kind") or "unknown"))
        records.append({"prompt": prompt, "completion": completion})
    if not records:
        raise UserError(f"{path}: the dataset is empty; run `rational generate` first or pass another file")
    return records, kinds


def _refusal_sft(record: dict, kind: str, fmt: ReasoningFormat) -> tuple[dict | None, str]:
    """refusal-sft target: the final answer without the reasoning block (the "rigid refusal" baseline).

    Harmful/adversarial records keep their plain answer (a refusal) or, when there is none, get a fixed refusal.
    Benign records keep their plain answer; without one they are dropped (we must not invent an answer).
    Returns (record or None, what happened).
    """
    text = record["completion"][-1]["content"]
    parsed = parse_output(text, fmt)
    answer = parsed.answer.strip()
    # A record with no kind: trust the reasoning's own decision to tell refusals from answers.
    declines = kind in DECLINE_KINDS or (kind == "unknown" and extract_decision(parsed.reasoning) == "decline")
    if not answer or fmt.open_tag in answer or fmt.close_tag in answer:
        if not declines:
            return None, "dropped_empty_answer"
        answer, what = PLAIN_REFUSAL, "fixed_refusal"
    else:
        what = "plain_answer"
    completion = record["completion"][:-1] + [{"role": "assistant", "content": answer}]
    return {"prompt": record["prompt"], "completion": completion}, what


def _refusal_sft_pair(record: dict, kind: str, fmt: ReasoningFormat) -> tuple[dict | None, str]:
    """refusal-sft + DPO: the same pair with the reasoning stripped from both sides, so the baseline gets the same
    preference signal without the reasoning. The chosen side follows `_refusal_sft`; a rejected side without a
    plain answer (e.g. cut off inside its reasoning), or equal to the chosen answer, drops the pair."""
    chosen, what = _refusal_sft({"prompt": record["prompt"], "completion": record["chosen"]}, kind, fmt)
    if chosen is None:
        return None, what
    rejected = parse_output(record["rejected"][-1]["content"], fmt).answer.strip()
    if not rejected or fmt.open_tag in rejected or fmt.close_tag in rejected:
        return None, "dropped_empty_rejected"
    if rejected == chosen["completion"][-1]["content"]:
        return None, "dropped_same_answers"
    return {"prompt": record["prompt"], "chosen": chosen["completion"],
            "rejected": record["rejected"][:-1] + [{"role": "assistant", "content": rejected}]}, what


Transform = Callable[[dict, str, ReasoningFormat], tuple[dict | None, str]]


@dataclass(frozen=True)
class Baseline:
    """What a baseline changes: the targets (a transform of each SFT record or DPO pair: (record, kind, fmt) ->
    (new record or None to drop it, outcome label)), or the loss (circuit breakers: their own Trainer)."""

    methods: tuple[str, ...]  # the --method values it works with
    records: Transform | None = None  # SFT records (lora, full)
    pairs: Transform | None = None  # DPO pairs (dpo)


CIRCUIT_BREAKERS = "circuit-breakers"
# Extension point: another SFT-style baseline only needs a transform here.
BASELINES: dict[str, Baseline] = {
    "refusal-sft": Baseline(methods=("lora", "full", "dpo"), records=_refusal_sft, pairs=_refusal_sft_pair),
    # Representation rerouting on harmful conversations + retain on benign ones (circuit_breakers.py).
    CIRCUIT_BREAKERS: Baseline(methods=("lora",)),
}


def _load(cfg: TrainConfig) -> tuple[list[dict], list[str]]:
    """Read and validate the method's data file. Reasoning tags are only required where we train on them."""
    if cfg.method == "dpo":
        return load_pairs(cfg.data, check_reasoning=cfg.baseline is None, fmt=cfg.fmt)
    if cfg.baseline == CIRCUIT_BREAKERS:
        return load_cb_records(cfg.data)  # kinds: the set, reroute or retain
    return load_records(cfg.data, check_reasoning=cfg.baseline is None, fmt=cfg.fmt)


def prepare_records(cfg: TrainConfig) -> Prepared:
    """Load, validate and transform the records for the configured method/baseline."""
    if cfg.baseline is not None and cfg.baseline not in BASELINES:
        raise UserError(f"unknown baseline '{cfg.baseline}'; use one of: {', '.join(BASELINES)} (or none)")
    records, kinds = _load(cfg)
    counts: dict[str, Any] = {"records_in_file": len(records), "by_kind_in_file": dict(Counter(kinds))}
    baseline = BASELINES[cfg.baseline] if cfg.baseline else None
    transform = None if baseline is None else baseline.pairs if cfg.method == "dpo" else baseline.records
    if transform is not None:
        out_records, out_kinds, outcomes = [], [], Counter()
        for rec, kind in zip(records, kinds):
            new, what = transform(rec, kind, cfg.fmt)
            outcomes[what] += 1
            if new is not None:
                out_records.append(new)
                out_kinds.append(kind)
        counts["baseline_outcomes"] = dict(outcomes)
        records, kinds = out_records, out_kinds
        if not records:
            raise UserError(f"{cfg.data}: no record is left for baseline '{cfg.baseline}' (all answers empty)")
    share = cfg.comply_share if cfg.comply_share is not None else (0.5 if cfg.balance_decisions else None)
    if share is not None:
        records, kinds, counts["balance"] = mix_decisions(records, kinds, share, cfg.seed)
    return Prepared(records, kinds, counts)


def balance_decisions(records: list[dict], kinds: list[str], seed: int = 0) -> tuple[list[dict], list[str], dict]:
    """Repeat records of the smaller decision side (decline vs comply) until both sides are equal."""
    return mix_decisions(records, kinds, 0.5, seed)


def mix_decisions(records: list[dict], kinds: list[str], comply_share: float, seed: int = 0
                  ) -> tuple[list[dict], list[str], dict]:
    """Repeat records of one decision side (decline vs comply) until comply records make up `comply_share` of both.

    Only repeats, never drops, so every accepted rationale is trained on. Records whose kind is neither (e.g.
    "unknown") are kept once and not counted. Whole copies first, then a seeded sample without replacement for the
    remainder, so every repeated record appears k or k+1 times. Repeats are appended; the Trainer shuffles them.
    """
    decline = [i for i, k in enumerate(kinds) if k in DECLINE_KINDS]
    comply = [i for i, k in enumerate(kinds) if k in COMPLY_KINDS]
    info = {"comply_share": comply_share, "decline_before": len(decline), "comply_before": len(comply), "repeated": 0}
    if not decline or not comply:
        info["skipped"] = "one side is empty"
        return records, kinds, info
    # Grow the side that is short of its share: comply to share*(n_c+n_d)... solved for the side that grows.
    want_comply = comply_share / (1 - comply_share) * len(decline)
    if want_comply >= len(comply):
        grow, need = comply, round(want_comply) - len(comply)
    else:
        grow, need = decline, round(len(comply) * (1 - comply_share) / comply_share) - len(decline)
    if need <= 0:
        info["skipped"] = "already at that share"
        return records, kinds, info
    extra = grow * (need // len(grow)) + random.Random(seed).sample(grow, need % len(grow))
    info["repeated"] = len(extra)
    info["decline_after"] = info["decline_before"] + (len(extra) if grow is decline else 0)
    info["comply_after"] = info["comply_before"] + (len(extra) if grow is comply else 0)
    return records + [records[i] for i in extra], kinds + [kinds[i] for i in extra], info


def _apply_length_policy(prepared: Prepared, tokenizer, cfg: TrainConfig) -> Prepared:
    """Count (and for truncation="drop", remove) sequences longer than max_length, by kind.

    TRL truncates with keep_start and silently drops examples whose prompt alone fills max_length (no completion
    token would be left to learn from). We measure lengths ourselves with the same chat template so both cases are
    counted, and so "drop" can remove over-long examples instead of training on a cut-off reasoning.
    """
    def ids(messages, **kw):
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)
        return out["input_ids"]

    keep_records, keep_kinds = [], []
    truncated, dropped, no_room = Counter(), Counter(), Counter()
    n_tokens = 0
    for rec, kind in zip(prepared.records, prepared.kinds):
        # A DPO pair is as long as its longer side.
        full = max(len(ids(rec["prompt"] + rec[side])) for side in ("completion", "chosen", "rejected") if side in rec)
        prompt = len(ids(rec["prompt"], add_generation_prompt=True))
        if prompt >= cfg.max_length:
            no_room[kind] += 1
            continue
        if full > cfg.max_length:
            # TRL cannot truncate unpacked padding-free rows (it refuses max_length there): those are dropped.
            if cfg.truncation == "drop" or (cfg.padding_free and not cfg.packing):
                dropped[kind] += 1
                continue
            truncated[kind] += 1
        n_tokens += min(full, cfg.max_length)
        keep_records.append(rec)
        keep_kinds.append(kind)
    counts = dict(prepared.counts)
    counts.update({
        "examples": len(keep_records),
        "by_kind": dict(Counter(keep_kinds)),
        "truncated": sum(truncated.values()), "truncated_by_kind": dict(truncated),
        "dropped_too_long": sum(dropped.values()), "dropped_too_long_by_kind": dict(dropped),
        "dropped_prompt_fills_max_length": sum(no_room.values()),
        "tokens_per_epoch": n_tokens,
    })
    if not keep_records:
        raise UserError(f"{cfg.data}: every example is longer than max_length={cfg.max_length} tokens; "
                        "raise --max-length or use --truncation truncate")
    return Prepared(keep_records, keep_kinds, counts)


# --------------------------------------------------------------------------------------------- checks


def _check_config(cfg: TrainConfig) -> None:
    """What a run needs beyond the config's own checks (recipes leave data and out to the command line)."""
    if not cfg.data:
        raise UserError("no training data; pass --data sft.jsonl (or set train.data in the recipe)")
    if not cfg.out:
        raise UserError("no output folder; pass --out DIR (or set train.out in the recipe)")


def _check_lora_targets(model, targets: str | list[str]) -> None:
    """A LoRA target that matches no module of the model is a user error, listing what exists."""
    if targets == "all-linear":
        return
    import torch

    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    suffixes = sorted({n.split(".")[-1] for n in names})
    for t in targets:
        if not any(n == t or n.endswith("." + t) for n in names):
            raise UserError(f"LoRA target module '{t}' is not in the model; available linear modules: "
                            f"{', '.join(suffixes)} (or use all-linear)")


def artifact_dir(out: str | Path, method: str = "lora") -> Path:
    return Path(out) / ("model" if method == "full" else "adapter")


def is_trained(out: str | Path) -> bool:
    """True when OUT holds a finished training run (adapter or full model written, renamed into place last)."""
    out = Path(out)
    return (out / "adapter" / "adapter_config.json").is_file() or (out / "model" / "config.json").is_file()


def _in_distributed_child() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or "LOCAL_RANK" in os.environ


# Set by `_launch_with_accelerate` for its children: the parent already checked and cleaned OUT.
_CHILD_ENV = "RATIONAL_ACCELERATE_CHILD"


# ------------------------------------------------------------------------------------------- trainer


def _training_args(cfg: TrainConfig, torch_dtype, device: str) -> dict[str, Any]:
    """The `TrainingArguments` every method shares (SFTConfig and DPOConfig extend TrainingArguments)."""
    import torch

    on_gpu = device.startswith("cuda")
    gc = cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else on_gpu
    return dict(
        output_dir=str(Path(cfg.out) / "checkpoints"),
        num_train_epochs=float(cfg.epochs),
        max_steps=int(cfg.max_steps),
        learning_rate=cfg.lr(),
        per_device_train_batch_size=int(cfg.per_device_train_batch_size),
        gradient_accumulation_steps=int(cfg.gradient_accumulation_steps),
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        # Mixed precision follows the weights' dtype; fp32 weights train in fp32.
        bf16=torch_dtype == torch.bfloat16,
        fp16=torch_dtype == torch.float16,
        # transformers 5 renamed gradient_checkpointing -> activation_checkpointing (TRL's default is on).
        activation_checkpointing=gc,
        activation_checkpointing_kwargs={"use_reentrant": False} if gc else None,
        save_strategy="steps",
        save_steps=int(cfg.save_steps),
        save_total_limit=cfg.save_total_limit,
        logging_steps=int(cfg.logging_steps),
        seed=int(cfg.seed),
        data_seed=int(cfg.seed),
        warmup_steps=float(cfg.warmup_ratio),
        lr_scheduler_type=cfg.lr_scheduler_type,
        weight_decay=float(cfg.weight_decay),
        report_to=cfg.report_to,
        # On a machine without CUDA, DDP under `accelerate launch` runs over gloo only when asked for the CPU.
        use_cpu=not on_gpu,
        dataloader_num_workers=0,
        disable_tqdm=not sys.stderr.isatty(),
    )


def _sft_config(cfg: TrainConfig, torch_dtype, device: str):
    from trl import SFTConfig

    return SFTConfig(
        **_training_args(cfg, torch_dtype, device),
        # Unpacked padding-free rows are not truncated by TRL; _apply_length_policy has dropped the long ones.
        max_length=None if cfg.padding_free and not cfg.packing else int(cfg.max_length),
        truncation_mode="keep_start",
        # Loss on the completion (reasoning + answer) only, never on the prompt. Explicit, not TRL's automatic mode.
        completion_only_loss=True,
        assistant_only_loss=False,
        packing=bool(cfg.packing),
        padding_free=bool(cfg.padding_free),
        dataset_num_proc=None,
    )


def _dpo_config(cfg: TrainConfig, torch_dtype, device: str):
    from trl import DPOConfig

    return DPOConfig(**_training_args(cfg, torch_dtype, device), max_length=int(cfg.max_length),
                     truncation_mode="keep_start", beta=float(cfg.beta),
                     loss_type=cfg.loss_types,
                     loss_weights=cfg.loss_weights,
                     dataset_num_proc=None)


def _cb_config(cfg: TrainConfig, torch_dtype, device: str):
    from transformers import TrainingArguments

    # The batches carry our own columns (reroute + retain rows and their loss mask), not the model's arguments.
    return TrainingArguments(**_training_args(cfg, torch_dtype, device), remove_unused_columns=False)


def _lora_config(cfg: TrainConfig, model, layers_to_transform: list[int] | None = None):
    from peft import LoraConfig

    targets = cfg.target_modules()
    _check_lora_targets(model, targets)
    if targets == "all-linear" and layers_to_transform is not None:
        # PEFT takes a layer subset only with module names: every linear layer's name except the output head.
        import torch

        head = model.get_output_embeddings()
        targets = sorted({n.split(".")[-1] for n, m in model.named_modules()
                          if isinstance(m, torch.nn.Linear) and m is not head})
    return LoraConfig(r=int(cfg.lora_r), lora_alpha=int(cfg.lora_alpha), lora_dropout=float(cfg.lora_dropout),
                      target_modules=targets, layers_to_transform=layers_to_transform, bias="none",
                      task_type="CAUSAL_LM")


def build_trainer(cfg: TrainConfig, prepared: Prepared | None = None, model=None, tokenizer=None):
    """Load model + tokenizer and return `(trainer, prepared)`; nothing is trained yet.

    Split from `run_train` so tests (and curious users) can inspect `trainer.train_dataset` — the exact
    input_ids/labels TRL will train on — before training. `model`/`tokenizer` may be passed already loaded
    (the GPU benchmark builds random-init models from public configs); otherwise `cfg.model` is resolved.
    The trainer is TRL's `SFTTrainer` (lora, full), TRL's `DPOTrainer` (dpo, dpo.py), or the circuit-breaker
    `Trainer` (circuit_breakers.py).
    """
    from transformers import AutoModelForCausalLM, set_seed

    _check_config(cfg)
    prepared = prepared or prepare_records(cfg)
    resolved = resolve(cfg.model) if model is None or tokenizer is None else None
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(resolved)
    prepared = _apply_length_policy(prepared, tokenizer, cfg)

    device = pick_device()
    torch_dtype = pick_dtype(cfg.dtype, device)
    set_seed(int(cfg.seed))  # LoRA init and dropout draw from this
    if model is None:
        kwargs = {"dtype": torch_dtype}
        if cfg.attn_implementation:
            kwargs["attn_implementation"] = cfg.attn_implementation
        try:
            model = AutoModelForCausalLM.from_pretrained(resolved.path, **kwargs)
        except OSError as e:
            raise UserError(f"{resolved.spec}: could not load the model ({str(e).splitlines()[0][:200]})") from None

    if cfg.method == "dpo":
        if cfg.init_adapter:
            model = merge_init_adapter(model, cfg.init_adapter)
        trainer = build_dpo_trainer(model, tokenizer, prepared.records, _dpo_config(cfg, torch_dtype, device),
                                    _lora_config(cfg, model))
        return trainer, prepared
    if cfg.baseline == CIRCUIT_BREAKERS:
        layers = target_layers(model.config.num_hidden_layers, cfg.cb_layers)
        # LoRA only on the layers below the last rerouted hidden state, as in the paper: the others cannot
        # change any hidden state the loss looks at.
        peft_config = _lora_config(cfg, model, layers_to_transform=list(range(max(layers))))
        trainer = build_cb_trainer(model, tokenizer, prepared.records, _cb_config(cfg, torch_dtype, device),
                                   peft_config, float(cfg.cb_alpha), layers, int(cfg.max_length))
        return trainer, prepared

    from datasets import Dataset
    from trl import SFTTrainer

    _lm_head_labelled_positions_on_cpu(bool(cfg.compact_lm_head))
    peft_config = _lora_config(cfg, model) if cfg.method == "lora" else None
    try:
        trainer = SFTTrainer(model=model, args=_sft_config(cfg, torch_dtype, device),
                             train_dataset=Dataset.from_list(prepared.records), processing_class=tokenizer,
                             peft_config=peft_config)
    except ValueError as e:  # PEFT's own target check, in case a pattern matched a non-Linear module
        if "target" in str(e).lower() and "module" in str(e).lower():
            raise UserError(f"LoRA target modules {cfg.lora_target_modules!r} do not fit the model: "
                            f"{str(e).splitlines()[0][:200]}") from None
        raise
    return trainer, prepared


_COMPACT_LM_HEAD = {"on": True}


def _lm_head_labelled_positions_on_cpu(on: bool) -> None:
    """Make TRL's fused LM head project only the positions that carry a label on CPU, as it does on CUDA.

    TRL 1.x (`trl.trainer.utils.add_fused_lm_head`) scores only labelled positions where Triton runs and every
    position elsewhere, to keep tile shapes fixed for compilers such as Neuron. On CPU eager there is nothing to
    recompile, and scoring every position means the prompt and padding go through the 151k-wide LM head, its
    softmax statistics and its fp32 backward for nothing: the loss is the same either way (unlabelled positions
    are zeroed), tests/test_train.py checks it. A TRL without this switch point is left as it is.
    """
    _COMPACT_LM_HEAD["on"] = on
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:
        return
    current = getattr(trl_utils, "_use_triton", None)
    if current is None or getattr(current, "rational_wrapped", False):
        return

    def compact_here(device, _original=current):
        return (device.type == "cpu" and _COMPACT_LM_HEAD["on"]) or _original(device)

    compact_here.rational_wrapped = True
    trl_utils._use_triton = compact_here


def _is_oom(err: BaseException) -> bool:
    import torch

    text = str(err).lower()
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


def _train(trainer, resume_from: str | None, cfg: TrainConfig):
    """trainer.train with out-of-memory turned into one actionable line."""
    try:
        return trainer.train(resume_from_checkpoint=resume_from)
    except (RuntimeError, MemoryError) as e:
        if isinstance(e, MemoryError) or _is_oom(e):
            raise UserError(
                f"out of memory while training (batch {cfg.per_device_train_batch_size}, max_length "
                f"{cfg.max_length}); lower --per-device-train-batch-size or --max-length (raise --gradient-accumulation-steps to keep the "
                "effective batch), or set gradient_checkpointing: true in the recipe"
            ) from None
        raise


def trainable_sha256(model) -> str:
    """Hash of the trainable parameters (names + values): equal hashes mean identical trained weights."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda x: x[0]):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _peak_memory_mb(device: str) -> dict[str, float]:
    import torch

    mem = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # KiB on Linux
    if device.startswith("cuda") and torch.cuda.is_available():
        mem["peak_gpu_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return mem


def merge_adapter(base_spec: str, adapter: str | Path, out: str | Path, dtype: str = "auto") -> Path:
    """Write base + LoRA adapter merged into one model folder (plus tokenizer) loadable by plain transformers."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    resolved = resolve(base_spec)
    base = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=pick_dtype(dtype, "cpu"))
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".merged-"))
    try:
        merged.save_pretrained(tmp)
        load_tokenizer(resolved).save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_out(cfg: TrainConfig) -> None:
    """Refuse to clobber a finished or interrupted run unless told what to do with it (read-only)."""
    out = Path(cfg.out)
    if cfg.overwrite:
        return
    if cfg.resume:
        if _last_checkpoint(out):
            _check_same_run(cfg, "checkpoints of a run")
        return
    if is_trained(out):
        raise UserError(f"{out}: already trained ({artifact_dir(out, cfg.method).name}/ exists); pass "
                        "--overwrite to train again or use another --out")
    if _last_checkpoint(out):
        raise UserError(f"{out}/checkpoints: holds checkpoints of an unfinished run; pass --resume to continue it "
                        "or --overwrite to start over")


def _inputs(cfg: TrainConfig) -> list[Path | str]:
    """The files a run's result depends on: the data, and for DPO the SFT adapter it starts from."""
    return [cfg.data] + ([Path(cfg.init_adapter) / "adapter_model.safetensors"] if cfg.init_adapter else [])


def _check_same_run(cfg: TrainConfig, what: str) -> None:
    """Continuing (or skipping) a run in OUT is only right when OUT was made with the same settings and data."""
    diff = resume_difference(cfg.out, cfg, input_hashes(_inputs(cfg)))
    if diff:
        raise UserError(f"{cfg.out}: holds {what} with {diff.text}; use the same settings to resume, "
                        "--overwrite to start over, or another --out")


def _clean_out(cfg: TrainConfig) -> None:
    """With --overwrite: remove the previous run's artifacts and checkpoints (one process only)."""
    out = Path(cfg.out)
    if cfg.overwrite:
        clear_outputs(out, ("adapter", "dpo_adapter", "model", "merged", "checkpoints", "train_metrics.json",
                            "config.yaml", "provenance.json", "launch_config.yaml"))
    out.mkdir(parents=True, exist_ok=True)


def _last_checkpoint(out: Path) -> str | None:
    ckpt = Path(out) / "checkpoints"
    if not ckpt.is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(ckpt))


def run_train(cfg: TrainConfig) -> Path:
    """Train as configured and return the output folder (see the module docstring for what it contains)."""
    _check_config(cfg)
    cfg.learning_rate = cfg.lr()  # resolved value, so config.yaml records what was used
    if _in_distributed_child() or os.environ.get(_CHILD_ENV) == "1":
        return _run_train(cfg)  # one rank of a launch: the launching process holds the lock
    with output_lock(cfg.out):
        if cfg.accelerate_config:
            return _launch_with_accelerate(cfg)
        return _run_train(cfg)


def _run_train(cfg: TrainConfig) -> Path:
    out = Path(cfg.out)
    launched_by_us = os.environ.get(_CHILD_ENV) == "1"  # then the parent process checked and cleaned OUT
    if is_trained(out) and cfg.resume and not cfg.overwrite:
        _check_same_run(cfg, "a finished training run")
        print(f"[rational] {out}: already trained; nothing to resume", file=sys.stderr)
        return out
    if not launched_by_us:
        _check_out(cfg)  # read-only, so every rank of a manual `accelerate launch` may run it
        if not _in_distributed_child():
            _clean_out(cfg)
    started = time.time()
    trainer, prepared = build_trainer(cfg)
    acc = trainer.accelerator
    art = artifact_dir(out, cfg.method)
    partial = out / f".{art.name}.partial"
    if acc.is_main_process:
        if _in_distributed_child() and not launched_by_us:
            _clean_out(cfg)  # manual `accelerate launch`: rank 0 cleans while the others wait below
        shutil.rmtree(partial, ignore_errors=True)
        Path(out).mkdir(parents=True, exist_ok=True)
        record_provenance(out, cfg, input_hashes(_inputs(cfg)))
    acc.wait_for_everyone()

    resume_from = _last_checkpoint(out) if cfg.resume else None
    if cfg.resume and resume_from is None and acc.is_main_process:
        print(f"[rational] no checkpoint in {out}/checkpoints; starting from scratch", file=sys.stderr)
    result = _train(trainer, resume_from, cfg)
    if trainer.state.global_step == 0:  # never write an adapter that a run would count as trained
        raise UserError(f"{out}: training ran 0 optimizer steps ({prepared.counts.get('examples')} examples, "
                        f"epochs {cfg.epochs}, max_steps {cfg.max_steps}); raise epochs or max_steps")
    trainer.save_model(str(partial))  # collective under FSDP/DeepSpeed: every rank calls it

    # One hash per rank: under DDP every replica must hold the same weights (tests check it).
    from accelerate.utils import gather_object

    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    hashes = gather_object([None if sharded else trainable_sha256(trainer.model)])

    if acc.is_main_process:
        if cfg.method == "dpo" and cfg.init_adapter:
            # The DPO adapter applies to base + SFT merged; OUT/adapter becomes both in one, on the base (dpo.py).
            shutil.rmtree(out / "dpo_adapter", ignore_errors=True)
            os.replace(partial, out / "dpo_adapter")
            stack_adapters(cfg.model, cfg.init_adapter, out / "dpo_adapter", partial, cfg.dtype)
        if cfg.merge:
            merge_adapter(cfg.model, partial, out / "merged", cfg.dtype)
        device = str(trainer.args.device)
        tokens = getattr(trainer, "_total_train_tokens", None)
        runtime = result.metrics.get("train_runtime") or (time.time() - started)
        metrics = {
            "method": cfg.method,
            "baseline": cfg.baseline,
            "model": cfg.model,
            "data": str(cfg.data),
            "resumed_from": resume_from,
            "global_step": trainer.state.global_step,
            "epochs_done": trainer.state.epoch,
            "train_loss": result.metrics.get("train_loss"),
            "loss_curve": [{k: e[k] for k in CURVE_KEYS if k in e} for e in trainer.state.log_history if "loss" in e],
            "train_tokens": tokens,
            "train_tokens_per_s": round(tokens / runtime, 2) if tokens and runtime else None,
            "train_runtime_s": round(runtime, 2),
            "wall_time_s": round(time.time() - started, 2),
            "device": device,
            "dtype": str(trainer.model.dtype if hasattr(trainer.model, "dtype") else cfg.dtype).replace("torch.", ""),
            "world_size": acc.num_processes,
            "replica_trainable_sha256": hashes,
            **_peak_memory_mb(device),
            "counts": prepared.counts,
            "config": dataclasses.asdict(cfg),
            "versions": library_versions(),
        }
        write_json(out / "train_metrics.json", metrics)
        if art.exists():
            shutil.rmtree(art)
        os.replace(partial, art)  # last: its presence marks the run as finished (is_trained)
    acc.wait_for_everyone()
    if hasattr(trainer, "end"):
        trainer.end()  # finishes trackers, destroys the process group under accelerate
    return out


# --------------------------------------------------------------------------------------------- scale-out


def accelerate_profile(name_or_path: str) -> Path:
    """A packaged accelerate profile by name (single_gpu, ddp, fsdp2, zero3) or a YAML path."""
    p = Path(name_or_path).expanduser()
    if p.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if not p.is_file():
            raise UserError(f"{name_or_path}: accelerate config file not found")
        return p
    name = PROFILE_ALIASES.get(name_or_path, name_or_path)
    if name not in PROFILES:
        raise UserError(f"unknown accelerate config '{name_or_path}'; use {', '.join(PROFILES)} or a YAML path")
    return Path(str(files("rational") / "accelerate_configs" / f"{name}.yaml"))


def accelerate_launch_args(cfg: TrainConfig, config_yaml: Path) -> list[str]:
    """`accelerate launch` arguments that run this module on the resolved config."""
    import torch

    profile = accelerate_profile(cfg.accelerate_config)
    on_gpu = torch.cuda.is_available()
    dtype = pick_dtype(cfg.dtype, "cuda" if on_gpu else "cpu")
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")
    args = ["--config_file", str(profile), "--mixed_precision", precision]
    gpus = torch.cuda.device_count() if on_gpu else 0
    if cfg.num_processes and gpus and cfg.num_processes > gpus:
        raise UserError(f"--num-processes {cfg.num_processes} but this machine has {gpus} visible GPU(s): one "
                        f"process per GPU, so pass --num-processes {gpus} or fewer (CUDA_VISIBLE_DEVICES picks them)")
    conf = yaml.safe_load(profile.read_text()) or {}
    n = cfg.num_processes
    if not n:  # the profile's count (ddp/fsdp2/zero3 say 8), at most the GPUs this machine has; 1 on a CPU
        wanted = int(conf.get("num_processes", 1))
        n = min(wanted, gpus) if gpus else 1
        if n < wanted:
            print(f"[rational] {profile.name} asks for {wanted} processes; launching {n} (--num-processes to choose)")
    args += ["--num_processes", str(n)]
    if n != 1:
        args += _rendezvous_port_args(conf)
    # No CUDA: the DDP profile still launches with torchrun; each rank then joins a gloo group because the
    # training arguments set use_cpu. (`accelerate launch --cpu` alone starts a single process in accelerate 1.x.)
    return args + ["-m", "rational.cli", "train", "--config", str(config_yaml)]


def _rendezvous_port_args(conf: dict) -> list[str]:
    """A free local port for a one-machine launch whose profile names none.

    accelerate's default (29500) is shared by every job on the machine: a second run, or a rank left over from a
    killed one, makes the new ranks wait on someone else's rendezvous. Multi-machine profiles and profiles that
    set `main_process_port` are left as they are.
    """
    if conf.get("main_process_port") or int(conf.get("num_machines", 1)) != 1:
        return []
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return ["--main_process_port", str(sock.getsockname()[1])]


def _launch_with_accelerate(cfg: TrainConfig) -> Path:
    """Re-run this same training under `accelerate launch`, the way `trl sft --accelerate_config` does."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    out = Path(cfg.out)
    if is_trained(out) and cfg.resume and not cfg.overwrite:
        return out
    _check_out(cfg)
    _clean_out(cfg)
    child = dataclasses.replace(cfg, accelerate_config=None, num_processes=None, overwrite=False)
    config_yaml = out / "launch_config.yaml"
    config_yaml.write_text(yaml.safe_dump({"train": dataclasses.asdict(child)}, sort_keys=False))
    args = launch_command_parser().parse_args(accelerate_launch_args(cfg, config_yaml))
    os.environ[_CHILD_ENV] = "1"  # inherited by the launched processes
    try:
        launch_command(args)
    except subprocess.CalledProcessError as e:
        raise UserError(f"training under accelerate failed (exit {e.returncode}); see the messages above") from None
    finally:
        os.environ.pop(_CHILD_ENV, None)
    if not is_trained(out):
        raise UserError(f"{out}: accelerate run ended without writing {artifact_dir(out, cfg.method).name}/")
    return out


# ------------------------------------------------------------------------------------------------- CLI


def train_command(cfg: TrainConfig) -> None:
    result = run_train(cfg)
    if not _in_distributed_child():
        print(f"[rational] trained: {artifact_dir(result, cfg.method)} (metrics: {result}/train_metrics.json)",
              file=sys.stderr)
