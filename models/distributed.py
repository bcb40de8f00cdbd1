"""Data-parallel training: the same ``finetune()`` / ``distill()`` in N processes under torchrun.

``launch_finetune`` / ``launch_distill`` (called by the training tasks when
``train.data_parallel > 1``) write a job file and run
``python -m torch.distributed.run --standalone --nproc_per_node=N -m models.distributed JOB``; each
rank joins the process group (gloo on CPU, nccl on CUDA) and trains its share of every batch
(``models.training``); rank 0 saves the model and the result, the other ranks save nothing. The
same module runs under ``accelerate launch`` or a multi-node torchrun (it reads the standard
RANK / WORLD_SIZE / MASTER_ADDR environment).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from models.config import DistillConfig, FinetuneConfig
from models.errors import SlimflowError
from models.prepare import PreparedData


class DistributedError(SlimflowError):
    """The data-parallel training job failed; the message carries the end of its log."""


def launch_finetune(
    cfg: FinetuneConfig,
    data: PreparedData,
    out_dir: str | Path,
    cache_dir: str | Path,
    *,
    hub_token: str | None = None,
    on_epoch: Callable[[Any], None] | None = None,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
    timeout_s: float | None = None,
) -> Any:
    """``finetune`` on ``cfg.train.data_parallel`` local processes; returns rank 0's result. The
    workers do not report as they go: ``on_ready`` and ``on_epoch`` are called afterwards."""
    from models.finetune import FinetuneResult  # noqa: PLC0415

    args = {"cfg": cfg.model_dump(mode="json"), "data": data.model_dump(mode="json"),
            "out_dir": str(out_dir), "cache_dir": str(cache_dir)}  # fmt: skip
    secret = {"SLIMFLOW_HUB_TOKEN": hub_token} if hub_token else {}
    result = FinetuneResult(**_run("finetune", args, cfg.train.data_parallel, timeout_s, secret))
    if on_ready is not None:
        keys = ("trainable_params", "total_params", "trainable_share", "train_examples")
        on_ready({k: getattr(result, k) for k in keys})
    return _replay(result, on_epoch)


def launch_distill(
    cfg: DistillConfig,
    data: PreparedData,
    teacher_dir: str | Path,
    teacher_sha256: str,
    out_dir: str | Path,
    cache_dir: str | Path,
    *,
    on_epoch: Callable[[Any], None] | None = None,
    timeout_s: float | None = None,
) -> Any:
    """``distill`` on ``cfg.train.data_parallel`` local processes; returns rank 0's result
    (``on_epoch`` is called afterwards for each epoch)."""
    from models.distill import DistillResult  # noqa: PLC0415

    args = {"cfg": cfg.model_dump(mode="json"), "data": data.model_dump(mode="json"),
            "teacher_dir": str(teacher_dir), "teacher_sha256": teacher_sha256,
            "out_dir": str(out_dir), "cache_dir": str(cache_dir)}  # fmt: skip
    return _replay(DistillResult(**_run("distill", args, cfg.train.data_parallel, timeout_s, {})), on_epoch)


def _replay(result: Any, on_epoch: Callable[[Any], None] | None) -> Any:
    if on_epoch is not None:
        from models.training import EpochRecord  # noqa: PLC0415

        for rec in result.history:
            on_epoch(EpochRecord(**rec))
    return result


def _run(kind: str, args: dict[str, Any], n: int, timeout_s: float | None, secret: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="slimflow-ddp-") as tmp:
        job, result_file, log = Path(tmp) / "job.json", Path(tmp) / "result.json", Path(tmp) / "log.txt"
        job.write_text(json.dumps({"kind": kind, "args": args, "result": str(result_file)}), encoding="utf-8")
        env = {**os.environ, **secret}  # secrets reach the workers through their environment only
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "-m", "models.distributed", str(job)]  # fmt: skip
        with log.open("w") as fh:
            r = subprocess.run(  # noqa: S603
                cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout_s, check=False
            )
        if r.returncode != 0 or not result_file.exists():
            tail = log.read_text(errors="replace")[-3000:]
            raise DistributedError(
                f"data-parallel {kind} ({n} processes) failed (exit {r.returncode}):\n{tail}"
            )
        out = json.loads(result_file.read_text(encoding="utf-8"))
    if out["world_size"] != n:
        raise DistributedError(f"asked for {n} processes, the {kind} job ran with {out['world_size']}")
    return out["result"]


def main(job_path: str) -> None:
    import shutil  # noqa: PLC0415

    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    try:
        rank = dist.get_rank()
        a = job["args"]
        out = Path(a["out_dir"]) if rank == 0 else Path(tempfile.mkdtemp(prefix=f"slimflow-rank{rank}-"))
        data = PreparedData.model_validate(a["data"])
        if job["kind"] == "finetune":
            from models.finetune import finetune  # noqa: PLC0415

            result = finetune(
                FinetuneConfig.model_validate(a["cfg"]), data, out, a["cache_dir"], progress=False,
                hub_token=os.environ.get("SLIMFLOW_HUB_TOKEN") or None,
            )  # fmt: skip
        else:
            from models.distill import distill  # noqa: PLC0415

            result = distill(
                DistillConfig.model_validate(a["cfg"]), data, a["teacher_dir"], a["teacher_sha256"], out,
                a["cache_dir"], progress=False,
            )  # fmt: skip
        if rank == 0:
            done = {"result": asdict(result), "world_size": dist.get_world_size()}
            Path(job["result"]).write_text(json.dumps(done, default=str), encoding="utf-8")
        else:
            shutil.rmtree(out, ignore_errors=True)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
