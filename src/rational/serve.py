"""`rational serve`: an OpenAI-compatible endpoint for a model + adapter, for red-teaming tools and remote eval.

    rational serve --model qwen2.5-coder-0.5b-instruct --adapter runs/x/train-rational/adapter \\
        --served-model-name rational --port 8000
    # then: POST http://127.0.0.1:8000/v1/chat/completions  {"model": "rational", "messages": [...]}

Endpoints: `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`. Streaming is not offered
(`stream: true` is a 400): generation runs to the end before anything is sent, so a stream would only
pretend.

Reasoning. By default a reply carries the answer in `message.content` and the reasoning block's body in
`message.reasoning_content`, as vLLM and DeepSeek return reasoning models' output, so attack tools score
what a user would see. `include_reasoning: true` in the request (or `show_reasoning` on the server) puts
the model's whole text in `content` instead. `content` starts with the answer (the whitespace after the
reasoning block is dropped: garak's detectors match refusal prefixes with `startswith`). `OpenAIGenerator`
joins the two fields back with the trained format's separator (`reasoning.split_reasoning`), so
`rational eval --backend openai` against this server scores the same text as an in-process eval.

Batching. The model is not thread-safe, so one worker thread owns it (and its tokenizer). Requests are
queued; the worker takes the first, waits up to `batch_wait_ms` for more (at most `max_batch_size`), and
runs those with equal sampling parameters as one `generator.generate` call. Greedy outputs do not depend
on batching; sampled ones do (each batch is seeded once), see docs/serving.md.

Errors are OpenAI-shaped, `{"error": {"message", "type", "param", "code"}}`, with one-line messages and
never a traceback: 400 for a bad request, 404 for an unknown model or path, 500 when generation fails
(the traceback goes to the server log).

FastAPI and uvicorn are an optional extra (`pip install 'rational[serve]'`), imported only inside the
functions that need them, so `rational` itself (and `import rational.cli`) stays light.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations (`request: Request`) at
# run time, and `Request` is imported inside build_app, out of reach of string annotations.
import logging
import queue
import random
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path

from .backends import Chat, GenerationOutput, HFGenerator, SamplingParams
from .config import check_range, setting
from .errors import UserError
from .models import DEFAULT_MODEL
from .reasoning import ReasoningFormat, split_reasoning

log = logging.getLogger("rational.serve")


@dataclass
class ServeConfig:
    """`rational serve`: an OpenAI-compatible endpoint for a model (+ adapter)."""

    model: str = setting(DEFAULT_MODEL, "Model spec: registry name, local folder (also a merged Rational model), "
                         ".gguf file or hub id.")
    adapter: str | None = setting(None, "PEFT adapter folder from `rational train` (Rational or refusal-sft); omit "
                                  "to serve the model as is.")
    served_model_name: str | None = setting(None, "Name clients pass as `model` (default: the adapter folder's "
                                            "name, else the model spec).")
    host: str = setting("127.0.0.1", "Address to listen on. There is no authentication: 0.0.0.0 lets anyone on the "
                        "network use it.")
    port: int = setting(8000, "Port to listen on (0: any free port, printed at start).")
    dtype: str = setting("auto", "auto | float32 | bfloat16 | float16.")
    max_batch_size: int = setting(8, "Largest number of requests run as one batch; also the largest `n` a request "
                                  "may ask for.")
    batch_wait_ms: float = setting(20.0, "How long the first queued request waits for others to share its batch.")
    max_tokens: int = setting(512, "Token limit of a completion when the request gives neither max_tokens nor "
                              "max_completion_tokens.")
    show_reasoning: bool = setting(False, "Put the reasoning inline in `content` (default: apart, in "
                                   "`reasoning_content`); a request's `include_reasoning` overrides it.")
    reasoning_open: str = setting("<think>", "Tag that opens the model's reasoning block.")
    reasoning_close: str = setting("</think>", "Tag that closes the reasoning block.")

    def __post_init__(self):
        check_range(self, "port", 0, 65535)
        check_range(self, "max_batch_size", 1)
        check_range(self, "batch_wait_ms", 0)
        check_range(self, "max_tokens", 1)

    def served_name(self) -> str:
        return self.served_model_name or (Path(self.adapter).name if self.adapter else self.model)


def _check_config(cfg: ServeConfig) -> ReasoningFormat:
    """The reasoning tags, as a one-line error before anything loads (ranges are checked by ServeConfig)."""
    try:
        return ReasoningFormat(cfg.reasoning_open, cfg.reasoning_close)
    except ValueError as e:
        raise UserError(f"reasoning tags: {e}") from None


# ------------------------------------------------------------------------------------------ requests


_ERROR_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 500: "server_error"}


class APIError(Exception):
    """An error answered to the client as an OpenAI-style JSON body with this HTTP status."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": _ERROR_TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


