"""Circuit breakers (representation rerouting, RR) as a baseline: `rational train --baseline circuit-breakers`.

Zou et al., "Improving Alignment and Robustness with Circuit Breakers" (NeurIPS 2024, arXiv 2406.04313), the
baseline the Rational paper compares with. No maintained library implements it, so the loss is here, on top of a
plain `transformers.Trainer` (only `compute_loss` is overridden; no hand-written training loop):

* a LoRA adapter on the policy; the **frozen model** is the same model with the adapter disabled
  (`disable_adapter()`), so no second copy is held in memory;
* **rerouting loss** on harmful conversations (the model's own harmful completions, from `rational pairs`): push the
  tuned model's hidden states away from the frozen model's, ReLU(cosine similarity), on the target layers;
* **retain loss** on benign conversations (benign prompts with the model's own answers, and harmful prompts with
  its own plain refusals): keep the tuned hidden states close to the frozen ones, L2 distance per token;
* the paper's **schedule**: at optimizer step t of T, c_reroute = alpha * (1 - t / 2T), c_retain = alpha * t / 2T,
  so training starts on rerouting and shifts towards retaining.

Layers. The paper reroutes the hidden states after layers 10 and 20 of Llama-3-8B-Instruct (32 layers) and puts
LoRA on layers 0-20 only. `target_layers` keeps those depths as fractions (10/32, 20/32) of the model at hand (e.g.
8 and 15 of Qwen2.5-0.5B's 24); LoRA goes on the layers up to the last target layer, and the retain loss covers
every hidden state up to it, so every trainable weight reaches the loss (later layers only see inputs the retain
loss keeps in place).

Masks. Rerouting covers the user's request and the completion, as in the published code, but not the chat
template's fixed opening (e.g. Qwen's default system prompt): those tokens, and so their hidden states, are the same
in every conversation, harmful or benign, and the two losses would pull on them in opposite directions. The retain
loss covers every real token.

Data: `circuit_breakers.jsonl`, SFT-style records with a set label (written by `rational pairs`)::

    {"prompt": [{"role": "user", ...}], "completion": [{"role": "assistant", ...}],
     "meta": {"set": "reroute" | "retain", "kind": "harmful", ...}}
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from .common import as_messages, numbered_json_lines
from .errors import UserError

# The paper's choice for Llama-3-8B-Instruct: hidden states after layers 10 and 20 of 32.
PAPER_LAYERS = (10, 20)
PAPER_DEPTH = 32
SETS = ("reroute", "retain")


# ------------------------------------------------------------------------------------------- the loss


def target_layers(num_layers: int, layers: list[int] | None = None) -> list[int]:
    """Hidden-state indices to reroute (1 = after the first decoder layer): `layers` as given, or the paper's
    layers 10 and 20 of 32 scaled to `num_layers` (the final hidden state, after the last norm, is left out)."""
    if layers:
        bad = [n for n in layers if not 1 <= n <= num_layers]
        if bad:
            raise UserError(f"circuit-breaker layer {bad[0]} is outside this model's hidden states 1..{num_layers}")
        return sorted(set(layers))
    top = max(1, num_layers - 1)
    return sorted({min(top, max(1, round(num_layers * n / PAPER_DEPTH))) for n in PAPER_LAYERS})


def schedule(step: int, total_steps: int, alpha: float) -> tuple[float, float]:
    """(c_reroute, c_retain) at optimizer step `step` of `total_steps` (paper, Algorithm 1)."""
    progress = step / (2 * max(1, total_steps))
    return alpha * (1 - progress), alpha * progress


def reroute_loss(tuned, frozen, mask):
    """Mean over target layers and masked tokens of ReLU(cos(tuned, frozen)): 0 once they are orthogonal.

    tuned, frozen: [layers, batch, tokens, hidden]; mask: [batch, tokens] (1 = a rerouted token).
    """
    import torch.nn.functional as F

    cos = F.cosine_similarity(tuned.float(), frozen.float(), dim=-1)  # [layers, batch, tokens]
    m = mask.to(cos.dtype)
    return (F.relu(cos) * m).sum() / (m.sum() * cos.shape[0]).clamp(min=1)


def retain_loss(tuned, frozen, mask):
    """Mean over layers and masked tokens of the L2 distance between tuned and frozen hidden states."""
    dist = (tuned.float() - frozen.float()).norm(dim=-1)  # [layers, batch, tokens]
    m = mask.to(dist.dtype)
    return (dist * m).sum() / (m.sum() * dist.shape[0]).clamp(min=1)


def mean_cosine(tuned, frozen, mask) -> float:
    """Unclipped mean cosine on the masked tokens (for the logs: 1 at the start, below 0 once rerouted)."""
    import torch.nn.functional as F

    cos = F.cosine_similarity(tuned.detach().float(), frozen.float(), dim=-1)
    m = mask.to(cos.dtype)
    return float((cos * m).sum() / (m.sum() * cos.shape[0]).clamp(min=1))


# ------------------------------------------------------------------------------------------------ data


def load_cb_records(path: str | Path) -> tuple[list[dict], list[str]]:
    """Read circuit_breakers.jsonl; returns (records {prompt, completion, set}, sets). Each problem is one line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: data file not found; pass the circuit_breakers.jsonl written by `rational pairs` "
                        "to --data")
    records, sets = [], []
    for where, row in numbered_json_lines(path):
        if not isinstance(row, dict) or "prompt" not in row or "completion" not in row:
            raise UserError(f"{where}: each line needs 'prompt', 'completion' and meta.set (reroute or retain)")
        prompt, completion = as_messages(row["prompt"], "user"), as_messages(row["completion"], "assistant")
        if prompt is None or completion is None:
            bad = "prompt" if prompt is None else "completion"
            raise UserError(f"{where}: column '{bad}' must be a non-empty list of {{'role', 'content'}} messages "
                            "or a string")
        meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
        if meta.get("set") not in SETS:
            raise UserError(f"{where}: meta.set is {meta.get('set')!r}; it must be 'reroute' (harmful, pushed "
                            "away) or 'retain' (benign, kept)")
        records.append({"prompt": prompt, "completion": completion, "set": meta["set"]})
        sets.append(meta["set"])
    for name in SETS:
        if name not in sets:
            raise UserError(f"{path}: no '{name}' records; circuit breakers need both harmful conversations to "
                            "reroute and benign ones to retain")
    return records, sets


