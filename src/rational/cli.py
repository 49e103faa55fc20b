"""The `rational` command line: a thin typer shell over the stage modules.

Each stage module owns its command function (`synthesis.generate_command`, `training.train_command`, ...),
so this file only wires names to functions and turns user errors into one line on stderr (exit 2).
Heavy libraries (torch, transformers, trl) are imported inside the commands, so `--help` is fast.
"""

from __future__ import annotations

import os
import sys

import click
import typer

from . import chat, evaluation, pipeline, report, synthesis, training
from .errors import UserError

app = typer.Typer(
    name="rational",
    help="Reasoning-enhanced safety fine-tuning for chat LLMs (RATIONAL, arXiv 2503.05021).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("models", help="List the model registry and what is cached.")(chat.models_command)
app.command("chat", help="Chat with a model (and adapter); reasoning and answer shown apart.")(chat.chat_command)
app.command("generate", help="Self-generate and filter safety rationales; write sft.jsonl.")(synthesis.generate_command)
app.command("train", help="SFT (LoRA or full) on rationales with TRL; refusal-sft baseline.")(training.train_command)
app.command("eval", help="Evaluate a model on safety / over-refusal / capability suites.")(evaluation.eval_command)
app.command("judge-check", help="Score a judge against human refusal labels.")(evaluation.judge_check_command)
app.command("report", help="Compare evaluated models in report.html / report.md.")(report.report_command)
app.command("run", help="The whole pipeline: generate -> train -> eval -> report (resumable).")(pipeline.run_command)


def main(argv: list[str] | None = None) -> None:
    # No surprise network calls: TRL/hub telemetry off unless the user opts in.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Idle OpenMP threads sleep instead of spinning. On a CPU shared with other jobs, spinning threads wait for
    # descheduled peers at every op: generation on 2 shared cores (load 5-8) ran 3.4x slower with the default
    # (docs/engine_bench.md). Set before torch is imported (OpenMP reads it once); an explicit value wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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
