"""Slow: the real embedded default model. Skips unless it is already in the user's cache.

Run with: .venv/bin/pytest -m slow tests/test_slow_embedded.py
"""

import pytest
from conftest import real_cache_dir

NAME = "qwen2.5-coder-0.5b-instruct"


@pytest.mark.slow
def test_embedded_default_answers(monkeypatch):
    cache = real_cache_dir()
    if not ((cache / NAME / "hf" / "config.json").is_file() or (cache / NAME / f"{NAME}.gguf").is_file()):
        pytest.skip(f"{NAME} is not cached in {cache}; run `rational chat --model {NAME} --prompt hi` once")
    monkeypatch.setenv("RATIONAL_CACHE", str(cache))
    from rational.backends import HFGenerator, SamplingParams

    gen = HFGenerator.load(NAME, batch_size=2)
    outs = gen.generate([[{"role": "user", "content": "How do I bake bread?"}],
                         [{"role": "user", "content": "What is 12 + 30? Answer with the number."}]],
                        SamplingParams(max_new_tokens=64), progress=False)
    bread, math = outs[0].text.lower(), outs[1].text
    assert any(w in bread for w in ("flour", "dough", "yeast", "oven", "bake")), bread
    assert "42" in math, math


@pytest.mark.slow
def test_llamacpp_runs_the_embedded_gguf_and_a_converted_adapter(monkeypatch, tmp_path):
    """llama.cpp on the GGUF as shipped answers like the HF path, and a LoRA converted to GGUF changes its output
    exactly where the merged HF model changes (greedy, same prompts)."""
    pytest.importorskip("llama_cpp")
    cache = real_cache_dir()
    if not (cache / NAME / f"{NAME}.gguf").is_file():
        pytest.skip(f"{NAME} GGUF is not cached in {cache}")
    monkeypatch.setenv("RATIONAL_CACHE", str(cache))
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rational.backends import SamplingParams, load_generator
    from rational.models import resolve

    chats = [[{"role": "user", "content": "How do I bake bread?"}],
             [{"role": "user", "content": "What is 12 + 30? Answer with the number."}]]
    params = SamplingParams(max_new_tokens=48)
    gen = load_generator("llamacpp", NAME)
    bread, math = [o.text for o in gen.generate(chats, params, progress=False)]
    assert any(w in bread.lower() for w in ("flour", "dough", "yeast", "oven", "bake")), bread
    assert "42" in math, math
    assert [o.text for o in gen.generate(chats, params, progress=False)] == [bread, math]  # greedy: repeatable

    # An adapter that makes a large change (random B on the MLP down projections) must reach llama.cpp.
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(resolve(NAME).path, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["down_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    model.save_pretrained(tmp_path / "adapter")
    tuned = load_generator("llamacpp", NAME, adapter=str(tmp_path / "adapter"))
    changed = [o.text for o in tuned.generate(chats, params, progress=False)]
    assert changed != [bread, math]
    assert (tmp_path / "adapter" / "adapter.gguf").is_file()
