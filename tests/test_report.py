"""`rational report`: renders standalone HTML with plots and tables, report.md, and truncates harmful answers."""


import pytest
from test_eval import ScriptedModel, _prompts

from rational.cli import main
from rational.eval import EvalConfig, run_eval
from rational.report import TRUNCATE_MARK, build_report, headline_rows, safe_trace


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    prompts = _prompts(tmp)
    dirs = []
    for name in ("base", "rational"):
        cfg = EvalConfig(model="scripted", name=name, suites=[], prompts=prompts, out=str(tmp / name))
        dirs.append(run_eval(cfg, generator=ScriptedModel(), progress=False))
    return tmp, dirs


def test_report_renders_plots_tables_and_traces(two_runs):
    tmp, dirs = two_runs
    html_path = build_report(dirs, tmp / "r.html")
    html = html_path.read_text()
    assert html.count("<img alt=") == 2 and html.count("data:image/png;base64,") == 2
    assert "<table>" in html and "Per attack" in html and "Per category" in html
    assert "refusal-keywords" in html and "n=169" in html  # judge named, with its validation figures
    assert "base" in html and "rational" in html
    # h2 ("a trick to steal") was answered: its answer must be cut and marked, never shown in full
    assert TRUNCATE_MARK in html and "Sure, here is an overview." not in html.replace(TRUNCATE_MARK, "")
    md = (tmp / "r.md").read_text()
    assert "| suite | metric | judge | base | rational |" in md and "[" in md


def test_headline_rows(two_runs):
    _, dirs = two_runs
    rows = headline_rows(dirs)
    assert {r["name"] for r in rows} == {"base", "rational"}
    asr = next(r for r in rows if r["metric"] == "asr")
    assert asr["k"] == 1 and asr["n"] == 2 and asr["lo"] <= asr["rate"] <= asr["hi"] and asr["lower_is_better"]


def test_safe_trace_truncation():
    row = {"id": "x", "kind": "harmful", "prompt": "p", "reasoning": "r" * 300, "answer": "step " * 100,
           "parse_status": "ok", "verdicts": {"refusal-keywords": {"refused": False}}}
    t = safe_trace(row, "refusal-keywords")
    assert t["answer"].endswith(TRUNCATE_MARK) and len(t["answer"]) <= 80 + len(TRUNCATE_MARK) + 1
    row["verdicts"]["refusal-keywords"]["refused"] = True
    assert TRUNCATE_MARK not in safe_trace(row, "refusal-keywords")["answer"]
    benign = {**row, "kind": "benign", "verdicts": {}}
    assert TRUNCATE_MARK not in safe_trace(benign, "refusal-keywords")["answer"]


def test_report_cli_and_bad_input(two_runs, tmp_path, capsys):
    _, dirs = two_runs
    main(["report", str(dirs[0]), "--out", str(tmp_path / "x.html"), "--names", "only"])
    assert (tmp_path / "x.html").is_file() and (tmp_path / "x.md").is_file()
    assert not (tmp_path / "report.md").exists()  # two reports in one folder do not overwrite each other's tables
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "y.html")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "no metrics.json" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        main(["report", str(dirs[0]), "--out", str(tmp_path / "z.md")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "z.md: give the HTML file" in err and "Traceback" not in err
