"""How Rational writes and reads safety reasoning.

An assistant turn that reasons looks like this (tags configurable)::

    <think>
    Intent: ...
    Context and ethics: ...
    Potential impact: ...
    Decision: decline
    </think>

    I can't help with that, but ...

This module is the only place that knows the layout. Everything else calls `format_output`,
`parse_output`, `extract_decision`, `split_reasoning` / `join_reasoning` (the served model's
`reasoning_content` field and its inverse) and `cut_answer` (an answer cut to what the judges read).
Parsing never raises: a malformed text comes back with a `status` that says what is wrong, so a
generator that ran out of tokens mid-reasoning is counted, not crashed on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The four steps of the reasoning, in order (paper §1.2: intent -> context/ethics -> impact -> decision).
SECTIONS: tuple[str, ...] = ("Intent", "Context and ethics", "Potential impact", "Decision")

# Parse statuses. Only "ok" is well-formed.
OK = "ok"
MISSING = "missing"  # no reasoning block at all
UNCLOSED = "unclosed"  # opened but never closed (usually: ran out of tokens)
MISSING_OPEN = "missing_open"  # a close tag without an open tag
NESTED = "nested"  # a second open tag inside the block
TEXT_BEFORE = "text_before"  # non-blank text before the open tag
EXTRA_TAGS = "extra_tags"  # reasoning tags again inside the answer
EMPTY_REASONING = "empty_reasoning"
EMPTY_ANSWER = "empty_answer"


@dataclass(frozen=True)
class ReasoningFormat:
    """Delimiters of the reasoning block. Defaults follow the `<think>` convention of reasoning models."""

    open_tag: str = "<think>"
    close_tag: str = "</think>"

    def __post_init__(self):
        if not self.open_tag or not self.close_tag or self.open_tag == self.close_tag:
            raise ValueError("reasoning tags must be two different non-empty strings")


DEFAULT_FORMAT = ReasoningFormat()
# Between the close tag and the answer in the trained format (`format_output`).
ANSWER_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class ParsedOutput:
    """A model output split into reasoning and final answer.

    `reasoning` is None when there was no reasoning block. `answer` is what the user would see: the text
    after the block, or the whole text when there is no block. For an unclosed block it is "".
    """

    reasoning: str | None
    answer: str
    status: str

    @property
    def well_formed(self) -> bool:
        return self.status == OK

    @property
    def has_reasoning(self) -> bool:
        return self.reasoning is not None


def format_output(reasoning: str, answer: str, fmt: ReasoningFormat = DEFAULT_FORMAT) -> str:
    """Join reasoning and answer into one assistant text."""
    return f"{fmt.open_tag}\n{reasoning.strip()}\n{fmt.close_tag}{ANSWER_SEPARATOR}{answer.strip()}"


def format_sections(sections: dict[str, str]) -> str:
    """Write the structured reasoning body ("Intent: ...\\nContext and ethics: ...")."""
    return "\n".join(f"{name}: {sections[name].strip()}" for name in SECTIONS if sections.get(name))


def parse_output(text: str, fmt: ReasoningFormat = DEFAULT_FORMAT) -> ParsedOutput:
    """Split `text` into reasoning and answer; never raises."""
    text = text or ""
    o, c = fmt.open_tag, fmt.close_tag
    start = text.find(o)
    close = text.find(c)
    if start == -1:
        if close == -1:
            return ParsedOutput(None, text.strip(), MISSING)
        # "reasoning</think>answer": some chat templates put the open tag in the prompt.
        return ParsedOutput(text[:close].strip(), text[close + len(c) :].strip(), MISSING_OPEN)
    if close != -1 and close < start:
        return ParsedOutput(text[:close].strip(), text[close + len(c) :].strip(), MISSING_OPEN)
    body_start = start + len(o)
    if close == -1:
        return ParsedOutput(text[body_start:].strip(), "", UNCLOSED)
    reasoning = text[body_start:close].strip()
    answer = text[close + len(c) :].strip()
    if o in text[body_start:close]:
        status = NESTED
    elif text[:start].strip():
        status = TEXT_BEFORE
    elif o in answer or c in answer:
        status = EXTRA_TAGS
    elif not reasoning:
        status = EMPTY_REASONING
    elif not answer:
        status = EMPTY_ANSWER
    else:
        status = OK
    return ParsedOutput(reasoning, answer, status)


def split_reasoning(text: str, fmt: ReasoningFormat = DEFAULT_FORMAT) -> tuple[str | None, str | None]:
    """Split an output into (reasoning, content) the way reasoning-model servers return them.

    Unlike `parse_output`, the reasoning is not stripped or judged. Only an output that opens with the reasoning
    block is split (whitespace before the open tag is dropped); any other output is all content. The whitespace
    between the close tag and the answer is dropped too, so `content` starts with what a user reads (tools such
    as garak match refusal prefixes with `startswith`); `join_reasoning` puts the format's separator back, so
    every output in the trained format (`format_output`) re-joins to the exact text, and any other re-joins to a
    text that `parse_output` reads the same (it strips that whitespace). An unclosed block (out of tokens
    mid-reasoning) is all reasoning with content None, not "", so it stays distinguishable from a closed block
    followed by an empty answer.
    """
    text = text or ""
    body = text.lstrip()
    if not body.startswith(fmt.open_tag):
        return None, text
    body = body[len(fmt.open_tag) :]
    end = body.find(fmt.close_tag)
    if end == -1:
        return body, None
    return body[:end], body[end + len(fmt.close_tag) :].lstrip()


def join_reasoning(reasoning: str | None, content: str | None, fmt: ReasoningFormat = DEFAULT_FORMAT) -> str:
    """The inverse of `split_reasoning`: one text with the reasoning block in front. A non-empty content that
    does not start with whitespace (a server that dropped it, as `rational serve` does) gets the format's
    separator back; one that does (servers that keep it) is joined as it is."""
    if reasoning is None:
        return content or ""
    if content is None:
        return fmt.open_tag + reasoning
    separator = ANSWER_SEPARATOR if content and not content[0].isspace() else ""
    return fmt.open_tag + reasoning + fmt.close_tag + separator + content


def answer_start(text: str, fmt: ReasoningFormat = DEFAULT_FORMAT) -> int | None:
    """Where the answer `parse_output` would return begins in `text` (also a partial output, while it is being
    generated): after the first close tag; 0 when there is no reasoning block; None while a block is open."""
    close = text.find(fmt.close_tag)
    if close != -1:
        return close + len(fmt.close_tag)
    return None if fmt.open_tag in text else 0


def answer_tokens(text: str, tokenizer, fmt: ReasoningFormat = DEFAULT_FORMAT) -> list[int]:
    """The answer's token ids (leading whitespace dropped, as `parse_output` does); [] while reasoning."""
    start = answer_start(text, fmt)
    if start is None:
        return []
    return tokenizer(text[start:].lstrip(), add_special_tokens=False)["input_ids"]


