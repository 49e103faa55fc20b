"""`rational chat`: talk to a model (and adapter); the reasoning and the answer are shown apart."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .backends import SamplingParams, load_generator
from .config import check_range, setting
from .models import DEFAULT_MODEL
from .reasoning import ReasoningFormat, parse_output


@dataclass
class ChatConfig:
    """`rational chat`: one answer (--prompt) or an interactive loop."""

    model: str = setting(DEFAULT_MODEL, "Model spec: registry name, local folder, .gguf file or hub id.")
    adapter: str | None = setting(None, "PEFT adapter folder trained by `rational train`.")
    prompt: str | None = setting(None, "Answer this once and exit; omit for an interactive loop.")
    system: str | None = setting(None, "Optional system prompt (Rational models are trained without one).")
    show_reasoning: bool = setting(True, "Show the reasoning block above the answer.",
                                   old_flags=("--hide-reasoning=--no-show-reasoning",))
    max_new_tokens: int = setting(512, "Token limit per answer.")
    temperature: float = setting(0.0, "Sampling temperature; 0 = greedy.")
    dtype: str = setting("auto", "auto | float32 | bfloat16 | float16.")
    backend: str = setting("auto", "auto | hf | llamacpp (auto: llama.cpp on a CPU without native bf16 when "
                           "llama-cpp-python is installed, else hf).")
    seed: int = setting(0, "Sampling seed.")
    reasoning_open: str = setting("<think>", "Tag that opens the reasoning block.")
    reasoning_close: str = setting("</think>", "Tag that closes the reasoning block.")

    def __post_init__(self):
        check_range(self, "max_new_tokens", 1)
        check_range(self, "temperature", 0)


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


def chat_command(cfg: ChatConfig) -> None:
    gen = load_generator(cfg.backend, cfg.model, adapter=cfg.adapter, dtype=cfg.dtype, batch_size=1, seed=cfg.seed)
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed)
    fmt = ReasoningFormat(cfg.reasoning_open, cfg.reasoning_close)
    history: list[dict[str, str]] = [{"role": "system", "content": cfg.system}] if cfg.system else []

    def turn(text: str) -> None:
        history.append({"role": "user", "content": text})
        out = gen.generate([list(history)], params, progress=False)[0].text
        history.append({"role": "assistant", "content": out})
        _show(out, fmt, cfg.show_reasoning)

    if cfg.prompt is not None:
        turn(cfg.prompt)
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
