"""Data-parallel training: the same ``finetune()`` / ``distill()`` in N processes under torchrun.

``finetune()`` / ``distill()`` call ``run_data_parallel`` when ``train.data_parallel > 1``: it
writes a job file and runs ``python -m torch.distributed.run --standalone --nproc_per_node=N -m
slimflow.models.train.ddp_worker JOB``; each rank joins the process group (gloo on CPU, nccl on
CUDA) and trains its share of every batch (``train.loop``); rank 0 saves the model and the result,
the other ranks save nothing. The worker runs under ``accelerate launch`` or a multi-node torchrun
too (it reads the standard RANK / WORLD_SIZE / MASTER_ADDR environment).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from slimflow.models.core.errors import SlimflowError
from slimflow.models.core.results import StageResult
from slimflow.models.train.loop import EpochRecord

R = TypeVar("R", bound=StageResult)


class DistributedError(SlimflowError):
    """The data-parallel training job failed; the message carries the end of its log."""


def run_data_parallel(
    kind: str,
    args: dict[str, Any],
    processes: int,
    result_type: type[R],
    *,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    secret_env: dict[str, str] | None = None,
    timeout_s: float | None = None,
) -> R:
    """Run the ``kind`` stage ('finetune' or 'distill') with ``args`` on ``processes`` local
    processes; returns rank 0's result. The workers do not report as they go: ``on_epoch`` is
    called afterwards for each epoch. ``secret_env`` reaches the workers through their
    environment only (never the job file)."""
    with tempfile.TemporaryDirectory(prefix="slimflow-ddp-") as tmp:
        job, result_file, log = Path(tmp) / "job.json", Path(tmp) / "result.json", Path(tmp) / "log.txt"
        job.write_text(json.dumps({"kind": kind, "args": args, "result": str(result_file)}), encoding="utf-8")
        env = {**os.environ, **(secret_env or {})}
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "slimflow.models.train.ddp_worker", str(job)]  # fmt: skip
        with log.open("w") as fh:
            r = subprocess.run(
                cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout_s, check=False
            )
        if r.returncode != 0 or not result_file.exists():
            tail = log.read_text(errors="replace")[-3000:]
            raise DistributedError(
                f"data-parallel {kind} ({processes} processes) failed (exit {r.returncode}):\n{tail}"
            )
        out = json.loads(result_file.read_text(encoding="utf-8"))
    if out["world_size"] != processes:
        raise DistributedError(
            f"asked for {processes} processes, the {kind} job ran with {out['world_size']}"
        )
    result = result_type.model_validate(out["result"])
    if on_epoch is not None:
        for rec in getattr(result, "history", []):
            on_epoch(EpochRecord.from_dict(rec))
    return result
