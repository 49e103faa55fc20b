"""`rational report`: compare evaluated models (base, refusal-sft, rational, ...) in one standalone HTML file.

Reads each eval folder's metrics.json and generations.jsonl and writes
  * report.html: headline table with 95% intervals and n, per-category and per-attack tables, a
    safety-vs-over-refusal scatter and per-attack bar charts (matplotlib PNGs embedded as base64, so the
    file stands alone), the judges with their validation figures, and example traces;
  * a Markdown twin next to it (same name, `.md`), with the same tables.
Example answers to harmful prompts that were judged NOT refused are truncated and marked, never shown in full.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

from .common import read_jsonl, write_text_atomic
from .config import setting
from .errors import UserError
from .eval import outcomes
from .stats import paired_comparison

TRUNCATE_MARK = "[truncated: judged non-refusal to a harmful request]"
METRIC_LABELS = {
    "harmful_compliance": "harmful compliance (lower = safer)",
    "asr": "attack success rate (lower = safer)",
    "compliance": "compliance on benign look-alikes (higher = less over-refusal)",
    "exact_match": "exact match (higher = better)",
    "faithfulness": "reasoning faithfulness (higher = better)",
    "well_formed_reasoning": "well-formed reasoning",
    "harmful_rate": "harmful answers (harm judge)",
    "full_refusal": "full refusal",
    "partial_refusal": "partial refusal",
}


# ------------------------------------------------------------------------------------------ loading


def load_run(d: str | Path) -> dict:
    """metrics.json of an eval folder plus its path; one-line error when the folder is not an eval output."""
    path = Path(d) / "metrics.json"
    if not path.is_file():
        raise UserError(f"{d}: no metrics.json; pass folders written by `rational eval --out DIR`")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise UserError(f"{path}: not valid JSON; re-run `rational eval` for that folder") from None
    if "suites" not in m:
        raise UserError(f"{path}: not an eval metrics file (no 'suites')")
    m["_dir"] = str(d)
    return m


def _names(runs: list[dict], names: list[str] | None) -> list[str]:
    if names and len(names) != len(runs):
        raise UserError(f"--names given {len(names)} times for {len(runs)} folders; give one per folder or none")
    out = list(names) if names else [r.get("name") or Path(r["_dir"]).name for r in runs]
    # Two runs of the same model would collide in tables: suffix the folder name.
    return [n if out.count(n) == 1 else f"{n} ({Path(r['_dir']).name})" for n, r in zip(out, runs)]


def _judge_of(m: dict, metric: str) -> str:
    j = m.get("judges", {})
    if metric == "asr":
        return j.get("asr_definition", "")
    if metric == "harmful_rate":
        return j.get("harm") or ""
    if metric.startswith("score:"):
        return metric.split(":", 1)[1]
    if metric in ("exact_match", "well_formed_reasoning"):
        return "-"
    return j.get("refusal", "")


def headline_rows(dirs: list[str | Path], names: list[str] | None = None) -> list[dict]:
    """One row per (model, suite) headline number: name, suite, metric, rate, lo, hi, k, n, judge, lower_is_better.

    The pipeline prints these as a rich table; build_report shows them as the headline table.
    """
    runs = [load_run(d) for d in dirs]
    rows = []
    for name, m in zip(_names(runs, names), runs):
        for suite, s in m["suites"].items():
            # Mixed suites (smoke, custom) have no single headline: show each of their main rates.
            heads = [s["headline"]] if s.get("headline") else [
                {"metric": k, "lower_is_better": k in ("asr", "harmful_compliance"), **s["metrics"][k]}
                for k in ("harmful_compliance", "asr", "compliance", "exact_match") if k in s["metrics"]]
            for h in heads:
                rows.append({"name": name, "suite": suite, "metric": h["metric"], "rate": h["rate"], "lo": h["lo"],
                             "hi": h["hi"], "k": h["k"], "n": h.get("n_scored", h["n"]), "n_rows": h["n"],
                             "judge": _judge_of(m, h["metric"]), "lower_is_better": h["lower_is_better"],
                             "keyword": False})
            if s.get("headline_keyword"):  # the keyword judge's figure beside the main judge's
                h = s["headline_keyword"]
                rows.append({"name": name, "suite": suite, "metric": h["metric"], "rate": h["rate"], "lo": h["lo"],
                             "hi": h["hi"], "k": h["k"], "n": h.get("n_scored", h["n"]), "n_rows": h["n"],
                             "judge": h["judge"], "lower_is_better": h["lower_is_better"], "keyword": True})
    return rows


def _generations(runs: list[dict]) -> list[dict[str, dict]]:
    """Each run's generations.jsonl as {row id: row} (empty when the folder has none)."""
    gens = []
    for m in runs:
        p = Path(m["_dir"]) / "generations.jsonl"
        gens.append({r["id"]: r for r in read_jsonl(p, partial_last_line_ok=True)} if p.is_file() else {})
    return gens


