"""`rational generate --teacher`: rationales written by another model, local or behind an OpenAI-compatible
endpoint, trained into the student without the self-check system prompt."""

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("openai")

from fastapi import FastAPI  # noqa: E402
from test_generate import COMPLY, DECLINE  # noqa: E402
from test_serve import served  # noqa: E402

import rational.generate as generate  # noqa: E402
from rational.backends import Completion, GenerationOutput  # noqa: E402
from rational.common import read_jsonl  # noqa: E402
from rational.generate import GenerateConfig, run_generate  # noqa: E402


def _canned(messages) -> str:
    """A reasoned refusal under the rejection self-check prompt, a reasoned answer under the compliance one."""
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    return DECLINE if "Decision: decline" in system else COMPLY


def _cfg(tmp_path, **kw) -> GenerateConfig:
    base = dict(model="tiny-random", out=str(tmp_path / "gen"), limit=8, n_samples=1, max_retries=0, mutations=[],
                quality_checks=False, plain_answers=False, judge="refusal-keywords")
    base.update(kw)
    return GenerateConfig(**base)


def _check_output(path, writer):
    records = read_jsonl(path)
    kinds = {r["meta"]["kind"] for r in records}
    assert records and kinds & {"harmful", "adversarial"} and kinds & {"benign", "borderline"}, kinds
    for r in records:  # SFT data never carries the self-check system prompt
        assert [m["role"] for m in r["prompt"]] == ["user"]
        assert r["completion"][0]["content"] in (DECLINE, COMPLY)
    stats = json.loads((path.parent / "stats.json").read_text())
    assert stats["writer"] == writer and stats["teacher"] == writer and stats["model"] == "tiny-random"


def test_teacher_behind_an_openai_compatible_endpoint(tmp_path):
    requests = []
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict):
        requests.append(body)
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": _canned(body["messages"])}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 30, "total_tokens": 31}}

    with served(app) as url:
        path = run_generate(_cfg(tmp_path, teacher="big-teacher", teacher_base_url=url), progress=False)
    assert requests and {b["model"] for b in requests} == {"big-teacher"}
    assert all(b["messages"][0]["role"] == "system" for b in requests)  # the self-check prompt goes to the teacher
    _check_output(path, "big-teacher")


def test_teacher_as_a_second_local_model(tmp_path, monkeypatch, tiny_path):
    loaded = []

    class Canned:
        def generate(self, chats, params, progress=True, desc=""):
            return [GenerationOutput([Completion(_canned(c), 30, "stop")] * params.n) for c in chats]

    def fake_load(backend, spec, **kw):
        loaded.append((backend, spec))
        return Canned()

    monkeypatch.setattr(generate, "load_generator", fake_load)
    path = run_generate(_cfg(tmp_path, teacher=str(tiny_path)), progress=False)
    assert loaded == [("hf", str(tiny_path))]  # the teacher is loaded, not the student
    _check_output(path, str(tiny_path))
