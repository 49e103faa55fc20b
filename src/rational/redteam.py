"""The red-team loop: attack the tuned model, learn from the attacks that worked, retrain, measure on held-out.

Runs inside `rational run` after the main pipeline when the recipe's `redteam:` section asks for rounds::

    redteam: {rounds: 2, method: pair, train_behaviors: 8, eval_behaviors: 8,
              attack: {n_streams: 3, n_iterations: 3, attacker: qwen2.5-coder-1.5b-instruct}}

Round r (r = 1..rounds), each step a resumable stage of the run under `runs/NAME/redteam/round-r/`:

1. `attack-train`: attack the current model (round 1: train-rational's adapter) on TRAINING behaviors (harmful
   base prompts of the train side) with `method`; the prompts that succeeded become adversarial prompt records.
2. `generate`: the base model writes rationales for them with the rejection self-check (`generate.run_generate`,
   kind adversarial, the recipe's `generate:` section), filtered as usual.
3. `train`: the rationales are added to the training pool (the run's sft.jsonl plus every earlier round's) and the
   model is trained again from the base model with the recipe's `train:` section (`train.run_train`), so rounds
   differ only by their data.
4. `eval`: the new adapter on the run's held-out eval prompts (`eval.run_eval`), whose `jailbreak-heldout` suite
   holds attack families never used in training nor in any round (the red-team rounds add only `method`
   attacks), plus the harmful, jailbreak and over-refusal suites, so the price in over-refusal shows too.
5. `attack-heldout`: the same adaptive attack on HELD-OUT behaviors (eval-side harmful prompts, the same sample
   every round), so ASR against an adaptive attacker on behaviors never trained on is tracked per round.

Round 0 is the model before any round: train-rational, its eval (`eval-rational`) and its own `attack-heldout`.
`control_seeds: K` also retrains round 0's data with K other seeds and evaluates each (`round-0/control-seed-S/`):
with a few dozen records, retraining alone moves the model a long way (BENCHMARKS.md), and a round is evidence only
where it lies outside that spread (`outside_spread` in the summary).
A round whose attacks all failed (or whose rationales were all rejected) has nothing to learn from: its model is
the previous one and its eval and held-out attack are not redone. `redteam/summary.json` and `summary.md` give,
per round, the held-out ASRs with 95% intervals, an exact McNemar test of each against round 0 on the same
prompts, and what the round cost (seconds and CPU seconds per stage).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import report
from .attack import METHODS, AttackConfig, run_attack
from .common import clear_outputs, read_jsonl, write_json, write_jsonl, write_text_atomic
from .config import Recipe, check_choice, check_range, setting
from .errors import UserError
from .eval import EvalConfig, run_eval
from .generate import GenerateConfig, run_generate
from .prompts import PromptRecord, read_records
from .stats import paired_comparison
from .train import TrainConfig, run_train

ROUND_STEPS = ("attack-train", "generate", "train", "eval", "attack-heldout")
# Eval suites reported per round; jailbreak-heldout is the out-of-distribution number.
REPORTED_SUITES = ("jailbreak-heldout", "jailbreak", "harmful", "over-refusal")


@dataclass
class RedteamConfig:
    """`redteam:` section of a run recipe: rounds of attack -> rationales -> retrain -> held-out evaluation."""

    rounds: int = setting(0, "Red-team rounds after the main pipeline (0: none).", same_on_resume=True)
    method: str = setting("pair", f"Attack of the rounds: {' | '.join(METHODS)}.", same_on_resume=True)
    train_behaviors: int = setting(8, "Training behaviors attacked per round (a new seeded sample each round).",
                                   same_on_resume=True)
    eval_behaviors: int = setting(8, "Held-out behaviors attacked after each round (the same sample every round; "
                                  "0: only the eval suites).", same_on_resume=True)
    attack: dict = setting(default_factory=dict, help="Attack settings for every attack of the loop, over the "
                           "recipe's attack: section: the budget (n_streams, n_iterations, depth, gcg_steps, ...) "
                           "and the attacker.", same_on_resume=True)
    control_seeds: int = setting(0, "Retrain round 0's data with this many other seeds and evaluate each: the "
                                 "retraining noise a round must exceed (0: none).", same_on_resume=True)

    def __post_init__(self):
        check_range(self, "rounds", 0)
        check_choice(self, "method", METHODS)
        check_range(self, "train_behaviors", 1)
        check_range(self, "eval_behaviors", 0)
        check_range(self, "control_seeds", 0)
        fixed = {"target", "adapter", "target_base_url", "behaviors", "out", "method", "limit", "seed", "dtype",
                 "overwrite"}
        clash = sorted(set(self.attack) & fixed)
        if clash:
            raise UserError(f"redteam.attack.{clash[0]} is set by the loop itself; remove it")


def control_seeds(rt: RedteamConfig, seed: int) -> list[int]:
    """The seeds of round 0's control retrainings: the next `control_seeds` after the run's seed."""
    return [seed + k for k in range(1, rt.control_seeds + 1)]


def stage_names(rt: RedteamConfig, seed: int = 0) -> list[str]:
    """The run's stages added by the loop, in order (empty when rounds is 0)."""
    if not rt.rounds:
        return []
    names = ["redteam/round-0/attack-heldout"] if rt.eval_behaviors else []
    for seed in control_seeds(rt, seed):
        names += [f"redteam/round-0/control-seed-{seed}/train", f"redteam/round-0/control-seed-{seed}/eval"]
    for r in range(1, rt.rounds + 1):
        names += [f"redteam/round-{r}/{step}" for step in ROUND_STEPS
                  if step != "attack-heldout" or rt.eval_behaviors]
    return names + ["redteam/summary"]


