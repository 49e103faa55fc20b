"""`rational run --preset smoke` end to end on tiny-random, and resume after a failed stage."""

import json

import pytest

from rational.cli import main


def _run(out):
    try:
        main(["run", "--preset", "smoke", "--out", str(out)])
    except SystemExit as e:
        assert e.code in (0, None), e.code


def test_smoke_preset_end_to_end_and_skip_on_rerun(tmp_path, capsys, monkeypatch):
    from rational import eval as evaluation

    loads = []
    real_load = evaluation.load_generator

    def spy(*args, **kwargs):
        loads.append((kwargs.get("adapter"), kwargs.get("batch_size")))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(evaluation, "load_generator", spy)
    out = tmp_path / "smoke"
    _run(out)
    # Every evaluation, the base model's too, generates with the eval section's batch size (16 in smoke.yaml).
    assert len(loads) == 6 and {b for _, b in loads} == {16} and (None, 16) in loads
    for stage in ("data", "generate", "train-rational", "train-refusal-sft", "eval-base", "eval-refusal-sft",
                  "eval-rational", "report"):
        assert (out / stage / ".done.json").is_file(), stage
    # The smoke preset also runs DPO after SFT and the circuit-breaker baseline (plumbing only).
    for stage in ("pairs", "train-circuit-breakers", "train-rational+dpo", "train-refusal-sft+dpo",
                  "eval-circuit-breakers", "eval-rational+dpo", "eval-refusal-sft+dpo"):
        assert (out / stage / ".done.json").is_file(), stage
    dpo_config = json.loads((out / "train-refusal-sft+dpo" / "train_metrics.json").read_text())["config"]
    assert dpo_config["init_adapter"] == str(out / "train-refusal-sft" / "adapter")
    assert dpo_config["baseline"] == "refusal-sft" and dpo_config["data"] == str(out / "pairs" / "pairs.jsonl")
    train = [json.loads(l) for l in (out / "data" / "train_prompts.jsonl").read_text().splitlines()]
    evals = [json.loads(l) for l in (out / "data" / "eval_prompts.jsonl").read_text().splitlines()]
    # Disjoint by base prompt and by template; held-out attacks never appear in training.
    assert not {r["base_id"] or r["id"] for r in train} & {r["base_id"] or r["id"] for r in evals}
    assert not {r["template"] for r in train if r["template"]} & {r["template"] for r in evals if r["template"]}
    split = json.loads((out / "data" / "split.json").read_text())
    assert not set(split["heldout_attacks"]) & {r["attack"] for r in train}
    assert {r["meta"]["suite"] for r in evals} >= {"harmful", "jailbreak", "jailbreak-heldout", "over-refusal",
                                                    "capability"}
    html = (out / "report" / "report.html").read_text()
    assert "rational" in html and "refusal-sft" in html and "base" in html
    assert "circuit-breakers" in html and "rational+dpo" in html and "refusal-sft+dpo" in html
    metrics = json.loads((out / "eval-rational" / "metrics.json").read_text())
    assert {"harmful", "jailbreak", "jailbreak-heldout", "over-refusal", "capability"} <= set(metrics["suites"])
    run_meta = json.loads((out / "run.json").read_text())
    assert run_meta["versions"]["torch"] and run_meta["seed"] == 0
    # Every stage records its own peak resident memory (a process-wide peak would only ever grow).
    peaks = run_meta["stage_peak_rss_gb"]
    assert set(peaks) >= {"data", "generate", "train-rational", "eval-base", "report"}
    assert all(isinstance(v, float) and 0 < v < 64 for v in peaks.values()), peaks
    printed = capsys.readouterr().out
    assert "Rational vs baselines" in printed and "refusal-sft" in printed
    assert "jailbreak-heldout" in (out / "report" / "report.md").read_text()
    # Rational against each other model on the same prompts: exact McNemar p-values, in the report and the table.
    assert "Paired comparisons on shared prompts" in (out / "report" / "report.md").read_text()
    assert "p: exact McNemar test" in printed and "p vs" in printed
    assert "stage peak RSS (GB): data" in printed

    # A second run skips every finished stage: nothing is redone.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/.done.json")}
    _run(out)
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("*/.done.json")}


def test_failed_stage_is_one_line_and_resume_redoes_nothing(tmp_path, monkeypatch, capsys):
    from rational import run as training

    out = tmp_path / "smoke"
    real = training.run_train

    def boom(cfg):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(training, "run_train", boom)
    with pytest.raises(SystemExit) as e:
        main(["run", "--preset", "smoke", "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # progress goes to stderr above it; the error is one line
    assert last.startswith("error: stage train-rational failed") and "error.log" in last
    assert "Traceback" not in err
    done_before = {p: p.stat().st_mtime_ns for p in out.glob("*/.done.json")}
    assert {p.parent.name for p in done_before} == {"data", "generate", "pairs"}

    monkeypatch.setattr(training, "run_train", real)
    _run(out)
    for p, stamp in done_before.items():  # data and generate were not redone
        assert p.stat().st_mtime_ns == stamp
    assert (out / "report" / ".done.json").is_file()


def test_unknown_preset_and_bad_recipe(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--preset", "nope"])
    assert e.value.code == 2 and "unknown preset 'nope'" in capsys.readouterr().err
    bad = tmp_path / "r.yaml"
    bad.write_text("run:\n  train_harmfull: 3\n")
    with pytest.raises(SystemExit):
        main(["run", "--config", str(bad), "--out", str(tmp_path / "o")])
    assert "unknown key 'train_harmfull'" in capsys.readouterr().err


def test_stages_of_each_configuration():
    from rational.run import RunConfig, pipeline_stages

    assert pipeline_stages(RunConfig()) == ["data", "generate", "train-rational", "train-refusal-sft", "eval-base",
                                            "eval-rational", "eval-refusal-sft", "report"]
    dpo = pipeline_stages(RunConfig(dpo=True, baselines=["refusal-sft", "circuit-breakers"]))
    assert dpo[:3] == ["data", "generate", "pairs"] and "train-rational+dpo" in dpo and "eval-circuit-breakers" in dpo


def test_peak_memory_sees_a_short_allocation_and_its_release():
    from rational.common import PeakMemory

    with PeakMemory(interval=0.01) as quiet:
        pass
    with PeakMemory(interval=0.01) as busy:
        block = bytearray(400_000_000)  # 0.4 GB, touched so it is resident
        for i in range(0, len(block), 4096):
            block[i] = 1
        import time

        time.sleep(0.1)
        del block
    assert busy.peak_gb - quiet.peak_gb > 0.3
    assert PeakMemory.current_gb() < busy.peak_gb - 0.3  # released: the next stage's peak starts lower