def template_prefix_length(tokenizer) -> int:
    """Tokens the chat template puts before every user message (e.g. a default system prompt): the common
    prefix of two conversations that differ only in their text."""
    a, b = ([{"role": "user", "content": text}] for text in ("alpha", "omega"))
    ids_a = tokenizer.apply_chat_template(a, tokenize=True, return_dict=True)["input_ids"]
    ids_b = tokenizer.apply_chat_template(b, tokenize=True, return_dict=True)["input_ids"]
    n = 0
    while n < min(len(ids_a), len(ids_b)) and ids_a[n] == ids_b[n]:
        n += 1
    return n


def tokenize(records: list[dict], tokenizer, max_length: int) -> dict[str, list[dict]]:
    """{set: [{input_ids, loss_mask}]}: each conversation cut to `max_length` tokens (keeping the start)."""
    prefix = template_prefix_length(tokenizer)
    out: dict[str, list[dict]] = {name: [] for name in SETS}
    for r in records:
        ids = tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=True,
                                            return_dict=True)["input_ids"][:max_length]
        skip = prefix if r["set"] == "reroute" else 0
        out[r["set"]].append({"input_ids": ids, "loss_mask": [0] * min(skip, len(ids)) + [1] * (len(ids) - skip)})
    return out


class PairedSets:
    """Example i = (reroute[i mod n_reroute], retain[i mod n_retain]): every record of the larger set is used once
    per epoch and the smaller set is cycled (the Trainer shuffles the indices)."""

    def __init__(self, sets: dict[str, list[dict]]):
        self.reroute, self.retain = sets["reroute"], sets["retain"]

    def __len__(self) -> int:
        return max(len(self.reroute), len(self.retain))

    def __getitem__(self, i: int) -> dict:
        return {"reroute": self.reroute[i % len(self.reroute)], "retain": self.retain[i % len(self.retain)]}


