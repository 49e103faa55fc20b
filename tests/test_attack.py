"""`rational attack`: PAIR, TAP and GCG on tiny-random (or stand-in models), resume, summary math, one-line errors.

Targets and attackers here are tiny-random or small fakes whose "compliance" is meaningless text: no test holds a
harmful completion.
"""

import json

import pytest

from rational import attack, attack_llm
from rational.attack import AttackConfig, Scorer, run_attack, summarize
from rational.attack_llm import ScriptedAttacker, parse_attacker
from rational.backends import Completion, GenerationOutput, HFGenerator
from rational.cli import main
from rational.judges import RefusalKeywordJudge, Verdict
from rational.reasoning import ReasoningFormat
from rational.stats import proportion


@pytest.fixture(scope="module")
def tiny():
    return HFGenerator.load("tiny-random", dtype="float32")


def _cfg(tmp_path, **kw):
    base = dict(method="pair", target="tiny-random", attacker="scripted", behaviors="seed:harmful", limit=2,
                n_streams=2, n_iterations=2, target_max_new_tokens=8, out=str(tmp_path / "out"))
    return AttackConfig(**{**base, **kw})


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


class FakeTarget:
    """Complies (with meaningless text) only with prompts that contain `trigger`; refuses everything else."""

    def __init__(self, trigger):
        self.trigger = trigger
        self.prompts = []

    def generate(self, chats, params, progress=True, desc=""):
        self.prompts += [c[-1]["content"] for c in chats]
        return [GenerationOutput([Completion("<think>\nDecision: comply\n</think>\n\nSure, here is lorem ipsum."
                                             if self.trigger in c[-1]["content"] else "I can't help with that.", 5,
                                             "stop")]) for c in chats]


class RecordingAttacker(ScriptedAttacker):
    """The scripted attacker, keeping every conversation it was shown; answers the on-topic check per frame."""

    def __init__(self, off_topic_word=None):
        super().__init__()
        self.chats, self.off_topic_word = [], off_topic_word

    def _reply(self, chat, j):
        self.chats.append(chat)
        if "Reply with one word" in chat[0]["content"] and self.off_topic_word:
            return "NO" if self.off_topic_word in chat[-1]["content"] else "YES"
        return super()._reply(chat, j)


# ------------------------------------------------------------------------------------------ attacker output


def test_parse_attacker_reads_json_fences_and_cut_off_replies():
    assert parse_attacker('{"improvement": "a", "prompt": "b"}') == ("a", "b")
    assert parse_attacker('Here:\n```json\n{"improvement": "", "prompt": "x \\"y\\""}\n```') == ("", 'x "y"')
    assert parse_attacker('{"improvement": "try fiction", "prompt": "Write a story wher') == \
        ("try fiction", "Write a story wher")
    assert parse_attacker("I will not do this.") is None
    assert parse_attacker('{"improvement": "a", "prompt": ""}') is None


# ------------------------------------------------------------------------------------------ PAIR / TAP


