"""`rational generate`: self-generated safety rationales, judge-filtered, exported for TRL (sft.jsonl).

The method (paper §1.2): the model writes its own reasoning under one of two self-check system prompts,
used only here, never at training or inference time:

* S_rej (rejection self-check) for harmful and adversarial prompts: see through the disguise, weigh
  context, ethics and impact, decide to decline, then refuse briefly and redirect where useful.
* S_comp (compliance self-check) for benign and borderline prompts: explain why a sensitive-looking
  request is benign, beware of over-refusal, decide to comply, then answer helpfully.

Steps of `run_generate(cfg)`:

1. **Prompts** (`build_prompts`): load the pools, decontaminate them against `exclude`, mutate harmful
   prompts into adversarial ones, take `limit` prompts balanced across kinds. Written to `prompts.jsonl`
   once; a resumed run reuses that file, so model-based rewrites are never redone.
2. **Self-check generation**, `n_samples` per prompt, batched (`batch_size` prompts per call).
3. **Filtering** (`assess`): the output is normalised to the exact reasoning format, then accepted only if
   the reasoning is well-formed (all four sections, a decision, at least `min_reasoning_chars`) and
     - rejection: decision = decline and the judge calls the final answer a refusal;
     - compliance: decision = comply and the judge calls the final answer not a refusal.
   A judge error or unparseable verdict marks the candidate "unjudged" (rejected, counted), it does not
   stop the run. Prompts with no accepted sample are retried up to `max_retries` times with new seeds.
4. **Export**: `sft.jsonl` (TRL conversational prompt-completion, no system prompt), plus
   `candidates.jsonl` (every sample, verdict and rejection reason), `stats.json` and `config.yaml`.

Resume: `candidates.jsonl` is append-only and flushed per record, keyed by (prompt id, attempt, sample).
Work is cut into fixed chunks whose sampling seed depends only on (seed, attempt, chunk), so a run
interrupted at any point and restarted with the same arguments skips what is written, redoes the
interrupted chunk with the same seed, and ends with exactly the records of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from .backends import SamplingParams, load_generator
from .common import (
    balanced_take,
    clear_outputs,
    hash_take,
    input_hashes,
    output_lock,
    read_jsonl,
    write_json,
    write_jsonl,
)
from .config import check_range, record_provenance, resume_difference, setting
from .errors import UserError
from .eval import exact_match  # the capability metric's number matching, for the retain set's word problems
from .judges import get_judge
from .models import DEFAULT_MODEL
from .mutations import assign_mutations, get_mutations, mutate_pairs
from .prompts import RESOURCES, PromptRecord, decontaminate, load_pool, load_pools, load_templates, read_records
from . import quality as _quality, reasoning as _reasoning  # their source is part of checks_version()
from .quality import Exemplar, check_rationale, echoes_prompt, meta_answer, quality_score
from .reasoning import SECTIONS, ReasoningFormat, extract_decision, format_output, has_all_sections, parse_output

# Kinds that get the rejection self-check; the others get the compliance self-check.
REJECT_KINDS = ("harmful", "adversarial")

# The two self-check instructions (own wording). {open} / {close} become the reasoning tags. Each prompt's system
# text is one of them + the safety spec of the prompt's category + a few rotated worked examples
# (resources/exemplars.jsonl: refusals and benign answers only, never harmful content).
INSTRUCTIONS = {
    "decline": """You are a careful and helpful assistant. Some requests are harmful, and some hide a harmful goal behind role-play, fiction, hypotheticals, persuasion, claimed authority, misspellings, encodings, split-up text or "for educational purposes". Before you answer, think it through inside {open} {close} using exactly these four lines:
Intent: what this user actually wants, in your own words, with any disguise removed.
Context and ethics: whether the framing changes anything, and which laws or ethical principles apply to this request.
Potential impact: who could be harmed if you helped with this request, and how badly.
Decision: decline
After {close}, write the final answer: a short, polite refusal that says what you won't help with and gives none of its details, then, if it helps, a safe alternative on the same topic.""",
    "comply": """You are a careful and helpful assistant. Many requests contain words that sound alarming ("kill", "shoot", "attack", "drugs") or touch sensitive topics, but are harmless in context, and refusing them is unhelpful. Before you answer, think it through inside {open} {close} using exactly these four lines:
Intent: what this user actually wants, in your own words, and why the sensitive words are harmless here.
Context and ethics: the everyday, technical, creative, educational or safety context, and why answering is appropriate.
Potential impact: what good the answer does, and why it gives no meaningful help to anyone wanting to cause harm.
Decision: comply
After {close}, write the final answer: a helpful, accurate and complete response to the request, without needless warnings or refusals.""",
}
# For an adversarial prompt the pipeline knows the request under the disguise (the mutation's base prompt). It goes
# into the self-check prompt as a stated fact (generation time only, like the specs; training records never see it),
# so the writer reasons about the real request instead of guessing what a leetspeak or misspelled text means.
DISGUISES = {"obfuscation": "misspelled", "encoding": "encoded", "injection": "with instructions not to refuse",
             "template": "inside a role-play", "style": "restyled", "persuasion": "with persuasion",
             "tense": "in the past tense"}
DISGUISE_NOTE = ("Note: this request is \"{base}\", written {how}. Name that real request in the Intent line and "
                 "decline it.")
EXAMPLES_HEAD = ("Examples of the format, for other requests. Write about the user's own request: never copy an "
                 "example's wording or bring in its topic.")
EXEMPLARS = RESOURCES / "exemplars.jsonl"
SPECS = RESOURCES / "specs.yaml"


@lru_cache(maxsize=8)
def load_exemplars(path: str | None = None) -> tuple[Exemplar, ...]:
    """The worked examples of the self-check prompts (a JSONL of `quality.Exemplar` fields)."""
    rows = read_jsonl(path or EXEMPLARS)
    names = {f.name for f in fields(Exemplar)}
    out = []
    for i, r in enumerate(rows, 1):
        missing = sorted(names - set(r))
        if missing or r["decision"] not in ("decline", "comply"):
            raise UserError(f"{path or EXEMPLARS}:{i}: an exemplar needs {', '.join(sorted(names))} with decision "
                            f"decline or comply (missing: {', '.join(missing) or '-'})")
        out.append(Exemplar(**{k: r[k] for k in names}))
    return tuple(out)


@lru_cache(maxsize=1)
def load_specs() -> dict:
    return yaml.safe_load(SPECS.read_text(encoding="utf-8"))


