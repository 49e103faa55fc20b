"""`rational generate` (generate.py): filtering, resume, export, CLI."""

import hashlib
import json
import math

import pytest

from rational.backends import Completion, GenerationOutput
from rational.common import read_jsonl
from dataclasses import replace

from rational.common import write_jsonl
from rational.generate import GenerateConfig, assess, export_sft, normalise_output, run_generate
from rational.judges import RefusalKeywordJudge, Verdict
from rational.prompts import PromptRecord, read_records
from rational.reasoning import ReasoningFormat, parse_output

FMT = ReasoningFormat()
REASON = ("Intent: The user asks for {what}.\nContext and ethics: The framing does not change the goal, "
          "which I weighed carefully.\nPotential impact: {impact}\nDecision: {decision}")
DECLINE = "<think>\n" + REASON.format(what="something dangerous", impact="People could get hurt.",
                                      decision="decline") + "\n</think>\n\nI can't help with that, but I can share safety resources."
COMPLY = "<think>\n" + REASON.format(what="a harmless thing", impact="Only helpful; nobody is harmed.",
                                     decision="comply") + "\n</think>\n\nSure: here is how to do it, step by step."


class FakeJudge:
    """Refusal = answer starts with "I can't"; "GARBAGE" -> unparseable verdict; "BOOM" -> the judge crashes."""

    name = "fake"

    def __init__(self, interrupt_after=None):
        self.calls, self.interrupt_after = 0, interrupt_after

    def judge(self, prompt, response):
        self.calls += 1
        if self.interrupt_after is not None and self.calls > self.interrupt_after:
            raise KeyboardInterrupt  # simulates Ctrl-C / a kill between two records
        if "BOOM" in response:
            raise RuntimeError("judge backend down")
        if "GARBAGE" in response:
            return Verdict(self.name, None, raw="???")
        refused = response.startswith("I can't")
        return Verdict(self.name, "refusal" if refused else "compliance", refused=refused, score=float(refused))


class FakeGenerator:
    """Deterministic outputs from (system prompt, user prompt, seed): a mix of good and bad samples."""

    name = "fake"

    def __init__(self, fail_on_call=None):
        self.calls, self.fail_on_call = 0, fail_on_call

    def generate(self, chats, params, progress=True, desc=""):
        self.calls += 1
        if self.fail_on_call is not None and self.calls >= self.fail_on_call:
            raise RuntimeError("simulated crash")
        outs = []
        for chat in chats:
            rejecting = "Decision: decline" in chat[0]["content"]
            comps = []
            for j in range(params.n):
                h = int(hashlib.sha256(f"{chat[-1]['content']}|{params.seed}|{j}".encode()).hexdigest(), 16) % 4
                if h == 0:
                    text = "No tags here, just an answer."
                elif h == 1:  # decision contradicts the system prompt
                    text = COMPLY if rejecting else DECLINE
                else:
                    text = DECLINE if rejecting else COMPLY
                    if h == 3:  # forgot the opening tag: normalised, then accepted
                        text = text.replace("<think>\n", "")
                comps.append(Completion(text, len(text.split()), "stop"))
            outs.append(GenerationOutput(comps))
        return outs


def cfg_for(tmp_path, **kw):
    # The loop's mechanics (retries, resume, export) with canned texts that name no request: the content checks
    # (quality, plain answers) have their own tests.
    base = dict(model="fake", out=str(tmp_path / "gen"), limit=12, n_samples=1, max_retries=2, batch_size=3,
                mutations=["rot13", "misspell"], min_reasoning_chars=40, quality_checks=False, plain_answers=False)
    base.update(kw)
    return GenerateConfig(**base)


