"""`rational data`: the train and evaluation prompt sets of a run, disjoint and split by attack family.

Writes to OUT (the `data` stage of `rational run`):
  * train_prompts.jsonl: harmful base prompts, their jailbreak forms (trained attack families, train-side
    templates), borderline look-alikes and benign prompts;
  * eval_prompts.jsonl: held-out base prompts, each record tagged with its suite (`meta.suite`): harmful,
    jailbreak (trained families on held-out prompts and templates), jailbreak-heldout (attack families and
    template families never used in training), over-refusal, capability;
  * split.json: counts, families, template split and the decontamination report.

The split is by base prompt (`prompts.split_by_base`: a prompt and all its mutated forms share a side), by
jailbreak template (no template on both sides), and whole attack families are held out of training
(`heldout_attacks`, `heldout_template_families`); near-duplicates of eval prompts are removed from training.
Model-written rewrites (past tense, persuasion, styles) use the model itself, loaded only when needed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import mutations
from .backends import load_generator
from .common import hash_take, write_json, write_jsonl
from .config import check_range, setting
from .errors import UserError
from .models import DEFAULT_MODEL
from .prompts import (RESOURCES, decontaminate, load_pool, load_pools, load_templates, present_pools, split_by_base,
                      split_templates)


@dataclass
class DataConfig:
    """`rational data`: sizes are per side, before generate filters anything. Every setting but `out` shapes the
    prompt sets, so a run never reuses data made with other values."""

    model: str = setting(DEFAULT_MODEL, "Model that writes the model-based rewrites (past tense, persuasion, "
                         "styles); loaded only when such an attack is asked for.", same_on_resume=True)
    out: str = setting("runs/data", "Output folder (train_prompts.jsonl, eval_prompts.jsonl, split.json).")
    seed: int = setting(0, "Seed for the split, the samples and the mutations.", same_on_resume=True)
    backend: str = setting("hf", "Backend for model-based rewrites: auto | hf | llamacpp | vllm | openai.",
                           same_on_resume=True)
    dtype: str = setting("auto", "auto | float32 | bfloat16 | float16.", same_on_resume=True)
    batch_size: int = setting(8, "Batch size of the model-based rewrites.", same_on_resume=True)
    pools: list[str] = setting(default_factory=lambda: ["seed"], help="Base prompt pools (file or name); the "
                               "train and eval sides are split from them; repeatable.", same_on_resume=True)
    eval_fraction: float = setting(0.3, "Share of base prompts held out for evaluation.", same_on_resume=True)
    train_harmful: int = setting(24, "Harmful base prompts on the train side (each also mutated).", same_on_resume=True)
    train_borderline: int = setting(16, "Borderline (benign but sensitive-looking) prompts on the train side.", same_on_resume=True)
    train_benign: int = setting(8, "Plainly benign prompts on the train side.", same_on_resume=True)
    train_attacks: list[str] = setting(default_factory=lambda: ["misspell", "prefix-injection", "template"],
                                       help="Attack families used in training; repeatable.", same_on_resume=True)
    attacks_per_prompt: int = setting(1, "Mutations drawn per train harmful prompt.", same_on_resume=True)
    eval_harmful: int = setting(30, "Harmful base prompts on the eval side.", same_on_resume=True)
    eval_borderline: int = setting(20, "Borderline look-alikes on the eval side (over-refusal suite).", same_on_resume=True)
    eval_benign: int = setting(10, "Benign prompts on the eval side (over-refusal suite).", same_on_resume=True)
    eval_capability: int = setting(20, "Capability questions (GSM8K-100, or the own fallback set).", same_on_resume=True)
    capability_pool: str = setting("gsm8k", "Capability pool; falls back to the project's own set when the public "
                                   "data is absent.", same_on_resume=True)
    eval_attacks: list[str] = setting(default_factory=lambda: ["misspell", "prefix-injection", "template"],
                                      help="Attacks on held-out eval prompts whose family IS used in training "
                                      "(held-out prompts and templates); repeatable.", same_on_resume=True)
    heldout_attacks: list[str] = setting(default_factory=lambda: ["payload-split", "past-tense"],
                                         help="Attack families never used in training (the generalisation test); "
                                         "repeatable.", same_on_resume=True)
    eval_attacks_per_prompt: int | None = setting(None, "Trained-family attacks drawn per eval harmful prompt (None: "
                                                  "every one in eval_attacks).", same_on_resume=True)
    heldout_attacks_per_prompt: int | None = setting(None, "Held-out attacks (heldout_attacks, and a held-out "
                                                     "template family as one) drawn per eval harmful prompt (None: "
                                                     "every one).", same_on_resume=True)
    heldout_template_families: list[str] = setting(default_factory=lambda: ["aim", "developer-mode"],
                                                   help="Jailbreak template families never used in training; "
                                                   "repeatable.", same_on_resume=True)
    template_max_chars: int = setting(1500, "Longer templates are skipped (keeps CPU prompts affordable).", same_on_resume=True)

    def __post_init__(self):
        check_range(self, "eval_fraction", 0, 1)
        for name in ("train_harmful", "train_borderline", "train_benign", "eval_harmful", "eval_borderline",
                     "eval_benign", "eval_capability", "attacks_per_prompt"):
            check_range(self, name, 0)
        check_range(self, "batch_size", 1)
        check_range(self, "template_max_chars", 1)
        check_range(self, "eval_attacks_per_prompt", 0, allow=(None,))
        check_range(self, "heldout_attacks_per_prompt", 0, allow=(None,))


def run_data(cfg: DataConfig, generator_factory: Callable[[], Any] | None = None) -> dict:
    """Write OUT/train_prompts.jsonl and OUT/eval_prompts.jsonl (disjoint) and OUT/split.json; returns the split."""
    out = Path(cfg.out)
    if generator_factory is None:
        def generator_factory():
            return load_generator(cfg.backend, cfg.model, dtype=cfg.dtype, batch_size=cfg.batch_size,
                                  seed=cfg.seed)

    pools = present_pools(cfg.pools)
    base = load_pools(pools)
    by_kind = {k: [r for r in base if r.kind == k and not r.base_id] for k in ("harmful", "borderline", "benign")}
    train, evals = {}, {}
    for kind, recs in by_kind.items():
        train[kind], evals[kind] = split_by_base(recs, cfg.eval_fraction, cfg.seed)
    tr_h = hash_take(train["harmful"], cfg.train_harmful, cfg.seed)
    ev_h = hash_take(evals["harmful"], cfg.eval_harmful, cfg.seed)

    # Templates: held-out families go to eval only; the rest are split by template id, so no template
    # is ever seen on both sides.
    templates = [t for t in load_templates() if len(t.text) <= cfg.template_max_chars]
    held_fams = set(cfg.heldout_template_families)
    shared = [t for t in templates if t.family not in held_fams]
    tr_t, ev_t = split_templates(shared, 0.5, cfg.seed, by="template")
    ev_t_held = [t for t in templates if t.family in held_fams]
    if "template" in cfg.train_attacks and not tr_t:
        raise UserError("no jailbreak templates left for training after the family split; "
                        "lower template_max_chars limits or change heldout_template_families")

    # Model-based rewrites (past tense, persuasion, styles) use the model itself; load it only if needed.
    def gen_for(names):
        return generator_factory() if any(mutations.MUTATIONS[n].needs_model for n in names) else None

    mutations.get_mutations(list(cfg.train_attacks) + list(cfg.eval_attacks) + list(cfg.heldout_attacks))
    failed: list[dict] = []
    pairs = mutations.assign_mutations(tr_h, cfg.train_attacks, cfg.attacks_per_prompt, cfg.seed)
    tr_adv = mutations.mutate_pairs(pairs, cfg.seed, gen_for(cfg.train_attacks), templates=tr_t, failed=failed)
    # Each eval base prompt gets every attack of a group, or `*_attacks_per_prompt` of them drawn per prompt
    # (seeded; a template counts as one attack), which keeps one prompt per base at a fixed cell size.
    seen = [a for a in cfg.eval_attacks if a != "template" or ev_t]
    held = list(cfg.heldout_attacks) + (["template"] if ev_t_held else [])

    def attack_pairs(names, per_prompt):
        if per_prompt is None:
            return [(r, n) for n in names for r in ev_h]
        return mutations.assign_mutations(ev_h, names, per_prompt, cfg.seed)

    ev_seen = mutations.mutate_pairs(attack_pairs(seen, cfg.eval_attacks_per_prompt), cfg.seed, gen_for(seen),
                                     templates=ev_t)
    ev_held = mutations.mutate_pairs(attack_pairs(held, cfg.heldout_attacks_per_prompt), cfg.seed, gen_for(held),
                                     templates=ev_t_held, failed=failed)
    # Each eval record names its suite; `rational eval --prompts` reports metrics per suite.
    for recs, suite in ((ev_h, "harmful"), (ev_seen, "jailbreak"), (ev_held, "jailbreak-heldout")):
        for r in recs:
            r.meta["suite"] = suite

    train_recs = tr_h + tr_adv + hash_take(train["borderline"], cfg.train_borderline, cfg.seed) + \
        hash_take(train["benign"], cfg.train_benign, cfg.seed)
    ev_ok = hash_take(evals["borderline"], cfg.eval_borderline, cfg.seed) + \
        hash_take(evals["benign"], cfg.eval_benign, cfg.seed)
    for r in ev_ok:
        r.meta["suite"] = "over-refusal"
    eval_recs = ev_h + ev_seen + ev_held + ev_ok
    try:
        cap = load_pool(cfg.capability_pool)
    except UserError:
        cap = load_pool(str(RESOURCES / "capability_own.jsonl"))
    cap = hash_take(cap, cfg.eval_capability, cfg.seed)
    for r in cap:
        r.meta["suite"] = "capability"
    eval_recs += cap

    kept, decon = decontaminate(train_recs, eval_recs)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train_prompts.jsonl", kept)
    write_jsonl(out / "eval_prompts.jsonl", eval_recs)

    def count(recs, key):
        return dict(sorted(Counter(getattr(r, key) or "-" for r in recs).items()))

    split = {
        "pools": pools,
        "train": {"n": len(kept), "by_kind": count(kept, "kind"), "by_attack": count(kept, "attack")},
        "eval": {"n": len(eval_recs), "by_kind": count(eval_recs, "kind"), "by_attack": count(eval_recs, "attack")},
        "train_attacks": cfg.train_attacks, "heldout_attacks": cfg.heldout_attacks,
        "train_template_families": sorted({t.family for t in tr_t}),
        "eval_template_families": sorted({t.family for t in ev_t} | {t.family for t in ev_t_held}),
        "heldout_template_families": sorted(held_fams),
        "train_templates": len(tr_t), "eval_templates": len(ev_t) + len(ev_t_held),
        "rewrite_failures": failed, "decontamination": decon,
    }
    write_json(out / "split.json", split)
    return split


def data_command(cfg: DataConfig) -> None:
    split = run_data(cfg)
    print(f"[rational] train prompts: {split['train']['n']}, eval prompts: {split['eval']['n']} -> {cfg.out}")
