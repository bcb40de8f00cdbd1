"""slimflow: fine-tune, shrink, validate and promote small transformer classifiers."""

__version__ = "0.1.0"
