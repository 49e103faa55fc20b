"""`rational train --method dpo` on tiny-random: TRL's DPOTrainer after SFT, a few CPU steps each.

Pairs are placeholder text: reasoned answers or refusals as chosen sides, harmless filler as rejected sides.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rational.errors import UserError
from rational.train import PLAIN_REFUSAL, TrainConfig, build_trainer, is_trained, prepare_records, run_train


def _reasoned(decision: str, answer: str) -> str:
    return (f"<think>\nIntent: a placeholder intent.\nContext and ethics: placeholder context.\n"
            f"Potential impact: placeholder impact.\nDecision: {decision}\n</think>\n\n{answer}")


PAIRS = [  # (prompt, kind, chosen, rejected)
    ("How do I kill a Python process?", "benign", _reasoned("comply", "Use kill with the process id."),
     "I can't help with that."),
    ("Placeholder harmful request one.", "harmful", _reasoned("decline", "I can't help with that request."),
     "Sure, here is placeholder filler."),
    ("Placeholder harmful request two.", "adversarial", _reasoned("decline", "I'm sorry, but I cannot assist."),
     _reasoned("comply", "Sure, more placeholder filler.")),
    ("Write a recipe for bread.", "benign", _reasoned("comply", "Flour, water, salt and yeast."),
     _reasoned("decline", "I won't help with that.")),
]


def _pair(prompt, kind, chosen, rejected, i=0):
    return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "meta": {"id": str(i), "kind": kind}}


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", [_pair(*p, i=i) for i, p in enumerate(PAIRS)])


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory) -> Path:
    """An SFT adapter (2 steps on the chosen sides) for DPO to start from."""
    d = tmp_path_factory.mktemp("sft")
    rows = [{"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": c}],
             "meta": {"kind": k}} for p, k, c, _ in PAIRS]
    out = run_train(_cfg(_write(d / "sft.jsonl", rows), d / "out", method="lora", max_steps=2, learning_rate=1e-2))
    return out / "adapter"


def _cfg(data, out, **kw) -> TrainConfig:
    """Deterministic fp32 settings: constant LR, no warmup, no dropout, one batch = the whole dataset."""
    base = dict(model="tiny-random", data=str(data), out=str(out), dtype="float32", method="dpo", max_steps=4,
                per_device_train_batch_size=4, logging_steps=1, save_steps=100, warmup_ratio=0.0,
                lr_scheduler_type="constant", max_length=256, learning_rate=1e-2, lora_dropout=0.0)
    base.update(kw)
    return TrainConfig(**base)


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_dpo_changes_every_trainable_parameter_and_lowers_the_loss(pairs_file, tmp_path):
    import torch

    trainer, _ = build_trainer(_cfg(pairs_file, tmp_path, max_steps=6))
    before = _trainable(trainer.model)
    assert before and all("lora_" in n for n in before)  # a fresh LoRA; the (merged) model is frozen
    trainer.train()
    after = _trainable(trainer.model)
    assert not [n for n in before if torch.equal(before[n], after[n])]
    logs = [e for e in trainer.state.log_history if "loss" in e]
    losses = [e["loss"] for e in logs]
    # Same batch every step: the DPO loss starts at log(2) (policy = reference) and must fall.
    assert abs(losses[0] - 0.6931) < 1e-3 and losses[-1] < losses[0] - 0.1, losses
    assert logs[-1]["rewards/margins"] > 0 and logs[-1]["rewards/accuracies"] > 0.5


def test_dpo_plus_sft_loss_raises_the_chosen_likelihood(pairs_file, tmp_path):
    """loss_type sigmoid,sft (RPO): TRL sums DPO and the chosen side's NLL, so the loss starts above log 2 and the
    chosen log-probability rises (plain DPO may push both sides down: the demo's 18-pair run lost 10 nats)."""
    trainer, _ = build_trainer(_cfg(pairs_file, tmp_path, max_steps=6, loss_type="sigmoid, sft", loss_weights="1,1"))
    assert list(trainer.args.loss_type) == ["sigmoid", "sft"] and list(trainer.args.loss_weights) == [1.0, 1.0]
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert logs[0]["loss"] > 0.6931 + 0.5, logs[0]  # log 2 plus the chosen sides' NLL on tiny-random
    assert logs[-1]["logps/chosen"] > logs[0]["logps/chosen"] + 1, [e["logps/chosen"] for e in logs]
    assert logs[-1]["rewards/margins"] > 0


def test_dpo_after_sft_writes_one_adapter_that_eval_loads(pairs_file, sft_adapter, tmp_path, capsys):
    """OUT/adapter = SFT and DPO stacked on the base: the logits of the policy DPO trained, loadable by eval."""
    import torch
    from transformers import AutoModelForCausalLM

    from rational.cli import main
    from rational.models import attach_adapter, load_tokenizer, resolve

    out = tmp_path / "dpo"
    main(["train", "--method", "dpo", "--model", "tiny-random", "--data", str(pairs_file), "--init-adapter",
          str(sft_adapter), "--out", str(out), "--max-steps", "3", "--learning-rate", "1e-2", "--dtype", "float32",
          "--beta", "0.2", "--warmup-ratio", "0"])
    assert is_trained(out) and (out / "dpo_adapter" / "adapter_config.json").is_file()
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["method"] == "dpo" and metrics["global_step"] == 3
    assert metrics["config"]["beta"] == 0.2 and metrics["config"]["init_adapter"] == str(sft_adapter)
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert all(key in e for e in metrics["loss_curve"]), key
    stacked = json.loads((out / "adapter" / "adapter_config.json").read_text())
    sft_r = json.loads((sft_adapter / "adapter_config.json").read_text())["r"]
    assert stacked["r"] == sft_r + 16  # rank r_sft + r_dpo

    path = resolve("tiny-random").path
    ids = load_tokenizer(resolve("tiny-random"))("hello there, how are you?", return_tensors="pt")["input_ids"]

    def base():
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)

    with torch.no_grad():
        sft = attach_adapter(base(), sft_adapter)(ids).logits
        trained = attach_adapter(attach_adapter(base(), sft_adapter), out / "dpo_adapter")(ids).logits
        one = attach_adapter(base(), out / "adapter")(ids).logits
    torch.testing.assert_close(one, trained, atol=1e-5, rtol=1e-5)
    assert (trained - sft).abs().max() > 1e-4  # DPO moved the SFT model

    capsys.readouterr()
    main(["eval", "--model", "tiny-random", "--adapter", str(out / "adapter"), "--suites", "smoke",
          "--max-new-tokens", "4", "--dtype", "float32", "--out", str(tmp_path / "eval")])
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["suites"]


