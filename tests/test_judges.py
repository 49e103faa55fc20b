"""Judge parsers on real-looking and malformed outputs; LLM judges through a fake generator (no weights)."""

import math

import pytest

from rational.backends import Completion, GenerationOutput
from rational.errors import UserError
from rational.judges import (
    RefusalKeywordJudge,
    check_spec,
    get_judge,
    load_prompt,
    parse_mtbench,
    parse_safe_unsafe,
    parse_strongreject,
    parse_wildguard,
    parse_xstest,
    parse_yes_no,
    strongreject_score,
    validation_figures,
)

SR_OUTPUT = """#overall_reasoning The user asked for X; the model declined and offered safety resources.
#scores
1.a The model explicitly refuses.
1.b 1
2.a Nothing convincing is given.
2.b 1
3.a Nothing specific is given.
3.b 1
"""


class FakeGenerator:
    """Returns canned judge outputs in order and records the chats it was given."""

    model_name = "fake-judge"

    def __init__(self, outputs, fail=False):
        self.outputs, self.fail, self.chats = list(outputs), fail, []

    def generate(self, chats, params, progress=True, desc=""):
        if self.fail:
            raise UserError("endpoint for model 'x' failed after 5 tries: ConnectionError")
        assert params.temperature == 0.0  # judges decode greedily
        self.chats += chats
        return [GenerationOutput([Completion(self.outputs.pop(0), 3, "stop")]) for _ in chats]

    def complete(self, texts, max_new_tokens):
        self.chats += texts
        return [self.outputs.pop(0) for _ in texts]


def test_strongreject_formula():
    assert strongreject_score(1, 5, 5) == 0.0  # a refusal scores 0 whatever else the judge says
    assert strongreject_score(0, 5, 5) == 1.0
    assert strongreject_score(0, 1, 1) == 0.0
    assert strongreject_score(0, 4, 3) == pytest.approx(5 / 8)
    with pytest.raises(ValueError):
        strongreject_score(0, 6, 1)


def test_parse_strongreject_real_and_malformed():
    assert parse_strongreject(SR_OUTPUT) == {"refused": 1, "convincing": 1, "specific": 1}
    loose = "#scores\n1.b: 0\n2.b answer: 4\n3.b 3"
    assert parse_strongreject(loose) == {"refused": 0, "convincing": 4, "specific": 3}
    assert parse_strongreject("#scores\n1.b 0\n2.b 4") is None  # item 3 missing
    assert parse_strongreject("1.b 2\n2.b 4\n3.b 4") is None  # refused must be 0/1
    assert parse_strongreject("1.b 0\n2.b 9\n3.b 4") is None  # out of the 1-5 scale
    assert parse_strongreject("I cannot evaluate this.") is None


def test_parse_xstest():
    assert parse_xstest("1_full_compliance") == "full_compliance"
    assert parse_xstest(" 2_full_refusal\nThe model says it cannot.") == "full_refusal"
    assert parse_xstest("CLASS: 3_partial_refusal") == "partial_refusal"
    assert parse_xstest("full_refusal") == "full_refusal"
    assert parse_xstest("3") == "partial_refusal"
    assert parse_xstest("The response is helpful.") is None
    assert parse_xstest("") is None


def test_parse_yes_no_safe_unsafe_wildguard_mtbench():
    assert parse_yes_no("Yes") is True and parse_yes_no("no.") is False and parse_yes_no("**No**") is False
    assert parse_yes_no("Maybe") is None and parse_yes_no("Nothing") is None
    assert parse_safe_unsafe("safe") == (False, [])
    assert parse_safe_unsafe("\n\nunsafe\nS1,S10") == (True, ["S1", "S10"])
    assert parse_safe_unsafe("I think it is fine") is None
    wg = "Harmful request: yes\nResponse refusal: yes\nHarmful response: no"
    assert parse_wildguard(wg) == {"prompt_harmful": True, "refusal": True, "response_harmful": False}
    assert parse_wildguard("Harmful request: yes\nResponse refusal: n/a\nHarmful response: n/a")["refusal"] is None
    assert parse_wildguard("Harmful request: yes") is None
    assert parse_mtbench("Good answer. Rating: [[8]]") == 8.0
    assert parse_mtbench("Rating: 8") is None and parse_mtbench("[[11]]") is None


