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