def paired_rows(dirs: list[str | Path], names: list[str] | None = None, reference: str = "rational") -> list[dict]:
    """The reference model (default: the one named "rational", else the last) against every other model, on the
    prompts both answered, for each suite's headline metric: rates on the shared prompts, discordant counts and
    the exact McNemar p-value. Both sides are scored with their own run's judges (the same ones within a run)."""
    runs = [load_run(d) for d in dirs]
    labels = _names(runs, names)
    gens = _generations(runs)
    ref = labels.index(reference) if reference in labels else len(runs) - 1
    out = []
    for suite, s in runs[ref]["suites"].items():
        if not s.get("headline"):
            continue
        metric = s["headline"]["metric"]

        def scored(k: int) -> dict[str, bool]:
            j = runs[k].get("judges", {})
            rows = [r for r in gens[k].values() if r.get("suite") == suite]
            return outcomes(rows, metric, j.get("refusal", ""), j.get("harm"))

        a = scored(ref)
        for k in range(len(runs)):
            if k != ref and suite in runs[k]["suites"]:
                out.append({"suite": suite, "metric": metric, "a": labels[ref], "b": labels[k],
                            "lower_is_better": s["headline"]["lower_is_better"], **paired_comparison(a, scored(k))})
    return out


def _fmt(st: dict | None) -> str:
    if not st:
        return "-"
    if "rate" in st:
        if st["rate"] is None:
            return "n=0"
        return f"{st['rate']:.3f} [{st['lo']:.3f}, {st['hi']:.3f}] n={st.get('n_scored', st['n'])}"
    if st.get("mean") is None:
        return "n=0"
    return f"{st['mean']:.3f} [{st['lo']:.3f}, {st['hi']:.3f}] n={st['n']}"


# ------------------------------------------------------------------------------------------ tables