@dataclass
class RunContext:
    """What the loop takes from the run: the folder, the shared settings and the main pipeline's outputs."""

    run_dir: Path
    model: str
    seed: int
    dtype: str
    backend: str

    @property
    def base_sft(self) -> Path:
        return self.run_dir / "generate" / "sft.jsonl"

    @property
    def eval_prompts(self) -> Path:
        return self.run_dir / "data" / "eval_prompts.jsonl"

    def round_dir(self, r: int) -> Path:
        return self.run_dir / "redteam" / f"round-{r}"


def run_redteam(rt: RedteamConfig, recipe: Recipe, runner, ctx: RunContext, overwrite: bool = False) -> Path:
    """Run the loop's stages through the run's `runner` (skip finished ones, one-line failures, .done.json)."""
    out = ctx.run_dir / "redteam"
    if overwrite:
        clear_outputs(ctx.run_dir, ["redteam"])
    train_file, heldout_file = _write_behaviors(ctx, out)
    configs = _configs(rt, recipe, ctx, train_file, heldout_file)
    runner.check_done_stages(configs)

    if rt.eval_behaviors:
        runner.run("redteam/round-0/attack-heldout", lambda d: _attack(configs["redteam/round-0/attack-heldout"]),
                   configs["redteam/round-0/attack-heldout"])
    for seed in control_seeds(rt, ctx.seed):
        for step, fn in (("train", run_train), ("eval", run_eval)):
            cfg = configs[f"redteam/round-0/control-seed-{seed}/{step}"]
            runner.run(f"redteam/round-0/control-seed-{seed}/{step}", lambda d, fn=fn, cfg=cfg: _cost(fn, cfg)[1], cfg)
    for r in range(1, rt.rounds + 1):
        name = f"redteam/round-{r}"
        runner.run(f"{name}/attack-train", lambda d, r=r: _attack_train(configs[f"redteam/round-{r}/attack-train"],
                                                                            ctx, r), configs[f"{name}/attack-train"])
        runner.run(f"{name}/generate", lambda d, r=r: _generate(configs[f"redteam/round-{r}/generate"], ctx, r),
                   configs[f"{name}/generate"])
        runner.run(f"{name}/train", lambda d, r=r: _train(configs[f"redteam/round-{r}/train"], ctx, r),
                   configs[f"{name}/train"])
        runner.run(f"{name}/eval", lambda d, r=r: _eval(configs[f"redteam/round-{r}/eval"], ctx, r),
                   configs[f"{name}/eval"])
        if rt.eval_behaviors:
            runner.run(f"{name}/attack-heldout", lambda d, r=r: _attack_heldout(
                configs[f"redteam/round-{r}/attack-heldout"], ctx, r), configs[f"{name}/attack-heldout"])
    runner.run("redteam/summary", lambda d: {"summary": str(write_summary(rt, ctx))})
    return out


