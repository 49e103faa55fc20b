"""Headline table of a run's models with paired tests between chosen pairs of them (Markdown, to stdout).

    .venv/bin/python scripts/compare_models.py runs/demo \
        --models base rational refusal-sft circuit-breakers rational+dpo refusal-sft+dpo \
        --pairs rational:refusal-sft rational+dpo:rational refusal-sft+dpo:refusal-sft circuit-breakers:base

The report (`rational report`) tests Rational against every other model; this adds any pair, e.g. a baseline with
and without DPO. Cells: rate [95% Wilson] (k/n) under the run's headline judge (keyword cells left out); p: exact
McNemar test on the prompts both models answered.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rational import report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="run folder holding eval-NAME/ folders")
    ap.add_argument("--models", nargs="+", required=True, help="model names (eval-NAME folders), in column order")
    ap.add_argument("--pairs", nargs="*", default=[], help="A:B pairs to test, A's rate first")
    args = ap.parse_args()
    dirs = [args.run / f"eval-{n}" for n in args.models]
    missing = [str(d) for d in dirs if not (d / "metrics.json").is_file()]
    if missing:
        raise SystemExit(f"{missing[0]}: no metrics.json; run `rational eval` (or `rational run`) for it first")
    pairs = [tuple(p.split(":", 1)) for p in args.pairs]
    bad = [p for p in pairs if len(p) != 2 or not set(p) <= set(args.models)]
    if bad:
        raise SystemExit(f"--pairs {':'.join(bad[0])}: give A:B with both names among --models")

    cell = {(r["name"], r["suite"]): r for r in report.headline_rows(dirs, args.models) if not r["keyword"]}
    p_of = {(p["suite"], a, b): p["p_mcnemar"] for a, b in pairs
            for p in report.paired_rows(dirs, args.models, reference=a) if p["b"] == b}
    print("| suite | metric | judge | " + " | ".join(args.models) + "".join(f" | p {a} vs {b}" for a, b in pairs) + " |")
    print("|" + "---|" * (3 + len(args.models) + len(pairs)))
    for suite in dict.fromkeys(s for _, s in cell):
        first = next(cell[(n, suite)] for n in args.models if (n, suite) in cell)
        vals = ["-" if (r := cell.get((n, suite))) is None or r["rate"] is None
                else f"{r['rate']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}] ({r['k']}/{r['n']})" for n in args.models]
        ps = [report.format_p(p_of[(suite, a, b)]) if (suite, a, b) in p_of else "-" for a, b in pairs]
        print(f"| {suite} | {first['metric']} | {first['judge']} | " + " | ".join(vals + ps) + " |")


if __name__ == "__main__":
    main()
