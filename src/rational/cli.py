"""The `rational` command line: a thin typer shell over the stage modules.

Each command's options are generated from its stage's config dataclass (`config.stage_command`), so a setting is
declared once, with its help text, in the stage module. This file only wires command names to (config, function)
pairs and turns user errors into one line on stderr (exit 2). Heavy libraries (torch, transformers, trl) are
imported inside the stage functions, so `--help` is fast.
"""

from __future__ import annotations

import errno
import os
import sys

import click
import typer
from typer._click.exceptions import ClickException as TyperClickException

from .attack import AttackConfig, attack_command
from .chat import ChatConfig, chat_command
from .config import stage_command
from .data import DataConfig, data_command
from .errors import UserError
from .eval import EvalConfig, eval_command
from .generate import GenerateConfig, generate_command
from .judges import JudgeCheckConfig, judge_check_command
from .models import models_command
from .pairs import PairsConfig, pairs_command
from .report import ReportConfig, report_command
from .run import RunConfig, move_legacy_keys, preset_paths, run_command
from .serve import ServeConfig, run_serve
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
    "pairs": (PairsConfig, "pairs", pairs_command, "Preference pairs (for --method dpo) and circuit-breaker data "
              "from a generate run and the model's own answers."),
    "train": (TrainConfig, "train", train_command, "SFT (LoRA or full) on rationales with TRL, DPO on pairs; "
              "refusal-sft and circuit-breakers baselines."),
    "eval": (EvalConfig, "eval", eval_command, "Evaluate a model on safety / over-refusal / capability suites."),
    "report": (ReportConfig, "report", report_command, "Compare evaluated models in report.html / report.md."),
    "run": (RunConfig, "run", run_command, "The whole pipeline: data -> generate -> train -> eval -> report "
            "(resumable)."),
    "attack": (AttackConfig, "attack", attack_command, "Adaptive attacks (GCG, PAIR, TAP) on a model or an "
               "endpoint; ASR with a 95% interval."),
    "chat": (ChatConfig, "chat", chat_command, "Chat with a model (and adapter); reasoning and answer shown apart."),
    "serve": (ServeConfig, "serve", run_serve, "Serve a model (+ adapter) behind an OpenAI-compatible endpoint, "
              "reasoning apart from the answer (for garak, PyRIT, remote eval)."),
    "judge-check": (JudgeCheckConfig, "judge-check", judge_check_command, "Score a judge against human refusal "
                    "labels."),
}

for _name, (_cls, _section, _fn, _help) in COMMANDS.items():
    _extra = {"presets": preset_paths, "default_preset": "demo", "prepare": move_legacy_keys} if _name == "run" else {}
    app.command(_name, help=_help)(stage_command(_cls, _section, _fn, **_extra))
app.command("models", help="List the model registry and what is cached.")(models_command)


# OSError numbers that mean "something about the user's files or disk", not a bug: one line, exit 2.
_USER_OS_ERRORS = {
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EROFS: "read-only file system; choose a writable folder",
    errno.ENOSPC: "disk full; free space and run the same command again to resume",
    errno.EDQUOT: "disk quota exceeded; free space and run the same command again to resume",
    errno.EEXIST: "already exists and is in the way; remove it or choose another path",
    errno.ENOTDIR: "a path component is a file, not a folder; choose another path",
    errno.EISDIR: "is a folder, not a file; choose another path",
    errno.ENOENT: "no such file or folder",
}


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every error the user can fix ends in one line on stderr and exit 2, Ctrl-C in exit 130."""
    # No surprise network calls: TRL/hub telemetry off unless the user opts in.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Idle OpenMP threads sleep instead of spinning. On a CPU shared with other jobs, spinning threads wait for
    # descheduled peers at every op: generation on 2 shared cores (load 5-8) ran 3.4x slower with the default
    # (measured with scripts/bench_engine.py --env; BENCHMARKS.md). Set before torch is imported (OpenMP reads it
    # once); an explicit value wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        code = app(args=argv, standalone_mode=False)
    except UserError as e:
        _fail(str(e), e.exit_code)
    except (typer.Exit, click.exceptions.Exit) as e:
        code = e.exit_code
    except (TyperClickException, click.ClickException) as e:  # usage errors: bad flag, bad value, missing argument
        command = argv[0] if argv else (sys.argv[1] if len(sys.argv) > 1 else "")
        where = f"rational {command} --help" if command in COMMANDS else "rational --help"
        _fail(f"{e.format_message().strip()} (see {where})", 2)
    except (typer.Abort, click.exceptions.Abort, KeyboardInterrupt):
        code = 130
    except UnicodeError as e:
        _fail(f"input is not valid UTF-8 text ({type(e).__name__}: {e.reason}); convert the file to UTF-8", 2)
    except OSError as e:
        if e.errno not in _USER_OS_ERRORS:
            raise
        what = e.filename or e.strerror
        _fail(f"{what}: {_USER_OS_ERRORS[e.errno]}", 2)
    # typer returns 130 instead of raising when the command was interrupted (KeyboardInterrupt -> Exit(130)).
    if code == 130:
        _fail("interrupted; run the same command again to resume", 130, prefix="")
    if code:
        sys.exit(code)


def _fail(message: str, code: int, prefix: str = "error: ") -> None:
    print(f"{prefix}{message}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
