from types import SimpleNamespace

import pytest

from rational.backends import HFGenerator, OpenAIGenerator, SamplingParams, load_generator
from rational.errors import UserError

CHATS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": "How do I kill a Python process that hangs forever on my laptop?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Bake bread?"}],
    [{"role": "user", "content": "The quick brown fox jumps over the lazy dog, twice: " + "fox " * 20}],
    [{"role": "user", "content": "0123456789"}],
]


@pytest.fixture(scope="module")
def gen(tiny_path):
    return HFGenerator.load(tiny_path, dtype="float32", batch_size=4)


def test_batched_equals_one_by_one(gen):
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    batched = [o.text for o in gen.generate(CHATS, params, progress=False)]
    gen.batch_size = 1
    try:
        single = [o.text for o in gen.generate(CHATS, params, progress=False)]
    finally:
        gen.batch_size = 4
    assert batched == single
    assert any(batched)  # the tiny model does emit tokens


def test_outputs_keep_input_order_and_count_tokens(gen):
    params = SamplingParams(max_new_tokens=8)
    outs = gen.generate(CHATS, params, progress=False)
    assert len(outs) == len(CHATS)
    again = gen.generate(list(reversed(CHATS)), params, progress=False)
    assert [o.text for o in outs] == [o.text for o in reversed(again)]
    for o in outs:
        c = o.completions[0]
        assert 0 <= c.num_tokens <= 8 and c.finish_reason in ("stop", "length")


def test_sampling_n_and_seed(gen):
    p = SamplingParams(max_new_tokens=10, temperature=1.0, n=3, seed=7)
    a = gen.generate(CHATS[:2], p, progress=False)
    b = gen.generate(CHATS[:2], p, progress=False)
    assert [len(o.completions) for o in a] == [3, 3]
    assert [[c.text for c in o.completions] for o in a] == [[c.text for c in o.completions] for o in b]


def test_stop_strings(gen):
    full = gen.generate(CHATS[:1], SamplingParams(max_new_tokens=16), progress=False)[0].text
    if len(full) < 4:
        pytest.skip("tiny model produced too little text to cut")
    cut = full[2:4]
    out = gen.generate(CHATS[:1], SamplingParams(max_new_tokens=16, stop=[cut]), progress=False)[0]
    assert out.text == full[: full.find(cut)] and out.completions[0].finish_reason == "stop"


class _FakeCompletions:
    def __init__(self, fail_times=0):
        self.calls = 0
        self.fail_times = fail_times

    def create(self, model, messages, **kw):
        self.calls += 1
        if self.calls <= self.fail_times:
            raise ConnectionError("endpoint down")
        text = "echo: " + messages[-1]["content"]
        choice = SimpleNamespace(message=SimpleNamespace(content=text), finish_reason="stop")
        return SimpleNamespace(choices=[choice] * kw.get("n", 1), usage=SimpleNamespace(completion_tokens=3))


def _client(fail_times=0):
    return SimpleNamespace(chat=SimpleNamespace(completions=_FakeCompletions(fail_times)))


def test_openai_backend_order_and_retries(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    client = _client(fail_times=2)
    gen = OpenAIGenerator("m", client=client, concurrency=3, max_retries=3)
    outs = gen.generate(CHATS, SamplingParams(max_new_tokens=5), progress=False)
    assert [o.text for o in outs] == ["echo: " + c[-1]["content"] for c in CHATS]


def test_openai_backend_gives_up_with_one_line(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    gen = OpenAIGenerator("m", client=_client(fail_times=99), concurrency=1, max_retries=2)
    with pytest.raises(UserError, match="failed after 3 tries"):
        gen.generate(CHATS[:1], SamplingParams(), progress=False)


def test_unknown_backend():
    with pytest.raises(UserError, match="unknown backend"):
        load_generator("tgi", "tiny-random")


def test_fast_top_p_matches_transformers_warpers():
    import torch
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    from rational.backends import TemperatureTopP

    torch.manual_seed(0)
    peaked = torch.randn(6, 5000) * 6  # nucleus inside the top-k
    flat = torch.randn(3, 5000) * 0.01  # nucleus far wider than k: exercises the full-sort fallback
    for logits in (peaked, flat, torch.cat([peaked, flat])):
        for t, p in ((0.7, 0.95), (1.0, 0.5), (1.3, 0.99)):
            ref = TopPLogitsWarper(p)(None, TemperatureLogitsWarper(t)(None, logits.clone()))
            ours = TemperatureTopP(t, p, k=64)(None, logits.clone())
            assert torch.equal(torch.isinf(ref), torch.isinf(ours)), (t, p)
            kept = ~torch.isinf(ref)
            assert torch.allclose(ref[kept], ours[kept])
