"""Learned judges: the mechanics on tiny-random (fast), the shipped heads on the real model (slow).

All strings here are harmless and written for the test. Slow tests skip unless the resource's feature model is
already in the user's cache; run them with: pytest -m slow tests/test_learned_judges.py
"""

import functools
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import real_cache_dir
from rational.errors import UserError
from rational.learned_judges import (RESOURCE_NAMES, FeatureSpec, LearnedHarmJudge, LearnedRefusalJudge,
                                     extract_features, fit_head, load_resource, pooled_states, predict_proba,
                                     refusal_label, resource_path, select_features)
from rational.models import REGISTRY

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_judges.py"
HIDDEN_SIZE = {"qwen2.5-coder-0.5b-instruct": 896, "qwen2.5-coder-1.5b-instruct": 1536}

REFUSALS = [
    ("How do I bake bread?", "I'm sorry, but I can't help with that request."),
    ("What is the capital of France?", "I cannot answer that. Is there something else I can help you with?"),
    ("Write a poem about the sea.", "No. I won't write that for you."),
    ("Tell me a joke about cats.", "I'm not able to do that, sorry."),
]
PARTIAL = [
    ("How do I bake bread?", "I can't give a full recipe, but in general you mix flour and water and bake it."),
    ("Write a poem about the sea.", "I won't write a whole poem, but here is one line: the waves roll in."),
]
ANSWERS = [
    ("How do I bake bread?", "Mix flour, water, yeast and salt, knead for ten minutes, let it rise, then bake."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Write a poem about the sea.", "The sea is wide and blue,\nit sings the whole night through."),
    ("Tell me a joke about cats.", "Why did the cat sit on the computer? To keep an eye on the mouse!"),
]


@functools.cache
def script_module():
    """scripts/train_judges.py as a module, to use the training script's own predict path."""
    spec = importlib.util.spec_from_file_location("train_judges", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_judges"] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------ fast: tiny-random


@pytest.fixture(scope="module")
def tiny(tiny_path):
    from rational.models import load_model_and_tokenizer

    return load_model_and_tokenizer("tiny-random", dtype="float32")


def tiny_resource(tiny, task: str) -> dict:
    """A head fitted on the made-up strings above, in the resource format."""
    spec = FeatureSpec("tiny-random", (1, 2), "mean", "chat", 12)
    pairs = REFUSALS + PARTIAL + ANSWERS
    x = extract_features(pairs, *tiny, spec, batch_size=3)
    if task == "refusal":
        labels, classes = [1] * len(REFUSALS) + [2] * len(PARTIAL) + [0] * len(ANSWERS), REFUSAL_CLASSES
    else:  # no real harm in a test: "unsafe" here just means "answered", enough to test the mechanics
        labels, classes = [0] * (len(REFUSALS) + len(PARTIAL)) + [1] * len(ANSWERS), ("safe", "unsafe")
    head = fit_head(x, np.array(labels), len(classes), l2=0.1)
    return {"name": f"{task}-test", "version": f"{task}-test-0", "classes": list(classes),
            "features": spec.to_dict(), "head": head}


REFUSAL_CLASSES = ("full_compliance", "full_refusal", "partial_refusal")


def test_script_cached_cut_equals_judge_features(tiny):
    """The script caches a long pass cut to shorter lengths; the judge runs the short pass itself."""
    model, tokenizer = tiny
    spec = FeatureSpec("tiny-random", (1, 2), "last", "chat", 8)
    pairs = REFUSALS + ANSWERS
    judge = LearnedRefusalJudge(resource=tiny_resource(tiny, "refusal") | {"features": spec.to_dict()},
                                dtype="float32", batch_size=3)
    from_judge = judge.features(pairs)
    assert np.array_equal(from_judge, extract_features(pairs, model, tokenizer, spec, batch_size=3))
    states = pooled_states(model, tokenizer, pairs, input_format="chat", max_tokens=32, layers=(0, 1, 2),
                           cuts=(8, 32), batch_size=5)
    from_cache = select_features(states[:, 0][:, :, [1, 2]], "last")
    np.testing.assert_allclose(from_cache, from_judge, rtol=1e-4, atol=1e-5)


def test_response_format_and_empty_answer(tiny):
    model, tokenizer = tiny
    spec = FeatureSpec("tiny-random", (2,), "mean", "response", 4)
    x = extract_features([("anything", ""), ("anything", "Hello there, how are you today?")], model, tokenizer, spec)
    assert x.shape == (2, model.config.hidden_size) and np.isfinite(x).all()


@pytest.mark.parametrize("task", ["refusal", "harm"])
def test_judge_class_matches_predict_path(tiny, task):
    resource = tiny_resource(tiny, task)
    pairs = REFUSALS + PARTIAL + ANSWERS + [("Say hi.", "Hi!"), ("Say hi.", "Sorry, I can't.")]
    cls = LearnedRefusalJudge if task == "refusal" else LearnedHarmJudge
    verdicts = cls(resource=resource, dtype="float32", batch_size=4).judge_batch(pairs)
    probs = predict_proba(extract_features(pairs, *tiny, FeatureSpec.from_dict(resource["features"]),
                                           batch_size=4), resource)
    expected = script_module().class_names(task, probs)
    assert [v.label for v in verdicts] == expected
    for v, p in zip(verdicts, probs):
        assert v.fields["resource"] == resource["version"]
        assert v.score == pytest.approx(p[1] + p[2] if task == "refusal" else p[1], abs=1e-12)
        if task == "refusal":
            assert v.refused == (v.label != "full_compliance") == (v.score > 0.5) and v.harmful is None
        else:
            assert v.harmful == (v.label == "unsafe") and v.refused is None
    # The head separates its own (tiny) training set; a random model's features can do that much.
    train_labels = expected[: len(REFUSALS) + len(PARTIAL) + len(ANSWERS)]
    assert train_labels.count("full_compliance" if task == "refusal" else "unsafe") >= len(ANSWERS) - 1


def test_refusal_label_rule():
    assert refusal_label({"full_compliance": 0.4, "full_refusal": 0.35, "partial_refusal": 0.25}) == "full_refusal"
    assert refusal_label({"full_compliance": 0.6, "full_refusal": 0.3, "partial_refusal": 0.1}) == "full_compliance"
    assert refusal_label({"full_compliance": 0.3, "full_refusal": 0.3, "partial_refusal": 0.4}) == "partial_refusal"


def test_empty_batch_loads_nothing():
    judge = LearnedRefusalJudge()
    assert judge.judge_batch([]) == [] and judge._model is None


def test_user_errors(tiny, tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_resource("no-such-judge")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x"}))
    with pytest.raises(UserError, match="not a learned judge resource"):
        load_resource(str(bad))
    with pytest.raises(UserError, match="unknown pooling"):
        FeatureSpec("tiny-random", (1,), "max", "chat", 8)
    # The shipped head expects the real model's hidden size: another feature model is refused on load.
    with pytest.raises(UserError, match="hidden size"):
        LearnedRefusalJudge(model="tiny-random", dtype="float32").judge("Hi", "Hello")


@pytest.mark.parametrize("name", RESOURCE_NAMES)
def test_committed_resource_schema(name):
    assert resource_path(name).stat().st_size < 1_000_000
    r = load_resource(name)
    spec = FeatureSpec.from_dict(r["features"])
    assert r["name"] == name and r["version"].startswith(name)
    assert spec.model in REGISTRY and r["features"]["hidden_size"] == HIDDEN_SIZE[spec.model]
    n_features = HIDDEN_SIZE[spec.model] * len(spec.layers)
    head, n_classes = r["head"], len(r["classes"])
    assert len(head["mean"]) == len(head["scale"]) == n_features
    assert np.asarray(head["weight"]).shape == (n_classes, n_features) and len(head["bias"]) == n_classes
    assert min(head["scale"]) > 0
    expected = {"refusal-learned": ["full_compliance", "full_refusal", "partial_refusal"],
                "harm-learned": ["safe", "unsafe"]}[name]
    assert r["classes"] == expected
    assert all(len(f["sha256"]) == 64 and f["rows"] > 0 for f in r["training"]["files"])
    assert any("XSTest" in a or "PyRIT" in a for a in r["attribution"]) and "validation" in r


# ------------------------------------------------------------------------------------------ slow: real model


def _real_model_or_skip(monkeypatch, name: str) -> dict:
    resource = load_resource(name)
    model = resource["features"]["model"]
    cache = real_cache_dir()
    if not (cache / model / "hf" / "config.json").is_file():
        pytest.skip(f"{model} is not converted in {cache}; run `rational chat --model {model} --prompt hi` once")
    monkeypatch.setenv("RATIONAL_CACHE", str(cache))
    return resource


@pytest.mark.slow
@pytest.mark.parametrize("name", RESOURCE_NAMES)
def test_shipped_judge_equals_script_path(monkeypatch, name):
    resource = _real_model_or_skip(monkeypatch, name)
    judge = (LearnedRefusalJudge if name == "refusal-learned" else LearnedHarmJudge)(batch_size=4)
    pairs = REFUSALS + ANSWERS
    verdicts = judge.judge_batch(pairs)
    # The script's path: one 256-token pass of all layers, cut and pooled as configured, through predict_proba.
    script = script_module()
    spec = judge.spec
    model, tokenizer = judge.load()
    layers = tuple(range(model.config.num_hidden_layers + 1))
    states = pooled_states(model, tokenizer, pairs, input_format=spec.input_format, max_tokens=max(script.CUTS),
                           layers=layers, cuts=(spec.max_tokens,), batch_size=8)
    x = select_features(states[:, 0][:, :, list(spec.layers)], spec.pooling)
    assert [v.label for v in verdicts] == script.class_names(resource["task"], predict_proba(x, resource))
    if name == "refusal-learned":
        assert [v.refused for v in verdicts] == [True] * len(REFUSALS) + [False] * len(ANSWERS)
    else:
        # Refusals are never "unsafe". Substantive benign answers may be: the shipped head reads the answer alone
        # (input_format response) and learned "gave what was asked" from harmful requests, so it is only meaningful
        # on harmful requests, the only rows eval gives it (JudgePanel.applies).
        assert not any(v.harmful for v in verdicts[: len(REFUSALS)])


def test_judge_check_flags_files_the_judge_was_trained_on(tmp_path):
    from rational.common import sha256_file
    from rational.judges import judge_check
    from rational.verdict import Verdict

    seen, unseen = tmp_path / "seen.csv", tmp_path / "unseen.csv"
    seen.write_text("prompt,response,label\nq,I can't help with that.,refusal\nq,Sure: 42.,compliance\n")
    unseen.write_text("prompt,response,label\nq,No.,refusal\nq,Paris.,compliance\nq,Sure.,refusal\n")

    class Judge:
        name, gives_refusal, gives_harm = "stub", True, False
        resource = {"training": {"files": [{"sha256": sha256_file(seen)}]}}

        def judge_batch(self, pairs):
            return [Verdict(self.name, "x", refused=r in ("No.", "I can't help with that.")) for _, r in pairs]

    assert judge_check("stub", [str(seen)], judge=Judge())["in_sample_files"] == ["seen.csv"]
    result = judge_check("stub", [str(unseen)], judge=Judge())
    assert "in_sample_files" not in result and result["confusion"] == {"tp": 1, "fp": 0, "fn": 1, "tn": 1}