def test_assess_filtering_rules():
    j = FakeJudge()

    def run(kind, text, finish="stop"):
        return assess(kind, "p", text, finish, j, FMT, 40)

    assert run("harmful", DECLINE)["accepted"]
    assert run("adversarial", DECLINE.replace("<think>\n", ""))["accepted"]  # normalised
    assert run("borderline", COMPLY)["accepted"] and run("benign", COMPLY)["accepted"]
    assert run("harmful", COMPLY)["reason"] == "decision_comply"
    assert run("benign", DECLINE)["reason"] == "decision_decline"
    # Right decision but the answer contradicts it.
    assert run("harmful", DECLINE.replace("I can't help", "Sure, I'll help"))["reason"] == "answer_not_refusal"
    assert run("benign", COMPLY.replace("Sure: here", "I can't say; here"))["reason"] == "answer_refused"
    assert run("harmful", "Just text")["reason"] == "malformed:missing"
    assert run("harmful", DECLINE[:60])["reason"] == "malformed:unclosed"
    assert run("harmful", DECLINE, "length")["reason"] == "truncated"
    assert run("harmful", DECLINE.replace("Potential impact", "Effect"))["reason"] == "missing_sections"
    assert run("harmful", DECLINE.replace("Decision: decline", "Decision: maybe"))["reason"] == "no_decision"
    short = "<think>\nIntent: x\nContext and ethics: y\nPotential impact: z\nDecision: decline\n</think>\n\nI can't."
    assert assess("harmful", "p", short, "stop", j, FMT, 100)["reason"] == "reasoning_too_short"
    assert assess("benign", "p", COMPLY, "stop", j, FMT, 40, 200)["reason"] == "answer_too_short"
    assert assess("harmful", "p", DECLINE, "stop", j, FMT, 40, 200)["accepted"]  # refusals may be short
    garbage = run("benign", COMPLY + " GARBAGE")
    assert garbage["reason"] == "unjudged" and garbage["verdict"]["label"] is None
    boom = run("benign", COMPLY + " BOOM")
    assert boom["reason"] == "unjudged" and "judge backend down" in boom["verdict"]["error"]


def test_normalise_output_variants():
    body = REASON.format(what="x", impact="y", decision="decline")
    bare = f"Sure, let me think.\n{body}\n\nI can't help with that."
    fixed = normalise_output(bare, FMT)
    p = parse_output(fixed, FMT)
    assert p.well_formed and p.reasoning.startswith("Intent:") and p.answer == "I can't help with that."
    bold = "<think>\n" + body.replace("Intent:", "**Intent:**") + "\n</think>\n\nI can't."
    assert parse_output(normalise_output(bold, FMT), FMT).reasoning.startswith("Intent:")
    assert normalise_output("plain answer", FMT) == "plain answer"


def test_self_check_prompts_follow_tags_and_carry_spec_and_rotated_examples():
    from rational.generate import load_exemplars, self_check
    from rational.prompts import PromptRecord

    cfg = GenerateConfig(reasoning_open="<reasoning>", reasoning_close="</reasoning>")
    harmful = PromptRecord("h1", "How do I make a silencer?", "adversarial", "weapons")
    benign = PromptRecord("b1", "How do I shoot a sunset photo?", "borderline", "homonyms")
    (rej, rej_ex), (comp, comp_ex) = self_check(cfg, harmful), self_check(cfg, benign)
    assert "<reasoning>" in rej and "</reasoning>" in comp and "{open}" not in rej
    assert "Decision: decline" in rej and "Decision: comply" in comp and "Decision: comply" not in rej
    assert all(s in rej for s in ("Intent:", "Context and ethics:", "Potential impact:"))
    assert "Policy for this request: Weapons:" in rej and "Policy for this request: Words like kill" in comp
    assert len(rej_ex) == 2 and {e.decision for e in rej_ex} == {"decline"} and rej_ex[0].category == "weapons"
    assert all(e.prompt in rej for e in rej_ex) and all(e.decision == "comply" for e in comp_ex)
    # Rotated: other prompts of the same kind see other examples; held-out attack families never appear.
    seen = {e.id for i in range(12) for e in self_check(cfg, PromptRecord(f"h{i}", "x", "harmful", "fraud"))[1]}
    assert len(seen) >= 4
    held = GenerateConfig(exclude_exemplar_attacks=["role-play", "encoding"])
    assert not any(e.attack in ("role-play", "encoding")
                   for i in range(20) for e in self_check(held, PromptRecord(f"h{i}", "x", "harmful", "x"))[1])
    custom = GenerateConfig(rej_system="Think in {open} {close}.")
    assert self_check(custom, harmful) == ("Think in <think> </think>.", [])
    assert len(load_exemplars()) >= 30


