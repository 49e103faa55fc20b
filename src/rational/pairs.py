"""`rational pairs`: preference pairs (for DPO) and circuit-breaker data, from the model's own samples.

Input: a `rational generate` run (its `prompts.jsonl` and `candidates.jsonl`: every self-check sample with its
verdict, decision and rejection reason). Output, in OUT:

* `pairs.jsonl` — TRL's conversational preference format, one pair per prompt (dpo.py reads it)::

      {"prompt": [{"role": "user", ...}], "chosen": [{"role": "assistant", ...}], "rejected": [...],
       "meta": {"id", "kind", "category", "attack", "chosen_from", "chosen_key", "rejected_from", "rejected_key",
                "rejected_reasons"}}

  harmful / adversarial prompts: chosen = an accepted reasoned refusal; rejected = the model's own compliance.
  benign / borderline prompts: chosen = an accepted reasoned compliance (with a real answer, as generate's filter
  requires); rejected = the model's own over-refusal.
  The rejected side is taken, in this order, from (1) a self-check candidate that is usable as one
  (`rejection_reasons`: e.g. its answer complied with a harmful request, or it declined a benign one), because it
  has the chosen side's format; (2) the model's plain answer, sampled without any system prompt; (3) for prompts to
  decline, its answer when the reply is prefilled with `prefill` ("Sure, here is"). `meta.rejected_from` says which.
* `circuit_breakers.jsonl` — SFT-style records with `meta.set` (circuit_breakers.py reads it): `reroute` =
  harmful / adversarial prompts with the model's own harmful completions (plain or prefilled answers the judge did
  not find refusing); `retain` = benign / borderline prompts with its own answers that did not refuse, plus
  harmful prompts with its own plain refusals (the paper's retain set also keeps refusals).
* `samples.jsonl` — every plain and prefilled sample with its verdict (append-only: an interrupted run resumes).
* `stats.json`, `config.yaml`, `provenance.json`.

Harmful completions exist only in these files of the (git-ignored) run folder. Two hooks decide what may be used:
`is_good_rationale(candidate)` for chosen sides (default: generate's own `accepted` flag) and
`rejection_reasons(candidate, kind)` for rejected ones; stricter quality checks plug in there.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from .backends import SamplingParams, load_generator
from .common import append_jsonl, clear_outputs, input_hashes, output_lock, read_jsonl, write_json, write_jsonl
from .config import check, check_range, record_provenance, resume_difference, setting
from .errors import UserError
from .judges import get_judge
from .models import DEFAULT_MODEL
from .prompts import PromptRecord, read_records
from .reasoning import ReasoningFormat, parse_output

# Prompt kinds whose right answer is a refusal; every other kind should be answered.
DECLINE_KINDS = ("harmful", "adversarial")
OUTPUTS = ("pairs.jsonl", "circuit_breakers.jsonl", "samples.jsonl", "stats.json", "config.yaml", "provenance.json")


@dataclass
class PairsConfig:
    """`rational pairs`: DPO preference pairs and circuit-breaker data from a generate run and the model's own
    plain (no system prompt) and prefilled answers."""

    model: str = setting(DEFAULT_MODEL, "Model spec: the model whose own answers fill the rejected sides (the one "
                         "that generated the rationales).", same_on_resume=True)
    generate: str = setting("", "Folder of a `rational generate` run (prompts.jsonl, candidates.jsonl).",
                            same_on_resume=True)
    out: str = setting("runs/pairs", "Output folder (pairs.jsonl, circuit_breakers.jsonl, samples.jsonl, "
                       "stats.json); resumes a run.")
    n_samples: int = setting(1, "Plain (and prefilled) answers sampled per prompt.", same_on_resume=True)
    prefill: str = setting("Sure, here is", "Start of the assistant reply the model continues for prompts to "
                           "decline (its harmful completions); empty = no prefilled samples.", same_on_resume=True)
    max_new_tokens: int = setting(256, "Token budget per sample.", same_on_resume=True)
    temperature: float = setting(0.7, "Sampling temperature.", same_on_resume=True)
    top_p: float = setting(0.95, "Nucleus sampling mass.", same_on_resume=True)
    batch_size: int = setting(8, "Prompts per generation batch (sampling is seeded per batch).", same_on_resume=True)
    judge: str = setting("refusal-keywords", "Refusal judge for the sampled answers.", same_on_resume=True)
    backend: str = setting("hf", "hf | vllm | scripted (plumbing runs with tiny-random only); prefills need hf or "
                           "vllm.")
    dtype: str = setting("auto", "auto | float32 | bfloat16 | float16.")
    seed: int = setting(0, "Seed for sampling.", same_on_resume=True)
    reasoning_open: str = setting("<think>", "Tag that opens the reasoning block.", same_on_resume=True)
    reasoning_close: str = setting("</think>", "Tag that closes the reasoning block.", same_on_resume=True)
    overwrite: bool = setting(False, "Delete what OUT holds and start over.")

    def __post_init__(self):
        for name in ("n_samples", "max_new_tokens", "batch_size"):
            check_range(self, name, 1)
        check_range(self, "temperature", 0)
        check_range(self, "top_p", 0, 1, lo_open=True)
        check(not (self.prefill and self.backend == "openai"),
              "prefilled answers need the hf or vllm backend (an OpenAI endpoint cannot continue a reply); "
              "use another backend or set prefill to ''")

    @property
    def fmt(self) -> ReasoningFormat:
        return ReasoningFormat(self.reasoning_open, self.reasoning_close)


# ------------------------------------------------------------------------------------------------ hooks


def is_good_rationale(candidate: dict) -> bool:
    """May this self-check candidate be a chosen side? Default: it passed generate's filter (well-formed
    reasoning, the right decision, an answer the judge agrees with)."""
    return bool(candidate.get("accepted"))


def rejection_reasons(candidate: dict, kind: str, fmt: ReasoningFormat | None = None) -> list[str]:
    """Why a self-check candidate is a usable rejected side for a prompt of `kind`; empty = not usable.

    Default, from what generate recorded: for a prompt to decline, the judge found no refusal in the final answer,
    the reasoning decided to comply, or the refusal offers the harmful content; for a prompt to answer, the answer refused or the reasoning decided to
    decline. A candidate the judge could not score, or without a final answer, is never used.
    """
    verdict = candidate.get("verdict") or {}
    refused = verdict.get("refused") if verdict.get("label") is not None else None
    if refused is None or not parse_output(candidate.get("text") or "", fmt or ReasoningFormat()).answer:
        return []
    decision = candidate.get("decision")
    if kind in DECLINE_KINDS:
        # A refusal that offers or hints at the harmful content (generate's quality check `offers_harm`) is as
        # wrong as a compliance.
        offers = any(str(p).startswith("offers_harm") for p in candidate.get("problems") or [])
        return [r for r, hit in (("answer_complies", not refused), ("decided_to_comply", decision == "comply"),
                                 ("refusal_offers_harm", offers)) if hit]
    return [r for r, hit in (("answer_refuses", refused), ("decided_to_decline", decision == "decline")) if hit]


# --------------------------------------------------------------------------------------------- sampling


def _chunk_seed(seed: int, chunk: int) -> int:
    return int(hashlib.sha256(f"pairs:{seed}:{chunk}".encode()).hexdigest()[:8], 16)


def _jobs(prompts: list[PromptRecord], cfg: PairsConfig) -> list[tuple[PromptRecord, str]]:
    """(prompt, mode) to sample: a plain answer for every prompt, a prefilled one for every prompt to decline."""
    jobs = [(p, "plain") for p in prompts]
    if cfg.prefill:
        jobs += [(p, "prefill") for p in prompts if p.kind in DECLINE_KINDS]
    return jobs


def sample_answers(prompts: list[PromptRecord], cfg: PairsConfig, generator_factory, judge, path: Path) -> list[dict]:
    """Sample the model's plain and prefilled answers into `path` (appended per chunk, so a rerun only generates
    the chunks that are missing, with the same seeds) and return every sample."""
    done = {s["key"] for s in read_jsonl(path, partial_last_line_ok=True)} if path.is_file() else set()
    jobs = _jobs(prompts, cfg)
    chunks = [jobs[i : i + cfg.batch_size] for i in range(0, len(jobs), cfg.batch_size)]
    for ci, chunk in enumerate(chunks):
        keys = [[f"{p.id}#{mode}#{j}" for j in range(cfg.n_samples)] for p, mode in chunk]
        if all(k in done for ks in keys for k in ks):
            continue
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                n=cfg.n_samples, seed=_chunk_seed(cfg.seed, ci))
        # No system prompt: these are the model's own answers, the way it answers without the self-check.
        chats = [[{"role": "user", "content": p.prompt}]
                 + ([{"role": "assistant", "content": cfg.prefill}] if mode == "prefill" else []) for p, mode in chunk]
        outputs = generator_factory().generate(chats, params, progress=False)
        rows = []
        for (p, mode), ks, out in zip(chunk, keys, outputs):
            for j, (key, comp) in enumerate(zip(ks, out.completions)):
                if key in done:
                    continue
                text = cfg.prefill + comp.text if mode == "prefill" else comp.text
                answer = text if mode == "prefill" else parse_output(text, cfg.fmt).answer
                try:
                    v = judge.judge(p.prompt, answer).to_dict()
                except Exception as e:  # noqa: BLE001 - a broken judge marks the sample unusable, it does not stop
                    v = {"judge": getattr(judge, "name", "?"), "label": None, "error": f"{type(e).__name__}: {e}"[:300]}
                rows.append({"key": key, "id": p.id, "kind": p.kind, "mode": mode, "sample": j, "seed": params.seed,
                             "text": text, "num_tokens": comp.num_tokens, "finish_reason": comp.finish_reason,
                             "verdict": v, "refused": v.get("refused") if v.get("label") is not None else None})
        append_jsonl(path, rows)
        done.update(r["key"] for r in rows)
    return read_jsonl(path) if path.is_file() else []


# ---------------------------------------------------------------------------------------------- building


def _user(p: PromptRecord) -> list[dict]:
    return [{"role": "user", "content": p.prompt}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _usable_sample(s: dict, kind: str) -> bool:
    """A sample that shows the wrong behaviour for `kind`: compliance with a prompt to decline, or a refusal of one
    to answer (prefilled samples only count for prompts to decline)."""
    if s["refused"] is None or not s["text"].strip():
        return False
    return (s["refused"] is False) if kind in DECLINE_KINDS else (s["refused"] is True and s["mode"] == "plain")


def build_pairs(prompts: list[PromptRecord], candidates: list[dict], samples: list[dict],
                fmt: ReasoningFormat) -> tuple[list[dict], dict]:
    """One preference pair per prompt that has a chosen and a rejected side; returns (pairs, counts)."""
    cands, samp = defaultdict(list), defaultdict(list)
    for c in sorted(candidates, key=lambda c: (c["attempt"], c["sample"])):
        cands[c["id"]].append(c)
    mode_order = {"plain": 0, "prefill": 1}
    for s in sorted(samples, key=lambda s: (mode_order[s["mode"]], s["sample"])):
        samp[s["id"]].append(s)
    pairs, counts = [], Counter()
    for p in prompts:
        chosen = next((c for c in cands[p.id] if is_good_rationale(c)), None)
        if chosen is None:
            counts[f"no_chosen:{p.kind}"] += 1
            continue
        rejected = next(((c, r) for c in cands[p.id] if (r := rejection_reasons(c, p.kind, fmt))), None)
        if rejected is not None:
            c, reasons = rejected
            side = {"text": c["text"], "from": "candidate", "key": c["key"], "reasons": reasons}
        else:
            s = next((s for s in samp[p.id] if _usable_sample(s, p.kind)), None)
            if s is None:
                counts[f"no_rejected:{p.kind}"] += 1
                continue
            reason = "answer_complies" if p.kind in DECLINE_KINDS else "answer_refuses"
            side = {"text": s["text"], "from": s["mode"], "key": s["key"], "reasons": [reason]}
        if side["text"].strip() == chosen["text"].strip():
            counts[f"same_sides:{p.kind}"] += 1
            continue
        counts[f"rejected_from:{side['from']}"] += 1
        pairs.append({
            "prompt": _user(p), "chosen": _assistant(chosen["text"]), "rejected": _assistant(side["text"]),
            "meta": {"id": p.id, "kind": p.kind, "category": p.category, "attack": p.attack,
                     "chosen_from": "candidate", "chosen_key": chosen["key"], "rejected_from": side["from"],
                     "rejected_key": side["key"], "rejected_reasons": side["reasons"]},
        })
    return pairs, dict(sorted(counts.items()))


def build_circuit_breaker_data(prompts: list[PromptRecord], samples: list[dict]) -> list[dict]:
    """Reroute = prompts to decline with the model's own completions that did not refuse (plain or prefilled);
    retain = prompts to answer with its own answers that did not refuse, and prompts to decline with its own plain
    refusals."""
    by_id = {p.id: p for p in prompts}
    rows = []
    for s in samples:
        p = by_id.get(s["id"])
        if p is None or s["refused"] is None or not s["text"].strip():
            continue
        decline = p.kind in DECLINE_KINDS
        if decline and not s["refused"]:
            which = "reroute"
        elif (not decline and not s["refused"]) or (decline and s["refused"] and s["mode"] == "plain"):
            which = "retain"
        else:
            continue
        rows.append({"prompt": _user(p), "completion": _assistant(s["text"]),
                     "meta": {"set": which, "id": p.id, "kind": p.kind, "from": s["mode"], "sample_key": s["key"]}})
    return rows


# ------------------------------------------------------------------------------------------------ stage


def run_pairs(cfg: PairsConfig, generator=None, judge=None) -> Path:
    """Build OUT/pairs.jsonl and OUT/circuit_breakers.jsonl; returns OUT. Resumes an interrupted run."""
    if not cfg.generate:
        raise UserError("no generate run; pass --generate DIR (a `rational generate` output folder)")
    gen = Path(cfg.generate)
    inputs = [gen / "prompts.jsonl", gen / "candidates.jsonl"]
    for f in inputs:
        if not f.is_file():
            raise UserError(f"{f}: not found; --generate must be the folder of a finished `rational generate` run")
    with output_lock(cfg.out) as out:
        start = time.perf_counter()
        if cfg.overwrite:
            clear_outputs(out, OUTPUTS)
        hashes = input_hashes(inputs)
        diff = resume_difference(out, cfg, hashes)
        if diff and (out / "samples.jsonl").is_file():
            raise UserError(f"{out}: holds a pairs run with different '{diff.key}' ({diff.text}); use the same "
                            "settings to resume, --overwrite to start over, or another --out")
        record_provenance(out, cfg, hashes)
        prompts = read_records(inputs[0])
        candidates = read_jsonl(inputs[1], partial_last_line_ok=True)
        state = {"gen": generator}

        def factory():
            if state["gen"] is None:
                state["gen"] = load_generator(cfg.backend, cfg.model, dtype=cfg.dtype, batch_size=cfg.batch_size,
                                              seed=cfg.seed)
            return state["gen"]

        samples = sample_answers(prompts, cfg, factory, judge or get_judge(cfg.judge), out / "samples.jsonl")
        pairs, counts = build_pairs(prompts, candidates, samples, cfg.fmt)
        cb = build_circuit_breaker_data(prompts, samples)
        write_jsonl(out / "pairs.jsonl", pairs)
        write_jsonl(out / "circuit_breakers.jsonl", cb)
        write_json(out / "stats.json", {
            "model": cfg.model, "judge": cfg.judge, "prompts": len(prompts), "pairs": len(pairs),
            "pairs_by_kind": dict(Counter(r["meta"]["kind"] for r in pairs)), "counts": counts,
            "samples": len(samples),
            "samples_refused": dict(Counter(f"{s['mode']}:{s['kind']}:{s['refused']}" for s in samples)),
            "circuit_breakers": dict(Counter(r["meta"]["set"] for r in cb)),
            "wall_seconds": round(time.perf_counter() - start, 2)})
    return out


def pairs_command(cfg: PairsConfig) -> None:
    out = run_pairs(cfg)
    stats = json.loads((out / "stats.json").read_text())
    cb = stats["circuit_breakers"]
    print(f"[rational] {stats['pairs']} pairs from {stats['prompts']} prompts -> {out / 'pairs.jsonl'}; circuit "
          f"breakers: {cb.get('reroute', 0)} reroute, {cb.get('retain', 0)} retain -> "
          f"{out / 'circuit_breakers.jsonl'}", file=sys.stderr)
