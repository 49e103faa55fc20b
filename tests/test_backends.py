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


# ------------------------------------------------------------------ fast engine (engine.py) vs model.generate

SYSTEM = "You are a careful assistant. Before answering, check the request's intent, context and impact. " * 3
# Mixed prompt lengths; five rows share a long system prompt (prefix sharing), the others share only the template.
MIXED = CHATS + [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": u}]
                 for u in ("hi", "How do I bake bread?", "kill the process " * 6, "0123", "Sure! Here is how.")]


@pytest.fixture(scope="module")
def chaotic(tiny_path):
    return chaotic_model(tiny_path)


def chaotic_model(tiny_path):
    """tiny-random with its weights redrawn at std 0.3, in float32.

    tiny-random's own init greedily repeats one token forever, so any two engines would agree trivially; these
    weights give varied text. The tokens "row" and "en" become extra stop tokens, so rows end at varied steps
    (the first at step 0), and others run into max_new_tokens.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from rational.models import load_tokenizer, resolve

    tok = load_tokenizer(resolve(tiny_path))
    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if "norm" in name else 0.0))
    return model, tok, tok.convert_tokens_to_ids(["row", "en"])


def _engines(chaotic, batch_size):
    model, tok, extra_stop = chaotic
    fast = HFGenerator(model, tok, batch_size=batch_size)
    slow = HFGenerator(model, tok, batch_size=batch_size, engine="hf")
    for g in (fast, slow):
        g.eos_ids = g.eos_ids + extra_stop
    assert fast.engine == "fast" and slow.engine == "hf"
    return fast, slow


def _rows(outs):
    return [(c.text, c.num_tokens, c.finish_reason) for o in outs for c in o.completions]


@pytest.mark.parametrize("batch_size,max_new_tokens", [(4, 24), (3, 12), (16, 24), (1, 5)])
def test_fast_engine_greedy_equals_generate(chaotic, batch_size, max_new_tokens):
    fast, slow = _engines(chaotic, batch_size)
    params = SamplingParams(max_new_tokens=max_new_tokens)
    ours, theirs = _rows(fast.generate(MIXED, params, progress=False)), _rows(slow.generate(MIXED, params, progress=False))
    assert ours == theirs
    lengths = {n for _, n, _ in ours}
    reasons = {r for _, _, r in ours}
    if max_new_tokens > 5:  # the test is only as good as its variety: rows stop at several steps, some run out
        assert len(lengths) >= 4 and 0 in lengths and reasons == {"stop", "length"}, ours


def test_fast_engine_greedy_n_samples(chaotic):
    # model.generate refuses greedy n > 1; the fast engine returns n copies of the greedy answer.
    fast, slow = _engines(chaotic, 4)
    ours = fast.generate(MIXED, SamplingParams(max_new_tokens=16, n=3), progress=False)
    theirs = _rows(slow.generate(MIXED, SamplingParams(max_new_tokens=16), progress=False))
    assert [len(o.completions) for o in ours] == [3] * len(MIXED)
    assert _rows(ours) == [r for r in theirs for _ in range(3)]


def test_fast_engine_shares_prefixes_and_retires(chaotic, monkeypatch):
    from rational import engine

    fast, slow = _engines(chaotic, 16)
    calls = []
    forward = engine.Engine._forward

    def spy(self, ids, mask, positions, cache):
        calls.append((tuple(ids.shape), mask.shape[1]))
        return forward(self, ids, mask, positions, cache)

    monkeypatch.setattr(engine.Engine, "_forward", spy)
    fast.generate(MIXED, SamplingParams(max_new_tokens=24), progress=False)
    prefix, suffix, first_step = calls[0], calls[1], calls[2]
    widest = max(len(fast.encode(c)) for c in MIXED)  # a system-prompt row: model.generate's prefill width
    assert prefix[0][0] == 1 and prefix[0][1] > 40  # one row: the long system prompt, run once
    assert suffix[0][0] == len(MIXED) and suffix[0][1] < widest - 40  # every row's own suffix
    assert first_step[0] == (len(MIXED) - 1, 1)  # the row that stopped at step 0 left the batch
    assert calls[-1][0][0] < first_step[0][0]


@pytest.mark.parametrize("n,temperature", [(1, 0.0), (2, 0.8)])
def test_refilling_free_rows_changes_no_output(chaotic, monkeypatch, n, temperature):
    # Continuous batching: rows that retire are refilled from the queue and merged into the running cache.
    from rational import engine

    model, tok, extra_stop = chaotic
    merges = []
    merge = engine.Engine._merge

    def spy(self, running, new, max_new_tokens):
        out = merge(running, new, max_new_tokens)
        mask, lengths = out[1], out[1].sum(1)
        # Every row compacted: its tokens fill the last columns, and the cache is as wide as its longest row.
        assert mask.shape[1] == lengths.max() and mask.shape[0] == len(running[1]) + len(new[1])
        assert all(row[mask.shape[1] - k :].all() and not row[: mask.shape[1] - k].any() for row, k in zip(mask, lengths))
        merges.append(1)
        return out

    monkeypatch.setattr(engine.Engine, "_merge", spy)
    params = SamplingParams(max_new_tokens=24, n=n, temperature=temperature, top_p=0.9, seed=3)
    outs = {}
    for refill in (True, False):
        gen = HFGenerator(model, tok, batch_size=3, engine_options={"refill": refill})
        gen.eos_ids = gen.eos_ids + extra_stop
        merges.clear()
        outs[refill] = _rows(gen.generate(MIXED, params, progress=False))
        if refill:
            assert len(merges) >= 3  # several refills happened, each merged into a running batch
        else:
            assert not merges
    assert outs[True] == outs[False]
    if temperature == 0.0:
        slow = HFGenerator(model, tok, batch_size=3, engine="hf")
        slow.eos_ids = slow.eos_ids + extra_stop
        assert outs[True] == _rows(slow.generate(MIXED, SamplingParams(max_new_tokens=24), progress=False))


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_answer_limit_stops_rows_early_and_cuts_to_the_same_text(chaotic, temperature):
    # The fast engine stops a row once its answer passes answer_max_tokens; cut to the limit, every row reads as
    # the full generation cut afterwards (what any other backend gives), with fewer tokens decoded.
    from rational.reasoning import answer_tokens, cut_answer

    model, tok, extra_stop = chaotic
    gen = HFGenerator(model, tok, batch_size=3)
    gen.eos_ids = gen.eos_ids + extra_stop
    params = SamplingParams(max_new_tokens=24, temperature=temperature, top_p=0.9, seed=3)
    full = _flat(gen.generate(MIXED, params, progress=False))
    capped = _flat(gen.generate(MIXED, SamplingParams(**{**params.to_dict(), "answer_max_tokens": 6}),
                                progress=False))
    assert [cut_answer(c.text, 6, tok)[0] for c in capped] == [cut_answer(c.text, 6, tok)[0] for c in full]
    assert all(c.num_tokens <= f.num_tokens for c, f in zip(capped, full))
    stopped = [c for c, f in zip(capped, full) if c.num_tokens < f.num_tokens]
    assert len(stopped) >= 3 and all(len(answer_tokens(c.text, tok)) >= 6 for c in stopped)


def test_sliding_window_models_fall_back_to_generate(chaotic):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    _, tok, _ = chaotic
    config = Qwen2Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, use_sliding_window=True, sliding_window=8,
                         max_window_layers=1)
    assert HFGenerator(Qwen2ForCausalLM(config).eval(), tok).engine == "hf"  # the fast cache is full-attention only
    with pytest.raises(UserError, match="unknown generation engine"):
        HFGenerator(Qwen2ForCausalLM(config).eval(), tok, engine="vllm")


def test_prefix_groups():
    from rational.engine import prefix_groups

    a, b = [1, 2, 3, 4, 5], [1, 2, 3, 9]
    assert prefix_groups([a, [7, 7], b, a + [6]], 3) == [[0, 3, 2], [1]]
    assert prefix_groups([a, b], 4) == [[0], [1]]


def test_fast_sampling_reproducible_in_new_process(tiny_path, chaotic):
    import json
    import os
    import subprocess
    import sys

    fast, _ = _engines(chaotic, 4)
    params = SamplingParams(max_new_tokens=12, temperature=0.7, top_p=0.95, n=2, seed=11)
    here = [[c.text for c in o.completions] for o in fast.generate(MIXED, params, progress=False)]
    assert len({t for row in here for t in row}) > len(MIXED)  # samples differ
    # Batch composition does not change a sample: each sequence has its own random stream.
    fast.batch_size = 3
    assert [[c.text for c in o.completions] for o in fast.generate(MIXED, params, progress=False)] == here
    code = (
        "import json, sys, torch; sys.path.insert(0, 'tests');"
        "from test_backends import MIXED, chaotic_model, _engines; from rational.backends import SamplingParams;"
        f"fast, _ = _engines(chaotic_model({tiny_path!r}), 4);"
        f"p = SamplingParams(max_new_tokens=12, temperature=0.7, top_p=0.95, n=2, seed=11);"
        "print(json.dumps([[c.text for c in o.completions] for o in fast.generate(MIXED, p, progress=False)]))"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.path.join(root, "src"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here


def test_inverse_cdf_sampling_picks_the_interval_of_u():
    import torch

    from rational.backends import sample_from

    probs = torch.tensor([[0.25, 0.0, 0.5, 0.25]]).repeat(6, 1)  # exact in float32: boundaries at 0.25, 0.75
    u = torch.tensor([0.0, 0.2, 0.25, 0.7, 0.75, 0.9999999])
    assert sample_from(probs, u).tolist() == [0, 0, 2, 2, 3, 3]  # never the zero-probability token 1


def test_sample_draws_from_the_kept_nucleus():
    import torch

    from rational.backends import TemperatureTopP

    torch.manual_seed(0)
    logits = torch.cat([torch.randn(4, 3000) * 4, torch.randn(2, 3000) * 0.01])  # peaked rows, flat rows (fallback)
    grid = (torch.arange(4000) + 0.5) / 4000  # evenly spaced draws: counts follow the probabilities
    for t, p in ((0.7, 0.95), (1.0, 1.0), (1.3, 0.5)):
        warper = TemperatureTopP(t, p, k=64)
        want = warper(None, logits.clone()).softmax(-1)
        for r in range(len(logits)):
            picks = warper.sample(logits[r : r + 1].expand(len(grid), -1), grid)
            freq = torch.bincount(picks, minlength=logits.shape[1]) / len(grid)
            assert set(picks.tolist()) <= set(want[r].nonzero().flatten().tolist())  # only kept tokens
            assert (freq - want[r]).abs().max() < 2 / len(grid) + 1e-6, (t, p, r)


def test_fast_engine_stop_strings(chaotic):
    fast, slow = _engines(chaotic, 4)
    full = fast.generate(MIXED, SamplingParams(max_new_tokens=24), progress=False)
    stop = next(o.text[3:5] for o in full if len(o.text) > 8)
    params = SamplingParams(max_new_tokens=24, stop=[stop])
    ours, theirs = fast.generate(MIXED, params, progress=False), slow.generate(MIXED, params, progress=False)
    assert [(c.text, c.finish_reason) for c in _flat(ours)] == [(c.text, c.finish_reason) for c in _flat(theirs)]
    # The fast engine stops decoding at the stop string, model.generate only at a stop token or the limit.
    assert all(a.num_tokens <= b.num_tokens for a, b in zip(_flat(ours), _flat(theirs)))
    assert any(a.num_tokens < b.num_tokens for a, b in zip(_flat(ours), _flat(theirs)))


def _flat(outs):
    return [c for o in outs for c in o.completions]


def test_chunked_prefill_changes_nothing(chaotic):
    # Long prompts are prefilled a few columns at a time (bounded attention memory); the answers stay the same.
    _, slow = _engines(chaotic, 4)
    whole, chunked = HFGenerator(*chaotic[:2], batch_size=4), HFGenerator(*chaotic[:2], batch_size=4,
                                                                             engine_options={"prefill_chunk": 3})
    for g in (whole, chunked):
        g.eos_ids = g.eos_ids + chaotic[2]
    params = SamplingParams(max_new_tokens=16)
    ours = _rows(chunked.generate(MIXED, params, progress=False))
    assert ours == _rows(whole.generate(MIXED, params, progress=False)) == _rows(slow.generate(MIXED, params,
                                                                                             progress=False))


# ------------------------------------------------------------------------------ llama.cpp (optional extra)


def _header_only_gguf(path, arch):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_adapter(tiny_path, tmp_path_factory):
    """A PEFT LoRA on tiny-random with non-zero B (a fresh LoRA's B is zero, which would hide a transpose)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_path),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    return out


def test_adapter_converts_to_a_llamacpp_lora_gguf(tiny_adapter, tmp_path):
    import gguf
    from safetensors.torch import load_file

    from rational.models import adapter_to_gguf

    out = adapter_to_gguf(tiny_adapter, _header_only_gguf(tmp_path / "base.gguf", "qwen2"))
    r = gguf.GGUFReader(str(out))

    def text(key):
        f = r.get_field(key)
        return bytes(f.parts[f.data[0]]).decode()

    assert text("general.type") == "adapter" and text("adapter.type") == "lora"
    assert text("general.architecture") == "qwen2"
    assert float(r.get_field("adapter.lora.alpha").parts[-1][0]) == 8.0
    peft = load_file(str(tiny_adapter / "adapter_model.safetensors"))
    got = {t.name: t for t in r.tensors}
    assert len(got) == len(peft)
    name = "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"
    t = got["blk.1.ffn_down.weight.lora_b"]
    # GGUF lists dimensions innermost first; the data is the PEFT matrix unchanged ([out, r] for B).
    assert list(t.shape)[::-1] == list(peft[name].shape)
    assert (t.data.reshape(peft[name].shape) == peft[name].float().numpy()).all()
    assert "blk.0.attn_q.weight.lora_a" in got and "blk.0.attn_output.weight.lora_b" in got
    assert adapter_to_gguf(tiny_adapter, tmp_path / "base.gguf") == out  # unchanged adapter: reused


def test_adapter_conversion_refuses_what_llamacpp_would_misread(tiny_adapter, tmp_path):
    from rational.models import adapter_to_gguf

    with pytest.raises(UserError, match="'llama'.*convert_hf_to_gguf"):
        adapter_to_gguf(tiny_adapter, _header_only_gguf(tmp_path / "llama.gguf", "llama"))
    with pytest.raises(UserError, match="not a PEFT adapter folder"):
        adapter_to_gguf(tmp_path, tmp_path / "llama.gguf")
    from rational.models import gguf_file

    with pytest.raises(UserError, match="runs GGUF files; 'tiny-random' is not one"):
        gguf_file("tiny-random")
    with pytest.raises(UserError, match="GGUF file not found"):
        gguf_file(str(tmp_path / "missing.gguf"))


def test_llamacpp_missing_is_one_line_and_auto_falls_back(monkeypatch):
    import importlib.util

    import rational.backends as backends

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llama_cpp" else real(n, *a))
    monkeypatch.setitem(__import__("sys").modules, "llama_cpp", None)  # import fails like a missing package
    with pytest.raises(UserError, match=r"needs llama-cpp-python: pip install 'rational\[llamacpp\]'"):
        load_generator("llamacpp", "qwen2.5-coder-0.5b-instruct")
    assert backends.pick_backend("auto", "qwen2.5-coder-0.5b-instruct") == "hf"
    assert backends.pick_backend("auto", "tiny-random") == "hf"


def test_auto_picks_llamacpp_only_for_one_stream_without_native_bf16(monkeypatch):
    import importlib.util

    import rational.backends as backends

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "llama_cpp" else real(n, *a))
    for bf16, want in ((False, "llamacpp"), (True, "hf")):
        monkeypatch.setattr(backends, "cpu_supports_bf16", lambda: bf16)
        assert backends.pick_backend("auto", "qwen2.5-coder-0.5b-instruct") == want
    monkeypatch.setattr(backends, "cpu_supports_bf16", lambda: False)
    # Batched stage work stays on the HF engine, whose fp32 batches out-run llama.cpp's one stream.
    assert backends.pick_backend("auto", "qwen2.5-coder-0.5b-instruct", batch_size=16) == "hf"
    assert backends.pick_backend("auto", "qwen2.5-coder-0.5b-instruct", dtype="float32") == "hf"  # asked for HF
    assert backends.pick_backend("auto", "some/hub-model") == "hf"  # no GGUF to run