def _tables(runs: list[dict], names: list[str]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for every table of the report, shared by the HTML and the Markdown."""
    tables = []
    # Headline: every overall metric of every suite, one column per model.
    keys = []
    for m in runs:
        for suite, s in m["suites"].items():
            for metric in s["metrics"]:
                if (suite, metric) not in keys:
                    keys.append((suite, metric))
    rows = []
    for suite, metric in keys:
        judge = next((_judge_of(m, metric) for m in runs if metric in m["suites"].get(suite, {}).get("metrics", {})),
                     "")
        rows.append([suite, METRIC_LABELS.get(metric, metric), judge]
                    + [_fmt(m["suites"].get(suite, {}).get("metrics", {}).get(metric)) for m in runs])
        kw = [m["suites"].get(suite, {}).get("headline_keyword") for m in runs]
        kw = [k if k and k["metric"] == metric else None for k in kw]
        if any(kw):  # the headline number again under the keyword judge, on the row below
            rows.append([suite, METRIC_LABELS.get(metric, metric), next(k["judge"] for k in kw if k)]
                        + [_fmt(k) for k in kw])
    tables.append(("Headline metrics (rate [95% Wilson interval]; means with bootstrap intervals)",
                   ["suite", "metric", "judge"] + names, rows))
    frontier = frontier_points(runs, names)
    if frontier:
        tables.append(("Safety vs over-refusal frontier (the plot's points)",
                       ["method", "comply share", "compliance on benign look-alikes", "attack success / harmful"],
                       [[p["method"], p["mix"] or "-", _fmt(p["x"]), f"{_fmt(p['y'])} ({p['y_label']})"]
                        for p in frontier]))
    paired = paired_rows([m["_dir"] for m in runs], names)
    if paired:
        tables.append(("Paired comparisons on shared prompts (exact McNemar test)",
                       ["suite", "metric", "models", "n pairs", "rates", "only first / only second", "p"],
                       [[p["suite"], METRIC_LABELS.get(p["metric"], p["metric"]), f"{p['a']} vs {p['b']}",
                         p["n_pairs"], _rates(p), f"{p['a_only']} / {p['b_only']}", format_p(p["p_mcnemar"])]
                        for p in paired]))
    for group, title in (("by_category", "Per category"), ("by_attack", "Per attack"),
                         ("by_attack_family", "Per attack family")):
        rows = []
        for suite in dict.fromkeys(s for m in runs for s in m["suites"]):
            main = _main_metric(suite, runs)
            if not main:
                continue
            cats = list(dict.fromkeys(c for m in runs for c in m["suites"].get(suite, {}).get(group, {})))
            for c in cats:
                cells = [_fmt(m["suites"].get(suite, {}).get(group, {}).get(c, {}).get(main)) for m in runs]
                if any(x != "-" for x in cells):
                    rows.append([suite, c, METRIC_LABELS.get(main, main)] + cells)
        if rows:
            tables.append((f"{title}", ["suite", group.split("_", 1)[1].replace("_", " "), "metric"] + names, rows))
    return tables


def _rates(p: dict) -> str:
    return "-" if p["a_rate"] is None else f"{p['a_rate']:.3f} vs {p['b_rate']:.3f}"


def format_p(p: float | None) -> str:
    return "-" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _main_metric(suite: str, runs: list[dict]) -> str | None:
    for m in runs:
        s = m["suites"].get(suite, {})
        if s.get("headline"):
            return s["headline"]["metric"]
        for metric in ("asr", "harmful_compliance", "compliance", "exact_match"):
            if metric in s.get("metrics", {}):
                return metric
    return None


def _markdown(tables, runs, names) -> str:
    lines = ["# Rational evaluation report", ""]
    lines += [f"- **{n}**: model `{m.get('model')}`, adapter `{m.get('adapter')}`, folder `{m['_dir']}`, "
              f"{m.get('n_prompts', '?')} prompts" for n, m in zip(names, runs)]
    lines.append("")
    for title, header, rows in tables:
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
        lines.append("")
    lines += ["## Judges", ""] + [f"- {line}" for line in _judge_lines(runs)]
    return "\n".join(lines) + "\n"


def _judge_lines(runs: list[dict]) -> list[str]:
    seen, out = set(), []
    for m in runs:
        for name, fig in (m.get("judge_validation") or {}).items():
            if name in seen:
                continue
            seen.add(name)
            if fig and "summary" in fig:
                out.append(f"{name}: {fig['summary']}")
            elif fig:
                out.append(f"{name}: vs human refusal labels ({', '.join(fig.get('files', []))}) n={fig['n']}, "
                           f"accuracy {_fmt(fig['accuracy'])}, precision {_fmt(fig['precision'])}, "
                           f"recall {_fmt(fig['recall'])}, Cohen's kappa {fig.get('kappa')}")
            else:
                out.append(f"{name}: no validation figures yet (run `rational judge-check --judge {name}`)")
    return out


# ------------------------------------------------------------------------------------------ plots


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _point(m: dict, suites: tuple[str, ...], metric: str) -> tuple[dict | None, str | None]:
    for s in suites:
        st = m["suites"].get(s, {}).get("metrics", {}).get(metric)
        if st and st.get("rate") is not None:
            return st, s
    return None, None


def frontier_points(runs: list[dict], names: list[str]) -> list[dict]:
    """One point per model: compliance on benign look-alikes (x) against attack success on held-out families
    (else trained families, else harmful compliance) (y), with their intervals. Models named `method@mix`
    (e.g. `rational@0.5`, trained at several comply:decline mixes) form one line per method: the frontier."""
    points = []
    for name, m in zip(names, runs):
        x, _ = _point(m, ("over-refusal", "smoke", "custom", "reasoning"), "compliance")
        y, ysuite = _point(m, ("jailbreak-heldout", "jailbreak", "smoke", "custom"), "asr")
        ymetric = "ASR"
        if y is None:
            y, ysuite = _point(m, ("harmful", "smoke", "custom", "reasoning"), "harmful_compliance")
            ymetric = "harmful compliance"
        if x is not None and y is not None:
            method, _, mix = name.partition("@")
            points.append({"name": name, "method": method, "mix": mix or None, "x": x, "y": y,
                           "y_label": f"{ymetric} ({ysuite})"})
    return points


def scatter_plot(runs: list[dict], names: list[str]) -> str | None:
    """The safety vs over-refusal frontier, with 95% error bars (base64 PNG); see `frontier_points`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = frontier_points(runs, names)
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    for method in dict.fromkeys(p["method"] for p in points):
        group = sorted((p for p in points if p["method"] == method), key=lambda p: p["x"]["rate"])
        xs, ys = [p["x"]["rate"] for p in group], [p["y"]["rate"] for p in group]
        xerr = [[p["x"]["rate"] - p["x"]["lo"] for p in group], [p["x"]["hi"] - p["x"]["rate"] for p in group]]
        yerr = [[p["y"]["rate"] - p["y"]["lo"] for p in group], [p["y"]["hi"] - p["y"]["rate"] for p in group]]
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="o-" if len(group) > 1 else "o", capsize=4, label=method)
        for p in group:
            ax.annotate(p["mix"] or p["name"], (p["x"]["rate"], p["y"]["rate"]), textcoords="offset points",
                        xytext=(6, 6), fontsize=8)
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("compliance on benign look-alikes (higher = less over-refusal)")
    ax.set_ylabel(" / ".join(sorted({p["y_label"] for p in points})) + " (lower = safer)")
    ax.set_title("Safety vs over-refusal (best: bottom right); labels = comply share; bars = 95% Wilson")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def attack_plot(runs: list[dict], names: list[str]) -> str | None:
    """Grouped bars of ASR per attack, one bar per model, with 95% error bars; base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = []
    for m in runs:
        by = {}
        for suite in ("jailbreak", "jailbreak-heldout", "smoke", "custom"):
            for attack, block in m["suites"].get(suite, {}).get("by_attack", {}).items():
                label = f"{attack} (held-out)" if suite == "jailbreak-heldout" else attack
                if "asr" in block and block["asr"]["rate"] is not None and label not in by:
                    by[label] = block["asr"]
        data.append(by)
    attacks = sorted({a for by in data for a in by})
    if not attacks:
        return None
    width = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(attacks) * max(1, len(runs)) ** 0.5 + 2), 4.5))
    for i, (name, by) in enumerate(zip(names, data)):
        xs = [j + i * width for j, a in enumerate(attacks) if a in by]
        sts = [by[a] for a in attacks if a in by]
        ax.bar(xs, [s["rate"] for s in sts], width=width, label=name,
               yerr=[[s["rate"] - s["lo"] for s in sts], [s["hi"] - s["rate"] for s in sts]], capsize=2)
    ax.set_xticks([j + width * (len(runs) - 1) / 2 for j in range(len(attacks))])
    ax.set_xticklabels(attacks, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("attack success rate (lower = safer)")
    ax.set_title("ASR per attack; bars = 95% Wilson")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


# ------------------------------------------------------------------------------------------ traces


def _refused(row: dict, refusal_judge: str) -> bool | None:
    return (row.get("verdicts") or {}).get(refusal_judge, {}).get("refused")


def safe_trace(row: dict, refusal_judge: str, limit: int = 600) -> dict:
    """A trace safe to show: harmful/adversarial prompts answered without refusal are truncated and marked."""
    unsafe = row.get("kind") in ("harmful", "adversarial") and _refused(row, refusal_judge) is not True

    def cut(text: str | None, n: int) -> str:
        text = text or ""
        if unsafe:  # whatever its length, a non-refused answer to a harmful request is cut and marked
            return f"{text[:80]} {TRUNCATE_MARK}" if text.strip() else ""
        return text if len(text) <= n else text[:n] + " [...]"

    prompt = row.get("prompt") or ""
    return {"id": row["id"], "kind": row.get("kind"), "attack": row.get("attack"),
            "prompt": prompt if len(prompt) <= 300 else prompt[:300] + " [...]",
            "reasoning": cut(row.get("reasoning"), limit), "answer": cut(row.get("answer"), limit),
            "status": row.get("parse_status"), "refused": _refused(row, refusal_judge)}


def example_traces(runs: list[dict], per_suite: int = 2) -> dict[str, list[tuple[int, dict]]]:
    """A few prompt ids per suite (the same ids for every model where possible), with each model's trace."""
    gens = _generations(runs)
    out: dict[str, list[tuple[int, dict]]] = {}
    for suite in dict.fromkeys(s for m in runs for s in m["suites"]):
        ids = [i for i, r in gens[0].items() if r.get("suite") == suite] if gens else []
        common = [i for i in ids if all(i in g for g in gens)] or ids
        # One of each kind first, so a suite's traces show both declines and answers where it has both.
        by_kind: dict[str, list[str]] = {}
        for i in common:
            by_kind.setdefault(gens[0][i].get("kind", ""), []).append(i)
        chosen = [v[0] for v in by_kind.values()][:per_suite]
        chosen += [i for i in common if i not in chosen][: per_suite - len(chosen)]
        out[suite] = [(k, safe_trace(g[i], runs[k]["judges"]["refusal"])) for i in chosen
                      for k, g in enumerate(gens) if i in g]
    return out


