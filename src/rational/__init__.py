"""Rational: reasoning-enhanced safety fine-tuning (arXiv 2503.05021).

One module per stage, named like its command; stages talk through documented JSONL/JSON files
(docs/architecture.md draws the data flow):

    command               module        config          writes
    rational data         data.py       DataConfig      train_prompts.jsonl, eval_prompts.jsonl, split.json
    rational generate     generate.py   GenerateConfig  prompts.jsonl, candidates.jsonl, sft.jsonl, stats.json
    rational pairs        pairs.py      PairsConfig     pairs.jsonl, circuit_breakers.jsonl, samples.jsonl, stats.json
    rational train        train.py      TrainConfig     adapter/ (or model/), train_metrics.json, checkpoints/
                          (dpo.py: --method dpo; circuit_breakers.py: --baseline circuit-breakers)
    rational eval         eval.py       EvalConfig      generations.jsonl, metrics.json
    rational report       report.py     ReportConfig    report.html, report.md
    rational run          run.py        RunConfig       runs/NAME/<stage>/ for every stage above, run.json
    rational serve        serve.py      ServeConfig     an OpenAI-compatible endpoint (reasoning_content apart)
    rational chat         chat.py       ChatConfig      (terminal)
    rational judge-check  judges.py     JudgeCheckConfig  agreement figures (JSON)
    rational models       models.py     -               (terminal)

Shared pieces:
    config.py     settings declared once (help + resume rule) -> flags, recipe sections, dotted overrides
    common.py     atomic files, JSONL, seeded samplers, library versions
    models.py     model resolver: registry, GGUF-in-wheel fetch with sha256, GGUF -> safetensors
    backends.py   one generation interface (`generate(chats, params)`): hf, vllm, openai, scripted
    engine.py     the hf backend's CPU decoding loop (shared-prefix prefill, row retirement, chunked prefill)
    reasoning.py  the reasoning format (<think> Intent / Context and ethics / Potential impact / Decision)
    prompts.py    prompt records, pools, jailbreak templates, splits, decontamination
    mutations.py  adversarial mutations (encodings, injections, templates, model rewrites)
    judges.py     refusal / harm judges behind one interface (verdict.py: the Verdict type)
    learned_judges.py  refusal-learned / harm-learned: a head on the embedded model's hidden states
    stats.py      Wilson and bootstrap intervals, agreement statistics
    tiny.py       the in-process tiny-random model for tests and smoke runs
"""

__version__ = "0.1.0"
