"""Inference backends behind one generation interface for every stage: `generator.generate(chats, params)`.

Backends
  * `hf` (default): transformers models in this process, a rich progress bar showing tokens/s. Its default
    engine (`engine.py`) prefills shared prompt prefixes once, drops finished rows from the batch and stops at
    EOS/end-of-turn tokens and stop strings; `engine="hf"` runs transformers' `model.generate` instead
    (prompts sorted by length, left padded).
  * `vllm`: optional, imported only when chosen; adapters through `LoRARequest`.
  * `openai`: any OpenAI-compatible endpoint (`--base-url`), bounded concurrency, retries.

A chat is a list of `{"role", "content"}` messages. At temperature 0 decoding is greedy, so results are
deterministic (in float32 they do not depend on batching; bf16 batches may differ in rare near-ties). With
sampling, the fast engine seeds every sample from (`params.seed`, prompt index, sample index), the `model.generate`
path each batch from `params.seed`.
"""

from __future__ import annotations

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Protocol

from .engine import Engine, TemperatureTopP, sample_from, supports  # noqa: F401 (sample_from: re-export)
from .errors import UserError
from .models import (
    REGISTRY,
    adapter_to_gguf,
    cpu_has,
    cpu_supports_bf16,
    gguf_file,
    load_model_and_tokenizer,
    load_tokenizer,
    resolve,
    stop_token_ids,
)
from .reasoning import DEFAULT_FORMAT, ReasoningFormat, answer_tokens, join_reasoning

Chat = list[dict[str, str]]
BACKENDS = ("auto", "hf", "llamacpp", "vllm", "openai", "scripted")
ENGINES = ("fast", "hf")  # HFGenerator engines


@dataclass
class SamplingParams:
    """Every sampling parameter is explicit and recorded; model `generation_config` defaults are ignored."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    # Stop a sequence once its answer (the text after the reasoning block, or all of it when there is none) has
    # this many tokens: an evaluation's judges read no further. Only the HF fast engine stops early; callers cut
    # every backend's answers to the same length (`reasoning.cut_answer`), so the texts agree.
    answer_max_tokens: int | None = None
    reasoning_tags: tuple[str, str] = (DEFAULT_FORMAT.open_tag, DEFAULT_FORMAT.close_tag)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Completion:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" (EOS or stop string) | "length"


@dataclass
class GenerationOutput:
    completions: list[Completion]

    @property
    def text(self) -> str:
        return self.completions[0].text


class Generator(Protocol):
    name: str

    def generate(self, chats: list[Chat], params: SamplingParams, progress: bool = True,
                 desc: str = "generating") -> list[GenerationOutput]: ...


def chat_ids(tokenizer, chat: Chat) -> list[int]:
    """Token ids of a chat, ready for generation. A chat that ends with an assistant message is a prefill: the
    model continues that message instead of starting a new turn (`rational pairs` uses it)."""
    prefill = chat[-1]["role"] == "assistant"
    return list(tokenizer.apply_chat_template(chat, add_generation_prompt=not prefill, continue_final_message=prefill,
                                              tokenize=True, return_dict=False))


def _apply_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stop) if i != -1), default=-1)
    return (text[:cut], True) if cut != -1 else (text, False)


def _progress(total: int, desc: str, enabled: bool):
    """A rich progress bar with a live tokens/s field (disabled -> a no-op context)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[tps]:.1f} tok/s"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        disable=not enabled, transient=False,
    )


