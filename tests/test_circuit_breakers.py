"""Circuit breakers (representation rerouting): the loss pieces, the data, and training on tiny-random.

The "harmful" conversations are meaningless placeholders; only their set label matters here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rational.circuit_breakers import (
    load_cb_records,
    reroute_loss,
    retain_loss,
    schedule,
    target_layers,
    template_prefix_length,
    tokenize,
)
from rational.errors import UserError
from rational.train import TrainConfig, build_trainer, prepare_records, run_train

REROUTE = [("Placeholder forbidden request one.", "Sure, here is the placeholder: banana banana banana."),
           ("Placeholder forbidden request two.", "Sure, here is more filler: water mixed with water.")]
RETAIN = [("How do I kill a Python process?", "Use kill with the process id."),
          ("Write a recipe for bread.", "Flour, water, salt and yeast."),
          ("Placeholder forbidden request one.", "I can't help with that.")]


def _row(prompt, completion, which, i=0):
    return {"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": completion}],
            "meta": {"set": which, "kind": "harmful" if which == "reroute" else "benign", "id": f"{which}-{i}"}}


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def cb_file(tmp_path_factory) -> Path:
    rows = [_row(p, c, "reroute", i) for i, (p, c) in enumerate(REROUTE)]
    rows += [_row(p, c, "retain", i) for i, (p, c) in enumerate(RETAIN)]
    return _write(tmp_path_factory.mktemp("cb") / "circuit_breakers.jsonl", rows)


def _cfg(data, out, **kw) -> TrainConfig:
    base = dict(model="tiny-random", data=str(data), out=str(out), dtype="float32", baseline="circuit-breakers",
                max_steps=8, per_device_train_batch_size=2, logging_steps=1, save_steps=100, warmup_ratio=0.0,
                lr_scheduler_type="constant", max_length=256, learning_rate=1e-2, lora_dropout=0.0)
    base.update(kw)
    return TrainConfig(**base)


# --------------------------------------------------------------------------------------------- the loss


def test_layers_are_the_papers_scaled_to_the_depth():
    assert target_layers(32) == [10, 20]  # Llama-3-8B, as published
    assert target_layers(24) == [8, 15]  # Qwen2.5-0.5B
    assert target_layers(2) == [1]  # tiny-random: both round to the first hidden state
    assert target_layers(24, [12, 4, 12]) == [4, 12]
    with pytest.raises(UserError, match="layer 30 is outside this model's hidden states 1..24"):
        target_layers(24, [30])


def test_schedule_moves_from_rerouting_to_retaining():
    assert schedule(0, 150, 10) == (10, 0)
    assert schedule(75, 150, 10) == (7.5, 2.5)  # c_rr = alpha (1 - t/2T), c_retain = alpha t/2T
    assert schedule(150, 150, 5) == (2.5, 2.5)


def test_reroute_and_retain_losses():
    import torch

    h = torch.randn(2, 3, 4, 8)  # layers, batch, tokens, hidden
    mask = torch.ones(3, 4)
    assert reroute_loss(h, h, mask).item() == pytest.approx(1.0)  # identical: cosine 1
    assert reroute_loss(-h, h, mask).item() == 0.0  # opposite: ReLU clips the negative cosine
    ortho = torch.zeros(2, 3, 4, 8)
    ortho[..., 0], h2 = 1.0, torch.zeros(2, 3, 4, 8)
    h2[..., 1] = 1.0
    assert reroute_loss(ortho, h2, mask).item() == 0.0
    assert retain_loss(h, h, mask).item() == 0.0
    shifted = h.clone()
    shifted[..., 0] += 3.0
    assert retain_loss(shifted, h, mask).item() == pytest.approx(3.0)  # L2 distance per token
    # Masked tokens do not count: a huge difference there changes nothing.
    part = torch.zeros(3, 4)
    part[:, :2] = 1
    noisy = shifted.clone()
    noisy[:, :, 2:] += 100.0
    assert retain_loss(noisy, h, part).item() == pytest.approx(3.0)


def test_reroute_mask_skips_the_templates_fixed_opening(cb_file):
    from rational.models import load_tokenizer, resolve

    tok = load_tokenizer(resolve("tiny-random"))
    records, _ = load_cb_records(cb_file)
    prefix = template_prefix_length(tok)
    assert tok.decode(tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=True,
                                              return_dict=True)["input_ids"][:prefix]) == "<|im_start|>user\n"
    sets = tokenize(records, tok, max_length=256)
    assert len(sets["reroute"]) == 2 and len(sets["retain"]) == 3
    for r in sets["reroute"]:  # user request + completion, not the template's opening
        assert r["loss_mask"] == [0] * prefix + [1] * (len(r["input_ids"]) - prefix)
    assert all(r["loss_mask"] == [1] * len(r["input_ids"]) for r in sets["retain"])
    assert max(len(r["input_ids"]) for r in tokenize(records, tok, max_length=10)["retain"]) == 10


# ------------------------------------------------------------------------------------------------ training


def test_training_changes_every_trainable_parameter_and_reroutes(cb_file, tmp_path):
    import torch

    trainer, prepared = build_trainer(_cfg(cb_file, tmp_path))
    assert prepared.counts["by_kind"] == {"reroute": 2, "retain": 3}
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    # tiny-random has 2 layers; the rerouted hidden state is the first one, so LoRA sits on layer 0 only.
    assert before and all("lora_" in n and ".layers.0." in n for n in before)
    trainer.train()
    after = {n: p.detach() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert not [n for n in before if torch.equal(before[n], after[n])]
    logs = [e for e in trainer.state.log_history if "loss" in e]
    rr = [e["reroute_loss"] for e in logs]
    rt = [e["retain_loss"] for e in logs]
    # The frozen model is the tuned one with its adapter off: they start equal (cosine 1, distance 0).
    assert rr[0] == pytest.approx(1.0, abs=1e-4) and rt[0] == pytest.approx(0.0, abs=1e-4)
    assert rr[-1] < 0.5, rr  # rerouted: tuned states nearly orthogonal to the frozen ones
    assert max(rt) < 2.0, rt  # while the benign states stay close (hidden states here have norm ~5.7)
    assert [e["reroute_coef"] for e in logs] == [10 * (1 - t / 16) for t in range(8)]


def test_run_train_writes_both_terms_and_an_adapter(cb_file, tmp_path):
    from rational.models import load_model_and_tokenizer

    out = run_train(_cfg(cb_file, tmp_path / "o", max_steps=2))
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["baseline"] == "circuit-breakers" and metrics["config"]["cb_alpha"] == 10.0
    for key in ("loss", "reroute_loss", "retain_loss", "reroute_coef", "retain_coef"):
        assert all(key in e for e in metrics["loss_curve"]), key
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == [0]
    load_model_and_tokenizer("tiny-random", adapter=out / "adapter", dtype="float32")  # what eval does


def test_resume_gives_same_parameters_as_uninterrupted(cb_file, tmp_path):
    from safetensors.torch import load_file

    kw = dict(max_steps=4, save_steps=2, lora_dropout=0.1)
    full = run_train(_cfg(cb_file, tmp_path / "a", **kw))
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "checkpoint-2", tmp_path / "b" / "checkpoints" / "checkpoint-2")
    resumed = run_train(_cfg(cb_file, tmp_path / "b", resume=True, **kw))
    a = load_file(full / "adapter" / "adapter_model.safetensors")
    b = load_file(resumed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    # The schedule continued from step 2: the resumed steps log what the uninterrupted run logged.
    curves = [json.loads((o / "train_metrics.json").read_text())["loss_curve"] for o in (full, resumed)]
    assert [e for e in curves[1] if e["step"] > 2] == curves[0][2:]


@pytest.mark.parametrize("rows,pattern", [
    ([_row(*REROUTE[0], "reroute")], r"circuit_breakers.jsonl: no 'retain' records"),
    ([_row(*RETAIN[0], "keep")], r"circuit_breakers.jsonl:1: meta.set is 'keep'"),
    ([{"prompt": "x"}], r"circuit_breakers.jsonl:1: each line needs 'prompt', 'completion' and meta.set"),
    ([_row(*RETAIN[0], "retain") | {"completion": 3}], r"circuit_breakers.jsonl:1: column 'completion' must be"),
])
def test_bad_files_are_one_line(tmp_path, rows, pattern):
    data = _write(tmp_path / "circuit_breakers.jsonl", rows)
    with pytest.raises(UserError, match=pattern) as e:
        prepare_records(_cfg(data, tmp_path / "o"))
    assert "\n" not in str(e.value)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x", "completion": "y", "meta": {"set": "retain"}}\nnot json\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: not valid JSON"):
        prepare_records(_cfg(tmp_path / "bad.jsonl", tmp_path / "o"))
