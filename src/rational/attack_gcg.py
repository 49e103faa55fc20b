"""GCG (Zou et al. 2023, "Universal and Transferable Adversarial Attacks on Aligned Language Models",
arXiv 2307.15043) through nanoGCG, on the target model white-box (its weights, plus a merged adapter).

GCG optimises a suffix of `n` tokens appended to the request so that the model's most likely reply begins with
a target string ("Sure, here is ..."): at each step it takes the gradient of the target's loss with respect to
the one-hot suffix tokens, samples `search_width` candidates that swap one token for one of the `topk` most
promising ones, and keeps the candidate with the lowest loss. The attack string is then sent to the target
with greedy decoding and judged like every other attack.

nanoGCG 0.3.0 pins transformers<=4.47.1, so it cannot be installed through the `redteam` extra next to
transformers 5: install it with `pip install --no-deps nanogcg==0.3.0` (its code runs on transformers 5 with
the settings below; `tests/test_attack.py` runs it). Two settings are forced:
  * `use_prefix_cache=False`: nanoGCG reuses the prompt's KV cache by indexing and mutating the legacy tuple
    cache, which transformers 5's cache objects no longer support; without it every candidate is run on the
    whole prompt (slower, same result);
  * nanoGCG switches `torch.use_deterministic_algorithms` on for the whole process when given a seed; it is
    restored after each behavior, so a red-team loop that trains afterwards in the same process is unaffected.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError

INSTALL_HINT = "pip install scipy && pip install --no-deps nanogcg==0.3.0"


def nanogcg_available() -> bool:
    try:
        import nanogcg  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class GCGOutcome:
    suffix: str
    loss: float
    steps: int  # optimisation steps run (fewer than asked when early stopping found the target)
    rows: list[dict]  # one transcript row per step: loss and suffix


def optimise_suffix(model, tokenizer, request: str, target_str: str, steps: int, search_width: int, topk: int,
                    suffix_init: str, early_stop: bool, seed: int) -> GCGOutcome:
    """Run nanoGCG on one request; the suffix is placed after the request, separated by a space."""
    try:
        import nanogcg
    except ImportError:
        raise UserError(f"method gcg needs nanoGCG: {INSTALL_HINT}") from None
    import logging

    import torch

    logging.getLogger("nanogcg").setLevel(logging.ERROR)  # it logs its whole buffer at every step otherwise
    config = nanogcg.GCGConfig(num_steps=steps, search_width=search_width, topk=topk, optim_str_init=suffix_init,
                               early_stop=early_stop, use_prefix_cache=False, seed=seed, verbosity="ERROR")
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        result = nanogcg.run(model, tokenizer, [{"role": "user", "content": request + " {optim_str}"}], target_str,
                             config)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    rows = [{"event": "gcg_step", "method": "gcg", "step": i, "loss": round(float(loss), 6), "suffix": s}
            for i, (loss, s) in enumerate(zip(result.losses, result.strings))]
    return GCGOutcome(result.best_string, float(result.best_loss), len(result.losses), rows)
