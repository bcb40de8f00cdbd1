"""One rank of a data-parallel training job (see ``distributed.py``):
``python -m slimflow.models.train.ddp_worker JOB.json`` under torchrun."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from slimflow.models.data.prepare import PreparedData
from slimflow.models.train.config import DistillConfig, FinetuneConfig
from slimflow.models.train.distill import distill
from slimflow.models.train.finetune import finetune


def main(job_path: str) -> None:
    import torch
    import torch.distributed as dist

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
            result = finetune(
                FinetuneConfig.model_validate(a["cfg"]), data, out, a["cache_dir"], progress=False,
                hub_token=os.environ.get("SLIMFLOW_HUB_TOKEN") or None,
            )  # fmt: skip
        else:
            result = distill(
                DistillConfig.model_validate(a["cfg"]), data, a["teacher_dir"], a["teacher_sha256"], out,
                a["cache_dir"], progress=False,
            )  # fmt: skip
        if rank == 0:
            done = {"result": result.model_dump(mode="json"), "world_size": dist.get_world_size()}
            Path(job["result"]).write_text(json.dumps(done, default=str), encoding="utf-8")
        else:
            shutil.rmtree(out, ignore_errors=True)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    from slimflow.models.core.env import apply_defaults

    apply_defaults()
    main(sys.argv[1])