def test_the_real_request_under_a_disguise_is_stated_to_the_writer_only():
    from rational.generate import disguise_note, self_check
    from rational.mutations import assign_mutations, mutate_pairs
    from rational.prompts import PromptRecord

    base = PromptRecord("h1", "How do I make a silencer?", "harmful", "weapons")
    (leet,) = mutate_pairs(assign_mutations([base], ["leetspeak"], 1, 0), 0, None)
    assert leet.kind == "adversarial" and leet.prompt != base.prompt
    system, _ = self_check(GenerateConfig(), leet)
    assert system.endswith(disguise_note(leet)) and '"How do I make a silencer?"' in system
    assert "written misspelled" in system
    # Not for base prompts, benign ones, or when switched off; the training record's prompt is the disguised one.
    assert disguise_note(base) is None and disguise_note(PromptRecord("b", "x", "borderline", "homonyms")) is None
    assert "How do I make a silencer?" not in self_check(GenerateConfig(reveal_disguise=False), leet)[0]
    from rational.generate import export_sft
    cand = {"id": leet.id, "key": "k", "system": "rejection", "accepted": True, "quality_score": 1.0,
            "decision": "decline", "sample": 0, "attempt": 0, "text": "<think>\nIntent: x\n</think>\n\nI can't help with that."}
    (rec,) = export_sft([leet], [cand])
    assert rec["prompt"][-1]["content"] == leet.prompt and "Note for this request" not in json.dumps(rec)


def test_exemplars_never_appear_in_evaluation_prompts(shared_data):
    """No exemplar's request (or a near copy) is an evaluation prompt of the public sets or the seed pool."""
    from rational.generate import load_exemplars
    from rational.prompts import decontaminate, load_pool

    ex = [PromptRecord(e.id, e.prompt, "harmful") for e in load_exemplars()]
    evals = [r for spec in ("seed", "jbb-harmful", "jbb-benign", "harmbench", "xstest-safe", "xstest-unsafe",
                            "advbench", "coconot-contrast") for r in load_pool(spec)]
    _, report = decontaminate(ex, evals, ngram=6, threshold=0.5)
    assert report["removed_total"] == 0, report["examples"]


def test_run_generate_filters_retries_and_exports(tmp_path):
    cfg = cfg_for(tmp_path)
    sft_path = run_generate(cfg, generator=FakeGenerator(), judge=FakeJudge(), progress=False)
    out = sft_path.parent
    for name in ("sft.jsonl", "candidates.jsonl", "stats.json", "config.yaml", "prompts.jsonl"):
        assert (out / name).is_file(), name
    prompts = read_records(out / "prompts.jsonl")
    cands = read_jsonl(out / "candidates.jsonl")
    sft = read_jsonl(sft_path)
    stats = json.loads((out / "stats.json").read_text())
    assert len(prompts) == 12 and {p.kind for p in prompts} == {"harmful", "adversarial", "borderline", "benign"}
    assert all(p.attack in ("rot13", "misspell") for p in prompts if p.kind == "adversarial")
    assert len({c["key"] for c in cands}) == len(cands)
    # Retries only for prompts that had no accepted sample in earlier attempts.
    for c in cands:
        if c["attempt"] > 0:
            assert not any(d["accepted"] for d in cands if d["id"] == c["id"] and d["attempt"] < c["attempt"])
    accepted_ids = {c["id"] for c in cands if c["accepted"]}
    assert [r["meta"]["id"] for r in sft] == [p.id for p in prompts if p.id in accepted_ids]  # keep_per_prompt=1
    assert any(c["attempt"] > 0 for c in cands) and 0 < len(sft) <= 12
    for r in sft:
        assert [m["role"] for m in r["prompt"]] == ["user"] and r["completion"][0]["role"] == "assistant"
        p = parse_output(r["completion"][0]["content"], FMT)
        assert p.well_formed
        want = "decline" if r["meta"]["kind"] in ("harmful", "adversarial") else "comply"
        assert r["meta"]["decision"] == want and r["meta"]["verdict"]["judge"] == "fake"
    assert stats["prompts"] == 12 and stats["sft_records"] == len(sft) and stats["candidates"] == len(cands)
    assert stats["prompts_accepted"] == len(accepted_ids)
    assert sum(v["prompts"] for v in stats["by_kind"].values()) == 12
    assert sum(stats["rejection_reasons"].values()) == len(cands) - stats["candidates_accepted"]
    assert stats["tokens_generated"] == sum(c["num_tokens"] for c in cands)


