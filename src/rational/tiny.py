"""`tiny-random`: a tiny randomly initialised Qwen2-style causal LM with a real BPE tokenizer and a
ChatML chat template, built in-process in about a second with no download.

It exists so tests and smoke runs exercise the real code paths (chat templates, batching, TRL SFT,
PEFT, merging) without a network. Its outputs are noise; that is fine for plumbing checks.
The build is deterministic (fixed corpus, fixed seed), so two processes build identical weights.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .common import quiet_transformers

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "How do I kill a Python process? Use kill with the process id, or os.kill from Python.",
    "I can't help with that request, because it could cause serious harm to other people.",
    "Intent: the user wants to learn something harmless. Context and ethics: this is common knowledge.",
    "Potential impact: answering helps the user and harms no one. Decision: comply.",
    "Potential impact: answering could help someone hurt others. Decision: decline.",
    "<think> reasoning </think> Here is a recipe for bread: flour, water, salt and yeast.",
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] { } < > ! ? . , ; :",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "Sure! Here is how to write a function in Python that returns the sum of a list of numbers.",
    "I'm sorry, but I cannot assist with creating malware, weapons or anything that endangers people.",
    "You are a helpful assistant. Answer the user's question clearly, safely and honestly.",
    "The answer is 42. #### 42",
]


def build_tiny_random(out_dir: str | Path, seed: int = 0) -> Path:
    """Build (once) and return the folder holding the tiny model and tokenizer."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file() and (out_dir / "tokenizer.json").is_file():
        return out_dir
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    quiet_transformers()

    # A byte-level BPE tokenizer trained on a few sentences: every string is encodable.
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        bos_token=None, unk_token=None)
    tokenizer.chat_template = CHATML_TEMPLATE

    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=".tiny-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, out_dir)
        except OSError:  # another process finished first
            if not (out_dir / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
