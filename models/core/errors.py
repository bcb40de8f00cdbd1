"""Error types with the CLI exit code each maps to.

Expected failures raise one of these; the CLI prints the message without a traceback
(unless ``--debug``) and exits with ``exit_code``.
"""

from __future__ import annotations


class SlimflowError(Exception):
    """A failure we expected and can explain in one message."""

    exit_code: int = 1


class ConfigError(SlimflowError):
    """Bad configuration, bad usage or a missing input file: nothing was started."""

    exit_code = 2


class DataError(SlimflowError):
    """The data could not be read or does not pass validation: nothing was trained."""

    exit_code = 3


class DataValidationError(DataError):
    """Great Expectations rejected the data; ``report`` holds the per-expectation outcomes."""

    def __init__(self, message: str, report: object | None = None, hint: str | None = None) -> None:
        super().__init__(message + (f"; {hint}" if hint else ""))
        self.report = report
        self.hint = hint


class ModelSourceError(ConfigError):
    """A model name or folder cannot be resolved to safetensors weights."""


class CandidateRejected(SlimflowError, ValueError):
    """A candidate failed a check (export parity, quantized agreement, a keep_fp32 pattern): the
    search records it as failed with this message and goes on with the others."""


class TrackingUnavailable(SlimflowError):
    """The MLflow tracking server stopped answering (after bounded retries): the run stopped and
    nothing was registered or promoted."""
