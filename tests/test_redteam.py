"""The red-team loop as stages of `rational run --preset smoke` (tiny-random target, scripted attacker)."""

import json

import pytest

from rational import attack
from rational.cli import main
from rational.judges import Verdict
from rational.redteam import RedteamConfig, stage_names


class Complied:
    """Calls every answer a compliance, so the attacks on tiny-random (whose answers are noise) "succeed" and the
    whole round runs: rationales, retraining, held-out eval. Used for the attacks only, never for generate."""

    name, gives_refusal, gives_harm = "always-complied", True, False

    def judge_batch(self, pairs):
        return [Verdict(self.name, "compliance", refused=False) for _ in pairs]


def _run(out, *extra):
    try:
        main(["run", "--preset", "smoke", "--out", str(out), "redteam.rounds=1", "redteam.control_seeds=1", *extra])
    except SystemExit as e:
        assert e.code in (0, None), e.code


def test_smoke_run_with_one_red_team_round(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(attack, "get_judge", lambda spec: Complied())
    out = tmp_path / "smoke"
    _run(out)
    rt = out / "redteam"
    for stage in stage_names(RedteamConfig(rounds=1, train_behaviors=2, eval_behaviors=2, control_seeds=1), seed=0):
        assert (out / stage / ".done.json").is_file(), stage

    # The attacks that worked became adversarial prompts, their rationales were added to the training pool.
    successes = [json.loads(line) for line in (rt / "round-1" / "attack-train" / "successes.jsonl").open()]
    assert len(successes) == 2 and {s["kind"] for s in successes} == {"adversarial"}
    train_ids = {json.loads(line)["id"] for line in (rt / "train_behaviors.jsonl").open()}
    assert {s["base_id"] for s in successes} <= train_ids
    base = (out / "generate" / "sft.jsonl").read_text().splitlines()
    combined = (rt / "round-1" / "sft.jsonl").read_text().splitlines()
    added = json.loads((rt / "round-1" / "generate" / ".done.json").read_text())["sft_added"]
    assert added > 0 and combined[: len(base)] == base and len(combined) == len(base) + added

    # Retrained, evaluated on held-out prompts and attacked on held-out behaviors.
    assert (rt / "round-1" / "train" / "adapter").is_dir()
    assert "jailbreak-heldout" in json.loads((rt / "round-1" / "eval" / "metrics.json").read_text())["suites"]
    heldout = {json.loads(line)["id"] for line in (rt / "heldout_behaviors.jsonl").open()}
    assert not heldout & train_ids
    attacked = {json.loads(line)["id"] for line in (rt / "round-1" / "attack-heldout" / "attacks.jsonl").open()}
    assert attacked <= heldout

    summary = json.loads((rt / "summary.json").read_text())
    r0, r1 = summary["per_round"]
    assert r1["changed"] and r1["sft_added"] == added and r1["attack_train"]["asr"]["k"] == 2
    assert r1["heldout_attack"]["asr"]["n"] == 2 and r1["eval"]["jailbreak-heldout"]["metric"] == "asr"
    assert r1["cost"]["train"]["seconds"] is not None and r1["cost"]["attack-train"]["cpu_seconds"] is not None
    assert r0["adapter"].endswith("train-rational/adapter") and r1["adapter"].endswith("round-1/train/adapter")
    # Paired with round 0 on the same prompts: every reported suite and the held-out attack's behaviors.
    assert {"jailbreak-heldout", "harmful", "heldout_attack"} <= set(r1["vs_round_0"]) and "vs_round_0" not in r0
    assert r1["vs_round_0"]["heldout_attack"]["n_pairs"] == 2 and r1["vs_round_0"]["harmful"]["n_pairs"] > 0
    assert r1["vs_round_0"]["harmful"]["a_rate"] == r1["eval"]["harmful"]["rate"]  # a = round 1's side
    assert "| 1 |" in (rt / "summary.md").read_text() and ", p " in (rt / "summary.md").read_text()

    # Round 0's data retrained with another seed: a different model, evaluated like the rounds, and the spread.
    control = rt / "round-0" / "control-seed-1"
    assert json.loads((control / "train" / "train_metrics.json").read_text())["config"]["seed"] == 1
    assert (control / "train" / "adapter" / "adapter_model.safetensors").read_bytes() != (
        out / "train-rational" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert [c["seed"] for c in summary["retrain_controls"]] == [1]
    lo, hi = summary["retrain_spread"]["harmful"]
    rates = {r0["eval"]["harmful"]["rate"], summary["retrain_controls"][0]["eval"]["harmful"]["rate"]}
    assert (lo, hi) == (min(rates), max(rates))
    assert r1["outside_spread"]["harmful"] == (not lo <= r1["eval"]["harmful"]["rate"] <= hi)
    md = (rt / "summary.md").read_text()
    assert "0, seed 1 (control)" in md and "Retraining spread" in md and "Round 1 outside it:" in md

    # A rerun skips every finished stage.
    stamps = {p: p.stat().st_mtime_ns for p in rt.glob("**/.done.json")}
    _run(out)
    assert stamps == {p: p.stat().st_mtime_ns for p in rt.glob("**/.done.json")}


def test_redteam_settings_are_checked():
    with pytest.raises(Exception, match="set by the loop itself"):
        RedteamConfig(rounds=1, attack={"target": "x"})
    with pytest.raises(Exception, match="unknown method"):
        RedteamConfig(method="beam")
    assert stage_names(RedteamConfig(rounds=0)) == []
    assert stage_names(RedteamConfig(rounds=1, control_seeds=2), seed=5)[1:5] == [
        "redteam/round-0/control-seed-6/train", "redteam/round-0/control-seed-6/eval",
        "redteam/round-0/control-seed-7/train", "redteam/round-0/control-seed-7/eval"]
    assert stage_names(RedteamConfig(rounds=1, eval_behaviors=0)) == [
        "redteam/round-1/attack-train", "redteam/round-1/generate", "redteam/round-1/train", "redteam/round-1/eval",
        "redteam/summary"]