def collator(pad_id: int):
    """Batch = the batch's reroute conversations, then its retain ones, right-padded to one width, so one forward
    pass (tuned) and one (frozen) cover both losses."""

    def collate(examples: list[dict]) -> dict:
        import torch

        rows = [e["reroute"] for e in examples] + [e["retain"] for e in examples]
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        loss_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            attention[i, :n] = 1
            loss_mask[i, :n] = torch.tensor(r["loss_mask"])
        return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss_mask}

    return collate


# --------------------------------------------------------------------------------------------- trainer


@contextmanager
def _frozen(model):
    """The model without its adapter and without dropout: the frozen reference the paper compares with."""
    was_training = model.training
    model.eval()
    try:
        with model.disable_adapter():
            yield model
    finally:
        model.train(was_training)


@cache
def trainer_class():
    """`CircuitBreakerTrainer`, built on first use so importing this module does not import transformers."""
    import torch
    from transformers import Trainer

    class CircuitBreakerTrainer(Trainer):
        """A `Trainer` whose loss is c_reroute * reroute_loss + c_retain * retain_loss (module docstring)."""

        def __init__(self, *args, cb_alpha: float, cb_layers: list[int], **kwargs):
            super().__init__(*args, **kwargs)
            self.cb_alpha = cb_alpha
            self.cb_layers = cb_layers
            self.retain_layers = list(range(1, max(cb_layers) + 1))
            self._cb_logs: dict[str, list[float]] = defaultdict(list)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            ids, attention, mask = inputs["input_ids"], inputs["attention_mask"], inputs["loss_mask"]
            n = ids.shape[0] // 2  # reroute rows first, then retain rows (see `collator`)
            # Only hidden states are needed: logits_to_keep=1 skips the vocabulary projection of every token.
            kwargs = dict(input_ids=ids, attention_mask=attention, output_hidden_states=True, logits_to_keep=1,
                          use_cache=False)
            peft_model = self.accelerator.unwrap_model(model)
            with torch.no_grad(), _frozen(peft_model):
                frozen = peft_model(**kwargs).hidden_states
            tuned = model(**kwargs).hidden_states

            def stack(states, layers, rows):
                return torch.stack([states[i][rows] for i in layers])

            head, tail = slice(0, n), slice(n, None)
            rr_tuned, rr_frozen = stack(tuned, self.cb_layers, head), stack(frozen, self.cb_layers, head)
            rr = reroute_loss(rr_tuned, rr_frozen, mask[head])
            rt = retain_loss(stack(tuned, self.retain_layers, tail), stack(frozen, self.retain_layers, tail),
                             mask[tail])
            c_rr, c_rt = schedule(self.state.global_step, self.state.max_steps, self.cb_alpha)
            loss = c_rr * rr + c_rt * rt
            for key, value in (("reroute_loss", rr.item()), ("retain_loss", rt.item()), ("reroute_coef", c_rr),
                               ("retain_coef", c_rt), ("reroute_cos", mean_cosine(rr_tuned, rr_frozen,
                                                                                  mask[head]))):
                self._cb_logs[key].append(value)
            return (loss, None) if return_outputs else loss

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            """Each logging step also reports both loss terms and their coefficients, averaged since the last."""
            if "loss" in logs and self._cb_logs:
                logs.update({k: sum(v) / len(v) for k, v in self._cb_logs.items()})
                self._cb_logs.clear()
            super().log(logs, start_time)

    return CircuitBreakerTrainer


def build_cb_trainer(model, tokenizer, records: list[dict], args, peft_config, alpha: float, layers: list[int],
                     max_length: int):
    """The circuit-breaker Trainer on `model` + a fresh LoRA (`peft_config`), ready to train."""
    from peft import get_peft_model

    return trainer_class()(model=get_peft_model(model, peft_config), args=args,
                           train_dataset=PairedSets(tokenize(records, tokenizer, max_length)),
                           data_collator=collator(tokenizer.pad_token_id), processing_class=tokenizer,
                           cb_alpha=alpha, cb_layers=layers)
