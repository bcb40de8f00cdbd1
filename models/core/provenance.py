"""Where a result came from: code hash, git commit, package versions, hardware."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

# The library, task and flow packages: installed as slimflow.models / .tasks / .flows, they live
# in the models/, tasks/ and flows/ folders of a checkout (see pyproject.toml).
CODE_PACKAGES = ("slimflow.models", "slimflow.tasks", "slimflow.flows")
LIBRARY = Path(__file__).resolve().parent.parent  # models/ (or site-packages/slimflow/models)
ROOT = LIBRARY.parent  # the checkout, when running from one (git commit)
KEY_PACKAGES = (
    "slimflow",
    "torch",
    "transformers",
    "peft",
    "tokenizers",
    "safetensors",
    "accelerate",
    "prefect",
    "mlflow",
    "great_expectations",
    "onnxruntime",
    "onnxruntime-gpu",
    "pandas",
    "numpy",
    "scikit-learn",
)


def package_versions() -> dict[str, str]:
    out = {}
    for name in KEY_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


@functools.cache
def code_version() -> str:
    """sha256 over the library/task/flow sources and key package versions.

    Part of every cache key: Prefect's TASK_SOURCE sees only the task function's own text,
    so a change in models/ (or an upgraded transformers) would otherwise reuse stale results.
    """
    import importlib.util

    h = hashlib.sha256()
    for pkg in CODE_PACKAGES:
        spec = importlib.util.find_spec(pkg)
        folder = Path(next(iter(spec.submodule_search_locations or []))) if spec else None
        if folder is None:
            continue
        for p in sorted(folder.rglob("*.py")):
            h.update(f"{pkg}/{p.relative_to(folder)}".encode() + b"\0" + p.read_bytes())
    for k, v in sorted(package_versions().items()):
        if k != "slimflow":
            h.update(f"{k}=={v}\n".encode())
    return h.hexdigest()[:16]


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, str]:
    info = {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count() or 0),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "gpu": _gpus(),
    }
    torch = sys.modules.get("torch")  # reported when loaded; never imported just for this
    if torch is not None:
        info["torch_threads"] = str(torch.get_num_threads())
    return info


@functools.cache
def _gpus() -> str:
    """NVIDIA GPUs by name (nvidia-smi), 'none' without a driver: no torch/CUDA import needed."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return "none"
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "none"
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return ", ".join(names) if out.returncode == 0 and names else "none"


def hardware_fingerprint(hw: dict[str, str] | None = None) -> str:
    hw = hw or hardware()
    return f"{hw['cpu']} x{hw['cores']} | gpu: {hw['gpu']}"