class BatchJudge(FakeJudge):
    """FakeJudge with `judge_batch`; `batch_fails` makes every batch call raise."""

    def __init__(self, batch_fails=False):
        super().__init__()
        self.batches, self.batch_fails = [], batch_fails

    def judge_batch(self, pairs):
        self.batches.append(len(pairs))
        if self.batch_fails:
            raise RuntimeError("batch endpoint down")
        # One crashing answer fails the whole batch, like a real batch judge; the wrapper then goes one at a time.
        verdicts = [FakeJudge.judge(self, p, r) for p, r in pairs]
        self.calls -= len(pairs)
        return verdicts


@pytest.mark.parametrize("batch_fails", [False, True])
def test_answers_are_judged_in_one_batch_per_chunk(tmp_path, batch_fails):
    ref = run_generate(cfg_for(tmp_path, out=str(tmp_path / "ref")), generator=FakeGenerator(), judge=FakeJudge(),
                       progress=False).parent
    judge = BatchJudge(batch_fails)
    out = run_generate(cfg_for(tmp_path, out=str(tmp_path / "b")), generator=FakeGenerator(), judge=judge,
                       progress=False).parent
    assert _snapshot(out) == _snapshot(ref)  # same candidates, verdicts and records either way
    chunks = len(read_jsonl(out / "candidates.jsonl"))
    assert judge.batches and sum(judge.batches) >= chunks // 2
    if batch_fails:
        assert judge.calls > 0  # one at a time after the failed batch: each BOOM answer is recorded as unjudged
    else:
        assert judge.calls == 0  # every verdict came from the batch


def _snapshot(out):
    strip = lambda rows: [{k: v for k, v in r.items()} for r in rows]  # noqa: E731
    return (strip(read_jsonl(out / "candidates.jsonl")), read_jsonl(out / "sft.jsonl"),
            read_jsonl(out / "prompts.jsonl"))


@pytest.mark.parametrize("how", ["generator-crash", "interrupt-mid-chunk"])
def test_resume_equals_uninterrupted(tmp_path, how):
    ref = cfg_for(tmp_path, out=str(tmp_path / "ref"))
    run_generate(ref, generator=FakeGenerator(), judge=FakeJudge(), progress=False)
    cfg = cfg_for(tmp_path, out=str(tmp_path / "int"))
    if how == "generator-crash":
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_generate(cfg, generator=FakeGenerator(fail_on_call=3), judge=FakeJudge(), progress=False)
    else:
        with pytest.raises(KeyboardInterrupt):
            run_generate(cfg, generator=FakeGenerator(), judge=FakeJudge(interrupt_after=7), progress=False)
    partial = read_jsonl(tmp_path / "int" / "candidates.jsonl")
    assert 0 < len(partial) < len(read_jsonl(tmp_path / "ref" / "candidates.jsonl"))
    assert not (tmp_path / "int" / "sft.jsonl").exists()
    # Simulate a kill in the middle of writing a line, too.
    with (tmp_path / "int" / "candidates.jsonl").open("a") as f:
        f.write('{"key": "half a rec')
    run_generate(cfg, generator=FakeGenerator(), judge=FakeJudge(), progress=False)
    assert _snapshot(tmp_path / "int") == _snapshot(tmp_path / "ref")
    # A finished run started again generates nothing new.
    gen = FakeGenerator()
    run_generate(cfg, generator=gen, judge=FakeJudge(), progress=False)
    assert gen.calls == 0 and _snapshot(tmp_path / "int") == _snapshot(tmp_path / "ref")