def _bad(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, code, param)


_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object",
               type(None): "null"}


def _json_type(value) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_inclusive: bool = True) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"{name} must be a number, got {_json_type(value)}", name)
    if not ((lo <= value) if lo_inclusive else (lo < value)) or not value <= hi:
        low = "[" if lo_inclusive else "("
        raise _bad(f"{name} must be in {low}{lo:g}, {hi:g}], got {value}", name)
    return float(value)


def _integer(body: dict, name: str, default: int | None, lo: int, hi: int, why: str = "") -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{name} must be an integer, got {_json_type(value)}", name)
    if not lo <= value <= hi:
        raise _bad(f"{name} must be between {lo} and {hi}{why}, got {value}", name)
    return value


# OpenAI's roles mapped to what chat templates know; "developer" is the newer name of "system".
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

# Fields this server cannot honour. Clients such as garak and PyRIT always send some of them with their neutral
# value, so only a value that would change the result is refused; silently ignoring it would mislead.
_UNSUPPORTED = ("tools", "functions", "tool_choice", "response_format", "logprobs", "top_logprobs", "logit_bias",
                "frequency_penalty", "presence_penalty")
_NEUTRAL = (None, False, 0, [], {}, "none", "auto", {"type": "text"})


def _messages(value) -> Chat:
    if not isinstance(value, list) or not value:
        raise _bad(f"messages must be a non-empty array of {{role, content}} objects, got {_json_type(value)}",
                   "messages")
    chat = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"{where} must be an object with role and content, got {_json_type(m)}", "messages")
        role = m.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise _bad(f"{where}.role must be one of {', '.join(_ROLES)}, got {role!r}", "messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise _bad(f"{where}.content: only text parts ({{\"type\": \"text\", \"text\": ...}}) are supported",
                           "messages", "unsupported_content")
            content = "\n".join(p["text"] for p in content)
        elif not isinstance(content, str):
            raise _bad(f"{where}.content must be a string or an array of text parts, got {_json_type(content)}",
                       "messages")
        chat.append({"role": _ROLES[role], "content": content})
    return chat


def _stop(value) -> list[str]:
    stops = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise _bad("stop must be a non-empty string or an array of non-empty strings", "stop")
    return stops


@dataclass
class ChatRequest:
    """A validated chat completion request. `seed` None: not given (sampled batches then draw a fresh seed)."""

    model: str
    messages: Chat
    params: SamplingParams
    seed: int | None
    include_reasoning: bool | None

    def batch_key(self) -> tuple:
        """Requests with equal keys can share one `generate` call. Greedy decoding ignores the seed."""
        p = self.params
        seed = None if p.temperature == 0 else self.seed
        return p.max_new_tokens, p.temperature, p.top_p, p.n, seed, tuple(p.stop)


def parse_chat_request(body, default_max_tokens: int, max_n: int) -> ChatRequest:
    """Validate a decoded JSON body against the OpenAI chat schema; an APIError (400) names the first problem.

    Sampling defaults are OpenAI's (temperature 1, top_p 1, n 1): a client written for OpenAI gets what it
    expects. Fields this server does not know are ignored, as OpenAI-compatible servers do.
    """
    if not isinstance(body, dict):
        raise _bad(f"the request body must be a JSON object, got {_json_type(body)}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model is required: a string naming the served model (see GET /v1/models)", "model")
    messages = _messages(body.get("messages"))
    if body.get("stream") not in (None, False):
        raise _bad("stream=true is not supported: this server returns whole completions; send stream=false",
                   "stream", "unsupported_parameter")
    for name in _UNSUPPORTED:
        if body.get(name) not in _NEUTRAL:
            raise _bad(f"{name} is not supported by this server; leave it out", name, "unsupported_parameter")
    include = body.get("include_reasoning")
    if include is not None and not isinstance(include, bool):
        raise _bad(f"include_reasoning must be true or false, got {_json_type(include)}", "include_reasoning")
    # max_completion_tokens is OpenAI's newer name for max_tokens; it wins when both are given (as in vLLM).
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    seed = _integer(body, "seed", None, -(2**63), 2**63 - 1)
    params = SamplingParams(
        max_new_tokens=_integer(body, name, default_max_tokens, 1, 2**31 - 1),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        # top_p 0 would keep no token at all; OpenAI reads it as greedy, here it is refused rather than guessed.
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_inclusive=False),
        n=_integer(body, "n", 1, 1, max_n, " (the server's max_batch_size)"),
        seed=0 if seed is None else seed,
        stop=_stop(body.get("stop")),
    )
    return ChatRequest(model, messages, params, seed, include)


# ------------------------------------------------------------------------------------------ batching


@dataclass
class _Job:
    request: ChatRequest
    future: Future  # -> (GenerationOutput, prompt_tokens), or an exception
    arrived: float = field(default_factory=time.monotonic)
    prompt_tokens: int = 0


class Batcher:
    """The single worker thread that owns the generator; requests reach it through a queue.

    The tokenizer is used only here as well (prompt length checks), since fast tokenizers can fail when two
    threads call them at once.
    """

    def __init__(self, generator, max_batch_size: int, batch_wait_ms: float, context_length: int | None):
        self.generator = generator
        self.max_batch_size = max_batch_size
        self.wait_s = batch_wait_ms / 1000
        self.context_length = context_length
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="rational-serve-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish what is queued, then end the worker."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def pending(self) -> int:
        return self._queue.qsize()

    def submit(self, request: ChatRequest) -> Future:
        job = _Job(request, Future())
        self._queue.put(job)
        return job.future

    def _run(self) -> None:
        while not self._stopping:
            first = self._queue.get()
            if first is None:
                return
            self._process(self._collect(first))

    def _collect(self, first: _Job) -> list[_Job]:
        """The first job plus whatever arrives until `batch_wait_ms` after it, up to `max_batch_size`. Jobs that
        queued while the worker was busy have waited already: they are taken at once, without a further wait."""
        jobs = [first]
        deadline = first.arrived + self.wait_s
        while len(jobs) < self.max_batch_size:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self._stopping = True
                break
            jobs.append(job)
        return jobs

    def _process(self, jobs: list[_Job]) -> None:
        groups: dict[tuple, list[_Job]] = {}
        for job in jobs:
            if not job.future.set_running_or_notify_cancel():  # its request was cancelled while queued
                continue
            try:
                job.prompt_tokens = self._prompt_tokens(job.request)
            except APIError as e:
                job.future.set_exception(e)
                continue
            except Exception as e:  # noqa: BLE001 - the worker must outlive any one request
                log.exception("could not tokenize a request")
                job.future.set_exception(_server_error("could not tokenize the prompt", e))
                continue
            groups.setdefault(job.request.batch_key(), []).append(job)
        for group in groups.values():
            self._generate(group)

    def _prompt_tokens(self, request: ChatRequest) -> int:
        from jinja2 import TemplateError

        try:
            n = len(self.generator.encode(request.messages))
        except TemplateError as e:  # e.g. a template that refuses system messages or non-alternating roles
            raise _bad(f"the model's chat template rejected these messages: {e}", "messages",
                       "invalid_messages") from None
        total = n + request.params.max_new_tokens
        if self.context_length is not None and total > self.context_length:
            raise _bad(f"the prompt has {n} tokens and max_tokens is {request.params.max_new_tokens}: {total} "
                       f"tokens, more than the model's context of {self.context_length}; shorten the messages or "
                       f"lower max_tokens", "messages", "context_length_exceeded")
        return n

    def _generate(self, group: list[_Job]) -> None:
        request = group[0].request
        params, copies = request.params, 1
        if params.temperature == 0 and params.n > 1:
            # n greedy completions are n copies of one, and transformers refuses n > 1 without sampling.
            params, copies = replace(params, n=1), params.n
        if request.seed is None and params.temperature > 0:
            # No seed asked for: a fresh one per batch, so repeated requests (garak's generations) differ.
            params = replace(params, seed=random.randrange(2**31))
        try:
            outs = self.generator.generate([j.request.messages for j in group], params, progress=False)
        except Exception as e:  # noqa: BLE001 - any failure is answered as a 500, the traceback goes to the log
            log.exception("generation failed for a batch of %d request(s)", len(group))
            error = _server_error("generation failed", e)
            for job in group:
                job.future.set_exception(error)
            return
        for job, out in zip(group, outs):
            job.future.set_result((GenerationOutput(out.completions * copies), job.prompt_tokens))


def _server_error(what: str, e: Exception) -> APIError:
    """A 500 whose message is one line: what failed, the exception's type and the first line of its text."""
    first_line = (str(e).strip().splitlines() or [""])[0][:300]
    return APIError(500, f"{what}: {type(e).__name__}" + (f": {first_line}" if first_line else ""),
                    "generation_failed")


def _context_length(generator) -> int | None:
    """The model's context window from its config, None when it does not say."""
    config = getattr(getattr(generator, "model", None), "config", None)
    value = getattr(config, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


# ------------------------------------------------------------------------------------------ the app


def _completion(name: str, out: GenerationOutput, prompt_tokens: int, inline: bool, fmt: ReasoningFormat) -> dict:
    choices = []
    for i, c in enumerate(out.completions):
        reasoning, content = (None, c.text) if inline else split_reasoning(c.text, fmt)
        choices.append({"index": i, "message": {"role": "assistant", "content": content,
                                                "reasoning_content": reasoning},
                        "finish_reason": c.finish_reason, "logprobs": None})
    completion_tokens = sum(c.num_tokens for c in out.completions)
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": name, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def build_app(generator, cfg: ServeConfig):
    """The FastAPI app serving `generator` (an `HFGenerator`: `generate`, `encode` and `model.config` are used).

    The batching worker runs during the app's lifespan: under uvicorn, or inside `with TestClient(app)`.
    """
    import asyncio
    import json
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    fmt = _check_config(cfg)
    name = cfg.served_name()
    batcher = Batcher(generator, cfg.max_batch_size, cfg.batch_wait_ms, _context_length(generator))
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await asyncio.to_thread(batcher.stop)

    app = FastAPI(title="rational serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)  # unknown path (404), wrong method (405): same error shape
    async def http_error(request, e: HTTPException):
        return JSONResponse(APIError(e.status_code, f"{request.method} {request.url.path}: {e.detail}",
                                     "not_found" if e.status_code == 404 else None).body(), status_code=e.status_code)

    @app.exception_handler(Exception)  # a bug: one line to the client; Starlette re-raises it, so uvicorn logs it
    async def internal_error(request, e: Exception):
        return JSONResponse(APIError(500, f"internal error: {type(e).__name__}", "internal_error").body(),
                            status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "queued": batcher.pending()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": started,
                                            "owned_by": "rational", "max_model_len": batcher.context_length}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = json.loads(await request.body())
        except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
            raise _bad(f"the request body is not valid JSON: {e}", code="invalid_json") from None
        req = parse_chat_request(body, cfg.max_tokens, cfg.max_batch_size)
        if req.model != name:
            raise APIError(404, f"model '{req.model}' is not served here; this server serves '{name}'",
                           "model_not_found", "model")
        out, prompt_tokens = await asyncio.wrap_future(batcher.submit(req))
        inline = cfg.show_reasoning if req.include_reasoning is None else req.include_reasoning
        return _completion(name, out, prompt_tokens, inline, fmt)

    return app


def _listen(host: str, port: int):
    """Bind the listening socket now, before the model loads, so a busy port fails in a second, not after it."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart may reuse the port
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass another --port or --host") from None
    return sock


def run_serve(cfg: ServeConfig) -> None:
    """Load the model (and adapter) and serve it until interrupted (Ctrl-C)."""
    _check_config(cfg)
    try:
        import fastapi  # noqa: F401 - only checked here, used by build_app
        import uvicorn
    except ImportError:
        raise UserError("`rational serve` needs FastAPI and uvicorn: pip install 'rational[serve]'") from None

    sock = _listen(cfg.host, cfg.port)
    try:
        generator = HFGenerator.load(cfg.model, adapter=cfg.adapter, dtype=cfg.dtype, batch_size=cfg.max_batch_size)
        app = build_app(generator, cfg)
    except BaseException:
        sock.close()
        raise
    port = sock.getsockname()[1]
    what = cfg.model + (f" + adapter {cfg.adapter}" if cfg.adapter else "")
    print(f"[rational] serving {what} as '{cfg.served_name()}' at http://{cfg.host}:{port}/v1", file=sys.stderr)
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"[rational] warning: listening on {cfg.host} without authentication; anyone who can reach this "
              "address can use the model", file=sys.stderr)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=port, log_level="info"))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down cleanly: the normal way to stop
        pass
