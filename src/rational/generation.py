"""One generation interface for every stage: `generator.generate(chats, params) -> outputs`.

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
from dataclasses import asdict, dataclass, field
from typing import Protocol

from .errors import UserError

Chat = list[dict[str, str]]
BACKENDS = ("hf", "vllm", "openai", "scripted")
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


def _apply_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stop) if i != -1), default=-1)
    return (text[:cut], True) if cut != -1 else (text, False)


def _progress(total: int, desc: str, enabled: bool):
    """A rich progress bar with a live tokens/s field (disabled -> a no-op context)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[tps]:.1f} tok/s"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        disable=not enabled, transient=False,
    )


class TemperatureTopP:
    """Temperature + exact nucleus (top-p) filtering that does not sort the whole vocabulary.

    transformers' TopPLogitsWarper sorts every row's ~150k logits at every decoding step: 0.22 s for 32 rows on
    2 CPU cores (measured), about as long as the forward pass itself. The nucleus nearly always lies within the
    top few hundred tokens, so only those are sorted (`topk`); a row whose top-`k` mass is still below `top_p`
    falls back to the full sort, so the kept set is exactly the one the full sort would keep: the smallest set
    of most likely tokens whose probability mass reaches `top_p`.

    As a logits processor (`__call__`, for `model.generate`) it masks the other tokens; `sample` (the fast engine)
    draws from the same kept set and probabilities directly, without the full-vocabulary mask, second softmax and
    cumulative sum that sampling from the masked scores costs.
    """

    def __init__(self, temperature: float, top_p: float, k: int = 256):
        self.temperature = temperature
        self.top_p = top_p
        self.k = k

    def _nucleus(self, probs, k: int):
        """Top-k probabilities (largest first), their token ids, which of them the nucleus keeps, and whether
        each row's nucleus lies inside its top k."""
        top, idx = probs.topk(k, dim=-1)
        cum = top.cumsum(-1)
        keep = (cum - top) < self.top_p  # keep a token while the mass before it < top_p
        return top, idx, keep, cum[:, -1] >= self.top_p

    def __call__(self, input_ids, scores):
        import torch

        scores = scores / self.temperature
        if self.top_p >= 1.0:
            return scores
        probs = scores.float().softmax(-1)
        top, idx, keep, inside = self._nucleus(probs, min(self.k, probs.shape[-1]))
        remove = torch.ones_like(probs, dtype=torch.bool)
        remove.scatter_(1, idx, ~keep)
        if not inside.all():  # rare: a flat distribution; do the full sort for those rows
            rows = (~inside).nonzero().flatten()
            _, sidx, skeep, _ = self._nucleus(probs[rows], probs.shape[-1])
            sub = torch.ones_like(probs[rows], dtype=torch.bool)
            sub.scatter_(1, sidx, ~skeep)
            remove[rows] = sub
        return scores.masked_fill(remove, float("-inf"))

    def sample(self, scores, u):
        """One token per row from the distribution `__call__` leaves; `u[r]` is row r's uniform draw in [0, 1)."""
        probs = (scores / self.temperature).float().softmax(-1)
        if self.top_p >= 1.0:
            return sample_from(probs, u)
        top, idx, keep, inside = self._nucleus(probs, min(self.k, probs.shape[-1]))
        picked = idx.gather(1, sample_from(top * keep, u)[:, None]).squeeze(1)
        if not inside.all():
            rows = (~inside).nonzero().flatten()
            stop, sidx, skeep, _ = self._nucleus(probs[rows], probs.shape[-1])
            picked[rows] = sidx.gather(1, sample_from(stop * skeep, u[rows])[:, None]).squeeze(1)
        return picked


