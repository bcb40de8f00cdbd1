"""Process environment defaults shared by the CLI, scripts and tests (``setdefault``: users win)."""

from __future__ import annotations

import os

DEFAULTS = {
    # Offline by default: nothing may download weights here. Users with hub access set both to 0.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GX_ANALYTICS_ENABLED": "false",
    # MLflow draws a progress bar per artifact download: dozens of lines in a log file, no news.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "TOKENIZERS_PARALLELISM": "false",
    # Prefect's local mode starts a temporary server; on a busy 2-core box it can need more than
    # the default 20 s. No telemetry from a machine that may have no network.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # The temporary server's sqlite database: parallel candidate tasks write task runs at once; wait
    # up to 60 s for the lock instead of 10 (Prefect's own busy_timeout is already 60 s).
    "PREFECT_SERVER_DATABASE_TIMEOUT": "60",
}


def apply_defaults() -> None:
    """Environment defaults of every entry point (CLI commands, model server, workers), and log
    records with credentials masked."""
    from slimflow.models.core.logs import redact_log_records

    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    redact_log_records()
    quiet_known_noise()


# Loggers whose warnings say nothing a user can act on here: torchao's CUDA/Triton kernels failing to
# load on a CPU-only machine (three lines at every import) and torch's note about torchao's enums.
NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


def quiet_known_noise() -> None:
    """Raise the known-noisy loggers to ERROR, so real warnings are not lost among them."""
    import logging

    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where there is none)."""
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16() -> bool:
    """The CPU computes bf16 natively (avx512_bf16 or AMX), so bf16 autocast pays off on it."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
