"""`rational run`: the whole Rational pipeline and the paper's comparison, resumable.

    data  ->  generate  ->  train-rational, train-refusal-sft  ->  eval-base, eval-refusal-sft, eval-rational  ->  report

1. data: build the train pool and the evaluation set, disjoint by base prompt (`data.split_by_base`), by
   jailbreak template, and with whole attack families held out of training (`heldout_attacks`,
   `heldout_template_families`); near-duplicates of eval prompts are removed from training.
2. generate: the model writes its own rationales with the two self-check prompts (`synthesis.run_generate`).
3. train: LoRA SFT on the rationales (Rational) and on the same prompts with the reasoning stripped
   (`refusal-sft`, the rigid-refusal baseline), both from the same accepted pool.
4. eval: base, refusal-sft and Rational on the same held-out prompts (`evaluation.run_eval`).
5. report: report.html / report.md, and the headline table in the terminal.

Every stage writes to `runs/NAME/<stage>/` and marks itself done with `.done.json`; running the same
command again skips finished stages and resumes unfinished ones (the stages resume themselves).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable

import typer

from .config import library_versions, load_yaml, resolve_config, save_config
from .data import write_json
from .errors import UserError

PRESETS = {
    "demo": "demo-cpu.yaml",
    "smoke": "smoke.yaml",
    "paper-llama3-8b": "paper-llama3-8b.yaml",
    "paper-mistral-7b": "paper-mistral-7b.yaml",
}
STAGES = ("data", "generate", "train-rational", "train-refusal-sft", "eval-base", "eval-refusal-sft",
          "eval-rational", "report")


def recipes_dir() -> Path:
    """`recipes/` of the source checkout (installed with `pip install -e .`), else the packaged copy."""
    here = Path(__file__).resolve()
    for cand in (here.parents[2] / "recipes", here.parent / "recipes"):
        if cand.is_dir():
            return cand
    raise UserError("cannot find the recipes folder; pass --config PATH to a recipe file")


@dataclass
class RunConfig:
    """The `run:` section of a recipe (plus shared keys). Sizes are per side, before filtering."""

    model: str = "qwen2.5-coder-0.5b-instruct"
    out: str | None = None  # default: runs/<preset>
    seed: int = 0
    backend: str = "hf"
    dtype: str = "auto"
    pools: list[str] = field(default_factory=lambda: ["seed"])  # base prompts (train and eval sides are split)
    eval_fraction: float = 0.3  # share of base prompts held out for evaluation
    train_harmful: int = 24  # harmful base prompts on the train side (each also mutated, see below)
    train_borderline: int = 16
    train_benign: int = 8
    train_attacks: list[str] = field(default_factory=lambda: ["misspell", "prefix-injection", "template"])
    attacks_per_prompt: int = 1  # mutations drawn per train harmful prompt
    eval_harmful: int = 30
    eval_borderline: int = 20
    eval_benign: int = 10
    eval_capability: int = 20  # GSM8K-100 (or the own fallback set) questions
    capability_pool: str = "gsm8k"  # falls back to the project's own set when public data is absent
    # Attacks on held-out eval prompts whose family IS used in training (held-out prompts and templates)
    eval_attacks: list[str] = field(default_factory=lambda: ["misspell", "prefix-injection", "template"])
    # Attack families never used in training (the generalisation test)
    heldout_attacks: list[str] = field(default_factory=lambda: ["payload-split", "past-tense"])
    heldout_template_families: list[str] = field(default_factory=lambda: ["aim", "developer-mode"])
    template_max_chars: int = 1500  # shorter templates keep CPU prompts affordable
    baselines: list[str] = field(default_factory=lambda: ["refusal-sft"])
    stage_estimates: dict = field(default_factory=dict)  # stage -> expected seconds (for the ETA)


# ------------------------------------------------------------------------------------------ helpers


def _done_file(stage_dir: Path) -> Path:
    return stage_dir / ".done.json"


def is_done(stage_dir: Path) -> bool:
    return _done_file(stage_dir).is_file()


def mark_done(stage_dir: Path, info: dict) -> None:
    write_json(_done_file(stage_dir), info)


def _take(records: list, n: int, seed: int) -> list:
    """A deterministic sample of n records (seeded hash order, independent of input order)."""
    import hashlib

    ranked = sorted(records, key=lambda r: hashlib.sha256(f"{seed}:{r.id}".encode()).hexdigest())
    return ranked[: max(0, n)]


# --------------------------------------------------------------------------------------- data stage


def build_data(cfg: RunConfig, out: Path, generator_factory: Callable[[], Any]) -> dict:
    """Write data/train_prompts.jsonl and data/eval_prompts.jsonl (disjoint) and data/split.json."""
    from . import data, mutations

    base = data.load_pools(cfg.pools)
    by_kind = {k: [r for r in base if r.kind == k and not r.base_id] for k in ("harmful", "borderline", "benign")}
    train, evals = {}, {}
    for kind, recs in by_kind.items():
        train[kind], evals[kind] = data.split_by_base(recs, cfg.eval_fraction, cfg.seed)
    tr_h = _take(train["harmful"], cfg.train_harmful, cfg.seed)
    ev_h = _take(evals["harmful"], cfg.eval_harmful, cfg.seed)

    # Templates: held-out families go to eval only; the rest are split by template id, so no template
    # is ever seen on both sides.
    templates = [t for t in data.load_templates() if len(t.text) <= cfg.template_max_chars]
    held_fams = set(cfg.heldout_template_families)
    shared = [t for t in templates if t.family not in held_fams]
    tr_t, ev_t = data.split_templates(shared, 0.5, cfg.seed, by="template")
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
    ev_seen = mutations.mutate(ev_h, [a for a in cfg.eval_attacks if a != "template"], cfg.seed,
                               gen_for(cfg.eval_attacks))
    if "template" in cfg.eval_attacks and ev_t:
        ev_seen += mutations.mutate(ev_h, ["template"], cfg.seed, templates=ev_t)
    ev_held = mutations.mutate(ev_h, [a for a in cfg.heldout_attacks], cfg.seed, gen_for(cfg.heldout_attacks),
                               failed=failed)
    if ev_t_held:
        ev_held += mutations.mutate(ev_h, ["template"], cfg.seed, templates=ev_t_held)
    # Each eval record names its suite; `rational eval --prompts` reports metrics per suite.
    for recs, suite in ((ev_h, "harmful"), (ev_seen, "jailbreak"), (ev_held, "jailbreak-heldout")):
        for r in recs:
            r.meta["suite"] = suite

    train_recs = tr_h + tr_adv + _take(train["borderline"], cfg.train_borderline, cfg.seed) + \
        _take(train["benign"], cfg.train_benign, cfg.seed)
    ev_ok = _take(evals["borderline"], cfg.eval_borderline, cfg.seed) + _take(evals["benign"], cfg.eval_benign, cfg.seed)
    for r in ev_ok:
        r.meta["suite"] = "over-refusal"
    eval_recs = ev_h + ev_seen + ev_held + ev_ok
    try:
        cap = data.load_pool(cfg.capability_pool)
    except UserError:
        cap = data.load_pool(str(data.RESOURCES / "capability_own.jsonl"))
    cap = _take(cap, cfg.eval_capability, cfg.seed)
    for r in cap:
        r.meta["suite"] = "capability"
    eval_recs += cap

    kept, decon = data.decontaminate(train_recs, eval_recs)
    out.mkdir(parents=True, exist_ok=True)
    data.write_jsonl(out / "train_prompts.jsonl", kept)
    data.write_jsonl(out / "eval_prompts.jsonl", eval_recs)
    count = lambda recs, key: dict(sorted(_counter(getattr(r, key) or "-" for r in recs).items()))  # noqa: E731
    split = {
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


def _counter(items):
    from collections import Counter

    return Counter(items)


# ------------------------------------------------------------------------------------------ runner


class Runner:
    """Runs stages in order, skipping finished ones, with an overall ETA line between stages."""

    def __init__(self, run_dir: Path, stages: list[str], estimates: dict[str, float]):
        from rich.console import Console

        self.run_dir = run_dir
        self.stages = stages
        self.estimates = {s: float(estimates.get(s, 60)) for s in stages}
        self.console = Console(stderr=True)
        self.start = time.perf_counter()
        self.spent_estimate = 0.0  # estimated seconds of the stages run so far (for the speed ratio)
        self.timings: dict[str, float] = {}

    def eta(self, remaining: list[str]) -> float:
        elapsed = time.perf_counter() - self.start
        ratio = elapsed / self.spent_estimate if self.spent_estimate > 30 else 1.0
        return ratio * sum(self.estimates[s] for s in remaining)

    def run(self, stage: str, fn: Callable[[Path], dict | None]) -> None:
        stage_dir = self.run_dir / stage
        i = self.stages.index(stage)
        if is_done(stage_dir):
            self.console.print(f"[dim]stage {i + 1}/{len(self.stages)} {stage}: done earlier, skipped[/dim]")
            return
        left = self.eta(self.stages[i:])
        self.console.rule(f"stage {i + 1}/{len(self.stages)}: {stage}  ·  elapsed {_fmt(time.perf_counter() - self.start)}"
                          f"  ·  est. left ~{_fmt(left)}")
        t0 = time.perf_counter()
        try:
            info = fn(stage_dir) or {}
        except UserError as e:
            raise UserError(f"stage {stage}: {e}") from None
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise UserError(f"stage {stage}: disk full under {self.run_dir}; free space and run the same "
                                "command again to resume") from None
            raise self._fail(stage, stage_dir, e) from None
        except Exception as e:  # noqa: BLE001 - report any stage failure as one line + a log file
            raise self._fail(stage, stage_dir, e) from None
        dt = time.perf_counter() - t0
        self.timings[stage] = dt
        self.spent_estimate += self.estimates[stage]
        mark_done(stage_dir, {"stage": stage, "seconds": round(dt, 1), **info})

    def _fail(self, stage: str, stage_dir: Path, e: Exception) -> UserError:
        stage_dir.mkdir(parents=True, exist_ok=True)
        log = stage_dir / "error.log"
        log.write_text(traceback.format_exc())
        return UserError(f"stage {stage} failed ({type(e).__name__}: {str(e)[:200]}); traceback in {log}; "
                         "fix the cause and run the same command again to resume")


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


def run_pipeline(cfg: RunConfig, recipe: Path | None, run_dir: Path) -> Path:
    from . import evaluation, report, synthesis, training

    run_dir.mkdir(parents=True, exist_ok=True)
    unknown = [b for b in cfg.baselines if b != "refusal-sft"]
    if unknown:
        raise UserError(f"unknown baseline '{unknown[0]}' in run.baselines; available: refusal-sft")
    stages = [s for s in STAGES if "refusal-sft" in cfg.baselines or not s.endswith("refusal-sft")]
    runner = Runner(run_dir, stages, cfg.stage_estimates)
    save_config(cfg, run_dir / "run_config.yaml")
    meta_file = run_dir / "run.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {"starts": []}
    meta.update({"recipe": str(recipe) if recipe else None, "versions": library_versions(), "seed": cfg.seed,
                 "model": cfg.model, "command": sys.argv})
    meta["starts"].append(time.strftime("%Y-%m-%dT%H:%M:%S"))
    meta_file.write_text(json.dumps(meta, indent=2))

    generator = None

    def base_generator():
        nonlocal generator
        if generator is None:
            from .generation import load_generator

            gcfg = resolve_config(synthesis.GenerateConfig, recipe, "generate", {"model": cfg.model})
            generator = load_generator(cfg.backend, cfg.model, dtype=cfg.dtype, batch_size=gcfg.batch_size,
                                       seed=cfg.seed)
        return generator

    data_dir = run_dir / "data"
    runner.run("data", lambda d: {"split": build_data(cfg, d, base_generator)["train"]})

    gen_dir = run_dir / "generate"

    def do_generate(d: Path):
        gcfg = resolve_config(synthesis.GenerateConfig, recipe, "generate", {
            "model": cfg.model, "out": str(d), "pools": [str(data_dir / "train_prompts.jsonl")], "mutations": [],
            "exclude": [str(data_dir / "eval_prompts.jsonl")], "seed": cfg.seed})
        # The generate section may name its own backend (e.g. vllm on GPUs, or `scripted` for smoke runs).
        same = gcfg.backend == cfg.backend and gcfg.dtype == cfg.dtype
        synthesis.run_generate(gcfg, generator=base_generator() if same else None)
        stats = json.loads((d / "stats.json").read_text())
        if not stats.get("sft_records"):
            raise UserError("no rationale was accepted, so there is nothing to train on; see "
                            f"{d / 'candidates.jsonl'} for the rejection reasons")
        return {"sft_records": stats["sft_records"], "prompts_accepted": stats.get("prompts_accepted")}

    runner.run("generate", do_generate)

    def do_train(baseline: str | None):
        def fn(d: Path):
            tcfg = resolve_config(training.TrainConfig, recipe, "train", {
                "model": cfg.model, "data": str(gen_dir / "sft.jsonl"), "out": str(d), "baseline": baseline,
                "seed": cfg.seed, "dtype": cfg.dtype, "resume": (d / "checkpoints").is_dir() or None})
            training.run_train(tcfg)
            return {}
        return fn

    runner.run("train-rational", do_train(None))
    if "refusal-sft" in cfg.baselines:
        runner.run("train-refusal-sft", do_train("refusal-sft"))

    eval_dirs = []

    def do_eval(name: str, adapter: Path | None):
        def fn(d: Path):
            ecfg = resolve_config(evaluation.EvalConfig, recipe, "eval", {
                "model": cfg.model, "adapter": str(adapter) if adapter else None, "out": str(d),
                "prompts": str(data_dir / "eval_prompts.jsonl"), "suites": [], "name": name, "seed": cfg.seed,
                "backend": cfg.backend, "dtype": cfg.dtype, "exclude_train": str(gen_dir / "sft.jsonl")})
            evaluation.run_eval(ecfg, generator=base_generator() if adapter is None else None)
            return {}
        return fn

    runner.run("eval-base", do_eval("base", None))
    eval_dirs.append(run_dir / "eval-base")
    if "refusal-sft" in cfg.baselines:
        runner.run("eval-refusal-sft", do_eval("refusal-sft", run_dir / "train-refusal-sft" / "adapter"))
        eval_dirs.append(run_dir / "eval-refusal-sft")
    runner.run("eval-rational", do_eval("rational", run_dir / "train-rational" / "adapter"))
    eval_dirs.append(run_dir / "eval-rational")

    runner.run("report", lambda d: {"html": str(report.build_report(eval_dirs, d / "report.html"))})
    timings = {s: json.loads((run_dir / s / ".done.json").read_text()).get("seconds") for s in stages
               if is_done(run_dir / s)}
    meta["stage_seconds"] = timings
    meta_file.write_text(json.dumps(meta, indent=2))
    _print_headline(eval_dirs, run_dir, timings)
    return run_dir


def _print_headline(eval_dirs: list[Path], run_dir: Path, timings: dict) -> None:
    """The headline numbers, one column per model: rate [95% interval] (k/n), with the judge named."""
    from rich.console import Console
    from rich.table import Table

    from . import report

    rows = report.headline_rows(eval_dirs)
    names = list(dict.fromkeys(r["name"] for r in rows))
    keys = list(dict.fromkeys((r["suite"], r["metric"], r["judge"], r["lower_is_better"]) for r in rows))
    cell = {(r["name"], r["suite"], r["metric"]): r for r in rows}
    table = Table(title=f"Rational vs baselines — {run_dir}")
    table.add_column("suite", overflow="fold")
    table.add_column("metric (better)", overflow="fold")
    for n in names:
        table.add_column(n, overflow="fold")
    table.add_column("judge")
    for suite, metric, judge, lower in keys:
        vals = []
        for n in names:
            r = cell.get((n, suite, metric))
            vals.append("-" if r is None or r["rate"] is None else
                        f"{r['rate']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}] ({r['k']}/{r['n']})")
        table.add_row(suite, f"{metric} ({'lower' if lower else 'higher'})", *vals, str(judge))
    console = Console()
    console.print(table)
    console.print("stage seconds: " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    console.print(f"report: {run_dir / 'report' / 'report.html'}")


def run_command(
    preset: Annotated[str | None, typer.Option(help=f"One of: {', '.join(PRESETS)} (default demo).")] = None,
    config: Annotated[str | None, typer.Option(help="A recipe YAML instead of a preset.")] = None,
    model: Annotated[str | None, typer.Option(help="Model spec; overrides the recipe.")] = None,
    out: Annotated[str | None, typer.Option(help="Run folder (default runs/<preset>).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for splits, sampling and training.")] = None,
) -> None:
    if preset and config:
        raise UserError("pass either --preset or --config, not both")
    preset = preset or ("demo" if not config else None)
    if preset:
        if preset not in PRESETS:
            raise UserError(f"unknown preset '{preset}'; use one of: {', '.join(PRESETS)}")
        recipe = recipes_dir() / PRESETS[preset]
    else:
        recipe = Path(config)
    load_yaml(recipe)  # one-line error for a missing/broken recipe before anything runs
    cfg = resolve_config(RunConfig, recipe, "run", {"model": model, "out": out, "seed": seed})
    run_dir = Path(cfg.out or f"runs/{preset or recipe.stem}")
    cfg = dataclasses.replace(cfg, out=str(run_dir))
    run_pipeline(cfg, recipe, run_dir)