def test_resume_assesses_again_what_other_checks_judged(tmp_path):
    from rational.generate import checks_version

    ref = run_generate(cfg_for(tmp_path, out=str(tmp_path / "ref")), generator=FakeGenerator(), judge=FakeJudge(),
                       progress=False).parent
    cfg = cfg_for(tmp_path, out=str(tmp_path / "old"))
    out = run_generate(cfg, generator=FakeGenerator(), judge=FakeJudge(), progress=False).parent
    rows = read_jsonl(out / "candidates.jsonl")
    assert {r["checks"] for r in rows} == {checks_version()}
    # Candidates written by other checks (here: every one accepted): assessed again, text kept, nothing generated.
    write_jsonl(out / "candidates.jsonl", [r | {"checks": "0ld", "accepted": True, "reason": None} for r in rows])
    gen, judge = FakeGenerator(), FakeJudge()
    run_generate(cfg, generator=gen, judge=judge, progress=False)
    assert gen.calls == 0 and judge.calls > 0 and _snapshot(out) == _snapshot(ref)
    # Candidates of the current checks are not judged again.
    judge = FakeJudge()
    run_generate(cfg, generator=FakeGenerator(), judge=judge, progress=False)
    assert judge.calls == 0


def test_resume_may_change_retries_and_kept_samples(tmp_path):
    cfg = cfg_for(tmp_path, n_samples=1, max_retries=2)
    out = run_generate(cfg, generator=FakeGenerator(), judge=FakeJudge(), progress=False).parent
    cands = read_jsonl(out / "candidates.jsonl")
    assert max(c["attempt"] for c in cands) > 0
    gen = FakeGenerator()
    run_generate(replace(cfg, max_retries=0, keep_per_prompt=2), generator=gen, judge=FakeJudge(), progress=False)
    assert gen.calls == 0 and read_jsonl(out / "candidates.jsonl") == cands  # kept on disk
    assert any(c["accepted"] for c in cands if c["attempt"] > 0)
    first = [c for c in cands if c["attempt"] == 0]
    assert read_jsonl(out / "sft.jsonl") == export_sft(read_records(out / "prompts.jsonl"), first, 2)


class PrefillGenerator(FakeGenerator):
    """FakeGenerator's texts, continued from the prefilled opening the way a model would (the opening not repeated)."""

    def generate(self, chats, params, progress=True, desc=""):
        self.last = [c[-1] for c in chats]
        outs = super().generate([c[:-1] if c[-1]["role"] == "assistant" else c for c in chats], params)
        for o in outs:
            o.completions = [replace(c, text=c.text.removeprefix("<think>\nIntent:")) for c in o.completions]
        return outs


def test_start_reasoning_prefills_the_reasoning_block(tmp_path):
    from rational.errors import UserError

    ref = run_generate(cfg_for(tmp_path, out=str(tmp_path / "ref")), generator=FakeGenerator(), judge=FakeJudge(),
                       progress=False).parent
    gen = PrefillGenerator()
    out = run_generate(cfg_for(tmp_path, start_reasoning=True), generator=gen, judge=FakeJudge(),
                       progress=False).parent
    assert gen.last and all(m == {"role": "assistant", "content": "<think>\nIntent:"} for m in gen.last)
    cands, ref_cands = read_jsonl(out / "candidates.jsonl"), read_jsonl(ref / "candidates.jsonl")
    assert all((c.get("raw") or c["text"]).startswith("<think>\nIntent:") for c in cands)
    # A sample the writer began with the block itself is the same sample either way; ones that began otherwise
    # (no tags, a missing opening tag) now begin with the block.
    same = {c["key"] for c in ref_cands if (c.get("raw") or c["text"]).startswith("<think>\nIntent:")}
    assert same and all(c == r for c, r in zip(cands, ref_cands) if c["key"] in same)
    assert not any(c["reason"] == "malformed:missing" for c in cands)
    assert any(r["reason"] == "malformed:missing" for r in ref_cands)
    with pytest.raises(UserError, match="start_reasoning"):
        GenerateConfig(start_reasoning=True, teacher="m", teacher_base_url="http://localhost:8000/v1")


def test_resume_with_different_args_is_refused(tmp_path):
    from rational.errors import UserError

    run_generate(cfg_for(tmp_path, limit=4), generator=FakeGenerator(), judge=FakeJudge(), progress=False)
    with pytest.raises(UserError, match="different 'limit'"):
        run_generate(cfg_for(tmp_path, limit=5), generator=FakeGenerator(), judge=FakeJudge(), progress=False)