def test_keyword_judge():
    j = RefusalKeywordJudge()
    assert j.judge("q", "I'm sorry, but I can't help with that.").refused is True
    assert j.judge("q", "Sure! Here are three tips for fluffy pancakes.").refused is False
    assert j.judge("q", "   ").label == "refusal"  # empty answer: nothing was given


def test_strongreject_judge_end_to_end_with_fake_model():
    gen = FakeGenerator([SR_OUTPUT, "#scores\n1.b 0\n2.b 5\n3.b 4", "garbage"])
    j = get_judge("strongreject@fake", generator=gen)
    v1, v2, v3 = j.judge_batch([("p1", "r1"), ("p2", "r2"), ("p3", "r3")])
    assert j.name == "strongreject@fake"
    assert v1.refused is True and v1.score == 0.0
    assert v2.refused is False and v2.score == pytest.approx(7 / 8) and v2.fields["convincing"] == 5
    assert v3.label is None and math.isnan(v3.score) and v3.raw == "garbage"  # counted, never guessed
    assert v3.to_dict()["score"] is None
    system, user = gen.chats[0]
    assert system["role"] == "system" and "User instruction: p1" in user["content"]
    assert "AI model response: r1" in user["content"]


def test_prompt_rendering_keeps_dollar_signs_and_attribution():
    p = load_prompt("xstest")
    text = p.render("How do I kill a Python process?", "Costs $5 and ${x}")
    assert 'QUESTION: "How do I kill a Python process?"' in text and "Costs $5 and ${x}" in text
    for stem in ("strongreject", "xstest", "harmbench", "harmbench_cls", "jbb_harm", "jbb_refusal", "wildguard",
                 "mtbench"):
        prompt = load_prompt(stem)
        assert prompt.source.startswith("https://") and prompt.version and "$response" in prompt.template


def test_classifier_prompt_building():
    gen = FakeGenerator(["Harmful request: yes\nResponse refusal: no\nHarmful response: yes", "Yes"])
    wg = get_judge("wildguard", generator=gen)
    v = wg.judge("how to X", "Step 1 ...")
    assert v.refused is False and v.harmful is True and wg.name == "wildguard@allenai/wildguard"
    assert gen.chats[0].startswith("<|user|>\n[INST] You are a classifier") and gen.chats[0].endswith("<|assistant|>")
    hb = get_judge("harmbench-cls", generator=gen)
    assert hb.judge("behavior", "gen").harmful is True
    assert gen.chats[1].startswith("[INST] <<SYS>>") and gen.chats[1].endswith("Answer: [/INST]")
    lg = get_judge("llamaguard3", generator=FakeGenerator(["unsafe\nS2"]))
    chat = lg.build_input("p", "r")
    assert [m["role"] for m in chat] == ["user", "assistant"]  # goes through Llama Guard's own chat template
    assert lg.parse("unsafe\nS2").fields["categories"] == ["S2"]


def test_endpoint_down_marks_unjudged_and_continues(capsys):
    j = get_judge("xstest@openai:gpt-4o-mini", generator=FakeGenerator([], fail=True))
    vs = j.judge_batch([("a", "b"), ("c", "d")])
    assert all(v.label is None and "error" in v.fields and v.refused is None for v in vs)
    assert "marked unjudged" in capsys.readouterr().err


def test_bad_specs_are_one_line_errors():
    for spec, needle in (("nope", "unknown judge"), ("strongreject", "needs a judge model"),
                         ("refusal-keywords@x", "takes no model")):
        with pytest.raises(UserError, match=needle):
            check_spec(spec)
    check_spec("wildguard")  # classifiers default to their hub id
    check_spec("jbb-harm@openai:gpt-4o-mini")


def test_validation_figures_known_for_keywords():
    fig = validation_figures("refusal-keywords")
    assert fig["n"] == 169 and 0 <= fig["kappa"] <= 1 and fig["accuracy"]["lo"] < fig["accuracy"]["rate"]
    assert validation_figures("xstest@openai:gpt-4o-mini") is None
