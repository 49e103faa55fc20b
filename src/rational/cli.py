"""The `rational` command line: a thin typer shell over the stage modules.

Each command's options are generated from its stage's config dataclass (`config.stage_command`), so a setting is
declared once, with its help text, in the stage module. This file only wires command names to (config, function)
pairs and turns user errors into one line on stderr (exit 2). Heavy libraries (torch, transformers, trl) are
imported inside the stage functions, so `--help` is fast.
"""

from __future__ import annotations

import os
import sys

import click
import typer

from .chat import ChatConfig, chat_command
from .config import stage_command
from .data import DataConfig, data_command
from .errors import UserError
from .eval import EvalConfig, eval_command
from .generate import GenerateConfig, generate_command
from .judges import JudgeCheckConfig, judge_check_command
from .models import models_command
from .report import ReportConfig, report_command
from .run import RunConfig, move_legacy_keys, preset_paths, run_command
from .train import TrainConfig, train_command

app = typer.Typer(
    name="rational",
    help="Reasoning-enhanced safety fine-tuning for chat LLMs (RATIONAL, arXiv 2503.05021).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# command -> (config class, recipe section, function, help). The order is the order of `rational --help`.
COMMANDS = {
    "data": (DataConfig, "data", data_command, "Build the train and eval prompt sets of a run (split by base "
             "prompt, template and attack family)."),
    "generate": (GenerateConfig, "generate", generate_command, "Self-generate and filter safety rationales; "
                 "write sft.jsonl."),
    "train": (TrainConfig, "train", train_command, "SFT (LoRA or full) on rationales with TRL; refusal-sft "
              "baseline."),
    "eval": (EvalConfig, "eval", eval_command, "Evaluate a model on safety / over-refusal / capability suites."),
    "report": (ReportConfig, "report", report_command, "Compare evaluated models in report.html / report.md."),
    "run": (RunConfig, "run", run_command, "The whole pipeline: data -> generate -> train -> eval -> report "
            "(resumable)."),
    "chat": (ChatConfig, "chat", chat_command, "Chat with a model (and adapter); reasoning and answer shown apart."),
    "judge-check": (JudgeCheckConfig, "judge-check", judge_check_command, "Score a judge against human refusal "
                    "labels."),
}

for _name, (_cls, _section, _fn, _help) in COMMANDS.items():
    _extra = {"presets": preset_paths, "default_preset": "demo", "prepare": move_legacy_keys} if _name == "run" else {}
    app.command(_name, help=_help)(stage_command(_cls, _section, _fn, **_extra))
app.command("models", help="List the model registry and what is cached.")(models_command)


def main(argv: list[str] | None = None) -> None:
    # No surprise network calls: TRL/hub telemetry off unless the user opts in.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(args=argv, standalone_mode=False)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        print("interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
