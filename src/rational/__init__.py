"""Rational: reasoning-enhanced safety fine-tuning (arXiv 2503.05021).

Pipeline, one module per stage, each runnable alone through the CLI and talking to the next
through documented JSONL/JSON files:

    data.py        prompt pools, seed pool, adversarial mutations, decontamination
    synthesis.py   `rational generate`: self-check rationales, judge filtering, sft.jsonl
    training.py    `rational train`: TRL SFT (LoRA / full), refusal-sft baseline
    judges.py      refusal / harm judges behind one interface
    evaluation.py  `rational eval`: suites, metrics with 95% intervals
    report.py      `rational report`: HTML + Markdown comparison
    pipeline.py    `rational run`: all of the above, resumable

Shared pieces: models.py (model resolver), generation.py (one generation interface),
reasoning.py (how reasoning is written and parsed), config.py (YAML recipes + CLI overrides).
"""

__version__ = "0.1.0"
