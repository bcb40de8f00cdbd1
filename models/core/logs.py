"""Logging helpers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_logs() -> Iterator[None]:
    """Silence ONNX Runtime's tooling warnings (printed on the root logger) for the duration of a call."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


_FACTORY_INSTALLED = False


def redact_log_records() -> None:
    """Mask credentials in every log record of this process (message, arguments and traceback
    text), whoever logs it: MLflow and Prefect put URIs with passwords into their exception messages,
    which flow loggers then print. Installed once, as the process's log record factory."""
    global _FACTORY_INSTALLED
    if _FACTORY_INSTALLED:
        return
    from slimflow.models.core.redact import redact

    base = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = base(*args, **kwargs)
        try:
            text = record.getMessage()
        except Exception:  # a malformed record stays as it is (logging reports it)
            return record
        masked = redact(text)
        if masked != text:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[0] is not None:
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(formatted)
        return record

    logging.setLogRecordFactory(factory)
    _FACTORY_INSTALLED = True
