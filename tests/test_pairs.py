"""`rational pairs`: sides and provenance of preference pairs and circuit-breaker data, from a fake generate run.

Everything here is placeholder text: "harmful" prompts are meaningless stand-ins, and the fake model's
"compliance" is filler. No model is loaded: a fake generator answers the plain and prefilled chats.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rational import pairs as pairs_mod
from rational.backends import Completion, GenerationOutput
from rational.errors import UserError
from rational.judges import RefusalKeywordJudge
from rational.pairs import PairsConfig, build_pairs, rejection_reasons, run_pairs

REFUSAL = "I'm sorry, but I can't help with that."
COMPLY = "Here is a placeholder answer with the steps one, two and three."


def _reasoned(decision: str, answer: str) -> str:
    return (f"<think>\nIntent: a placeholder intent.\nContext and ethics: placeholder context.\n"
            f"Potential impact: placeholder impact.\nDecision: {decision}\n</think>\n\n{answer}")


def _cand(pid, kind, attempt, decision, answer, accepted, refused=None):
    refused = REFUSAL == answer if refused is None else refused
    return {"key": f"{pid}#{attempt}#0", "id": pid, "attempt": attempt, "sample": 0, "kind": kind,
            "text": _reasoned(decision, answer), "decision": decision, "accepted": accepted,
            "verdict": {"judge": "refusal-keywords", "label": "refusal" if refused else "compliance", "refused": refused},
            "reason": None if accepted else "whatever"}


# prompt id -> (kind, prompt text). The fake model refuses plain prompts that contain "[refuses]" and
# complies otherwise; a prefilled reply is always continued with filler.
PROMPTS = {
    "h-cand": ("harmful", "Placeholder request A."),            # a candidate already complied -> rejected from it
    "h-plain": ("harmful", "Placeholder request B."),           # no bad candidate; plain answer complies
    "h-prefill": ("adversarial", "Placeholder request C [refuses]."),  # plain refuses; prefill complies
    "h-nochosen": ("harmful", "Placeholder request D."),        # no accepted rationale -> no pair
    "b-cand": ("benign", "Placeholder question E."),            # a candidate over-refused -> rejected from it
    "b-plain": ("borderline", "Placeholder question F [refuses]."),  # plain answer over-refuses
    "b-fine": ("benign", "Placeholder question G."),            # the model answers: no rejected side, no pair
}

CANDIDATES = [
    _cand("h-cand", "harmful", 0, "decline", COMPLY, accepted=False),  # leaked: decision decline, answer complies
    _cand("h-cand", "harmful", 1, "decline", REFUSAL, accepted=True),
    _cand("h-plain", "harmful", 0, "decline", REFUSAL, accepted=True),
    _cand("h-prefill", "adversarial", 0, "decline", REFUSAL, accepted=True),
    _cand("h-nochosen", "harmful", 0, "comply", COMPLY, accepted=False),
    _cand("b-cand", "benign", 0, "decline", REFUSAL, accepted=False),
    _cand("b-cand", "benign", 0, "comply", COMPLY, accepted=True) | {"key": "b-cand#0#1", "sample": 1},
    _cand("b-plain", "borderline", 0, "comply", COMPLY, accepted=True),
    _cand("b-fine", "benign", 0, "comply", COMPLY, accepted=True),
]


class FakeModel:
    """Answers plain chats by the rule above and continues prefills with filler; counts its calls."""

    def __init__(self):
        self.calls = 0

    def generate(self, chats, params, progress=True, desc=""):
        self.calls += 1
        outs = []
        for chat in chats:
            if chat[-1]["role"] == "assistant":
                text = " placeholder filler one, two, three."
            else:
                text = REFUSAL if "[refuses]" in chat[-1]["content"] else COMPLY
            outs.append(GenerationOutput([Completion(text, 8, "stop")] * params.n))
        return outs


@pytest.fixture
def gen_dir(tmp_path) -> Path:
    d = tmp_path / "generate"
    d.mkdir()
    rows = [{"id": pid, "prompt": text, "kind": kind, "category": "placeholder", "source": "test"}
            for pid, (kind, text) in PROMPTS.items()]
    (d / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "candidates.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CANDIDATES))
    return d


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pairs_have_the_right_sides_and_meta(gen_dir, tmp_path):
    model = FakeModel()
    cfg = PairsConfig(model="fake", generate=str(gen_dir), out=str(tmp_path / "p"), batch_size=3)
    out = run_pairs(cfg, generator=model, judge=RefusalKeywordJudge())
    pairs = {r["meta"]["id"]: r for r in _read(out / "pairs.jsonl")}
    assert set(pairs) == {"h-cand", "h-plain", "h-prefill", "b-cand", "b-plain"}

    def side(pid, name):
        return pairs[pid][name][0]["content"]

    for pid, r in pairs.items():
        assert r["prompt"] == [{"role": "user", "content": PROMPTS[pid][1]}]  # no system prompt
        assert r["meta"]["kind"] == PROMPTS[pid][0] and r["meta"]["chosen_from"] == "candidate"
        assert side(pid, "chosen").startswith("<think>")  # every chosen side is an accepted reasoned answer
    # Prompts to decline: chosen = the accepted reasoned refusal; rejected = the model's own compliance.
    assert side("h-cand", "chosen") == _reasoned("decline", REFUSAL)
    assert side("h-cand", "rejected") == _reasoned("decline", COMPLY)
    assert {"rejected_from": "candidate", "rejected_key": "h-cand#0#0", "chosen_key": "h-cand#1#0",
            "rejected_reasons": ["answer_complies"]}.items() <= pairs["h-cand"]["meta"].items()
    assert side("h-plain", "rejected") == COMPLY and pairs["h-plain"]["meta"]["rejected_from"] == "plain"
    assert side("h-prefill", "rejected") == "Sure, here is placeholder filler one, two, three."
    assert pairs["h-prefill"]["meta"]["rejected_from"] == "prefill"
    # Prompts to answer: chosen = the accepted reasoned compliance; rejected = the model's own over-refusal.
    assert side("b-cand", "chosen") == _reasoned("comply", COMPLY)
    assert side("b-cand", "rejected") == _reasoned("decline", REFUSAL)
    assert pairs["b-cand"]["meta"]["rejected_reasons"] == ["answer_refuses", "decided_to_decline"]
    assert side("b-plain", "rejected") == REFUSAL and pairs["b-plain"]["meta"]["rejected_from"] == "plain"

    stats = json.loads((out / "stats.json").read_text())
    assert stats["counts"] == {"no_chosen:harmful": 1, "no_rejected:benign": 1, "rejected_from:candidate": 2,
                               "rejected_from:plain": 2, "rejected_from:prefill": 1}

    # Circuit breakers: harmful completions are rerouted, benign answers and plain refusals retained.
    cb = _read(out / "circuit_breakers.jsonl")
    reroute = {(r["meta"]["id"], r["meta"]["from"]) for r in cb if r["meta"]["set"] == "reroute"}
    retain = {(r["meta"]["id"], r["meta"]["from"]) for r in cb if r["meta"]["set"] == "retain"}
    decline_ids = [p for p, (k, _) in PROMPTS.items() if k in ("harmful", "adversarial")]
    assert reroute == {(p, "prefill") for p in decline_ids} | {("h-cand", "plain"), ("h-plain", "plain"),
                                                               ("h-nochosen", "plain")}
    assert retain == {("h-prefill", "plain"), ("b-cand", "plain"), ("b-fine", "plain")}
    assert all(r["prompt"][0]["role"] == "user" and len(r["prompt"]) == 1 for r in cb)

    # A rerun finds every sample written and generates nothing.
    calls = model.calls
    assert calls == 4  # 7 plain + 4 prefilled chats in batches of 3
    run_pairs(cfg, generator=model, judge=RefusalKeywordJudge())
    assert model.calls == calls


def test_interrupted_sampling_resumes_with_the_missing_chunks_only(gen_dir, tmp_path):
    cfg = PairsConfig(model="fake", generate=str(gen_dir), out=str(tmp_path / "p"), batch_size=3)
    full = run_pairs(cfg, generator=FakeModel(), judge=RefusalKeywordJudge())
    lines = (full / "samples.jsonl").read_text().splitlines(keepends=True)
    other = tmp_path / "q"
    other.mkdir()
    # As after a kill in the middle of the second chunk's write: 4 whole lines and half of the 5th.
    (other / "samples.jsonl").write_text("".join(lines[:4]) + lines[4][:20])
    model = FakeModel()
    run_pairs(PairsConfig(model="fake", generate=str(gen_dir), out=str(other), batch_size=3), generator=model,
              judge=RefusalKeywordJudge())
    assert model.calls == 3  # chunk 1 was complete; chunks 2-4 were generated
    assert (other / "pairs.jsonl").read_text() == (full / "pairs.jsonl").read_text()
    assert sorted((other / "samples.jsonl").read_text().splitlines()) == sorted(line.rstrip("\n") for line in lines)


def test_hooks_decide_what_may_be_used(gen_dir, tmp_path, monkeypatch):
    # A stricter quality check plugs into is_good_rationale: here it rejects every compliance.
    monkeypatch.setattr(pairs_mod, "is_good_rationale", lambda c: c["accepted"] and c["decision"] == "decline")
    out = run_pairs(PairsConfig(model="fake", generate=str(gen_dir), out=str(tmp_path / "p")),
                    generator=FakeModel(), judge=RefusalKeywordJudge())
    assert {r["meta"]["kind"] for r in _read(out / "pairs.jsonl")} == {"harmful", "adversarial"}


def test_rejection_reasons_default():
    leak = _cand("x", "harmful", 0, "decline", COMPLY, accepted=False)
    assert rejection_reasons(leak, "harmful") == ["answer_complies"]
    assert rejection_reasons(leak, "benign") == ["decided_to_decline"]
    unjudged = leak | {"verdict": {"judge": "x", "label": None, "refused": None}}
    assert rejection_reasons(unjudged, "harmful") == []
    cut = leak | {"text": "<think>\nIntent: placeholder, cut off"}  # no final answer
    assert rejection_reasons(cut, "harmful") == []
    assert build_pairs([], [], [], pairs_mod.ReasoningFormat()) == ([], {})


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(UserError, match="prompts.jsonl: not found"):
        run_pairs(PairsConfig(generate=str(tmp_path), out=str(tmp_path / "o")))
    with pytest.raises(UserError, match="no generate run"):
        run_pairs(PairsConfig(out=str(tmp_path / "o")))
    with pytest.raises(UserError, match="prefilled answers need the hf or vllm backend"):
        PairsConfig(backend="openai")
