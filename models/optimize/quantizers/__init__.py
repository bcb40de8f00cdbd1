"""Quantizers, one file each, registered where defined (see base.py); every module here is
imported, so a new quantizer is one file."""

from slimflow.models.core.plugins import load_plugins
from slimflow.models.optimize.quantizers.base import (
    QUANTIZERS,
    QuantContext,
    Quantizer,
    QuantizerConfig,
    QuantReport,
    apply_quantizer,
    match_names,
    register_quantizer,
)

load_plugins(__name__, __path__)

__all__ = [
    "QUANTIZERS",
    "QuantContext",
    "QuantReport",
    "Quantizer",
    "QuantizerConfig",
    "apply_quantizer",
    "match_names",
    "register_quantizer",
]