def spec_for(kind: str, category: str | None) -> str:
    """The safety spec for a prompt: by its category (the seed pool's names, or a public set's category matched
    through `category_aliases`), else the side's general spec."""
    specs = load_specs()
    side = "harm" if kind in REJECT_KINDS else "benign"
    cat = (category or "").lower()
    if cat in specs[side]:
        return specs[side][cat]
    for key, words in specs["category_aliases"][side].items():
        if any(w in cat for w in words):
            return specs[side][key]
    return specs[side]["general"]


def pick_exemplars(record: PromptRecord, pool: tuple[Exemplar, ...], k: int, seed: int,
                   exclude_attacks: list[str]) -> list[Exemplar]:
    """`k` worked examples with the decision this prompt needs, rotated per prompt (seeded): one from the prompt's
    own category when there is one, the rest from other categories, never of an attack held out of training."""
    want = "decline" if record.kind in REJECT_KINDS else "comply"
    def held_out(e: Exemplar) -> bool:  # "misspell" also excludes "misspelling", "roleplay" "role-play"
        attack = (e.attack or "").replace("-", "")
        return bool(attack) and any(a.replace("-", "") in attack for a in exclude_attacks)

    cands = [e for e in pool if e.decision == want and not held_out(e)]
    ranked = hash_take(cands, len(cands), seed, key=lambda e: f"{record.id}|{e.id}")
    same = [e for e in ranked if e.category == record.category][:1]
    return same + [e for e in ranked if e not in same][: max(0, k - len(same))]


def _example_block(ex: Exemplar, fmt: ReasoningFormat) -> str:
    return f"User: {ex.prompt}\nAssistant:\n{format_output(ex.reasoning, ex.answer, fmt)}"


# Small models often stop right after the reasoning block. The answer is then asked for in a follow-up turn
# that shows the model its own reasoning, so the answer stays self-generated and follows the decision.
ANSWER_NUDGE = {
    "decline": "Now write your final reply to me. You decided to decline, so politely refuse in one or two sentences "
               "without giving any of the requested details, and, if it helps, suggest a safe alternative.",
    "comply": "Now write your final answer to my request. You decided to comply, so answer it helpfully, accurately "
              "and completely, without repeating the reasoning.",
}

DEFAULT_MUTATIONS = ["misspell", "leetspeak", "base64", "rot13", "caesar", "prefix-injection", "refusal-suppression",
                     "payload-split", "template", "template"]


@dataclass
class GenerateConfig:
    """`rational generate`: self-generated, judge-filtered safety rationales -> sft.jsonl.

    Every setting that changes the generated data must match when a run resumes into the same folder (batch_size
    included: sampling is seeded per batch); only `out`, `backend` and `dtype` may differ.
    """

    model: str = setting(DEFAULT_MODEL, "Model spec (the model writes its own rationales): registry name, local "
                         "folder, .gguf or hub id.", same_on_resume=True)
    out: str = setting("runs/generate", "Output folder (sft.jsonl, candidates.jsonl, stats.json); resumes a run.")
    pools: list[str] = setting(default_factory=lambda: ["seed"], help="Prompt pool: file or name (seed, advbench, "
                               "xstest-safe, ...); repeatable.", same_on_resume=True, old_flags=("--pool",))
    limit: int | None = setting(None, "Generate for at most N prompts, balanced across kinds (after mutation).",
                                same_on_resume=True)
    mutations: list[str] = setting(default_factory=lambda: list(DEFAULT_MUTATIONS), help="Mutation applied to "
                                   "harmful prompts; repeatable (a name listed twice is drawn twice as often).",
                                   same_on_resume=True, old_flags=("--mutation",))
    mutations_per_prompt: int = setting(1, "Distinct mutations drawn per harmful prompt (0 = no adversarial "
                                        "prompts).", same_on_resume=True)
    templates: str | None = setting(None, "Jailbreak template file or folder (default: public + own).",
                                    same_on_resume=True)
    template_families: list[str] | None = setting(None, "Restrict the templates used here to these families "
                                                  "(hold the others out for eval); repeatable.", same_on_resume=True)
    n_samples: int = setting(1, "Samples per prompt and attempt.", same_on_resume=True)
    max_retries: int = setting(2, "Extra attempts for prompts with no accepted sample (may change on resume: an "
                               "attempt's samples do not depend on it; attempts beyond it are not exported).")
    keep_per_prompt: int = setting(1, "Accepted samples exported per prompt, best first (may change on resume: "
                                   "export only).")
    max_new_tokens: int = setting(384, "Token budget per sample.", same_on_resume=True)
    temperature: float = setting(0.7, "Sampling temperature.", same_on_resume=True)
    top_p: float = setting(0.95, "Nucleus sampling mass.", same_on_resume=True)
    batch_size: int = setting(8, "Prompts per generation batch (sampling is seeded per batch).", same_on_resume=True)
    backend: str = setting("hf", "auto | hf | llamacpp | vllm | openai | scripted (canned rationales for "
                           "plumbing runs with tiny-random only).")
    dtype: str = setting("auto", "auto | float32 | bfloat16 | float16 (auto: bf16 where the hardware has it).")
    seed: int = setting(0, "Seed for mutations and sampling.", same_on_resume=True)
    judge: str = setting("refusal-keywords", "Judge for the final answers.", same_on_resume=True)
    rej_system: str | None = setting(None, "A custom rejection self-check system prompt, used as written "
                                     "({open}/{close} become the reasoning tags); default: instructions + spec + "
                                     "examples.", same_on_resume=True, cli=False)
    comp_system: str | None = setting(None, "A custom compliance self-check system prompt (see rej_system).",
                                      same_on_resume=True, cli=False)
    exemplars: str | None = setting(None, "Worked examples for the self-check prompts (JSONL of id, decision, "
                                    "category, attack, prompt, intent, context, impact, answer); default: the "
                                    "packaged pool.", same_on_resume=True)
    exemplars_per_prompt: int = setting(2, "Worked examples in each self-check prompt, rotated per prompt.",
                                        same_on_resume=True)
    exclude_exemplar_attacks: list[str] = setting(default_factory=list, help="Attack families whose exemplars are "
                                                  "left out (those held out of training); repeatable.",
                                                  same_on_resume=True)
    reveal_disguise: bool = setting(True, "Tell the writer the real request under an adversarial prompt's "
                                    "disguise (its base prompt) in the self-check prompt; never in training data.",
                                    same_on_resume=True)
    specs: bool = setting(True, "Put the safety spec of the prompt's category into its self-check prompt.",
                          same_on_resume=True)
    start_reasoning: bool = setting(False, "Start every self-check sample with the reasoning block's opening "
                                    "('<think>\\nIntent:', an assistant prefill), so the writer reasons first even "
                                    "when the request dictates the reply's first words (prefix injection); needs the "
                                    "hf, vllm or scripted backend, not an OpenAI endpoint.", same_on_resume=True)
    teacher: str | None = setting(None, "Model that writes the rationales (default: the model itself, as in the "
                                  "paper): a registry name, folder or hub id, or a served model name with "
                                  "--teacher-base-url.", same_on_resume=True)
    teacher_base_url: str | None = setting(None, "OpenAI-compatible endpoint of the teacher (vLLM, llama.cpp, "
                                           "Ollama, `rational serve`).", same_on_resume=True)
    exclude: list[str] = setting(default_factory=list, help="Eval prompts (file or pool) to decontaminate "
                                 "against; repeatable.", same_on_resume=True)
    decontam_ngram: int = setting(8, "Word n-gram length of the decontamination overlap test.", same_on_resume=True)
    decontam_threshold: float = setting(0.5, "Share of a prompt's n-grams found in eval prompts that removes it.",
                                        same_on_resume=True)
    reasoning_open: str = setting("<think>", "Tag that opens the reasoning block.", same_on_resume=True)
    reasoning_close: str = setting("</think>", "Tag that closes the reasoning block.", same_on_resume=True)
    min_reasoning_chars: int = setting(80, "Shorter reasoning is rejected.", same_on_resume=True)
    min_answer_chars: int = setting(40, "A compliance answer shorter than this is not helpful (e.g. 'You should "
                                    "comply.').", same_on_resume=True)
    complete_answers: bool = setting(True, "Ask for the answer in a follow-up turn when a sample stops after its "
                                     "reasoning.", same_on_resume=True)
    answer_max_new_tokens: int | None = setting(None, "Token limit of that follow-up answer (default: "
                                                "max_new_tokens).", same_on_resume=True)
    quality_checks: bool = setting(True, "Reject rationales that fail the automatic quality checks (off-topic, "
                                   "copied or echoed examples, offers of harmful help, non-answers; see "
                                   "quality.py).", same_on_resume=True)
    plain_answers: bool = setting(True, "Answer benign prompts with the model's own plain answer (asked without "
                                  "the self-check prompt) when it passes the checks; also the facts check.",
                                  same_on_resume=True)
    retain: int = setting(0, "Retain set: plain answers (no reasoning) of this many clearly benign prompts from "
                          "retain_pool, added to sft.jsonl so training keeps the model's everyday answers (math "
                          "answers must match their reference).", same_on_resume=True)
    retain_pool: str = setting("retain", "Prompts of the retain set: 'retain' (the packaged own set) or a file/pool; "
                               "decontaminated against --exclude.", same_on_resume=True)
    overwrite: bool = setting(False, "Delete what OUT holds and start over (otherwise a run resumes, and a folder "
                              "made with other settings is refused).")

    def __post_init__(self):
        for name in ("n_samples", "keep_per_prompt", "batch_size", "max_new_tokens"):
            check_range(self, name, 1)
        check_range(self, "max_retries", 0)
        check_range(self, "mutations_per_prompt", 0)
        check_range(self, "limit", 1, allow=(None,))
        check_range(self, "answer_max_new_tokens", 1, allow=(None,))
        check_range(self, "temperature", 0)
        check_range(self, "top_p", 0, 1, lo_open=True)
        check_range(self, "exemplars_per_prompt", 0)
        check_range(self, "retain", 0)
        if self.start_reasoning and (self.teacher_base_url or self.backend in ("openai", "llamacpp")):
            raise UserError("start_reasoning prefills the reply, which an OpenAI endpoint or llama.cpp backend cannot "
                            "continue; use the hf or vllm backend, or --no-start-reasoning")

    @property
    def writer(self) -> str:
        """The model that writes the rationales."""
        return self.teacher or self.model