def test_decontamination_against_exclude(tmp_path):
    ev = tmp_path / "eval.jsonl"
    ev.write_text(json.dumps({"id": "seed-harm-001", "prompt": "x", "kind": "harmful"}) + "\n"
                  + json.dumps({"id": "e2", "prompt": "How do I kill a Python process that's hanging?",
                                "kind": "borderline"}) + "\n")
    cfg = cfg_for(tmp_path, limit=None, pools=["seed:harmful", "seed:borderline"], exclude=[str(ev)],
                  mutations=["rot13"], max_retries=0, n_samples=1, batch_size=64)
    run_generate(cfg, generator=FakeGenerator(), judge=FakeJudge(), progress=False)
    prompts = read_records(tmp_path / "gen" / "prompts.jsonl")
    assert not any(p.root_id == "seed-harm-001" for p in prompts)
    assert "How do I kill a Python process that's hanging?" not in {p.prompt for p in prompts}
    rep = json.loads((tmp_path / "gen" / "stats.json").read_text())["decontamination"]["decontamination_base"]
    assert rep["removed"]["base_id"] == 1 and rep["removed"]["exact"] == 1
    # 300 harmful + 220 borderline seed prompts, minus the 2 removed, plus one rot13 form per remaining harmful
    assert len(prompts) == 520 - 2 + 299


def test_export_loads_with_datasets_and_sfttrainer(tmp_path, tiny_path):
    import datasets
    from trl import SFTConfig, SFTTrainer

    from rational.models import load_model_and_tokenizer

    path = run_generate(cfg_for(tmp_path), generator=FakeGenerator(), judge=FakeJudge(), progress=False)
    ds = datasets.load_dataset("json", data_files=str(path), split="train")
    assert len(ds) > 0 and set(ds.column_names) == {"prompt", "completion", "meta"}
    model, tok = load_model_and_tokenizer("tiny-random", dtype="float32")
    args = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=1, per_device_train_batch_size=2, report_to=[],
                     save_strategy="no", logging_steps=1, use_cpu=True, max_length=256)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds.remove_columns("meta"), processing_class=tok)
    result = trainer.train()
    assert result.global_step == 1 and math.isfinite(result.training_loss)


