"""Config machinery shared by every stage's own config section: the strict base class, plug-in
fields validated through their registry, YAML loading with overrides, readable errors, MLflow
params. The sections themselves live beside the code they configure (``data/config.py``,
``train/config.py``, ...); ``slimflow.models.pipeline_config`` composes them."""