def self_check(cfg: GenerateConfig, record: PromptRecord) -> tuple[str, list[Exemplar]]:
    """The system prompt for one prompt's self-check, and the worked examples in it.

    A custom `rej_system` / `comp_system` is used as written (no spec, no examples); otherwise: the instructions
    for the prompt's side, its category's safety spec (`specs`), and `exemplars_per_prompt` rotated examples.
    """
    fmt = ReasoningFormat(cfg.reasoning_open, cfg.reasoning_close)
    custom = cfg.rej_system if record.kind in REJECT_KINDS else cfg.comp_system
    if custom is not None:
        return custom.replace("{open}", fmt.open_tag).replace("{close}", fmt.close_tag), []
    side = "decline" if record.kind in REJECT_KINDS else "comply"
    parts = [INSTRUCTIONS[side].replace("{open}", fmt.open_tag).replace("{close}", fmt.close_tag)]
    if cfg.specs:
        parts.append("Policy for this request: " + spec_for(record.kind, record.category))
    chosen = pick_exemplars(record, load_exemplars(cfg.exemplars), cfg.exemplars_per_prompt, cfg.seed,
                            cfg.exclude_exemplar_attacks)
    if chosen:
        parts.append(EXAMPLES_HEAD + "\n\n" + "\n\n".join(_example_block(e, fmt) for e in chosen))
    note = disguise_note(record) if cfg.reveal_disguise else None
    if note:
        parts.append(note)
    return "\n\n".join(parts), chosen


def disguise_note(record: PromptRecord) -> str | None:
    """The stated fact about an adversarial prompt's real request (`DISGUISE_NOTE`), or None for other prompts."""
    base = (record.meta or {}).get("base_prompt")
    if record.kind != "adversarial" or not base or base.strip() == record.prompt.strip():
        return None
    family = (record.meta or {}).get("mutation_family") or ("template" if (record.attack or "").startswith(
        "template") else "")
    return DISGUISE_NOTE.format(base=base.strip(), how=DISGUISES.get(family, "in disguise"))


def reasoning_start(cfg: GenerateConfig, fmt: ReasoningFormat) -> str:
    """What every self-check sample is made to start with (`start_reasoning`), or "" (the writer starts freely)."""
    return f"{fmt.open_tag}\n{SECTIONS[0]}:" if cfg.start_reasoning else ""


def prompt_text(system: str) -> str:
    """Everything the writer was told besides the request (a self-check system text and the answer nudges): what
    the instruction-copy check compares a sample with."""
    return "\n".join([system, *ANSWER_NUDGE.values()])


def system_prompt(cfg: GenerateConfig, record: PromptRecord) -> str:
    return self_check(cfg, record)[0]


# ------------------------------------------------------------------------------------------ prompts


