from rational.reasoning import (
    EMPTY_ANSWER,
    EXTRA_TAGS,
    MISSING,
    MISSING_OPEN,
    NESTED,
    OK,
    TEXT_BEFORE,
    UNCLOSED,
    ReasoningFormat,
    extract_decision,
    final_answer,
    format_output,
    format_sections,
    has_all_sections,
    join_reasoning,
    parse_output,
    split_reasoning,
)


def test_round_trip():
    text = format_output("Intent: bake bread.\nDecision: comply", "Mix flour and water.")
    assert text.startswith("<think>\n") and "</think>\n\nMix" in text
    p = parse_output(text)
    assert p.status == OK and p.well_formed
    assert p.reasoning == "Intent: bake bread.\nDecision: comply"
    assert p.answer == "Mix flour and water."


def test_missing_tags_is_plain_answer():
    p = parse_output("Just an answer.")
    assert p.status == MISSING and p.reasoning is None and p.answer == "Just an answer."
    assert not p.well_formed


def test_unclosed_means_no_answer():
    p = parse_output("<think>\nIntent: something and then the tokens ran o")
    assert p.status == UNCLOSED and p.answer == "" and p.reasoning.startswith("Intent")


def test_nested_and_extra_and_text_before():
    assert parse_output("<think>a <think> b</think>\n\nans").status == NESTED
    assert parse_output("<think>a</think>\n\nans </think>").status == EXTRA_TAGS
    assert parse_output("hello <think>a</think>\n\nans").status == TEXT_BEFORE
    assert parse_output("<think>a</think>").status == EMPTY_ANSWER


def test_close_without_open():
    p = parse_output("Intent: x\nDecision: decline</think>\n\nNo.")
    assert p.status == MISSING_OPEN and p.answer == "No." and p.reasoning.endswith("decline")


def test_custom_tags_and_garbage_never_raise():
    fmt = ReasoningFormat("[R]", "[/R]")
    assert parse_output("[R]why[/R]\n\nok", fmt).status == OK
    for junk in ["", None, "</think><think>", "<think>" * 3, "\x00\x01"]:
        parse_output(junk)  # must not raise
    assert final_answer("<think>x</think>\n\nthe answer") == "the answer"


def test_decision_and_sections():
    body = format_sections({"Intent": "learn", "Context and ethics": "fine", "Potential impact": "none",
                            "Decision": "comply"})
    assert has_all_sections(body) and extract_decision(body) == "comply"
    assert extract_decision("Intent: harm\nDecision: decline, and redirect") == "decline"
    assert extract_decision("Decision: I will not help with this") == "decline"
    assert extract_decision("no decision stated") is None
    assert extract_decision(None) is None
    assert not has_all_sections("Intent: only this")


def test_split_reasoning_round_trips_and_content_starts_with_the_answer():
    """What a served model returns as reasoning_content + content re-joins to the exact text for outputs in the
    trained format, and to a text parse_output reads the same for malformed ones (the eval over HTTP scores what
    an in-process eval scores). content starts with the answer itself: tools match refusals with startswith."""
    exact = [format_output("Intent: x.\nDecision: decline", "No."), "<think>out of tok", "<think></think>",
             "plain answer", "reasoning</think>answer", "x <think>A</think>B", "<think>A<think>B</think>\n\nC",
             "<think>A</think>\n\nB</think>C", "", "  leading space, no block"]
    loose = ["<think>A</think>B", "<think>R</think>\nA", "<think>R</think>\n\n", "\n <think>R</think>A",
             "<think>A</think> B</think>C"]
    for text in exact:
        assert join_reasoning(*split_reasoning(text)) == text, text
    for text in loose:
        joined = join_reasoning(*split_reasoning(text))
        assert joined != text and parse_output(joined) == parse_output(text), text
    assert split_reasoning(format_output("R", "A")) == ("\nR\n", "A")
    assert split_reasoning("<think>R</think> \n A") == ("R", "A")  # whitespace after the block is dropped
    assert split_reasoning("<think>out of tok") == ("out of tok", None)  # unclosed: no answer at all
    assert split_reasoning("<think></think>") == ("", "")  # closed, empty answer
    assert split_reasoning("reasoning</think>answer") == (None, "reasoning</think>answer")  # only a leading block
    # A server that keeps the whitespace (content "\n\nA") re-joins without a second separator.
    assert join_reasoning("\nR\n", "\n\nA") == format_output("R", "A")
    fmt = ReasoningFormat("<reasoning>", "</reasoning>")
    assert split_reasoning("<reasoning>R</reasoning>A", fmt) == ("R", "A")
    assert split_reasoning("<think>R</think>A", fmt) == (None, "<think>R</think>A")


def test_cut_answer_keeps_the_reasoning_and_cuts_only_the_answer(tiny_path):
    from rational.models import load_tokenizer, resolve
    from rational.reasoning import answer_start, answer_tokens, cut_answer

    tok = load_tokenizer(resolve(tiny_path))
    words = " ".join(f"word{i}" for i in range(40))
    reasoned = f"<think>\nIntent: {words}\nDecision: comply\n</think>\n\n{words}"
    assert answer_start("<think>\nIntent: still thinking") is None  # no answer yet: nothing to count or cut
    assert answer_tokens("<think>\nIntent: still thinking", tok) == []
    assert answer_start("plain answer") == 0 and answer_start(reasoned) == reasoned.index("</think>") + 8
    cut, was_cut = cut_answer(reasoned, 5, tok)
    assert was_cut and parse_output(cut).reasoning == parse_output(reasoned).reasoning
    assert answer_tokens(cut, tok) == answer_tokens(reasoned, tok)[:5]
    assert reasoned.startswith(cut) and parse_output(cut).status == "ok"
    plain, was_cut = cut_answer(words, 5, tok)
    assert was_cut and tok(plain, add_special_tokens=False)["input_ids"] == answer_tokens(words, tok)[:5]
    assert cut_answer("short", 5, tok) == ("short", False)
    assert cut_answer("<think>\nIntent: " + words, 5, tok) == ("<think>\nIntent: " + words, False)  # unclosed