# ------------------------------------------------------------------------------------------ configs


def _write_behaviors(ctx: RunContext, out: Path) -> tuple[Path, Path]:
    """The harmful BASE prompts of each side (no jailbreak forms): what the rounds attack."""
    train = [r for r in read_records(ctx.run_dir / "data" / "train_prompts.jsonl")
             if r.kind == "harmful" and r.attack is None]
    heldout = [r for r in read_records(ctx.eval_prompts) if r.meta.get("suite") == "harmful"]
    if not train or not heldout:
        raise UserError("the red-team loop needs harmful prompts on both sides of the split; raise "
                        "data.train_harmful / data.eval_harmful")
    paths = []
    for name, recs in (("train_behaviors.jsonl", train), ("heldout_behaviors.jsonl", heldout)):
        text = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in recs)
        path = out / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:  # same bytes, same sha256 on resume
            write_text_atomic(path, text)
        paths.append(path)
    return paths[0], paths[1]


def _adapter(ctx: RunContext, r: int) -> Path:
    """The adapter under test after round r: the newest round up to r that trained one, else train-rational's."""
    for k in range(r, 0, -1):
        adapter = ctx.round_dir(k) / "train" / "adapter"
        if adapter.is_dir():
            return adapter
    return ctx.run_dir / "train-rational" / "adapter"


def _combined_sft(ctx: RunContext, r: int) -> Path:
    return ctx.round_dir(r) / "sft.jsonl"


def _configs(rt: RedteamConfig, recipe: Recipe, ctx: RunContext, train_file: Path, heldout_file: Path) -> dict:
    """Every stage's config, built before anything runs so finished stages can be checked against them.

    Which adapter round r attacks depends on whether round r-1 trained one, which is only known as the loop goes.
    The config names the folder round r-1 trains into, so its fingerprint is the same on every rerun, and
    `_attack_train` resolves the adapter actually attacked (recorded in the stage's .done.json)."""
    shared = {"seed": ctx.seed}
    eval_judges = recipe.build(EvalConfig, "eval", {"model": ctx.model}).judge

    def attack(out: Path, behaviors: Path, adapter: Path, limit: int, seed: int) -> AttackConfig:
        values = {"judge": eval_judges, **rt.attack, "target": ctx.model, "adapter": str(adapter),
                  "behaviors": str(behaviors), "out": str(out), "method": rt.method, "limit": limit, "seed": seed,
                  "dtype": ctx.dtype}
        return recipe.build(AttackConfig, "attack", values)

    def retrain(d: Path, data: Path, train_seed: int, label: str) -> tuple[TrainConfig, EvalConfig]:
        """Train from the base model on `data` into d/train, then evaluate that adapter on the held-out prompts."""
        train = recipe.build(TrainConfig, "train", {
            "seed": train_seed, "model": ctx.model, "data": str(data), "out": str(d / "train"), "dtype": ctx.dtype,
            "resume": (d / "train" / "checkpoints").is_dir() or None})
        evaluation = recipe.build(EvalConfig, "eval", {
            **shared, "model": ctx.model, "adapter": str(d / "train" / "adapter"), "out": str(d / "eval"),
            "prompts": str(ctx.eval_prompts), "suites": [], "name": label, "backend": ctx.backend,
            "dtype": ctx.dtype, "exclude_train": str(data)})
        return train, evaluation

    configs: dict[str, Any] = {}
    n_heldout = rt.eval_behaviors
    if n_heldout:
        configs["redteam/round-0/attack-heldout"] = attack(ctx.round_dir(0) / "attack-heldout", heldout_file,
                                                           _adapter(ctx, 0), n_heldout, ctx.seed)
    for seed in control_seeds(rt, ctx.seed):
        name = f"redteam/round-0/control-seed-{seed}"
        configs[f"{name}/train"], configs[f"{name}/eval"] = retrain(
            ctx.round_dir(0) / f"control-seed-{seed}", ctx.base_sft, seed, f"rational-seed-{seed}")
    for r in range(1, rt.rounds + 1):
        d, name = ctx.round_dir(r), f"redteam/round-{r}"
        previous = ctx.round_dir(r - 1) / "train" / "adapter" if r > 1 else _adapter(ctx, 0)
        configs[f"{name}/attack-train"] = attack(d / "attack-train", train_file, previous, rt.train_behaviors,
                                                 ctx.seed + r)
        configs[f"{name}/generate"] = recipe.build(GenerateConfig, "generate", {
            **shared, "model": ctx.model, "out": str(d / "generate"), "pools": [str(d / "attack-train" /
                                                                                    "successes.jsonl")],
            "mutations": [], "mutations_per_prompt": 0, "limit": None, "exclude": [str(ctx.eval_prompts)]})
        configs[f"{name}/train"], configs[f"{name}/eval"] = retrain(d, _combined_sft(ctx, r), ctx.seed,
                                                                    f"redteam-round-{r}")
        if n_heldout:
            configs[f"{name}/attack-heldout"] = attack(d / "attack-heldout", heldout_file, d / "train" / "adapter",
                                                       n_heldout, ctx.seed)
    return configs