def cut_answer(text: str, max_tokens: int, tokenizer, fmt: ReasoningFormat = DEFAULT_FORMAT) -> tuple[str, bool]:
    """`text` with its answer cut to the answer's first `max_tokens` tokens, and whether anything was cut. The
    reasoning before the answer is kept whole. Evaluations cut answers where their judges stop reading."""
    ids = answer_tokens(text, tokenizer, fmt)
    if len(ids) <= max_tokens:
        return text, False
    start = answer_start(text, fmt)
    answer = text[start:]
    lead = answer[: len(answer) - len(answer.lstrip())]
    return text[:start] + lead + tokenizer.decode(ids[:max_tokens]), True


def final_answer(text: str, fmt: ReasoningFormat = DEFAULT_FORMAT) -> str:
    """The part of an output a judge should score: the answer after the reasoning."""
    return parse_output(text, fmt).answer


_DECISION_RE = re.compile(r"decision\s*[:\-]\s*\**\s*([a-z ,'-]{0,40})", re.IGNORECASE)
_DECLINE_WORDS = ("declin", "refus", "reject", "not comply", "won't", "will not", "cannot", "can't", "deny")
_COMPLY_WORDS = ("comply", "complies", "answer", "help", "assist", "provide", "accept", "respond", "proceed")


def extract_decision(reasoning: str | None) -> str | None:
    """The decision stated in the reasoning: "decline", "comply", or None when none is stated.

    Reads the last "Decision: ..." line; falls back to None rather than guessing from the whole text.
    """
    if not reasoning:
        return None
    matches = _DECISION_RE.findall(reasoning)
    if not matches:
        return None
    value = matches[-1].lower()
    if any(w in value for w in _DECLINE_WORDS):
        return "decline"
    if any(w in value for w in _COMPLY_WORDS):
        return "comply"
    return None


def has_all_sections(reasoning: str | None) -> bool:
    """True when every step of the reasoning structure appears (case-insensitive)."""
    if not reasoning:
        return False
    low = reasoning.lower()
    return all(f"{name.lower()}" in low for name in SECTIONS)
