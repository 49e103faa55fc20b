"""`rational models` and `rational chat`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .reasoning import ReasoningFormat, parse_output


def models_command() -> None:
    from rich.console import Console
    from rich.table import Table

    from .models import cache_dir, registry_rows

    table = Table(title=f"Model registry (cache: {cache_dir()})")
    table.add_column("name", no_wrap=True)
    for col in ("cached", "offline source", "hub id", "description"):
        table.add_column(col)
    for r in registry_rows():
        table.add_row(r["name"], "yes" if r["cached"] else "no", r["offline"], r["hub_id"], r["description"])
    Console().print(table)


def _show(text: str, fmt: ReasoningFormat, show_reasoning: bool) -> None:
    from rich.console import Console
    from rich.panel import Panel

    parsed = parse_output(text, fmt)
    console = Console()
    if parsed.has_reasoning and show_reasoning:
        console.print(Panel(parsed.reasoning or "", title="reasoning", border_style="dim"))
    if parsed.has_reasoning and not parsed.well_formed:
        console.print(f"[yellow](reasoning format: {parsed.status})[/yellow]")
    console.print(Panel(parsed.answer or "(empty answer)", title="answer", border_style="green"))


def chat_command(
    model: Annotated[str, typer.Option(help="Model spec: registry name, local folder, .gguf file or hub id.")]
    = "qwen2.5-coder-0.5b-instruct",
    adapter: Annotated[str | None, typer.Option(help="PEFT adapter folder trained by `rational train`.")] = None,
    prompt: Annotated[str | None, typer.Option(help="Answer this once and exit; omit for an interactive loop.")]
    = None,
    system: Annotated[str | None, typer.Option(help="Optional system prompt.")] = None,
    show_reasoning: Annotated[bool, typer.Option("--show-reasoning/--hide-reasoning")] = True,
    max_new_tokens: Annotated[int, typer.Option(help="Token limit per answer.")] = 512,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16")] = "auto",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    from .generation import HFGenerator, SamplingParams

    gen = HFGenerator.load(model, adapter=adapter, dtype=dtype, batch_size=1)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    fmt = ReasoningFormat()
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []

    def turn(text: str) -> None:
        history.append({"role": "user", "content": text})
        out = gen.generate([list(history)], params, progress=False)[0].text
        history.append({"role": "assistant", "content": out})
        _show(out, fmt, show_reasoning)

    if prompt is not None:
        turn(prompt)
        return
    print("Interactive chat; empty line or Ctrl-D to quit.", file=sys.stderr)
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            break
        if not text:
            break
        turn(text)
