"""Configs are the single schema: every field is a flag, a recipe key and a dotted override, declared once."""

import ast
import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rational.cli import COMMANDS, app, main
from rational.config import Recipe, flag_name, old_flags, resume_keys
from rational.errors import UserError
from rational.generate import GenerateConfig
from rational.train import TrainConfig

SRC = Path(__file__).resolve().parents[1] / "src" / "rational"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_every_config_field(command):
    cls = COMMANDS[command][0]
    # The generated click command: its parameters are exactly the CLI fields (+ --config/--preset/overrides).
    click_cmd = __import__("typer").main.get_command(app).commands[command]
    opts = {o for p in click_cmd.params for o in p.opts if not getattr(p, "hidden", False)}
    names = {p.name for p in click_cmd.params}
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
        if not f.metadata.get("cli", True):
            continue
        if f.metadata.get("positional"):
            assert f.name in names
        else:
            assert flag_name(f.name) in opts, f"{command}: no {flag_name(f.name)}"
    help_text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400"}).output
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli", True) and not f.metadata.get("positional"):
            assert flag_name(f.name) in help_text, (command, f.name)


def test_recipe_only_fields_are_few_and_named():
    # Long multi-line prompts are recipe/Python-only; everything else is a flag.
    recipe_only = {(c.__name__, f.name) for c, *_ in COMMANDS.values() for f in dataclasses.fields(c)
                   if not f.metadata.get("cli", True)}
    assert recipe_only == {("GenerateConfig", "rej_system"), ("GenerateConfig", "comp_system")}


def test_precedence_defaults_recipe_dotted_flags(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed: 3\ntrain:\n  lora_alpha: 16\n  lora_r: 4\n  epochs: 1\n")
    r = Recipe.load(recipe, ["train.lora_alpha=64", "lora_r=8", "seed=5"], section="train")
    cfg = r.build(TrainConfig, "train", {"lora_r": 2, "epochs": None})
    assert (cfg.lora_alpha, cfg.lora_r, cfg.epochs, cfg.seed) == (64, 2, 1.0, 5)
    assert cfg.learning_rate is None and cfg.lora_dropout == 0.05  # untouched defaults


def test_dotted_override_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="must look like key=value"):
        Recipe.load(None, ["lora_alpha"], section="train")
    with pytest.raises(UserError, match="unknown section 'trian'"):
        Recipe.load(None, ["trian.lora_alpha=3"], section="train")
    with pytest.raises(UserError, match="unknown key 'lora_rank'"):
        Recipe.load(None, ["lora_rank=3"], section="train").build(TrainConfig, "train")
    with pytest.raises(UserError, match="'lora_dropout' is 7"):
        Recipe.load(None, ["train.lora_dropout=7"], section="train").build(TrainConfig, "train")
    with pytest.raises(UserError, match="'suites' has value 5"):
        Recipe.load(None, ["suites=5"], section="eval").build(__import__("rational.eval").eval.EvalConfig, "eval")


def test_dotted_override_from_the_cli(tmp_path, capsys):
    out = tmp_path / "e"
    main(["eval", "--model", "tiny-random", "--suites", "smoke", "--out", str(out), "eval.max_new_tokens=3",
          "limit=2"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["generation"]["max_new_tokens"] == 3 and m["limit"] == 2


def test_dotted_override_reaches_a_stage_of_run(tmp_path, capsys):
    out = tmp_path / "smoke"
    main(["run", "--preset", "smoke", "--out", str(out), "train.lora_alpha=8", "data.eval_harmful=2",
          "eval.max_new_tokens=5"])
    train_cfg = json.loads((out / "train-rational" / "train_metrics.json").read_text())["config"]
    assert train_cfg["lora_alpha"] == 8
    assert json.loads((out / "eval-rational" / "metrics.json").read_text())["generation"]["max_new_tokens"] == 5
    harmful = [json.loads(line) for line in (out / "data" / "eval_prompts.jsonl").read_text().splitlines()]
    assert sum(r["meta"]["suite"] == "harmful" for r in harmful) == 2


def test_old_flag_spellings_work_with_a_deprecation_line(tmp_path):
    res = CliRunner().invoke(app, ["eval", "--model", "tiny-random", "--suite", "smoke", "--out", str(tmp_path / "e"),
                                   "--max-new-tokens", "2", "--limit", "1"])
    assert res.exit_code == 0, res.output
    assert "warning: --suite is deprecated; use --suites" in res.output
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["suites"].keys() == {"smoke"}
    mapping = {old: new for _, old, new in old_flags(TrainConfig)}
    assert mapping == {"--lr": "--learning-rate", "--batch-size": "--per-device-train-batch-size",
                       "--grad-accum": "--gradient-accumulation-steps"}


def test_resume_keys_come_from_field_metadata():
    keys = set(resume_keys(GenerateConfig))
    # Everything that changes the generated samples must match on resume; only where it goes, how it runs, how many
    # attempts are made (an attempt's samples do not depend on it) and how many are exported may not.
    assert {f.name for f in dataclasses.fields(GenerateConfig)} - keys == {"out", "backend", "dtype", "overwrite",
                                                                           "max_retries", "keep_per_prompt"}
    assert {"model", "learning_rate", "lora_alpha", "data"} <= set(resume_keys(TrainConfig))


@pytest.mark.parametrize("values, needle", [
    ({"learning_rate": -0.5}, "'learning_rate' is -0.5"),
    ({"lora_dropout": 7}, "'lora_dropout' is 7"),
    ({"epochs": -3}, "'epochs' is -3"),
    ({"max_steps": 0}, "'max_steps' is 0"),
])
def test_ranges_are_checked_at_load(values, needle):
    with pytest.raises(UserError, match=needle):
        Recipe.load(None).build(TrainConfig, "train", values)


def _imports(path: Path) -> set[str]:
    """The package's own modules that `path` imports, at any depth (module level or inside functions)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rational."):
            found.add(node.module.split(".")[1])
    return found & {p.stem for p in SRC.glob("*.py")}


def test_no_import_loops_and_no_stage_imports_the_cli():
    graph = {p.stem: _imports(p) for p in SRC.glob("*.py")}
    assert all("cli" not in deps for name, deps in graph.items() if name != "cli")

    def visit(node, path):
        assert node not in path, " -> ".join(path + [node])
        for dep in graph.get(node, ()):
            visit(dep, path + [node])

    for name in graph:
        visit(name, [])


def test_own_imports_sit_at_the_top_of_each_file():
    for p in SRC.glob("*.py"):
        tree = ast.parse(p.read_text())
        top = set(map(id, tree.body))
        late = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1
                and id(n) not in top]
        assert not late, f"{p.name}: own imports inside functions at lines {late}"