def sample_from(weights, u):
    """Inverse-CDF sampling: row r takes the index whose cumulative-weight interval holds u[r] in [0, 1).

    Same distribution as `torch.multinomial(weights, 1)`, but vectorised over rows that each bring their own
    uniform draw. `right=True` skips entries of weight 0 (their interval is empty).
    """
    import torch

    cdf = weights.cumsum(-1)
    picked = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
    return picked.clamp(max=weights.shape[-1] - 1)  # u * total rounding up to the total


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
        from .engine import supports
        from .models import stop_token_ids

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
        from .models import load_model_and_tokenizer

        model, tok = load_model_and_tokenizer(spec, adapter=adapter, dtype=dtype, device=device,
                                              trust_remote_code=trust_remote_code)
        return cls(model, tok, batch_size=batch_size, model_name=spec, engine=engine, engine_options=engine_options)

    def encode(self, chat: Chat) -> list[int]:
        ids = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
        return list(ids)

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
        from .engine import Engine

        engine = Engine(self.model, self.eos_ids, self.tokenizer.pad_token_id, self.batch_size, **self.engine_options)
        stop_check = None
        if params.stop:  # stop as soon as a stop string shows up in the text, not only at EOS / the length limit
            def stop_check(tokens: list[int]) -> bool:
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                return any(s in text for s in params.stop)

        seqs = engine.generate(encoded, max(1, params.n), params.max_new_tokens, temperature=params.temperature,
                               top_p=params.top_p, seed=params.seed, stop_check=stop_check, on_step=report)
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
        from .models import load_tokenizer, resolve

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
        prompts = [TokensPrompt(prompt_token_ids=list(self.tokenizer.apply_chat_template(
            c, add_generation_prompt=True, tokenize=True, return_dict=False))) for c in chats]
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


class OpenAIGenerator:
    """Any OpenAI-compatible chat endpoint (vLLM serve, TGI, SGLang, hosted APIs)."""

    name = "openai"

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, concurrency: int = 8,
                 max_retries: int = 4, timeout: float = 120.0, client=None):
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
        self.stats = {"tokens": 0, "seconds": 0.0}

    def _one(self, chat: Chat, params: SamplingParams) -> GenerationOutput:
        delay = 1.0
        for attempt in range(self.max_retries + 1):
            try:
                r = self.client.chat.completions.create(
                    model=self.model, messages=chat, temperature=params.temperature, top_p=params.top_p,
                    max_tokens=params.max_new_tokens, n=params.n, seed=params.seed, stop=params.stop or None)
                comps = []
                for ch in r.choices:
                    text, stopped = _apply_stop(ch.message.content or "", params.stop)
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
        user = chat[-1]["content"][:60]
        if "Decision: decline" in system:
            return ("<think>\nIntent: the request asks for help that could hurt people, whatever its framing.\n"
                    "Context and ethics: the framing does not change the use; helping would be unethical.\n"
                    "Potential impact: real people could be harmed.\nDecision: decline\n</think>\n\n"
                    "I can't help with that. I can point you to safe, legitimate resources instead.")
        if "Decision: comply" in system:
            return ("<think>\nIntent: the user wants ordinary information; the sensitive words are harmless here.\n"
                    "Context and ethics: this is an everyday request and answering is appropriate.\n"
                    "Potential impact: the answer helps the user and gives no help to anyone causing harm.\n"
                    f"Decision: comply\n</think>\n\nHere is a short, helpful answer about: {user}")
        return user

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
                   trust_remote_code: bool = False) -> Generator:
    """Build a generator by backend name. `model` is a model spec (hf/vllm) or the served model name (openai)."""
    if backend == "hf":
        return HFGenerator.load(model, adapter=adapter, dtype=dtype, batch_size=batch_size,
                                trust_remote_code=trust_remote_code)
    if backend == "vllm":
        return VLLMGenerator(model, adapter=adapter, dtype=dtype, seed=seed, trust_remote_code=trust_remote_code)
    if backend == "scripted":
        return ScriptedGenerator()
    if backend == "openai":
        if adapter:
            raise UserError("backend 'openai' cannot load --adapter; serve the adapter on the endpoint instead")
        return OpenAIGenerator(model, base_url=base_url, concurrency=concurrency)
    raise UserError(f"unknown backend '{backend}'; use one of: {', '.join(BACKENDS)}")