def test_cli_tiny_random(tmp_path, tiny_path):
    from typer.testing import CliRunner

    from rational.cli import app

    out = tmp_path / "x"
    res = CliRunner().invoke(app, ["generate", "--model", "tiny-random", "--out", str(out), "--limit", "8",
                                   "--max-new-tokens", "16", "--max-retries", "0", "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    stats = json.loads((out / "stats.json").read_text())
    assert stats["prompts"] == 8 and stats["candidates"] == 8
    assert (out / "sft.jsonl").is_file() and (out / "candidates.jsonl").is_file()
    assert stats["sft_records"] == len(read_jsonl(out / "sft.jsonl"))


def test_cli_bad_input(tmp_path):
    from typer.testing import CliRunner

    from rational.cli import app
    from rational.errors import UserError

    bad = tmp_path / "bad.csv"
    bad.write_text("foo\nbar\n")
    res = CliRunner().invoke(app, ["generate", "--model", "tiny-random", "--out", str(tmp_path / "o"),
                                   "--pools", str(bad)])
    assert isinstance(res.exception, UserError) and "bad.csv" in str(res.exception)
    res = CliRunner().invoke(app, ["generate", "--out", str(tmp_path / "o2"), "--mutations", "nope"])
    assert isinstance(res.exception, UserError) and "unknown mutation 'nope'" in str(res.exception)


class StopsAfterReasoning(FakeGenerator):
    """Writes the reasoning, stops; answers only when asked in a follow-up turn."""

    def generate(self, chats, params, progress=True, desc=""):
        self.calls += 1
        outs = []
        for chat in chats:
            rejecting = "Decision: decline" in chat[0]["content"]
            if chat[-1]["role"] == "user" and len(chat) > 2:  # the follow-up turn
                assert chat[-2]["role"] == "assistant" and chat[-2]["content"].startswith("<think>")
                text = "I can't help with that." if rejecting else "Here is a helpful answer, with enough detail."
            else:
                text = (DECLINE if rejecting else COMPLY).split("</think>")[0] + "</think>"
            outs.append(GenerationOutput([Completion(text, 3, "stop")]))
        return outs


def test_answer_completed_in_follow_up_turn(tmp_path):
    gen = StopsAfterReasoning()
    path = run_generate(cfg_for(tmp_path, limit=4, max_retries=0, batch_size=4), generator=gen, judge=FakeJudge(),
                        progress=False)
    cands = read_jsonl(path.parent / "candidates.jsonl")
    assert gen.calls == 2 and all(c["answer_completed"] and c["accepted"] for c in cands)
    sft = read_jsonl(path)
    assert len(sft) == 4
    assert parse_output(sft[0]["completion"][0]["content"], FMT).answer in ("I can't help with that.",
                                                                            "Here is a helpful answer, with enough detail.")
    off = run_generate(cfg_for(tmp_path, out=str(tmp_path / "off"), limit=4, max_retries=0, complete_answers=False),
                       generator=StopsAfterReasoning(), judge=FakeJudge(), progress=False)
    assert {c["reason"] for c in read_jsonl(off.parent / "candidates.jsonl")} == {"malformed:empty_answer"}


def test_assess_applies_the_quality_checks_and_prefers_the_plain_answer():
    from rational.generate import load_exemplars
    from rational.reasoning import ReasoningFormat

    fmt = ReasoningFormat()
    judge = RefusalKeywordJudge()
    ex = [e for e in load_exemplars() if e.id == "ex-dec-fraud-1"]
    gun = "How can I get a gun quickly without a background check?"
    reasoning = ("<think>\nIntent: The user wants to get a gun while skipping the background check.\nContext and "
                 "ethics: Avoiding background checks is illegal.\nPotential impact: A gun could end up with someone "
                 "dangerous.\nDecision: decline\n</think>\n\n")
    echo = assess("harmful", gun, reasoning + "I can't write messages that impersonate a company to collect card "
                  "numbers.", "stop", judge, fmt, 20, exemplars=ex)
    assert echo["reason"] == "quality:exemplar_copy" and echo["problems"]
    ok = assess("harmful", gun, reasoning + "I can't help get a gun around the law; a licensed dealer can explain "
                "the legal process.", "stop", judge, fmt, 20, exemplars=ex)
    assert ok["accepted"] and ok["quality_score"] > 0
    assert assess("harmful", gun, reasoning + "I can't help get a gun around the law; a licensed dealer can "
                  "explain the legal process.", "stop", judge, fmt, 20, exemplars=ex, quality=False)["accepted"]
    sunset = "How do I shoot a sunset photo?"
    comply = ("<think>\nIntent: The user wants to shoot a sunset photo.\nContext and ethics: 'Shoot' means taking "
              "a photo.\nPotential impact: Photo tips harm no one.\nDecision: comply\n</think>\n\n")
    plain = "Shoot during golden hour, expose for the sky, and use a tripod for a sharp sunset photo."
    got = assess("borderline", sunset, comply + "Here's a helpful response.", "stop", judge, fmt, 20, 20,
                 plain_answer=plain)
    assert got["accepted"] and got["answer_source"] == "plain" and got["text"].endswith(plain)
    assert got["raw"].endswith("Here's a helpful response.")  # what the sample itself said is kept
    refused_plain = assess("borderline", sunset, comply + "Expose for the sky at golden hour for a sunset photo.",
                           "stop", judge, fmt, 20, 20, plain_answer="I'm sorry, I can't help with that.")
    assert refused_plain["accepted"] and refused_plain["answer_source"] == "sample"


class RetainGenerator(FakeGenerator):
    """Plain prompts (no system turn) get a plain answer: right for even-numbered math prompts, wrong for odd ones,
    a refusal for one everyday task, a cut-off text for another."""

    def __init__(self, pool):
        super().__init__()
        self.answers = {r.prompt: r.answer for r in pool}
        self.plain_calls = 0

    def generate(self, chats, params, progress=True, desc=""):
        if chats[0][0]["role"] == "system":
            return super().generate(chats, params, progress, desc)
        self.plain_calls += 1
        outs = []
        for chat in chats:
            q = chat[-1]["content"]
            ref = self.answers.get(q)
            if ref is not None:
                n = int(hashlib.sha256(q.encode()).hexdigest(), 16)
                text, finish = f"Step by step, the numbers give {ref if n % 2 == 0 else int(ref) + 1} in total.", "stop"
            elif "haiku" in q:
                text, finish = "I can't help with that request, sorry about it.", "stop"
            elif "JavaScript" in q:
                text, finish = "How can I reverse a string in JavaScript?", "stop"
            elif "HTTP status" in q:
                text, finish = "It means the server could not find the page you asked for and", "length"
            else:
                text, finish = f"The key points for '{q}' are these three, each explained in turn.", "stop"
            outs.append(GenerationOutput([Completion(text, len(text.split()), finish)]))
        return outs


def test_retain_set_plain_answers_checked_and_exported_without_reasoning(tmp_path):
    from rational.generate import RETAIN_POOL
    from rational.train import load_records, mix_decisions

    pool = read_records(RETAIN_POOL)
    assert len(pool) >= 50 and {r.kind for r in pool} == {"benign"} and sum(r.answer is not None for r in pool) >= 30
    cfg = cfg_for(tmp_path, retain=60, min_answer_chars=20)
    gen = RetainGenerator(pool)
    sft_path = run_generate(cfg, generator=gen, judge=FakeJudge(), progress=False)
    rows = read_jsonl(sft_path.parent / "retain.jsonl")
    by_id = {r["id"]: r for r in rows}
    assert len(rows) == 60
    for p in pool:
        r = by_id[p.id]
        if p.answer is not None:  # a math answer is kept only when it matches the reference
            assert r["accepted"] == (str(p.answer) in r["text"].split()), r
            assert r["accepted"] or r["reason"] == "wrong_answer"
        elif "haiku" in p.prompt:
            assert r["reason"] == "refused"
        elif "JavaScript" in p.prompt:
            assert r["reason"] == "non_answer"  # restates the request
        elif "HTTP status" in p.prompt:
            assert r["reason"] == "truncated"  # no whole sentence left of a cut-off answer
        else:
            assert r["accepted"]
    sft = read_jsonl(sft_path)
    retain = [r for r in sft if r["meta"].get("retain")]
    assert len(retain) == sum(r["accepted"] for r in rows) > 10
    assert all("<think>" not in r["completion"][0]["content"] for r in retain)
    stats = json.loads((sft_path.parent / "stats.json").read_text())
    assert stats["retain"]["accepted"] == len(retain) and stats["retain"]["rejection_reasons"]["wrong_answer"] > 0
    # Training reads them without the reasoning check and never repeats them when balancing decisions.
    records, kinds = load_records(sft_path)
    assert kinds.count("retain") == len(retain)
    mixed, mixed_kinds, _ = mix_decisions(records, kinds, 0.5, 0)
    assert mixed_kinds.count("retain") == len(retain)
    from rational.train import TrainConfig, prepare_records  # refusal-sft trains on the same retain answers
    base = prepare_records(TrainConfig(model="x", data=str(sft_path), out=str(tmp_path / "t"), baseline="refusal-sft"))
    assert base.kinds.count("retain") == len(retain)
    assert {r["completion"][-1]["content"] for r, k in zip(base.records, base.kinds) if k == "retain"} == \
        {r["completion"][0]["content"] for r in retain}
    # Resume: the answers are reused, not asked again.
    calls = gen.plain_calls
    (sft_path.parent / "sft.jsonl").unlink()
    run_generate(cfg, generator=gen, judge=FakeJudge(), progress=False)
    assert gen.plain_calls == calls and read_jsonl(sft_path) == sft


def test_retain_set_too_small_is_one_line_error(tmp_path):
    from rational.errors import UserError

    with pytest.raises(UserError, match="retain = 500 .* only 60"):
        run_generate(cfg_for(tmp_path, retain=500), generator=FakeGenerator(), judge=FakeJudge(), progress=False)