# ------------------------------------------------------------------------------------------ stages


def _cost(fn, *args) -> tuple[Any, dict]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, {"cpu_seconds": round(time.process_time() - cpu, 1), "wall_seconds":
                    round(time.perf_counter() - wall, 1)}


def _attack(cfg: AttackConfig) -> dict:
    out, cost = _cost(run_attack, cfg)
    s = json.loads((out / "summary.json").read_text())
    return {"asr": s["asr"], "queries": s["queries"]["total"], **cost}


def _attack_train(cfg: AttackConfig, ctx: RunContext, r: int) -> dict:
    """Attack the current model on training behaviors; write the successful prompts as a prompt pool."""
    cfg = replace(cfg, adapter=str(_adapter(ctx, r - 1)))
    info = _attack(cfg)
    rows = read_jsonl(Path(cfg.out) / "attacks.jsonl")
    successes = [PromptRecord(f"redteam-r{r}-{row['id']}", row["prompt"], "adversarial", row.get("category") or "",
                              "redteam", attack=f"redteam-{cfg.method}", base_id=row["id"],
                              meta={"round": r, "method": cfg.method, "behavior": row["behavior"]})
                 for row in rows if row["success"] and row["prompt"]]
    write_jsonl(Path(cfg.out) / "successes.jsonl", successes)
    return {**info, "successes": len(successes), "adapter": cfg.adapter}


def _generate(cfg: GenerateConfig, ctx: RunContext, r: int) -> dict:
    """Rationales for the successful attacks; then the round's training file: everything so far plus them."""
    pool = Path(cfg.pools[0])
    sft_new: list[dict] = []
    info: dict = {"successes": sum(1 for _ in read_records(pool))}
    if info["successes"]:
        sft_path, cost = _cost(run_generate, cfg)
        stats = json.loads((sft_path.parent / "stats.json").read_text())
        sft_new = read_jsonl(sft_path)
        info.update(prompts_accepted=stats["prompts_accepted"], **cost)
    earlier = read_jsonl(_combined_sft(ctx, r - 1)) if r > 1 else read_jsonl(ctx.base_sft)
    write_jsonl(_combined_sft(ctx, r), earlier + sft_new)
    return {**info, "sft_added": len(sft_new), "sft_total": len(earlier) + len(sft_new)}


def _learned_nothing(ctx: RunContext, r: int) -> bool:
    done = json.loads((ctx.round_dir(r) / "generate" / ".done.json").read_text())
    return not done.get("sft_added")