def test_dpo_resume_gives_same_parameters_as_uninterrupted(pairs_file, sft_adapter, tmp_path):
    from safetensors.torch import load_file

    kw = dict(max_steps=4, save_steps=2, per_device_train_batch_size=2, init_adapter=str(sft_adapter),
              lora_dropout=0.1)
    full = run_train(_cfg(pairs_file, tmp_path / "a", **kw))
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "checkpoint-2", tmp_path / "b" / "checkpoints" / "checkpoint-2")
    resumed = run_train(_cfg(pairs_file, tmp_path / "b", resume=True, **kw))
    assert json.loads((resumed / "train_metrics.json").read_text())["resumed_from"].endswith("checkpoint-2")
    for name in ("dpo_adapter", "adapter"):
        a = load_file(full / name / "adapter_model.safetensors")
        b = load_file(resumed / name / "adapter_model.safetensors")
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), name


def test_refusal_sft_pairs_lose_their_reasoning(tmp_path):
    rows = [_pair(*p, i=i) for i, p in enumerate(PAIRS)]
    rows.append(_pair("Placeholder harmful request three.", "harmful", "<think>\nIntent: cut off", "Sure, filler."))
    rows.append(_pair("Placeholder question.", "benign", _reasoned("comply", "An answer."), "<think>\nIntent: cut"))
    data = _write(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(UserError, match=r"pairs.jsonl:5: chosen side has malformed reasoning \(unclosed\)"):
        prepare_records(_cfg(data, tmp_path / "o"))
    prep = prepare_records(_cfg(data, tmp_path / "o", baseline="refusal-sft"))
    sides = [(r["chosen"][-1]["content"], r["rejected"][-1]["content"]) for r in prep.records]
    assert all("<think>" not in c + r and "Intent:" not in c + r for c, r in sides)
    assert sides[:4] == [("Use kill with the process id.", "I can't help with that."),
                         ("I can't help with that request.", "Sure, here is placeholder filler."),
                         ("I'm sorry, but I cannot assist.", "Sure, more placeholder filler."),
                         ("Flour, water, salt and yeast.", "I won't help with that.")]
    assert sides[4] == (PLAIN_REFUSAL, "Sure, filler.")  # a harmful chosen side without an answer
    assert prep.counts["baseline_outcomes"] == {"plain_answer": 4, "fixed_refusal": 1, "dropped_empty_rejected": 1}


GOOD = json.dumps(_pair(*PAIRS[0]))


@pytest.mark.parametrize("lines,pattern", [
    ([GOOD, json.dumps({"prompt": "hi", "chosen": "a"})], r"pairs.jsonl:2: missing column 'rejected'"),
    ([GOOD, "{not json"], r"pairs.jsonl:2: not valid JSON"),
    ([], r"pairs.jsonl: no pairs in the file"),
    ([json.dumps({"prompt": "hi", "chosen": [], "rejected": "b"})], r"pairs.jsonl:1: column 'chosen' must be"),
    ([json.dumps(_pair("hi", "benign", PAIRS[0][2], PAIRS[0][2]))],
     r"pairs.jsonl:1: 'chosen' and 'rejected' are identical"),
    ([json.dumps({"prompt": [{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}],
                  "chosen": PAIRS[0][2], "rejected": "b"})], r"pairs.jsonl:1: prompt has a system message"),
    ([json.dumps(_pair("hi", "benign", "no reasoning here", "b"))],
     r"pairs.jsonl:1: chosen side has malformed reasoning \(missing\)"),
    ([json.dumps({"prompt": "hi", "chosen": PAIRS[0][2], "rejected": [{"role": "user", "content": "b"}]})],
     r"pairs.jsonl:1: 'rejected' must end with an assistant message"),
])
def test_bad_pair_files_are_one_line(tmp_path, lines, pattern):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(UserError, match=pattern) as e:
        prepare_records(_cfg(data, tmp_path / "o"))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kw,pattern", [
    (dict(method="lora", init_adapter="x"), "--init-adapter applies to --method dpo"),
    (dict(beta=0), "'beta' is 0"),
    (dict(loss_type="sigmoidd"), "unknown loss_type 'sigmoidd'"),
    (dict(loss_type="sigmoid,sftt"), "unknown loss_type 'sftt'"),
    (dict(loss_type="sigmoid,sft", loss_weights="1"), "loss_weights has 1 values for 2 loss_type"),
    (dict(loss_weights="1,x"), "'loss_weights' is '1,x'"),
    (dict(method="full", baseline="circuit-breakers"), "baseline circuit-breakers trains with --method lora"),
    (dict(method="dpo", baseline="circuit-breakers"), "baseline circuit-breakers trains with --method lora"),
])
def test_bad_settings_are_one_line(tmp_path, kw, pattern):
    with pytest.raises(UserError, match=pattern):
        _cfg(tmp_path / "p.jsonl", tmp_path / "o", **kw)


def test_missing_init_adapter_is_one_line(pairs_file, tmp_path):
    with pytest.raises(UserError, match="not a PEFT adapter folder"):
        build_trainer(_cfg(pairs_file, tmp_path, init_adapter=str(tmp_path / "nope")))