def build_prompts(cfg: GenerateConfig, generator_factory=None) -> tuple[list[PromptRecord], dict]:
    """Pools -> decontaminated base prompts -> + adversarial mutations -> `limit` prompts. Returns (prompts, info)."""
    get_mutations(cfg.mutations)  # unknown names fail before any loading
    base = load_pools(cfg.pools)
    eval_recs = [r for spec in cfg.exclude for r in load_pool(spec)]
    info: dict[str, Any] = {"pool_size": len(base)}
    if eval_recs:
        base, rep = decontaminate(base, eval_recs, cfg.decontam_ngram, cfg.decontam_threshold)
        info["decontamination_base"] = rep
    # Limit before mutating, so a small run does not rewrite the whole pool with the model.
    base = balanced_take(base, cfg.limit)
    harmful = [r for r in base if r.kind == "harmful" and r.attack is None]
    failed: list[dict] = []
    adv: list[PromptRecord] = []
    if cfg.mutations and cfg.mutations_per_prompt > 0 and harmful:
        pairs = assign_mutations(harmful, cfg.mutations, cfg.mutations_per_prompt, cfg.seed)
        templates = None
        if any(n == "template" for _, n in pairs):
            templates = load_templates(cfg.templates, cfg.template_families)
        needs_model = any(get_mutations([n])[0].needs_model for _, n in pairs)
        gen = generator_factory() if needs_model and generator_factory else None
        adv = mutate_pairs(pairs, cfg.seed, gen, templates, failed)
        if eval_recs:
            adv, rep = decontaminate(adv, eval_recs, cfg.decontam_ngram, cfg.decontam_threshold)
            info["decontamination_mutated"] = rep
    prompts = balanced_take(base + adv, cfg.limit)
    if not prompts:
        raise UserError(f"no prompts left to generate for (pools {', '.join(cfg.pools)}, after decontamination)")
    info["mutation_failures"] = failed
    return prompts, info


# ---------------------------------------------------------------------------------------- filtering

_SECTION_START = re.compile(r"^\W*(" + "|".join(re.escape(s) for s in SECTIONS) + r")\W*\s*[:\-]", re.I | re.M)
_DECISION_LINE = re.compile(r"^\W*decision\W*\s*[:\-].*$", re.I | re.M)


def normalise_output(text: str, fmt: ReasoningFormat) -> str:
    """Bring a sampled output to the exact training format, fixing what small models commonly get wrong.

    * no open tag but a close tag, or no tags at all but the labelled sections -> the block is rebuilt
      (without tags, the reasoning ends at the "Decision:" line);
    * chatter before the first section ("Sure, let me think:") is dropped from the reasoning;
    * bold markers around section names (**Intent:**) are removed.
    Anything else (unclosed block, no sections) is left as is and rejected by `assess`.
    """
    text = (text or "").strip()
    o, c = fmt.open_tag, fmt.close_tag
    if o not in text and c not in text:
        m = None
        for m in _DECISION_LINE.finditer(text):
            pass
        if m is None or not _SECTION_START.search(text):
            return text
        text = f"{o}\n{text[: m.end()]}\n{c}\n\n{text[m.end():].strip()}"
    elif o not in text:
        text = f"{o}\n{text}"
    parsed = parse_output(text, fmt)
    if parsed.reasoning is None or parsed.status in ("unclosed", "nested", "extra_tags"):
        return text
    reasoning = parsed.reasoning
    first = _SECTION_START.search(reasoning)
    if first:
        reasoning = reasoning[first.start():]
    reasoning = re.sub(r"\*\*([A-Za-z ]+):\*\*", r"\1:", reasoning)
    reasoning = re.sub(r"^\W*\*\*?([A-Za-z ]+)\*\*?\s*:", r"\1:", reasoning, flags=re.M)
    if not parsed.answer:
        return f"{o}\n{reasoning}\n{c}"
    return format_output(reasoning, parsed.answer, fmt)


class PrefetchedJudge:
    """A judge whose verdicts for a chunk's answers are computed in one `judge_batch` call, then served by `judge`.

    `assess` judges one answer at a time; the learned judge scored them one forward pass each (167 demo answers:
    96 s one by one, 52 s in one batch, same labels; measured beside another job). Pairs that were not prefetched,
    and every pair when the batch call fails, go to the wrapped judge one at a time as before, so a failing judge
    still marks each candidate "unjudged"."""

    def __init__(self, judge):
        self.inner = judge
        self.verdicts: dict[tuple[str, str], object] = {}

    def __getattr__(self, name):  # name, gives_refusal, ... of the wrapped judge
        return getattr(self.inner, name)

    def prefetch(self, pairs: list[tuple[str, str]]) -> None:
        self.verdicts.clear()
        todo = list(dict.fromkeys(pairs))
        if not todo or not hasattr(self.inner, "judge_batch"):
            return
        try:
            verdicts = self.inner.judge_batch(todo)
        except Exception:  # noqa: BLE001 - judged one at a time below, where each failure is recorded
            return
        self.verdicts.update(zip(todo, verdicts))

    def judge(self, prompt: str, response: str):
        v = self.verdicts.get((prompt, response))
        return v if v is not None else self.inner.judge(prompt, response)


def answers_to_judge(kind: str, prompt: str, text: str, fmt: ReasoningFormat, plain_answer: str | None
                     ) -> list[tuple[str, str]]:
    """The (prompt, answer) pairs `assess` may judge for one sample (a superset: it stops at the first accepted)."""
    answer = parse_output(normalise_output(text, fmt), fmt).answer
    pairs = [(prompt, answer)] if answer else []
    if plain_answer and kind not in REJECT_KINDS:
        pairs.append((prompt, plain_answer.strip()))
    return pairs


def _judge_refused(judge, prompt: str, answer: str) -> tuple[dict | None, bool | None]:
    """(verdict dict, refused) of one answer; a judge that raised or could not run gives refused None."""
    try:
        v = judge.judge(prompt, answer)
    except Exception as e:  # noqa: BLE001 - a broken judge marks this candidate; >1% of them stops the run
        return {"judge": getattr(judge, "name", "?"), "label": None, "error": f"{type(e).__name__}: {e}"[:300]}, None
    return v.to_dict(), (None if not v.parsed else v.refused)