def _train(cfg: TrainConfig, ctx: RunContext, r: int) -> dict:
    if _learned_nothing(ctx, r):
        return {"skipped": "no new training data this round; the model stays the previous round's"}
    _, cost = _cost(run_train, cfg)
    return cost


def _eval(cfg: EvalConfig, ctx: RunContext, r: int) -> dict:
    if _learned_nothing(ctx, r):
        return {"skipped": "model unchanged this round"}
    out, cost = _cost(run_eval, cfg)
    return {"metrics": str(out / "metrics.json"), **cost}


def _attack_heldout(cfg: AttackConfig, ctx: RunContext, r: int) -> dict:
    if _learned_nothing(ctx, r):
        return {"skipped": "model unchanged this round"}
    return _attack(cfg)


# ------------------------------------------------------------------------------------------ summary


def _done(path: Path) -> dict:
    f = path / ".done.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _headlines(metrics_path: Path) -> dict:
    m = json.loads(metrics_path.read_text())
    return {s: {k: m["suites"][s]["headline"][k] for k in ("metric", "n", "k", "rate", "lo", "hi")}
            for s in REPORTED_SUITES if "headline" in m["suites"].get(s, {})}


def write_summary(rt: RedteamConfig, ctx: RunContext) -> Path:
    """redteam/summary.json and summary.md: per round, the held-out numbers and the round's cost."""
    rounds = []
    first_eval = last_eval = ctx.run_dir / "eval-rational" / "metrics.json"
    first_heldout = last_heldout = ctx.round_dir(0) / "attack-heldout" / "summary.json"
    for r in range(0, rt.rounds + 1):
        d = ctx.round_dir(r)
        row: dict[str, Any] = {"round": r}
        if r:
            steps = {step: _done(d / step) for step in ROUND_STEPS}
            row["attack_train"] = {"asr": steps["attack-train"].get("asr"),
                                   "successes": steps["attack-train"].get("successes")}
            row["sft_added"] = steps["generate"].get("sft_added")
            row["sft_total"] = steps["generate"].get("sft_total")
            row["changed"] = not steps["train"].get("skipped")
            row["cost"] = {step: {"seconds": v.get("seconds"), "cpu_seconds": v.get("cpu_seconds")}
                           for step, v in steps.items() if v}
            row["cost_seconds"] = round(sum(v.get("seconds") or 0 for v in steps.values()), 1)
            if row["changed"]:
                last_eval = d / "eval" / "metrics.json"
                last_heldout = d / "attack-heldout" / "summary.json"
        row["adapter"] = str(_adapter(ctx, r))
        row["eval"] = _headlines(last_eval) if last_eval.is_file() else {}
        if rt.eval_behaviors and last_heldout.is_file():
            s = json.loads(last_heldout.read_text())
            row["heldout_attack"] = {"asr": s["asr"], "queries": s["queries"]["total"],
                                     "cpu_seconds": s["cpu_seconds"], "asr_definition": s["asr_definition"]}
        if r and row.get("changed"):
            row["vs_round_0"] = _paired_with_round_0(first_eval, last_eval, first_heldout, last_heldout, r)
        rounds.append(row)
    controls = [{"seed": seed, "eval": _headlines(f)} for seed in control_seeds(rt, ctx.seed)
                if (f := ctx.round_dir(0) / f"control-seed-{seed}" / "eval" / "metrics.json").is_file()]
    spread = {}
    if controls:  # round 0 and its retrainings with other seeds: the noise a round has to exceed
        for suite in REPORTED_SUITES:
            rates = [e[suite]["rate"] for e in [rounds[0]["eval"]] + [c["eval"] for c in controls] if suite in e]
            if rates:
                spread[suite] = [min(rates), max(rates)]
        for row in rounds[1:]:
            if row.get("changed"):
                row["outside_spread"] = {suite: not lo <= row["eval"][suite]["rate"] <= hi
                                         for suite, (lo, hi) in spread.items() if suite in row["eval"]}
    out = ctx.run_dir / "redteam"
    summary = {"method": rt.method, "rounds": rt.rounds, "train_behaviors": rt.train_behaviors,
               "eval_behaviors": rt.eval_behaviors, "attack": rt.attack, "per_round": rounds,
               "retrain_controls": controls, "retrain_spread": spread}
    write_json(out / "summary.json", summary)
    write_text_atomic(out / "summary.md", _markdown(summary))
    print(_markdown(summary))
    return out / "summary.json"