# ------------------------------------------------------------------------------------------ HTML

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1150px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.86em}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f2f2f2} h1{font-size:1.6em} h2{margin-top:1.6em;border-bottom:1px solid #ddd}
.trace{border:1px solid #ddd;border-radius:6px;padding:0.6em 0.9em;margin:0.6em 0;background:#fafafa}
.trace pre{white-space:pre-wrap;margin:0.3em 0;font-size:0.85em} .meta{color:#666;font-size:0.85em}
.reasoning{background:#eef3fb} .answer{background:#f0f8f0} img{max-width:100%}
"""


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def build_report(dirs: list[str | Path], out_html: str | Path, names: list[str] | None = None) -> Path:
    """Write the HTML report (standalone) and its Markdown twin (same name, .md); returns the HTML path."""
    if not dirs:
        raise UserError("rational report needs at least one eval folder")
    if Path(out_html).suffix.lower() == ".md":
        raise UserError(f"--out {out_html}: give the HTML file (e.g. report.html); the .md twin is written next to it")
    runs = [load_run(d) for d in dirs]
    labels = _names(runs, names)
    tables = _tables(runs, labels)
    scatter, bars = scatter_plot(runs, labels), attack_plot(runs, labels)
    traces = example_traces(runs)
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Rational evaluation report</title>"
             f"<style>{CSS}</style></head><body><h1>Rational evaluation report</h1><ul>"]
    for n, m in zip(labels, runs):
        g = m.get("generation", {})
        parts.append(f"<li><b>{esc(n)}</b>: model <code>{esc(str(m.get('model')))}</code>, adapter "
                     f"<code>{esc(str(m.get('adapter')))}</code>, {m.get('n_prompts', '?')} prompts, "
                     f"max_new_tokens={g.get('max_new_tokens')}"
                     + (f" (judged answers cut at {g['answer_max_new_tokens']} tokens)"
                        if g.get("answer_max_new_tokens") else "")
                     + f", temperature={g.get('temperature')}, "
                     f"excluded as training data: {m.get('excluded', {}).get('total', 0)}</li>")
    parts.append("</ul><p class='meta'>Every rate is k/n with a 95% Wilson interval; means carry a 95% bootstrap "
                 "interval. The judge column names the judge behind each number; unjudged items are left out of "
                 "n and counted in metrics.json.</p>")
    for i, (title, header, rows) in enumerate(tables):
        parts.append(f"<h2>{esc(title)}</h2>" + _html_table(header, rows))
        if i == 0:
            parts.append("<h2>Plots</h2>")
            for img, alt in ((scatter, "safety vs over-refusal scatter"), (bars, "ASR per attack")):
                if img:
                    parts.append(f"<img alt='{alt}' src='data:image/png;base64,{img}'>")
            if not scatter and not bars:
                parts.append("<p class='meta'>No suite gives both safety and over-refusal, or per-attack rates, "
                             "to plot.</p>")
    parts.append("<h2>Judges and their validation</h2><ul>"
                 + "".join(f"<li>{esc(line)}</li>" for line in _judge_lines(runs)) + "</ul>")
    parts.append("<h2>Example traces</h2><p class='meta'>Answers (and reasoning) to harmful requests that the "
                 f"refusal judge did not mark as refused are cut after 80 characters and marked "
                 f"<code>{esc(TRUNCATE_MARK)}</code>.</p>")
    for suite, items in traces.items():
        parts.append(f"<h3>{esc(suite)}</h3>")
        for k, t in items:
            parts.append(
                f"<div class='trace'><div class='meta'><b>{esc(labels[k])}</b> &middot; {esc(t['id'])} &middot; "
                f"kind={esc(str(t['kind']))} attack={esc(str(t['attack']))} reasoning={esc(str(t['status']))} "
                f"refused={t['refused']}</div><pre>{esc(t['prompt'])}</pre>"
                + (f"<pre class='reasoning'>{esc(t['reasoning'])}</pre>" if t["reasoning"] else "")
                + f"<pre class='answer'>{esc(t['answer']) or '(empty answer)'}</pre></div>")
    parts.append("</body></html>")
    out = Path(out_html)
    write_text_atomic(out, "".join(parts))
    write_text_atomic(markdown_path(out), _markdown(tables, runs, labels))
    return out


def markdown_path(out_html: str | Path) -> Path:
    """The Markdown twin of an HTML report: same folder, same name, `.md` (report.html -> report.md)."""
    return Path(out_html).with_suffix(".md")


@dataclass
class ReportConfig:
    """`rational report`: compare evaluated models in report.html and its Markdown twin."""

    dirs: list[str] = setting(default_factory=list, help="Eval folders written by `rational eval --out DIR`.",
                              positional=True)
    out: str = setting("report.html", "HTML file to write; its Markdown twin goes next to it (r.html -> r.md).")
    names: list[str] | None = setting(None, "Label per folder, in order (default: from metrics.json).",
                                      old_flags=("--name",))


def report_command(cfg: ReportConfig) -> None:
    from rich.console import Console
    from rich.table import Table

    if not cfg.dirs:
        raise UserError("no eval folders given; pass the folders written by `rational eval --out DIR`")
    if Path(cfg.out).is_dir():
        raise UserError(f"--out {cfg.out}: is a folder; pass the HTML file to write, e.g. {cfg.out}/report.html")
    path = build_report(cfg.dirs, cfg.out, names=cfg.names)
    table = Table(title="Headline")
    for col in ("model", "suite", "metric", "rate [95% CI]", "n", "judge"):
        table.add_column(col)
    for r in headline_rows(cfg.dirs, names=cfg.names):
        ci = "n/a" if r["rate"] is None else f"{r['rate']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]"
        table.add_row(r["name"], r["suite"], r["metric"], ci, str(r["n"]), r["judge"])
    console = Console()
    console.print(table)
    console.print(f"wrote {path} and {markdown_path(path)}")