def assess(kind: str, prompt: str, text: str, finish_reason: str, judge, fmt: ReasoningFormat,
           min_reasoning_chars: int, min_answer_chars: int = 0, *, base_prompt: str | None = None,
           exemplars: list[Exemplar] | tuple = (), plain_answer: str | None = None, quality: bool = True,
           instructions: str = "") -> dict:
    """Normalise, parse, judge and check one sample; returns the candidate fields incl. `accepted` and `reason`.

    Structure first (well-formed, all four sections, the decision the prompt's kind needs), then the answer: the
    judge must call a refusal a refusal and a compliance not a refusal, and the quality checks (`quality.py`) must
    find nothing. For a benign prompt with a `plain_answer` (the model's own answer without the self-check
    prompt), that answer is tried first after the sample's reasoning, and the sample's own answer second.
    """
    rejecting = kind in REJECT_KINDS
    norm = normalise_output(text, fmt)
    parsed = parse_output(norm, fmt)
    decision = extract_decision(parsed.reasoning)
    sections = has_all_sections(parsed.reasoning)
    result = {"text": norm, "raw": text if norm != text else None, "status": parsed.status, "decision": decision,
              "has_sections": sections, "verdict": None, "answer_source": "sample", "problems": []}
    want = "decline" if rejecting else "comply"
    if finish_reason == "length":
        reason = "truncated"
    elif not parsed.well_formed:
        reason = f"malformed:{parsed.status}"
    elif not sections:
        reason = "missing_sections"
    elif decision is None:
        reason = "no_decision"
    elif decision != want:
        reason = f"decision_{decision}"
    elif len(parsed.reasoning or "") < min_reasoning_chars:
        reason = "reasoning_too_short"
    else:
        reason = None
    if reason:
        if parsed.answer:  # judged anyway: the verdict says what the model did, useful for pairs and stats
            result["verdict"], _ = _judge_refused(judge, prompt, parsed.answer)
        return {**result, "accepted": False, "reason": reason, "quality_score": None}
    answers = [("sample", parsed.answer)]
    if plain_answer and not rejecting:
        answers.insert(0, ("plain", plain_answer.strip()))
    for source, answer in answers:
        verdict, refused = _judge_refused(judge, prompt, answer)
        problems = check_rationale(decision, prompt, base_prompt, parsed.reasoning, answer, exemplars,
                                   None if rejecting else plain_answer, instructions) if quality else []
        if refused is None:
            reason = "unjudged"
        elif rejecting and not refused:
            reason = "answer_not_refusal"
        elif not rejecting and refused:
            reason = "answer_refused"
        elif not rejecting and len(answer) < min_answer_chars:
            reason = "answer_too_short"
        elif problems:
            reason = "quality:" + problems[0].split(":", 1)[0]
        else:
            reason = None
        final = format_output(parsed.reasoning, answer, fmt)
        out = {**result, "text": final, "raw": text if final != text else None, "verdict": verdict,
               "answer_source": source, "problems": problems, "accepted": reason is None, "reason": reason,
               "quality_score": quality_score(prompt, base_prompt, parsed.reasoning, answer)}
        if reason is None:
            return out
    return out


# ------------------------------------------------------------------------------------------- running


def _chunk_seed(seed: int, attempt: int, chunk: int) -> int:
    return int(hashlib.sha256(f"{seed}:{attempt}:{chunk}".encode()).hexdigest()[:8], 16)


# Everything `generate` writes into OUT (removed by --overwrite, or when a first try left no candidates).
OUTPUTS = ("prompts.jsonl", "prompts_info.json", "candidates.jsonl", "plain_answers.jsonl", "retain.jsonl", "sft.jsonl",
           "stats.json", "config.yaml", "provenance.json")


def _prepare_out(cfg: GenerateConfig, out: Path) -> bool:
    """Check what OUT holds against `cfg`; returns True when this run continues earlier candidates.

    A folder with candidates made with other settings (or other input files) is refused with one line; one that
    holds no candidates yet (e.g. a first try with a mistyped --model) is started over.
    """
    if cfg.overwrite:
        clear_outputs(out, OUTPUTS)
    inputs = input_hashes([*cfg.pools, *cfg.exclude, cfg.templates])
    # Folders written before these settings existed behaved like these values.
    diff = resume_difference(out, cfg, inputs,
                             added_later={"reveal_disguise": False, "retain": 0, "retain_pool": "retain",
                                          "start_reasoning": False})
    has_work = (out / "candidates.jsonl").is_file() and (out / "candidates.jsonl").stat().st_size > 0
    if diff and has_work:
        raise UserError(f"{out}: holds a generate run with different '{diff.key}' ({diff.text}); use the same "
                        "settings to resume, --overwrite to start over, or another --out")
    if diff:
        clear_outputs(out, OUTPUTS)
        has_work = False
    record_provenance(out, cfg, inputs)
    return has_work