def _paired_with_round_0(eval0: Path, eval_r: Path, heldout0: Path, heldout_r: Path, r: int) -> dict:
    """Round r against round 0 on the prompts both answered: each reported eval suite's headline and the held-out
    attack's per-behavior success, with the exact McNemar p-value (`stats.paired_comparison`)."""
    out = {}
    if eval0.is_file() and eval_r.is_file():
        rows = report.paired_rows([eval0.parent, eval_r.parent], ["round-0", f"round-{r}"], reference=f"round-{r}")
        out.update({row["suite"]: row for row in rows if row["suite"] in REPORTED_SUITES})
    if heldout0.is_file() and heldout_r.is_file():
        def success(summary: Path) -> dict[str, bool]:
            return {row["id"]: bool(row["success"]) for row in read_jsonl(summary.parent / "attacks.jsonl")}

        out["heldout_attack"] = paired_comparison(success(heldout_r), success(heldout0))
    return out


def _fmt(p: dict | None, paired: dict | None = None) -> str:
    if not p or p.get("rate") is None:
        return "-"
    cell = f"{p['rate']:.2f} [{p['lo']:.2f}, {p['hi']:.2f}] ({p['k']}/{p['n']})"
    if not paired or paired.get("p_mcnemar") is None:
        return cell
    return f"{cell}, p {report.format_p(paired['p_mcnemar'])}"


_COLUMNS = {"jailbreak-heldout": "jailbreak-heldout ASR", "jailbreak": "jailbreak ASR",
            "harmful": "harmful compliance", "over-refusal": "over-refusal compliance"}


def _markdown(summary: dict) -> str:
    head = ["round", f"{summary['method']} ASR, held-out behaviors", *[_COLUMNS[s] for s in REPORTED_SUITES],
            f"{summary['method']} ASR, train behaviors", "rationales added", "round seconds"]
    lines = [f"# Red-team loop: {summary['method']}, {summary['rounds']} round(s)", "",
             "Held-out: eval-side behaviors and attack families never used in training or any round. "
             "Rates with 95% Wilson intervals (k/n); p: exact McNemar test against round 0 on the shared prompts "
             "(behaviors).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    controls = [{"round": f"0, seed {c['seed']} (control)", "eval": c["eval"], "control": True}
                for c in summary.get("retrain_controls", [])]  # round 0's retrainings with other seeds
    rows = summary["per_round"][:1] + controls + summary["per_round"][1:]
    for row in rows:
        ev, vs = row.get("eval", {}), row.get("vs_round_0", {})
        cells = [str(row["round"]) + ("" if row["round"] == 0 or row.get("changed") or row.get("control")
                                      else " (unchanged)"),
                 _fmt((row.get("heldout_attack") or {}).get("asr"), vs.get("heldout_attack")),
                 *[_fmt(ev.get(s), vs.get(s)) for s in REPORTED_SUITES],
                 _fmt((row.get("attack_train") or {}).get("asr")), str(row.get("sft_added", "-")),
                 str(row.get("cost_seconds", "-"))]
        lines.append("| " + " | ".join(cells) + " |")
    if summary.get("retrain_spread"):
        lines += ["", "Retraining spread (round 0 and its controls: the same data, other seeds): " + ", ".join(
            f"{_COLUMNS[s]} {lo:.2f}-{hi:.2f}" for s, (lo, hi) in summary["retrain_spread"].items()) + "."]
        for row in summary["per_round"]:
            if row.get("outside_spread") is not None:
                outside = [_COLUMNS[s] for s, o in row["outside_spread"].items() if o]
                lines.append(f"Round {row['round']} outside it: {', '.join(outside) or 'nothing'}.")
    return "\n".join(lines) + "\n"
