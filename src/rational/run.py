"""`rational run`: the whole Rational pipeline and the paper's comparison, resumable.

    data  ->  generate  ->  train-rational, train-refusal-sft  ->  eval-base, eval-refusal-sft, eval-rational  ->  report

1. data (`data.run_data`): the train pool and the evaluation set, disjoint by base prompt, by jailbreak template,
   and with whole attack families held out of training; near-duplicates of eval prompts removed from training.
2. generate (`generate.run_generate`): the model writes its own rationales with the two self-check prompts.
3. train (`train.run_train`): LoRA SFT on the rationales (Rational) and on the same prompts with the reasoning
   stripped (`refusal-sft`, the rigid-refusal baseline), both from the same accepted pool.
4. eval (`eval.run_eval`): base, refusal-sft and Rational on the same held-out prompts.
5. report (`report.build_report`): report.html / report.md, and the headline table in the terminal.

Each stage is configured by its own recipe section (`data:`, `generate:`, `train:`, `eval:`) and the shared
top-level keys; `run:` holds only what the run itself decides (model, seed, baselines, ...). Every stage writes to
`runs/NAME/<stage>/` and marks itself done with `.done.json`; running the same command again skips finished
stages and resumes unfinished ones (the stages resume themselves).
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import gc
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from . import report
from .backends import load_generator
from .common import PeakMemory, clear_outputs, library_versions, output_lock, write_json
from .config import Recipe, resume_keys, setting
from .data import DataConfig, run_data
from .errors import UserError
from .eval import EvalConfig, run_eval
from .generate import GenerateConfig, run_generate
from .learned_judges import release_models as release_judge_models
from .models import DEFAULT_MODEL
from .mutations import MUTATIONS
from .pairs import PairsConfig, run_pairs
from .redteam import RedteamConfig, RunContext, run_redteam, stage_names
from .train import TrainConfig, run_train

PRESETS = {
    "demo": "demo-cpu.yaml",
    "full": "full-cpu.yaml",
    "smoke": "smoke.yaml",
    "paper-llama3-8b": "paper-llama3-8b.yaml",
    "paper-mistral-7b": "paper-mistral-7b.yaml",
}
STAGES = ("data", "generate", "pairs", "train-rational", "train-refusal-sft", "train-circuit-breakers",
          "train-rational+dpo", "train-refusal-sft+dpo", "eval-base", "eval-rational", "eval-refusal-sft",
          "eval-circuit-breakers", "eval-rational+dpo", "eval-refusal-sft+dpo", "report")
BASELINES = ("refusal-sft", "circuit-breakers")

# ------------------------------------------------------------------ fine-tuned models (dpo and circuit breakers)
# name -> (recipe section of its TrainConfig, the values the run sets), in the order they train and are reported.
# Circuit breakers and DPO train on what the pairs stage writes; DPO starts from the SFT adapter it names. Every
# model is evaluated on the same prompts.
MODELS = {
    "rational": ("train", {"data": "generate/sft.jsonl"}),
    "refusal-sft": ("train", {"data": "generate/sft.jsonl", "baseline": "refusal-sft"}),
    "circuit-breakers": ("circuit-breakers", {"data": "pairs/circuit_breakers.jsonl",
                                              "baseline": "circuit-breakers"}),
    "rational+dpo": ("dpo", {"data": "pairs/pairs.jsonl", "method": "dpo",
                             "init_adapter": "train-rational/adapter"}),
    "refusal-sft+dpo": ("dpo", {"data": "pairs/pairs.jsonl", "method": "dpo", "baseline": "refusal-sft",
                                "init_adapter": "train-refusal-sft/adapter"}),
}


def run_models(cfg: RunConfig) -> list[str]:
    """The fine-tuned models this run trains and evaluates (DPO on top of Rational and of refusal-sft)."""
    wanted = {"rational", *cfg.baselines}
    if cfg.dpo:
        wanted |= {f"{m}+dpo" for m in wanted & {"rational", "refusal-sft"}}
    return [m for m in MODELS if m in wanted]


def train_config(recipe: Recipe, name: str, run_dir: Path, shared: dict) -> TrainConfig:
    section, values = MODELS[name]
    values = {k: str(run_dir / v) if k in ("data", "init_adapter") else v for k, v in values.items()}
    return recipe.build(TrainConfig, section, {**shared, **values, "out": str(run_dir / f"train-{name}"),
                                               "resume": (run_dir / f"train-{name}" / "checkpoints").is_dir() or None})


def recipes_dir() -> Path:
    """`recipes/` of the source checkout (installed with `pip install -e .`), else the packaged copy."""
    here = Path(__file__).resolve()
    for cand in (here.parents[2] / "recipes", here.parent / "recipes"):
        if cand.is_dir():
            return cand
    raise UserError("cannot find the recipes folder; pass --config PATH to a recipe file")


def preset_paths() -> dict[str, Path]:
    """Preset name -> recipe file (looked up only when a run starts, so `--help` needs no recipes folder)."""
    return {name: recipes_dir() / file for name, file in PRESETS.items()}


@dataclass
class RunConfig:
    """`rational run`: what the run decides; each stage reads its own recipe section (data:, generate:, ...)."""

    model: str = setting(DEFAULT_MODEL, "Model spec for every stage (the model writes its own rationales).")
    out: str | None = setting(None, "Run folder (default runs/<preset or recipe name>).")
    seed: int = setting(0, "Seed for splits, sampling and training.")
    backend: str = setting("hf", "Inference backend for data rewrites and evaluation: auto | hf | llamacpp | vllm.")
    dtype: str = setting("auto", "auto | float32 | bfloat16 | float16.")
    baselines: list[str] = setting(default_factory=lambda: ["refusal-sft"], help="Baselines trained and evaluated "
                                   f"beside Rational: {', '.join(BASELINES)}; repeatable.")
    dpo: bool = setting(False, "Also run DPO on the model's own preference pairs (`pairs` stage, recipe section "
                        "`dpo:`) on top of Rational and of refusal-sft, and evaluate rational+dpo, refusal-sft+dpo.")
    stage_estimates: dict = setting(default_factory=dict, help="Stage -> expected seconds, for the progress "
                                    "display's time-left estimate (YAML mapping).")
    overwrite: bool = setting(False, "Delete the run folder's stages and start over (otherwise finished stages "
                              "are skipped, and stages made with other settings are refused).")

    def __post_init__(self):
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise UserError(f"unknown baseline '{unknown[0]}' in run.baselines; available: {', '.join(BASELINES)}")


# ------------------------------------------------------------------------------------------ runner


def _done_file(stage_dir: Path) -> Path:
    return stage_dir / ".done.json"


def is_done(stage_dir: Path) -> bool:
    return _done_file(stage_dir).is_file()


def mark_done(stage_dir: Path, info: dict) -> None:
    write_json(_done_file(stage_dir), info)


def fingerprint(cfg: Any) -> dict:
    """The settings of a stage config that change what the stage writes, JSON-normalised."""
    return json.loads(json.dumps({k: getattr(cfg, k) for k in resume_keys(type(cfg))}, default=str))



class Runner:
    """Runs stages in order, skipping finished ones, with an overall ETA line between stages."""

    def __init__(self, run_dir: Path, stages: list[str], estimates: dict[str, float]):
        from rich.console import Console  # rich is imported by the command that needs it, not by `--help`

        self.run_dir = run_dir
        self.stages = stages
        self.estimates = {s: float(estimates.get(s, 60)) for s in stages}
        self.console = Console(stderr=True)
        self.start = time.perf_counter()
        self.spent_estimate = 0.0  # estimated seconds of the stages run so far (for the speed ratio)
        self.timings: dict[str, float] = {}
        self.peak_rss: dict[str, float] = {}  # GB, per stage run in this call

    def eta(self, remaining: list[str]) -> float:
        elapsed = time.perf_counter() - self.start
        ratio = elapsed / self.spent_estimate if self.spent_estimate > 30 else 1.0
        return ratio * sum(self.estimates[s] for s in remaining)

    def check_done_stages(self, configs: dict[str, Any]) -> None:
        """A finished stage is only skipped when it was made with the same settings; else the run is refused.

        Each `.done.json` records the `same_on_resume` settings of its stage (`fingerprint`), so `rational run`
        again with another --model, --seed, or recipe value never keeps stale results under a new name.
        """
        for stage in self.stages:
            done = _done_file(self.run_dir / stage)
            if not done.is_file() or stage not in configs:
                continue
            old = json.loads(done.read_text(encoding="utf-8")).get("fingerprint")
            new = fingerprint(configs[stage])
            if old is None:  # folders written before fingerprints existed cannot be checked
                continue
            for k in sorted(set(old) | set(new)):
                if _as_paths(old.get(k)) != _as_paths(new.get(k)):
                    raise UserError(f"{self.run_dir}: stage {stage} was made with {k}={old.get(k)!r}, not "
                                    f"{new.get(k)!r}; rerun with --overwrite to start over, or use another --out")

    def run(self, stage: str, fn: Callable[[Path], dict | None], cfg: Any = None) -> None:
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
            with PeakMemory() as memory:
                info = fn(stage_dir)
            info = info if isinstance(info, dict) else {}  # stage functions return their output path
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
        release_memory()
        self.timings[stage] = dt
        self.peak_rss[stage] = round(memory.peak_gb, 1)
        self.spent_estimate += self.estimates[stage]
        mark_done(stage_dir, {"stage": stage, "seconds": round(dt, 1), "peak_rss_gb": self.peak_rss[stage],
                              "start_rss_gb": round(memory.start_gb, 1), **info,
                              **({"fingerprint": fingerprint(cfg)} if cfg is not None else {})})

    def _fail(self, stage: str, stage_dir: Path, e: Exception) -> UserError:
        stage_dir.mkdir(parents=True, exist_ok=True)
        log = stage_dir / "error.log"
        log.write_text(traceback.format_exc())
        return UserError(f"stage {stage} failed ({type(e).__name__}: {str(e)[:200]}); traceback in {log}; "
                         "fix the cause and run the same command again to resume")


def _as_paths(value: Any) -> Any:
    """Path-like strings made absolute (from the current folder), so `--out runs/x` and `--out /abs/runs/x` are
    the same run when resumed; anything else as it is."""
    if isinstance(value, str) and os.sep in value:
        return os.path.abspath(value)
    if isinstance(value, list):
        return [_as_paths(v) for v in value]
    return value


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


def move_legacy_keys(recipe: Recipe) -> None:
    """Recipes written before the `data:` section kept the split sizes under `run:`; they still work."""
    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    recipe.move_keys("run", "data", {f.name for f in dataclasses.fields(DataConfig)} - run_fields)


def run_pipeline(cfg: RunConfig, recipe: Recipe, run_dir: Path) -> Path:
    with output_lock(run_dir):
        return _pipeline(cfg, recipe, run_dir)


def release_memory() -> None:
    """After a stage: collect its models and hand freed heap pages back to the OS (glibc keeps them otherwise, and
    the next stage's peak lands on top of the last one's)."""
    release_judge_models()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def pipeline_stages(cfg: RunConfig) -> list[str]:
    """The stages a run goes through, in order (before any red-team rounds)."""
    models = run_models(cfg)
    with_pairs = cfg.dpo or "circuit-breakers" in cfg.baselines
    return [s for s in STAGES if s in ("data", "generate", "eval-base", "report")
            or (s == "pairs" and with_pairs) or (s != "pairs" and s.split("-", 1)[1] in models)]


def _pipeline(cfg: RunConfig, recipe: Recipe, run_dir: Path) -> Path:
    models = run_models(cfg)
    stages = pipeline_stages(cfg)
    if cfg.overwrite:
        clear_outputs(run_dir, [*STAGES, "run.json", "run_config.yaml"])
    # Red-team loop (redteam.py): its stages follow the report when the recipe's redteam: section asks for rounds.
    rt_cfg = recipe.build(RedteamConfig, "redteam")
    stages += stage_names(rt_cfg, cfg.seed)
    runner = Runner(run_dir, stages, cfg.stage_estimates)
    data_dir, gen_dir = run_dir / "data", run_dir / "generate"

    # Every stage's config is resolved first, so finished stages can be checked before anything runs.
    shared = {"model": cfg.model, "seed": cfg.seed}
    gcfg = recipe.build(GenerateConfig, "generate", {
        **shared, "out": str(gen_dir), "pools": [str(data_dir / "train_prompts.jsonl")], "mutations": [],
        "exclude": [str(data_dir / "eval_prompts.jsonl")]})
    data_cfg = recipe.build(DataConfig, "data", {**shared, "out": str(data_dir), "backend": cfg.backend,
                                                 "dtype": cfg.dtype, "batch_size": gcfg.batch_size})
    # Worked examples of attack families held out of training stay out of the generation prompts too.
    held = set(data_cfg.heldout_attacks) | set(data_cfg.heldout_template_families) | {
        MUTATIONS[a].family for a in data_cfg.heldout_attacks if a in MUTATIONS}
    gcfg = dataclasses.replace(gcfg, exclude_exemplar_attacks=sorted(set(gcfg.exclude_exemplar_attacks) | held))
    pairs_cfg = recipe.build(PairsConfig, "pairs", {**shared, "generate": str(gen_dir), "out": str(run_dir / "pairs")})
    train_cfgs = {name: train_config(recipe, name, run_dir, {**shared, "dtype": cfg.dtype}) for name in models}
    adapters = {"base": None, **{name: run_dir / f"train-{name}" / "adapter" for name in train_cfgs}}
    eval_cfgs = {name: recipe.build(EvalConfig, "eval", {
        **shared, "adapter": str(adapter) if adapter else None, "out": str(run_dir / f"eval-{name}"),
        "prompts": str(data_dir / "eval_prompts.jsonl"), "suites": [], "name": name, "backend": cfg.backend,
        "dtype": cfg.dtype, "exclude_train": str(gen_dir / "sft.jsonl")}) for name, adapter in adapters.items()}
    runner.check_done_stages({"data": data_cfg, "generate": gcfg, "pairs": pairs_cfg,
                              **{f"train-{n}": c for n, c in train_cfgs.items()},
                              **{f"eval-{n}": c for n, c in eval_cfgs.items()}})

    # Provenance is written once the run is known to continue the same work (or to start it).
    (run_dir / "run_config.yaml").write_text(yaml.safe_dump(
        json.loads(json.dumps({"run": dataclasses.asdict(cfg), "data": dataclasses.asdict(data_cfg)}, default=str)),
        sort_keys=False))
    meta_file = run_dir / "run.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {"starts": []}
    meta.update({"recipe": str(recipe.path) if recipe.path else None, "versions": library_versions(),
                 "seed": cfg.seed, "model": cfg.model, "command": sys.argv})
    meta["starts"].append(time.strftime("%Y-%m-%dT%H:%M:%S"))
    meta_file.write_text(json.dumps(meta, indent=2))

    generator = None

    def base_generator():
        nonlocal generator
        if generator is None:
            generator = load_generator(cfg.backend, cfg.model, dtype=cfg.dtype, batch_size=gcfg.batch_size,
                                       seed=cfg.seed)
        return generator

    def free_base_generator():  # training and the fine-tuned evals load their own model: ~1 GB less under them
        nonlocal generator
        generator = None
        release_memory()

    runner.run("data", lambda d: {"split": run_data(data_cfg, base_generator)["train"]}, data_cfg)

    def do_generate(d: Path):
        # The generate section may name its own backend (e.g. vllm on GPUs, or `scripted` for smoke runs).
        same = gcfg.backend == cfg.backend and gcfg.dtype == cfg.dtype
        run_generate(gcfg, generator=base_generator() if same else None)
        stats = json.loads((d / "stats.json").read_text())
        if not stats.get("sft_records"):
            raise UserError("no rationale was accepted, so there is nothing to train on; see "
                            f"{d / 'candidates.jsonl'} for the rejection reasons")
        return {"sft_records": stats["sft_records"], "prompts_accepted": stats.get("prompts_accepted")}

    runner.run("generate", do_generate, gcfg)

    def do_pairs(d: Path):
        same = pairs_cfg.backend == cfg.backend and pairs_cfg.dtype == cfg.dtype
        run_pairs(pairs_cfg, generator=base_generator() if same else None)
        stats = json.loads((d / "stats.json").read_text())
        cb = stats["circuit_breakers"]
        if cfg.dpo and not stats["pairs"]:
            raise UserError(f"no preference pair could be built, so there is nothing for DPO; see {d / 'stats.json'}")
        if "circuit-breakers" in cfg.baselines and not (cb.get("reroute") and cb.get("retain")):
            raise UserError(f"circuit breakers need harmful completions to reroute and benign answers to retain; "
                            f"the model's samples gave {cb.get('reroute', 0)} and {cb.get('retain', 0)}; see {d}")
        return {"pairs": stats["pairs"], **cb}

    if "pairs" in stages:
        runner.run("pairs", do_pairs, pairs_cfg)
    free_base_generator()  # ~1 GB less under training; every eval loads its own model with the eval's batch size
    for name in models:  # a DPO model after the SFT model it starts from
        runner.run(f"train-{name}", lambda d, c=train_cfgs[name]: run_train(c), train_cfgs[name])

    eval_dirs = []
    for name, ecfg in eval_cfgs.items():
        runner.run(f"eval-{name}", lambda d, c=ecfg: run_eval(c), ecfg)
        eval_dirs.append(run_dir / f"eval-{name}")

    runner.run("report", lambda d: {"html": str(report.build_report(eval_dirs, d / "report.html"))})
    if rt_cfg.rounds:
        run_redteam(rt_cfg, recipe, runner, RunContext(run_dir, cfg.model, cfg.seed, cfg.dtype, cfg.backend),
                    overwrite=cfg.overwrite)
    done = {s: json.loads((run_dir / s / ".done.json").read_text()) for s in stages if is_done(run_dir / s)}
    timings = {s: d.get("seconds") for s, d in done.items()}
    meta["stage_seconds"] = timings
    meta["stage_peak_rss_gb"] = {s: d.get("peak_rss_gb") for s, d in done.items()}
    meta_file.write_text(json.dumps(meta, indent=2))
    _print_headline(eval_dirs, run_dir, timings, meta["stage_peak_rss_gb"])
    return run_dir


def _print_headline(eval_dirs: list[Path], run_dir: Path, timings: dict, peaks: dict | None = None) -> None:
    """The headline numbers, one column per model: rate [95% interval] (k/n), with the judge named, and the
    exact McNemar p-value of Rational against each other model on the same prompts."""
    from rich.console import Console
    from rich.table import Table

    rows = report.headline_rows(eval_dirs)
    paired = {(p["suite"], p["metric"], p["b"]): p for p in report.paired_rows(eval_dirs)}
    # The comparisons that decide (Rational against the base model and against refusal-only SFT); the report
    # has Rational against every other model.
    others = [o for o in ("base", "refusal-sft") if any(k[2] == o for k in paired)]
    names = list(dict.fromkeys(r["name"] for r in rows))
    keys = list(dict.fromkeys((r["suite"], r["metric"], r["judge"], r["lower_is_better"], r["keyword"])
                              for r in rows))
    cell = {(r["name"], r["suite"], r["metric"], r["keyword"]): r for r in rows}
    table = Table(title=f"Rational vs baselines — {run_dir}")
    table.add_column("suite", overflow="fold")
    table.add_column("metric (better)", overflow="fold")
    for n in names:
        table.add_column(n, overflow="fold")
    for o in others:
        table.add_column(f"p vs {o}", overflow="fold")
    table.add_column("judge")
    for suite, metric, judge, lower, keyword in keys:
        vals = []
        for n in names:
            r = cell.get((n, suite, metric, keyword))
            vals.append("-" if r is None or r["rate"] is None else
                        f"{r['rate']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}] ({r['k']}/{r['n']})")
        ps = [report.format_p(paired[(suite, metric, o)]["p_mcnemar"]) if (suite, metric, o) in paired
              and not keyword else "-" for o in others]  # p-values: under the main judge
        table.add_row(suite, f"{metric} ({'lower' if lower else 'higher'})", *vals, *ps, str(judge))
    console = Console(width=None if sys.stdout.isatty() else 200)  # a log file gets the whole table on one line
    console.print(table)
    console.print("p: exact McNemar test on the prompts both models answered (paired).")
    console.print("stage seconds: " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    if peaks:
        console.print("stage peak RSS (GB): " + ", ".join(f"{k} {v}" for k, v in peaks.items()))
    console.print(f"report: {run_dir / 'report' / 'report.html'}")


def run_command(cfg: RunConfig, recipe: Recipe) -> None:
    name = recipe.preset or (recipe.path.stem if recipe.path else "run")
    run_dir = Path(cfg.out or f"runs/{name}")
    run_pipeline(dataclasses.replace(cfg, out=str(run_dir)), recipe, run_dir)