class _Appender:
    """Append-only JSONL with a flush + fsync per record, so an interruption never loses a written line."""

    def __init__(self, path: Path):
        # A run killed mid-line leaves a partial last line: cut it off before appending.
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                path.write_bytes(data[: data.rfind(b"\n") + 1])
        self.f = path.open("a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def run_generate(cfg: GenerateConfig, generator=None, judge=None, progress: bool = True) -> Path:
    """Run synthesis into `cfg.out`; returns the path of `sft.jsonl`. Resumes a previous run in the same folder."""
    judge = PrefetchedJudge(judge or get_judge(cfg.judge))
    with output_lock(cfg.out) as out:
        return _generate(cfg, out, generator, judge, progress)


def _generate(cfg: GenerateConfig, out: Path, generator, judge, progress: bool) -> Path:
    fmt = ReasoningFormat(cfg.reasoning_open, cfg.reasoning_close)
    start = time.perf_counter()
    resumed = _prepare_out(cfg, out)

    state = {"gen": generator}

    def gen():  # the writer of the rationales: the model itself, or a teacher (local or behind an endpoint)
        if state["gen"] is None:
            backend = "openai" if cfg.teacher_base_url else cfg.backend
            state["gen"] = load_generator(backend, cfg.writer, dtype=cfg.dtype, batch_size=cfg.batch_size,
                                          base_url=cfg.teacher_base_url, seed=cfg.seed, reasoning_format=fmt)
        return state["gen"]

    prompts_path, info_path = out / "prompts.jsonl", out / "prompts_info.json"
    if prompts_path.is_file() and info_path.is_file():
        prompts = read_records(prompts_path)
        info = json.loads(info_path.read_text())
    else:
        prompts, info = build_prompts(cfg, gen)
        write_json(info_path, info)
        write_jsonl(prompts_path, prompts)  # last: its presence means the prompt set is final

    plain_path = out / "plain_answers.jsonl"
    plain = {r["id"]: r["text"] for r in read_jsonl(plain_path, partial_last_line_ok=True)} \
        if plain_path.is_file() else {}
    cand_path = out / "candidates.jsonl"
    done: dict[tuple[str, int], list[dict]] = defaultdict(list)
    if cand_path.is_file():
        earlier = read_jsonl(cand_path, partial_last_line_ok=True)
        if _reassess(earlier, {p.id: p for p in prompts}, cfg, judge, fmt, plain):
            write_jsonl(cand_path, earlier)  # unscored last time, or made under other checks: assessed now
        for c in earlier:
            done[(c["id"], c["attempt"])].append(c)
    writer = _Appender(cand_path)
    plain_writer = _Appender(plain_path) if cfg.plain_answers else None
    try:
        for attempt in range(cfg.max_retries + 1):
            # Prompts still without an accepted sample after the earlier attempts (deterministic).
            todo = [p for p in prompts
                    if not any(c["accepted"] for a in range(attempt) for c in done.get((p.id, a), []))]
            chunks = [todo[i : i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size)]
            for ci, chunk in enumerate(chunks):
                missing = [p for p in chunk if len(done.get((p.id, attempt), [])) < cfg.n_samples]
                if not missing:
                    continue
                params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                        top_p=cfg.top_p, n=cfg.n_samples, seed=_chunk_seed(cfg.seed, attempt, ci))
                if plain_writer is not None:
                    _plain_answers(gen, [p for p in chunk if p.kind not in REJECT_KINDS], plain, plain_writer, cfg)
                checks = [self_check(cfg, p) for p in chunk]
                chats = [[{"role": "system", "content": system}, {"role": "user", "content": p.prompt}]
                         for p, (system, _) in zip(chunk, checks)]
                opening = reasoning_start(cfg, fmt)  # the prefilled opening of every sample, or ""
                asked = [c + [{"role": "assistant", "content": opening}] for c in chats] if opening else chats
                # The whole chunk is regenerated (same seed, same batch) so outputs equal an uninterrupted run.
                outputs = gen().generate(asked, params, progress=progress,
                                         desc=f"self-check attempt {attempt + 1}/{cfg.max_retries + 1}, "
                                              f"batch {ci + 1}/{len(chunks)}")
                for o in outputs:  # a sample is the prefill and its continuation
                    o.completions = [replace(c, text=opening + c.text) for c in o.completions]
                texts = [[c.text for c in o.completions[: cfg.n_samples]] for o in outputs]
                completed: dict[tuple[int, int], str] = {}
                if cfg.complete_answers:
                    completed = complete_answers(gen(), chats, outputs, cfg, fmt, params)
                judge.prefetch([pair for i, (p, o) in enumerate(zip(chunk, outputs))
                                for j in range(len(o.completions[: cfg.n_samples]))
                                for pair in answers_to_judge(p.kind, p.prompt, completed.get((i, j), texts[i][j]),
                                                             fmt, plain.get(p.id))])
                for i, (p, o) in enumerate(zip(chunk, outputs)):
                    have = len(done.get((p.id, attempt), []))
                    for j, comp in enumerate(o.completions[: cfg.n_samples]):
                        if j < have:
                            continue
                        text = completed.get((i, j), texts[i][j])
                        c = {"key": f"{p.id}#{attempt}#{j}", "id": p.id, "attempt": attempt, "sample": j,
                             "kind": p.kind, "category": p.category, "attack": p.attack,
                             "system": "rejection" if p.kind in REJECT_KINDS else "compliance",
                             "seed": params.seed, "num_tokens": comp.num_tokens,
                             "finish_reason": comp.finish_reason, "answer_completed": (i, j) in completed}
                        c.update(_assess_sample(cfg, p, text, comp.finish_reason, judge, fmt, checks[i],
                                                plain.get(p.id)))
                        writer.write(c)
                        done[(p.id, attempt)].append(c)
    finally:
        writer.close()
        if plain_writer is not None:
            plain_writer.close()

    # Attempts beyond max_retries (from an earlier run of this folder with more) are kept on disk, not used.
    candidates = [c for c in read_jsonl(cand_path) if int(c["attempt"]) <= cfg.max_retries]
    _check_judge_failures(candidates, judge, cand_path)
    retain = retain_set(cfg, gen, judge, out / "retain.jsonl") if cfg.retain else []
    sft = export_sft(prompts, candidates, cfg.keep_per_prompt) + export_retain(retain)
    sft_path = write_jsonl(out / "sft.jsonl", sft)
    stats = compute_stats(cfg, prompts, candidates, sft, info, time.perf_counter() - start, resumed)
    if cfg.retain:
        stats["retain"] = {"prompts": len(retain), "accepted": sum(r["accepted"] for r in retain),
                           "rejection_reasons": dict(Counter(r["reason"] for r in retain if not r["accepted"]))}
    write_json(out / "stats.json", stats)
    return sft_path


def _plain_answers(gen, prompts: list[PromptRecord], plain: dict[str, str], writer: _Appender,
                   cfg: GenerateConfig) -> None:
    """The writer's own answers to benign prompts, asked plainly (no self-check prompt, greedy), once per prompt;
    appended to plain_answers.jsonl, so a resumed run reuses them."""
    todo = [p for p in prompts if p.id not in plain]
    if not todo:
        return
    for p, (text, c) in zip(todo, ask_plainly(gen, todo, cfg.answer_max_new_tokens or cfg.max_new_tokens)):
        plain[p.id] = text
        writer.write({"id": p.id, "text": text, "finish_reason": c.finish_reason, "num_tokens": c.num_tokens})


def ask_plainly(gen, prompts: list[PromptRecord], max_new_tokens: int) -> list[tuple[str, Any]]:
    """The writer's greedy answers to the bare requests (no system prompt): (text, completion) per prompt, a
    cut-off answer kept up to its last whole sentence."""
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    outputs = gen().generate([[{"role": "user", "content": p.prompt}] for p in prompts], params, progress=False)
    return [(c.text.strip() if c.finish_reason == "stop" else _whole_sentences(c.text), c)
            for c in (o.completions[0] for o in outputs)]


def _whole_sentences(text: str) -> str:
    """A cut-off answer up to its last complete sentence or line (nothing when less than half of it survives):
    training on a text that stops mid-word would teach the model to stop mid-word."""
    text = text.strip()
    cut = max(text.rfind(". "), text.rfind(".\n"), text.rfind("!\n"), text.rfind("?\n"), text.rfind("\n\n"))
    return text[: cut + 1].strip() if cut >= len(text) // 2 else ""


RETAIN_POOL = RESOURCES / "retain_prompts.jsonl"