class HFGenerator:
    """Batched generation with transformers. Loads through the model resolver (`models.py`).

    engine="fast" (default): `engine.Engine`, a decoding loop that prefills shared prompt prefixes once and retires
    finished rows (see engine.py). engine="hf": transformers' `model.generate` on left-padded, length-sorted
    batches, kept for comparison and for models the fast engine does not support (sliding-window or
    linear-attention layers), which fall back to it.
    """

    name = "hf"

    def __init__(self, model, tokenizer, batch_size: int = 8, model_name: str = "", engine: str = "fast",
                 engine_options: dict | None = None):
        if engine not in ENGINES:
            raise UserError(f"unknown generation engine '{engine}'; use one of: {', '.join(ENGINES)}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        self.model_name = model_name
        self.engine = engine if supports(model) else "hf"
        self.engine_options = engine_options or {}  # extra `engine.Engine` arguments (benchmarks switch parts off)
        self.eos_ids = stop_token_ids(tokenizer)
        self.stats = {"tokens": 0, "seconds": 0.0}

    @classmethod
    def load(cls, spec: str, adapter: str | None = None, dtype: str = "auto", batch_size: int = 8,
             trust_remote_code: bool = False, device: str | None = None, engine: str = "fast",
             engine_options: dict | None = None):
        model, tok = load_model_and_tokenizer(spec, adapter=adapter, dtype=dtype, device=device,
                                              trust_remote_code=trust_remote_code)
        return cls(model, tok, batch_size=batch_size, model_name=spec, engine=engine, engine_options=engine_options)

    def encode(self, chat: Chat) -> list[int]:
        return chat_ids(self.tokenizer, chat)

    @property
    def context_length(self) -> int | None:
        """Positions the model was built for (prompt + new tokens), when its config says."""
        return getattr(self.model.config, "max_position_embeddings", None)

    def prompt_tokens(self, chat: Chat) -> int:
        return len(self.encode(chat))

    def truncate_chat(self, chat: Chat, max_tokens: int) -> Chat:
        """The chat with its last message cut from the left so the templated prompt has about `max_tokens` tokens
        (re-tokenising the cut text can merge a token or two at the seam)."""
        text = chat[-1]["content"]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        overhead = self.prompt_tokens(chat) - len(ids)
        keep = max(1, max_tokens - overhead)
        return chat[:-1] + [{**chat[-1], "content": self.tokenizer.decode(ids[-keep:])}]

    def _completion(self, tokens: list[int], stopped: bool, params: SamplingParams) -> Completion:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        text, cut = _apply_stop(text, params.stop)
        return Completion(text, len(tokens), "stop" if stopped or cut else "length")

    def generate(self, chats: list[Chat], params: SamplingParams, progress: bool = True,
                 desc: str = "generating") -> list[GenerationOutput]:
        encoded = [self.encode(c) for c in chats]
        start = time.perf_counter()
        with _progress(len(chats), desc, progress) as bar:
            task = bar.add_task(desc, total=len(chats), tps=0.0)
            tokens = 0

            def report(new_tokens: int, finished_prompts: int) -> None:
                nonlocal tokens
                tokens += new_tokens
                bar.update(task, advance=finished_prompts, tps=tokens / max(time.perf_counter() - start, 1e-9))

            run = self._generate_fast if self.engine == "fast" else self._generate_hf
            results = run(encoded, params, report)
        self.stats["tokens"] += tokens
        self.stats["seconds"] += time.perf_counter() - start
        return results

    def _generate_fast(self, encoded: list[list[int]], params: SamplingParams, report) -> list[GenerationOutput]:
        engine = Engine(self.model, self.eos_ids, self.tokenizer.pad_token_id, self.batch_size, **self.engine_options)
        stops, limit = params.stop, params.answer_max_tokens
        fmt = ReasoningFormat(*params.reasoning_tags)

        def stop_check(tokens: list[int]) -> bool:
            # Stop strings: stop as soon as one shows up in the text, not only at EOS / the length limit. Answer
            # limit: stop one token past it, so the cut's last token is not a merge at the stop (re-tokenising a
            # prefix can merge its last characters differently). An answer is never longer than the whole output,
            # so shorter rows are not decoded at all.
            long_enough = bool(limit) and len(tokens) >= limit
            if not stops and not long_enough:
                return False
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            return any(s in text for s in stops) or (long_enough
                                                     and len(answer_tokens(text, self.tokenizer, fmt)) > limit)

        seqs = engine.generate(encoded, max(1, params.n), params.max_new_tokens, temperature=params.temperature,
                               top_p=params.top_p, seed=params.seed, stop_check=stop_check if stops or limit else None,
                               on_step=report)
        return [GenerationOutput([self._completion(s.tokens, s.stopped, params) for s in row]) for row in seqs]

    def _generate_hf(self, encoded: list[list[int]], params: SamplingParams, report) -> list[GenerationOutput]:
        import torch

        # Longest first: similar lengths share a batch (less padding), and an OOM shows up at once.
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        results: list[GenerationOutput | None] = [None] * len(encoded)
        pad_id = self.tokenizer.pad_token_id
        device = self.model.device
        n = max(1, params.n)
        do_sample = params.temperature > 0
        for b, lo in enumerate(range(0, len(order), self.batch_size)):
            idx = order[lo : lo + self.batch_size]
            width = max(len(encoded[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):  # left padding
                ids = encoded[i]
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention[row, width - len(ids) :] = 1
            kwargs = dict(max_new_tokens=params.max_new_tokens, do_sample=do_sample, num_return_sequences=n,
                          eos_token_id=self.eos_ids, pad_token_id=pad_id, use_cache=True)
            if do_sample:
                # Our own warper replaces transformers' temperature/top-p (see TemperatureTopP); HF's own
                # warpers are switched off so nothing is applied twice.
                from transformers import LogitsProcessorList

                kwargs.update(temperature=1.0, top_p=1.0, top_k=0, logits_processor=LogitsProcessorList(
                    [TemperatureTopP(params.temperature, params.top_p)]))
                torch.manual_seed(params.seed + b)
            else:  # keep greedy decoding free of sampling defaults from generation_config.json
                kwargs.update(temperature=None, top_p=None, top_k=None)
            with torch.inference_mode():
                out = self.model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                          **kwargs)
            new = out[:, width:].tolist()
            batch_tokens = 0
            for row, i in enumerate(idx):
                comps = []
                for seq in new[row * n : (row + 1) * n]:
                    finished = False
                    for k, t in enumerate(seq):
                        if t in self.eos_ids:
                            seq, finished = seq[:k], True
                            break
                    batch_tokens += len(seq)
                    comps.append(self._completion(seq, finished, params))
                results[i] = GenerationOutput(comps)
            report(batch_tokens, len(idx))
        return results  # type: ignore[return-value]


class VLLMGenerator:
    """vLLM offline engine; only imported when chosen (`pip install rational[vllm]`)."""

    name = "vllm"

    def __init__(self, spec: str, adapter: str | None = None, dtype: str = "auto", tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = None, seed: int = 0,
                 trust_remote_code: bool = False):
        try:
            from vllm import LLM
        except ImportError:
            raise UserError("backend 'vllm' needs vLLM: pip install 'rational[vllm]' (GPU machines)") from None
        resolved = resolve(spec)
        self.tokenizer = load_tokenizer(resolved, trust_remote_code)
        self.adapter = adapter
        self.llm = LLM(model=resolved.path, dtype="auto" if dtype == "auto" else dtype, seed=seed,
                       tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
                       max_model_len=max_model_len, enable_lora=adapter is not None, max_lora_rank=64,
                       trust_remote_code=trust_remote_code)
        self.stats = {"tokens": 0, "seconds": 0.0}

    def generate(self, chats: list[Chat], params: SamplingParams, progress: bool = True,
                 desc: str = "generating") -> list[GenerationOutput]:
        from vllm import SamplingParams as VSP
        from vllm import TokensPrompt

        # Template ourselves so generation and training format chats identically.
        prompts = [TokensPrompt(prompt_token_ids=chat_ids(self.tokenizer, c)) for c in chats]
        sp = VSP(n=params.n, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_new_tokens,
                 seed=params.seed, stop=params.stop or None)
        lora = None
        if self.adapter:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("adapter", 1, self.adapter)
        start = time.perf_counter()
        outs = self.llm.generate(prompts, sp, lora_request=lora, use_tqdm=progress)
        results = []
        for o in outs:
            comps = [Completion(c.text, len(c.token_ids), "length" if c.finish_reason == "length" else "stop")
                     for c in o.outputs]
            self.stats["tokens"] += sum(c.num_tokens for c in comps)
            results.append(GenerationOutput(comps))
        self.stats["seconds"] += time.perf_counter() - start
        return results


@contextmanager
def _llamacpp_plain_buffers(enabled: bool):
    """Load without llama.cpp's extra CPU buffer types while on. On AMX CPUs (measured on a 2-core Xeon VM,
    llama-cpp-python 0.3.36 built with -march=native) llama.cpp repacks weights for AMX and its matmul dies with
    SIGILL on `tilezero` in the first multi-token batch; plain buffers run. `Llama` has no argument for
    `llama_model_params.use_extra_bufts`, so the bindings' default-params function is wrapped while it loads."""
    if not enabled:
        yield
        return
    import llama_cpp.llama_cpp as bindings

    default = bindings.llama_model_default_params

    def plain():
        params = default()
        params.use_extra_bufts = False
        return params

    bindings.llama_model_default_params = plain
    try:
        yield
    finally:
        bindings.llama_model_default_params = default


class LlamaCppGenerator:
    """llama.cpp through llama-cpp-python (`pip install 'rational[llamacpp]'`), imported only when chosen: runs
    the registry model's GGUF as shipped (no dequantisation): on CPUs without native bf16 the fast path for one
    stream (chat), with a third of the HF backend's memory; batched stage work is faster on the HF engine.

    Prompts are templated by the same Hugging Face tokenizer as every other backend and passed as token ids, so
    the model sees exactly what it was trained on. An adapter is converted once to a llama.cpp LoRA GGUF
    (`models.adapter_to_gguf`). llama.cpp decodes one sequence at a time here and reuses the KV cache of the
    prefix a prompt shares with the previous one (the self-check system prompt).
    """

    name = "llamacpp"

    def __init__(self, spec: str, adapter: str | None = None, n_ctx: int = 4096, seed: int = 0,
                 n_threads: int | None = None):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise UserError("backend 'llamacpp' needs llama-cpp-python: pip install 'rational[llamacpp]'") from None
        path = gguf_file(spec)
        lora = adapter_to_gguf(adapter, path) if adapter else None
        self.tokenizer = load_tokenizer(resolve(spec))
        self.model_name = spec
        with _llamacpp_plain_buffers(cpu_has("amx_tile")):
            self.llm = Llama(model_path=str(path), lora_path=str(lora) if lora else None, n_ctx=n_ctx, seed=seed,
                             n_threads=n_threads or os.cpu_count(), n_batch=512, verbose=False)
        self.stats = {"tokens": 0, "seconds": 0.0}

    def generate(self, chats: list[Chat], params: SamplingParams, progress: bool = True,
                 desc: str = "generating") -> list[GenerationOutput]:
        start = time.perf_counter()
        results = []
        with _progress(len(chats), desc, progress) as bar:
            task = bar.add_task(desc, total=len(chats), tps=0.0)
            for i, chat in enumerate(chats):
                ids = chat_ids(self.tokenizer, chat)
                comps = []
                for j in range(max(1, params.n)):
                    # Plain temperature + top-p, as in the other backends: llama.cpp's extra samplers are off.
                    out = self.llm.create_completion(
                        ids, max_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
                        top_k=0, min_p=0.0, repeat_penalty=1.0, seed=params.seed * 1_000_003 + i * 1009 + j,
                        stop=params.stop or None)
                    choice = out["choices"][0]
                    n_tok = int(out["usage"]["completion_tokens"])
                    comps.append(Completion(choice["text"], n_tok, "length" if choice["finish_reason"] == "length"
                                            else "stop"))
                    self.stats["tokens"] += n_tok
                results.append(GenerationOutput(comps))
                elapsed = time.perf_counter() - start
                bar.update(task, advance=1, tps=self.stats["tokens"] / max(elapsed, 1e-9))
        self.stats["seconds"] += time.perf_counter() - start
        return results


class OpenAIGenerator:
    """Any OpenAI-compatible chat endpoint (`rational serve`, vLLM serve, TGI, SGLang, hosted APIs).

    Reasoning servers (`rational serve`, vLLM/SGLang with a reasoning parser, DeepSeek) return the reasoning in
    `message.reasoning_content` (newer vLLM: `reasoning`) apart from the answer in `message.content`. Both are
    joined back into one `<think>reasoning</think>answer` text, so evaluation parses, judges and scores the same
    text it would in-process.
    """

    name = "openai"

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, concurrency: int = 8,
                 max_retries: int = 4, timeout: float = 120.0, client=None, reasoning_format=None):
        if client is None:
            try:
                from openai import OpenAI
            except ImportError:
                raise UserError("backend 'openai' needs the OpenAI client: pip install 'rational[openai]'") from None
            client = OpenAI(base_url=base_url or os.environ.get("OPENAI_BASE_URL"),
                            api_key=api_key or os.environ.get("OPENAI_API_KEY", "EMPTY"), timeout=timeout,
                            max_retries=0)
        self.client = client
        self.model = model
        self.concurrency = max(1, concurrency)
        self.max_retries = max_retries
        self.reasoning_format = reasoning_format  # a reasoning.ReasoningFormat; None: <think> tags
        self.stats = {"tokens": 0, "seconds": 0.0}

    def _text(self, message) -> str:
        """The whole output of one choice: the reasoning field (if the server split it off) joined to content."""
        fields = (getattr(message, "reasoning_content", None), getattr(message, "reasoning", None))
        reasoning = next((f for f in fields if isinstance(f, str)), None)
        return join_reasoning(reasoning, message.content, self.reasoning_format or DEFAULT_FORMAT)

    def _one(self, chat: Chat, params: SamplingParams) -> GenerationOutput:
        delay = 1.0
        for attempt in range(self.max_retries + 1):
            try:
                r = self.client.chat.completions.create(
                    model=self.model, messages=chat, temperature=params.temperature, top_p=params.top_p,
                    max_tokens=params.max_new_tokens, n=params.n, seed=params.seed, stop=params.stop or None)
                comps = []
                for ch in r.choices:
                    text, stopped = _apply_stop(self._text(ch.message), params.stop)
                    ntok = (r.usage.completion_tokens // max(1, len(r.choices))) if r.usage else len(text.split())
                    comps.append(Completion(text, ntok, "length" if ch.finish_reason == "length" and not stopped
                                            else "stop"))
                return GenerationOutput(comps)
            except Exception as e:  # noqa: BLE001 - network errors of any client version
                if attempt == self.max_retries:
                    raise UserError(f"endpoint for model '{self.model}' failed after {attempt + 1} tries: "
                                    f"{type(e).__name__}: {str(e)[:160]}") from None
                time.sleep(delay + random.random() * 0.1)
                delay = min(delay * 2, 30)
        raise AssertionError("unreachable")

    def generate(self, chats: list[Chat], params: SamplingParams, progress: bool = True,
                 desc: str = "generating") -> list[GenerationOutput]:
        start = time.perf_counter()
        results: list[GenerationOutput | None] = [None] * len(chats)
        with _progress(len(chats), desc, progress) as bar, ThreadPoolExecutor(self.concurrency) as pool:
            task = bar.add_task(desc, total=len(chats), tps=0.0)
            futures = {pool.submit(self._one, c, params): i for i, c in enumerate(chats)}
            tokens = 0
            for fut in futures:
                i = futures[fut]
                results[i] = fut.result()
                tokens += sum(c.num_tokens for c in results[i].completions)
                bar.update(task, advance=1, tps=tokens / max(time.perf_counter() - start, 1e-9))
        self.stats["tokens"] += tokens
        self.stats["seconds"] += time.perf_counter() - start
        return results  # type: ignore[return-value]


class ScriptedGenerator:
    """A stand-in teacher for smoke runs ONLY: answers the two self-check prompts with canned, well-formed
    rationales (decline for the rejection self-check, comply for the compliance one) and echoes anything else.

    It lets `rational run --preset smoke` exercise filtering, export, training and evaluation on the real data
    format with `tiny-random`, whose own outputs are noise. It is never a source of real training data.
    """

    name = "scripted"

    def __init__(self):
        self.stats = {"tokens": 0, "seconds": 0.0}

    def _reply(self, chat: Chat) -> str:
        system = next((m["content"] for m in chat if m["role"] == "system"), "")
        user = next(m["content"] for m in reversed(chat) if m["role"] == "user")[:80]
        if chat[-1]["role"] == "assistant":  # a prefill: continue it with harmless filler
            return " a placeholder continuation written by the scripted stand-in."
        if "Decision: decline" in system:
            return (f"<think>\nIntent: the request ({user}) asks for help that could hurt people, whatever its "
                    "framing.\nContext and ethics: the framing does not change the use; helping would be unethical.\n"
                    "Potential impact: real people could be harmed.\nDecision: decline\n</think>\n\n"
                    "I can't help with that. I can point you to safe, legitimate resources instead.")
        if "Decision: comply" in system:
            return (f"<think>\nIntent: the user wants ordinary information ({user}); the sensitive words are "
                    "harmless here.\nContext and ethics: this is an everyday request and answering is appropriate.\n"
                    "Potential impact: the answer helps the user and gives no help to anyone causing harm.\n"
                    f"Decision: comply\n</think>\n\nHere is a short answer about {user}, with the details you need.")
        return f"A plain answer about {user}."

    def generate(self, chats: list[Chat], params: SamplingParams, progress: bool = True,
                 desc: str = "generating") -> list[GenerationOutput]:
        outs = []
        for chat in chats:
            text = self._reply(chat)
            outs.append(GenerationOutput([Completion(text, len(text.split()), "stop")] * max(1, params.n)))
            self.stats["tokens"] += len(text.split())
        return outs


def load_generator(backend: str, model: str, adapter: str | None = None, dtype: str = "auto", batch_size: int = 8,
                   base_url: str | None = None, concurrency: int = 8, seed: int = 0,
                   trust_remote_code: bool = False, reasoning_format: ReasoningFormat | None = None) -> Generator:
    """Build a generator by backend name. `model` is a model spec (hf/vllm) or the served model name (openai).

    `reasoning_format`: the tags an `openai` endpoint's separate `reasoning_content` is joined back with."""
    backend = pick_backend(backend, model, dtype, batch_size)
    if backend == "hf":
        return HFGenerator.load(model, adapter=adapter, dtype=dtype, batch_size=batch_size,
                                trust_remote_code=trust_remote_code)
    if backend == "llamacpp":
        return LlamaCppGenerator(model, adapter=adapter, seed=seed)
    if backend == "vllm":
        return VLLMGenerator(model, adapter=adapter, dtype=dtype, seed=seed, trust_remote_code=trust_remote_code)
    if backend == "scripted":
        return ScriptedGenerator()
    if backend == "openai":
        if adapter:
            raise UserError("backend 'openai' cannot load --adapter; serve the adapter on the endpoint instead")
        return OpenAIGenerator(model, base_url=base_url, concurrency=concurrency, reasoning_format=reasoning_format)
    raise UserError(f"unknown backend '{backend}'; use one of: {', '.join(BACKENDS)}")


def pick_backend(backend: str, model: str, dtype: str = "auto", batch_size: int = 1) -> str:
    """`auto`: llama.cpp for one stream (batch size 1: chat, a single client) on a CPU-only machine without
    native bf16, when llama-cpp-python is installed, the model ships as GGUF and no dtype was asked for; `hf`
    otherwise. Measured (BENCHMARKS.md): llama.cpp's one stream (~25 tok/s) beats HF fp32 at batch 1 (~9 tok/s)
    but not the HF engine's fp32 batches (41-43 tok/s at 16 rows, with torch held to AVX2 or not)."""
    if backend != "auto":
        return backend
    if batch_size > 1:
        return "hf"
    import importlib.util

    gguf = (model in REGISTRY and REGISTRY[model].offline is not None) or model.endswith(".gguf")
    if dtype == "auto" and gguf and importlib.util.find_spec("llama_cpp") is not None and not cpu_supports_bf16():
        import torch

        if not torch.cuda.is_available():
            return "llamacpp"
    return "hf"