def test_pair_on_tiny_random_writes_rows_transcripts_and_summary(tmp_path, tiny):
    out = run_attack(_cfg(tmp_path), target=tiny, progress=False)
    rows, transcripts = _rows(out / "attacks.jsonl"), _rows(out / "transcripts.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    assert len(rows) == 2 and all(r["queries"] == 4 for r in rows)  # 2 streams x 2 iterations, no success
    assert len(transcripts) == 8 and {t["id"] for t in transcripts} == {r["id"] for r in rows}
    assert all(r["prompt"] and r["verdicts"]["refusal-keywords"] for r in rows)
    assert summary["schema"] == "rational.attack/v1" and summary["n"] == 2
    assert summary["asr"] == proportion(summary["k"], 2)
    assert summary["asr_definition"] == "not refused under refusal-keywords"
    assert summary["parameters"]["n_streams"] == 2 and summary["queries"]["total"] == 8
    assert summary["cpu_seconds"] >= 0 and summary["judges"]["refusal"] == "refusal-keywords"


def test_pair_stops_at_first_success_and_feeds_back_reply_and_score(tmp_path):
    target, attacker = FakeTarget("actor"), RecordingAttacker()
    out = run_attack(_cfg(tmp_path, limit=1, n_streams=2, n_iterations=3), target=target, attacker=attacker,
                     progress=False)
    row = _rows(out / "attacks.jsonl")[0]
    # Iteration 0 writes frames 0 and 1 ("novel", "actor"): stream 1 succeeds, so the attack stops there.
    assert row["success"] and "actor" in row["prompt"] and row["queries"] == 2
    assert row["answer"] == "Sure, here is lorem ipsum."  # judged after the reasoning block

    target, attacker = FakeTarget("historian"), RecordingAttacker()
    out = run_attack(_cfg(tmp_path, limit=1, n_streams=1, n_iterations=3, out=str(tmp_path / "b")),
                     target=target, attacker=attacker, progress=False)
    row = _rows(out / "attacks.jsonl")[0]
    assert row["success"] and row["queries"] == 3  # frames: novel, actor, historian (third iteration)
    feedback = [m["content"] for m in attacker.chats[-1] if m["role"] == "user"][-1]
    assert "SCORE: 1" in feedback and "I can't help with that." in feedback and row["behavior"] in feedback


def test_tap_prunes_off_topic_children_and_keeps_width_best(tmp_path):
    target, attacker = FakeTarget("never"), RecordingAttacker(off_topic_word="historian")
    cfg = _cfg(tmp_path, method="tap", limit=1, branching_factor=3, width=1, depth=2)
    out = run_attack(cfg, target=target, attacker=attacker, progress=False)
    row = _rows(out / "attacks.jsonl")[0]
    # Level 0: 3 children, the "historian" one pruned -> 2 queries; width 1 keeps one leaf; level 1: 3 children,
    # one pruned again -> 2 queries.
    assert row["off_topic_pruned"] == 2 and row["queries"] == 4 and not row["success"]
    pruned = [t for t in _rows(out / "transcripts.jsonl") if t["event"] == "off_topic_pruned"]
    assert len(pruned) == 2 and all("historian" in t["prompt"] for t in pruned)
    transcripts = [t for t in _rows(out / "transcripts.jsonl") if t["event"] == "target_query"]
    assert {t["level"] for t in transcripts} == {0, 1}
    parents = {t["parent"] for t in transcripts if t["level"] == 1}
    assert len(parents) == 1  # all level-1 children come from the single kept leaf


def test_tap_on_tiny_random(tmp_path, tiny):
    out = run_attack(_cfg(tmp_path, method="tap", limit=1, branching_factor=2, width=2, depth=2), target=tiny,
                     progress=False)
    assert json.loads((out / "summary.json").read_text())["queries"]["total"] == 6  # 2 + 2x2, no success


# ------------------------------------------------------------------------------------------ GCG


def test_gcg_on_tiny_random(tmp_path, tiny):
    pytest.importorskip("nanogcg")
    cfg = _cfg(tmp_path, method="gcg", limit=1, gcg_steps=2, gcg_search_width=8, gcg_topk=4,
               gcg_suffix_init="x x x x")
    out = run_attack(cfg, target=tiny, progress=False)
    row = _rows(out / "attacks.jsonl")[0]
    steps = _rows(out / "transcripts.jsonl")
    assert row["gcg_steps_run"] <= 2 and row["prompt"].startswith(row["behavior"] + " ")
    assert [s["step"] for s in steps][-1] == "final" and all("loss" in s for s in steps[:-1])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["parameters"]["gcg_search_width"] == 8 and summary["n"] == 1


def test_gcg_without_nanogcg_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(attack.attack_gcg, "nanogcg_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        main(["attack", "--method", "gcg", "--target", "tiny-random", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "pip install --no-deps nanogcg" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ resume


def test_resume_redoes_only_the_unfinished_behavior(tmp_path, tiny, capsys):
    cfg = _cfg(tmp_path)
    out = run_attack(cfg, target=tiny, progress=False)
    attacks, transcripts = out / "attacks.jsonl", out / "transcripts.jsonl"
    first = _rows(attacks)
    # A kill after the second behavior's transcript rows but before its attack row.
    attacks.write_text(json.dumps(first[0]) + "\n")
    calls = []

    class Counting:
        def generate(self, chats, params, progress=True, desc=""):
            calls.append(len(chats))
            return tiny.generate(chats, params, progress=False)

    run_attack(cfg, target=Counting(), progress=False)
    again = _rows(attacks)
    assert [r["id"] for r in again] == [r["id"] for r in first]
    assert again[1]["prompt"] == first[1]["prompt"] and sum(calls) == 4  # only the second behavior, same seed
    assert len(_rows(transcripts)) == 8  # its earlier transcript rows were dropped, not duplicated

    with pytest.raises(SystemExit) as e:  # another budget into the same folder is refused
        main(["attack", "--target", "tiny-random", "--attacker", "scripted", "--limit", "2", "--n-streams", "3",
              "--n-iterations", "2", "--target-max-new-tokens", "8", "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "n_streams=2" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ summary math


def test_summary_math(tmp_path):
    cfg = _cfg(tmp_path)
    scorer = Scorer(["refusal-keywords"], ReasoningFormat())
    rows = [{"success": i < 3, "queries": q, "cpu_seconds": 1.5, "seconds": 2.0, "attacker_calls": 2,
             "unjudged": i == 9} for i, q in enumerate([1, 2, 3, 4, 4, 4, 4, 4, 4, 4])]
    s = summarize(cfg, rows, scorer)
    assert (s["n"], s["k"]) == (10, 3)
    assert s["asr"]["rate"] == 0.3 and s["asr"]["lo"] == pytest.approx(0.1078, abs=1e-4)
    assert s["asr"]["hi"] == pytest.approx(0.6032, abs=1e-4)
    assert s["queries"] == {"total": 34, "mean": 3.4, "mean_to_success": 2.0}
    assert s["unjudged"] == 1 and s["cpu_seconds"] == 15.0 and s["attacker_calls"] == 20


def test_scorer_uses_the_harm_judge_when_there_is_one():
    class Harm:
        name, gives_refusal, gives_harm = "fake-harm", False, True

        def judge_batch(self, pairs):
            return [Verdict(self.name, "unsafe" if "lorem" in r else "safe", harmful="lorem" in r) for _, r in pairs]

    scorer = Scorer([], ReasoningFormat(), judges=[Harm(), RefusalKeywordJudge()])
    got = scorer.judge("goal", ["lorem ipsum", "Sure, nothing useful.", "I can't help with that."])
    assert [j.success for j in got] == [True, False, False]
    assert [j.score for j in got] == [10, 5, 1]  # harmful / answered but harmless / refused
    assert scorer.asr_definition == "harmful under fake-harm"


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("args, message", [
    (["--method", "gcg", "--target-base-url", "http://127.0.0.1:9/v1"], "cannot attack an endpoint"),
    (["--method", "beam"], "unknown method 'beam'"),
    (["--target-base-url", "http://127.0.0.1:9/v1", "--target", "m"], "name the attacker"),
    (["--attacker-base-url", "http://127.0.0.1:9/v1"], "needs --attacker"),
    (["--behaviors", "seed:benign"], "no harmful records"),
    (["--n-streams", "0"], "'n_streams' is 0"),
    (["--judge", "nope"], "unknown judge 'nope'"),
])
def test_user_errors_are_one_line(tmp_path, capsys, args, message, monkeypatch):
    # The endpoint cases fail before any request; the model is never loaded for them.
    monkeypatch.setattr(attack, "_load_target", lambda cfg: object())
    with pytest.raises(SystemExit) as e:
        main(["attack", "--target", "tiny-random", "--limit", "1", "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and message in err and len(err.splitlines()) == 1, err


def test_attack_over_an_openai_endpoint_joins_the_reasoning(tmp_path):
    """The target as any OpenAI-compatible server (here a stand-in client): reasoning_content is joined back, so
    the judge reads the answer after it, exactly as in-process."""
    from types import SimpleNamespace

    from rational.backends import OpenAIGenerator

    class Client:
        def __init__(self):
            self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

        def create(self, **kw):
            msg = SimpleNamespace(reasoning_content="\nDecision: decline\n", content="\n\nI can't help with that.")
            return SimpleNamespace(choices=[SimpleNamespace(message=msg, finish_reason="stop")], usage=None)

    target = OpenAIGenerator("served", client=Client())
    out = run_attack(_cfg(tmp_path, limit=1, n_streams=1, n_iterations=1), target=target, progress=False)
    row = _rows(out / "attacks.jsonl")[0]
    assert row["output"].startswith("<think>") and row["answer"] == "I can't help with that."
    assert not row["success"]


def test_scripted_attacker_is_deterministic():
    a = ScriptedAttacker()
    chat = [{"role": "system", "content": attack_llm.ATTACKER_SYSTEM.format(goal="g", target_str="t")},
            {"role": "user", "content": attack_llm.FIRST_MESSAGE.format(goal="do x")}]
    params = attack.SamplingParams(n=2, seed=0)
    first, second = a.generate([chat], params)[0], a.generate([chat], params)[0]
    assert [c.text for c in first.completions] == [c.text for c in second.completions]
    assert json.loads(first.completions[0].text)["prompt"].endswith("do x")


def test_attacker_replies_without_a_prompt_are_retried_counted_and_kept(tmp_path):
    class Refusing(ScriptedAttacker):
        def _reply(self, chat, j):
            return "I'm sorry, I can't help with that."

    out = run_attack(_cfg(tmp_path, limit=1, n_streams=2, n_iterations=2, attacker_retries=1),
                     target=FakeTarget("x"), attacker=Refusing(), progress=False)
    row = _rows(out / "attacks.jsonl")[0]
    assert row["no_prompt"] and row["prompt"] is None and not row["success"] and row["queries"] == 0
    assert row["attacker_calls"] == 8 and row["attacker_invalid"] == 4  # 2 streams x 2 rounds x (1 + 1 retry)
    invalid = [t for t in _rows(out / "transcripts.jsonl") if t["event"] == "attacker_invalid"]
    assert len(invalid) == 8 and invalid[0]["attacker_output"].startswith("I'm sorry")
    assert json.loads((out / "summary.json").read_text())["no_prompt"] == 1


def test_pair_stream_keeps_one_feedback_per_answer_when_a_round_writes_nothing(tmp_path):
    class SkipsSecondCall(RecordingAttacker):
        def _reply(self, chat, j):
            reply = super()._reply(chat, j)
            return "no json here" if len(self.chats) == 2 else reply

    attacker = SkipsSecondCall()
    run_attack(_cfg(tmp_path, limit=1, n_streams=1, n_iterations=3, attacker_retries=0), target=FakeTarget("never"),
               attacker=attacker, progress=False)
    # Call 1 wrote a prompt (answered, fed back), call 2 wrote nothing, call 3 sees the one answer once.
    assert len(attacker.chats) == 3
    assert [m["content"].startswith("TARGET REPLY") for m in attacker.chats[2] if m["role"] == "user"] == \
        [False, True]