def retain_set(cfg: GenerateConfig, gen, judge, path: Path) -> list[dict]:
    """The retain set: the writer's own plain answers (greedy, no self-check prompt) to `cfg.retain` clearly benign
    prompts, each kept when it is complete, not a refusal, not a non-answer and, for a question with a reference
    answer, correct. Clearly benign requests need no safety reasoning (the paper's capability concern; EASE's
    selective reasoning), and training on the model's own answers keeps its everyday skills. Rows are appended to
    `path` as they are made, so a resumed run reuses them."""
    pool = load_pool(str(RETAIN_POOL) if cfg.retain_pool == "retain" else cfg.retain_pool)
    pool = [r for r in pool if r.kind == "benign"]
    eval_recs = [r for spec in cfg.exclude for r in load_pool(spec)]
    if eval_recs:
        pool, _ = decontaminate(pool, eval_recs, cfg.decontam_ngram, cfg.decontam_threshold)
    chosen = hash_take(pool, cfg.retain, cfg.seed)
    if len(chosen) < cfg.retain:
        raise UserError(f"generate.retain = {cfg.retain} but the retain pool '{cfg.retain_pool}' has only "
                        f"{len(chosen)} benign prompts after decontamination; lower retain or pass a larger pool")
    rows = {r["id"]: r for r in read_jsonl(path, partial_last_line_ok=True)} if path.is_file() else {}
    todo = [p for p in chosen if p.id not in rows or rows[p.id]["reason"] == "unjudged"]
    if todo:
        answers = ask_plainly(gen, todo, cfg.max_new_tokens)
        judge.prefetch([(p.prompt, t) for p, (t, _) in zip(todo, answers) if t])
        writer = _Appender(path)
        try:
            for p, (text, c) in zip(todo, answers):
                reason = None
                if len(text) < cfg.min_answer_chars:
                    reason = "truncated" if c.finish_reason != "stop" else "too_short"
                elif p.answer is not None and not exact_match(text, p.answer):
                    reason = "wrong_answer"
                else:
                    refused = _judge_refused(judge, p.prompt, text)[1]
                    reason = "refused" if refused else "unjudged" if refused is None else \
                        "non_answer" if meta_answer(text) or echoes_prompt(p.prompt, text) else None
                row = {"id": p.id, "prompt": p.prompt, "category": p.category, "source": p.source, "text": text,
                       "finish_reason": c.finish_reason, "accepted": reason is None,
                       "reason": reason}
                writer.write(row)
                rows[p.id] = row
        finally:
            writer.close()
    return [rows[p.id] for p in chosen]


def export_retain(rows: list[dict]) -> list[dict]:
    """Accepted retain answers as sft.jsonl records: the plain answer, no reasoning block (meta.retain = true)."""
    return [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "completion": [{"role": "assistant", "content": r["text"]}],
             "meta": {"id": r["id"], "kind": "benign", "category": r["category"], "source": r["source"],
                      "attack": None, "base_id": r["id"], "template": None, "retain": True, "decision": "comply",
                      "answer_source": "plain"}}
            for r in rows if r["accepted"]]


def _assess_sample(cfg: GenerateConfig, p: PromptRecord, text: str, finish_reason: str, judge,
                   fmt: ReasoningFormat, check: tuple[str, list[Exemplar]], plain_answer: str | None) -> dict:
    """`assess` one sample of prompt `p` written under `check` (its self-check system text and examples): the
    candidate's verdict fields, the examples' ids and the checks' digest."""
    system, exemplars = check
    return {**assess(p.kind, p.prompt, text, finish_reason, judge, fmt, cfg.min_reasoning_chars,
                     cfg.min_answer_chars, base_prompt=p.meta.get("base_prompt"), exemplars=exemplars,
                     plain_answer=plain_answer, quality=cfg.quality_checks, instructions=prompt_text(system)),
            "exemplars": [e.id for e in exemplars], "checks": checks_version()}


@lru_cache(maxsize=1)
def checks_version() -> str:
    """A digest of the code that accepts or rejects a sample (quality.py, reasoning.py, `assess` and
    `normalise_output`), stored with every candidate: a resumed run assesses earlier candidates again when the
    checks changed since they were written, so one folder never mixes two versions of the bar."""
    src = "".join(inspect.getsource(o) for o in (_quality, _reasoning, assess, normalise_output))
    return hashlib.sha256(src.encode()).hexdigest()[:12]


def _reassess(candidates: list[dict], prompts: dict[str, PromptRecord], cfg: GenerateConfig, judge,
              fmt: ReasoningFormat, plain: dict[str, str]) -> int:
    """Assess again, in place, the earlier candidates that the judge could not score or that other checks
    (`checks_version`) accepted or rejected; their text is kept. Returns how many."""
    pool = {e.id: e for e in load_exemplars(cfg.exemplars)}
    redo = [c for c in candidates if c["id"] in prompts and
            (c.get("reason") == "unjudged" or c.get("checks") != checks_version())]
    step = max(cfg.batch_size, 64)
    for i in range(0, len(redo), step):
        part = redo[i : i + step]
        judge.prefetch([pair for c in part for pair in answers_to_judge(
            prompts[c["id"]].kind, prompts[c["id"]].prompt, c.get("raw") or c["text"], fmt, plain.get(c["id"]))])
        for c in part:
            p = prompts[c["id"]]
            system = self_check(cfg, p)[0]
            c.update(_assess_sample(cfg, p, c.get("raw") or c["text"], c["finish_reason"], judge, fmt,
                                    (system, [pool[e] for e in c.get("exemplars", []) if e in pool]),
                                    plain.get(p.id)))
    return len(redo)


def _check_judge_failures(candidates: list[dict], judge, path: Path) -> None:
    """A judge that failed (crashed, endpoint down) on more than 1% of the candidates is an error, not a filter."""
    failed = [c for c in candidates if (c.get("verdict") or {}).get("error") or
              ((c.get("verdict") or {}).get("fields") or {}).get("error")]
    if candidates and len(failed) > 0.01 * len(candidates):
        v = failed[0]["verdict"]
        error = v.get("error") or v["fields"]["error"]
        raise UserError(f"judge {getattr(judge, 'name', '?')} failed on {len(failed)} of {len(candidates)} candidates "
                        f"(first: {failed[0]['key']}: {error[:160]}); fix the judge and run the same command again "
                        f"(those candidates are judged again; {path} keeps the generated text)")


def complete_answers(generator, chats, outputs, cfg: GenerateConfig, fmt: ReasoningFormat, params) -> dict:
    """For samples that end right after a usable reasoning block, generate the answer in a follow-up turn.

    Returns {(prompt index, sample index): reasoning + answer text}. One batched call; its seed is derived from
    the chunk's, so a resumed run reproduces it.
    """
    todo = []
    for i, o in enumerate(outputs):
        for j, comp in enumerate(o.completions[: cfg.n_samples]):
            parsed = parse_output(normalise_output(comp.text, fmt), fmt)
            decision = extract_decision(parsed.reasoning)
            if (comp.finish_reason == "stop" and parsed.status == "empty_answer" and decision
                    and has_all_sections(parsed.reasoning)):
                todo.append((i, j, parsed.reasoning, decision))
    if not todo:
        return {}
    follow = [chats[i] + [{"role": "assistant", "content": f"{fmt.open_tag}\n{r}\n{fmt.close_tag}"},
                          {"role": "user", "content": ANSWER_NUDGE[d]}] for i, _, r, d in todo]
    answers = generator.generate(follow, replace(params, n=1, seed=params.seed + 1,
                                                 max_new_tokens=cfg.answer_max_new_tokens or params.max_new_tokens),
                                 progress=False)
    done = {}
    for (i, j, reasoning, _), a in zip(todo, answers):
        text = a.text
        if fmt.close_tag in text:  # the model reasoned again: keep what follows its block
            text = text.split(fmt.close_tag, 1)[1]
        if text.strip() and a.completions[0].finish_reason == "stop":
            done[(i, j)] = format_output(reasoning, text, fmt)
    return done


def export_sft(prompts: list[PromptRecord], candidates: list[dict], keep_per_prompt: int = 1) -> list[dict]:
    """TRL conversational prompt-completion records (no system prompt), in prompt order.

    Best-of-n: of a prompt's accepted samples, the ones with the highest `quality_score` (coverage of the request,
    reasoning of moderate length) are kept, ties broken by order."""
    by_id: dict[str, list[dict]] = defaultdict(list)
    for c in candidates:
        if c["accepted"]:
            by_id[c["id"]].append(c)
    rows = []
    for p in prompts:
        seen: set[str] = set()
        for c in sorted(by_id.get(p.id, []), key=lambda c: (-(c.get("quality_score") or 0), c["attempt"],
                                                             c["sample"])):
            if len(seen) >= keep_per_prompt or c["text"] in seen:
                continue
            seen.add(c["text"])
            v = c.get("verdict") or {}
            rows.append({
                "prompt": [{"role": "user", "content": p.prompt}],
                "completion": [{"role": "assistant", "content": c["text"]}],
                "meta": {"id": p.id, "kind": p.kind, "category": p.category, "source": p.source, "attack": p.attack,
                         "base_id": p.root_id, "template": p.template, "candidate": c["key"],
                         "system": c["system"], "decision": c["decision"],
                         "answer_source": c.get("answer_source", "sample"), "quality_score": c.get("quality_score"),
                         "verdict": {"judge": v.get("judge"), "label": v.get("label"), "refused": v.get("refused")}},
            })
    return rows


def _rate(a: int, n: int) -> float | None:
    return round(a / n, 4) if n else None


def compute_stats(cfg: GenerateConfig, prompts: list[PromptRecord], candidates: list[dict], sft: list[dict],
                  info: dict, wall: float, resumed: bool) -> dict:
    accepted_ids = {r["meta"]["id"] for r in sft}

    def table(key) -> dict:
        t: dict[str, dict] = {}
        for p in prompts:
            k = key(p) or "none"
            row = t.setdefault(k, {"prompts": 0, "accepted_prompts": 0})
            row["prompts"] += 1
            row["accepted_prompts"] += p.id in accepted_ids
        for row in t.values():
            row["acceptance_rate"] = _rate(row["accepted_prompts"], row["prompts"])
        return dict(sorted(t.items()))

    n_acc = sum(c["accepted"] for c in candidates)
    tokens = sum(c.get("num_tokens", 0) for c in candidates)
    return {
        "model": cfg.model, "writer": cfg.writer, "teacher": cfg.teacher, "judge": cfg.judge, "backend": cfg.backend,
        "pools": cfg.pools,
        "prompts": len(prompts), "prompts_accepted": len(accepted_ids),
        "prompt_acceptance_rate": _rate(len(accepted_ids), len(prompts)),
        "candidates": len(candidates), "candidates_accepted": n_acc,
        "candidate_acceptance_rate": _rate(n_acc, len(candidates)),
        "sft_records": len(sft),
        "by_kind": table(lambda p: p.kind), "by_category": table(lambda p: p.category),
        "by_attack": table(lambda p: p.attack),
        "rejection_reasons": dict(Counter(c["reason"] for c in candidates if not c["accepted"]).most_common()),
        # Every quality problem found (a candidate can have several), accepted answers by where they came from.
        "quality_problems": dict(Counter(pr.split(":", 1)[0] for c in candidates for pr in c.get("problems") or [])
                                 .most_common()),
        "answer_sources": dict(Counter(r["meta"].get("answer_source", "sample") for r in sft)),
        "unjudged": sum(c["reason"] == "unjudged" for c in candidates),
        "attempts": dict(Counter(str(c["attempt"]) for c in candidates)),
        "decontamination": {k: v for k, v in info.items() if k.startswith("decontamination")},
        "pool_size": info.get("pool_size"),
        "mutation_failures": len(info.get("mutation_failures", [])),
        "mutation_failure_reasons": dict(Counter(f["reason"] for f in info.get("mutation_failures", []))),
        "tokens_generated": tokens, "wall_seconds": round(wall, 2),
        "tokens_per_second_this_session": None if resumed else round(tokens / max(wall, 1e-9), 1),
        "resumed": resumed,
    }


# --------------------------------------------------------------------------------------------- CLI


def generate_command(cfg: GenerateConfig) -> None:
    from rich.console import Console

    path = run_generate(cfg)
    stats = json.loads((path.parent / "stats.json").read_text())
    console = Console(stderr=True)
    console.print(f"[bold]{stats['prompts_accepted']}/{stats['prompts']}[/] prompts with an accepted rationale "
                  f"({stats['candidates']} candidates, judge {stats['judge']}); "
                  f"{stats['sft_records']} records -> {path}")
    by_kind = ", ".join(f"{k} {v['accepted_prompts']}/{v['prompts']}" for k, v in stats["by_kind"].items())
    console.print(f"by kind: {by_kind}; tokens {stats['tokens_generated']} in {stats['wall_seconds']} s")
    if stats["sft_records"] == 0 and cfg.model == "tiny-random" and cfg.backend != "scripted":
        console.print("[yellow]tiny-random writes noise, so nothing passes the filter; for a plumbing run use "
                      "--backend scripted, for real rationales a real model[/]")
