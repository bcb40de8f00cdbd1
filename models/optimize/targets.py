"""Hardware targets: one registered entry each. A target names the ONNX Runtime execution provider,
the float precision of its graphs, its INT8 quantization preset (optimum's names: avx2, avx512,
avx512_vnni, arm64) and how its session is built.

Quantizers read the preset from the target, not from the CPU of the machine that builds the
candidate: ``cpu`` means "the CPU this pipeline benchmarks on", resolved once where the candidate
plan is made (``Target.resolved()``), so a build on another machine (a Dask worker) quantizes for
the same CPU; ``cpu-avx2`` etc. name a CPU family explicitly.

A session is built with exactly one provider (plus nothing else): ONNX Runtime would otherwise fall
back to the CPU and a "CUDA" figure would silently be a CPU one. ``availability()`` runs a one-node
graph on the provider and checks that the provider really ran it, because onnxruntime-gpu lists its
GPU providers on machines without a GPU.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from slimflow.models.core.env import cpu_flags
from slimflow.models.core.plugins import Registry

HOST = "host"  # int8_preset: the CPU of the machine that plans the search (and benchmarks on it)

GraphLevel = Literal["basic", "extended", "all"]
# ONNX Runtime's online graph fusions a runtime setting may turn off (``disabled_optimizers``): the
# transformer fusions whose fused kernel is not always the faster one on a CPU.
Fusion = Literal[
    "SkipLayerNormFusion", "BiasGeluFusion", "GeluFusion", "LayerNormFusion", "AttentionFusion",
    "EmbedLayerNormFusion", "MatMulIntegerToFloatFusion", "DynamicQuantizeMatMulFusion",
]  # fmt: skip


@dataclass(frozen=True)
class SessionSettings:
    """How an ONNX Runtime session runs: intra-op threads (0 = ONNX Runtime's default, one per
    core), whether idle pool threads spin, the online graph optimisation level, which of its
    fusions are turned off, and whether denormal floats are flushed to zero (values below ~1e-38:
    no effect on a classifier's outputs, but a slow path for the CPU). The runtime tuning
    (``runtime_tuning.py``) measures these per batch size instead of assuming them."""

    threads: int = 0
    spinning: bool = True
    graph_level: GraphLevel = "all"
    disabled_fusions: tuple[Fusion, ...] = ()
    denormal_as_zero: bool = False

    def __post_init__(self) -> None:  # read back from JSON as a list; a tuple keeps it hashable
        object.__setattr__(self, "disabled_fusions", tuple(sorted(set(self.disabled_fusions))))

    def label(self) -> str:
        threads = (
            f"{self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads else "all threads"
        )
        out = f"{threads}, spinning {'on' if self.spinning else 'off'}, graph {self.graph_level}"
        out += f", without {'+'.join(self.disabled_fusions)}" if self.disabled_fusions else ""
        return out + (", denormals as zero" if self.denormal_as_zero else "")


@dataclass(frozen=True)
class Target:
    name: str
    provider: str
    device: Literal["cpu", "gpu"]
    precision: Literal["fp32", "fp16"]
    description: str
    provider_options: dict[str, Any] = field(default_factory=dict)
    int8_preset: str | None = None  # optimum's AutoQuantizationConfig preset; HOST; None = no INT8

    def resolved(self) -> Target:
        """This target with ``int8_preset`` made concrete (HOST: this machine's CPU)."""
        if self.int8_preset == HOST:
            return dataclasses.replace(self, int8_preset=cpu_int8_preset())
        return self

    def with_preset(self, preset: str | None) -> Target:
        return dataclasses.replace(self, int8_preset=preset)

    def availability(self) -> tuple[bool, str]:
        """(True, "") when the provider runs here, else (False, the reason)."""
        return _probe(self.provider, tuple(sorted(self.provider_options.items())))

    def session(
        self,
        model_path: str | Path | bytes,
        threads: int | None = None,
        settings: SessionSettings | None = None,
        save_optimized: str | Path | None = None,
    ) -> Any:
        """An InferenceSession (of a file, or of a serialized model) on this target's provider only;
        raises if the provider was dropped.
        ``settings`` (threads, spinning, graph level, disabled fusions) win over ``threads``;
        ``save_optimized``: where ONNX Runtime writes the graph it really runs (after its online
        optimisations), to inspect."""
        import onnxruntime as ort

        settings = settings or SessionSettings(threads=threads or 0)
        levels = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        so = ort.SessionOptions()
        if settings.threads:
            so.intra_op_num_threads = settings.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = levels[settings.graph_level]
        if not settings.spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if settings.denormal_as_zero:
            so.add_session_config_entry("session.set_denormal_as_zero", "1")
        so.log_severity_level = 3
        if save_optimized is not None:
            so.optimized_model_filepath = str(save_optimized)
        extra = {"disabled_optimizers": list(settings.disabled_fusions)} if settings.disabled_fusions else {}
        sess = ort.InferenceSession(
            model_path if isinstance(model_path, bytes) else str(model_path),
            so,
            providers=[(self.provider, dict(self.provider_options))],
            **extra,
        )
        if sess.get_providers()[0] != self.provider:
            raise RuntimeError(
                f"target {self.name}: onnxruntime did not use {self.provider} "
                f"(session providers: {sess.get_providers()})"
            )
        return sess


TARGETS: Registry[Target] = Registry("hardware target")


def register_target(target: Target) -> Target:
    return TARGETS.add(target.name, target)


register_target(
    Target(
        name="cpu",
        provider="CPUExecutionProvider",
        device="cpu",
        precision="fp32",
        description="ONNX Runtime on this machine's CPU; INT8 preset from its instruction set.",
        int8_preset=HOST,
    )
)
for _preset in ("avx2", "avx512", "avx512_vnni", "arm64"):
    register_target(
        Target(
            name=f"cpu-{_preset.replace('_', '-')}",
            provider="CPUExecutionProvider",
            device="cpu",
            precision="fp32",
            description=f"ONNX Runtime on a CPU with {_preset}: optimum's {_preset} INT8 preset, "
            "whatever machine builds the candidate.",
            int8_preset=_preset,
        )
    )
register_target(
    Target(
        name="cuda",
        provider="CUDAExecutionProvider",
        device="gpu",
        precision="fp16",
        description="ONNX Runtime CUDA (onnxruntime-gpu, extra 'gpu'); FP16 graphs.",
        provider_options={"device_id": 0},
    )
)
register_target(
    Target(
        name="tensorrt",
        provider="TensorrtExecutionProvider",
        device="gpu",
        precision="fp16",
        description="ONNX Runtime TensorRT (onnxruntime-gpu + TensorRT libraries); FP16 engines.",
        provider_options={"device_id": 0, "trt_fp16_enable": True},
    )
)


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}")
    return TARGETS.get(name)


def cpu_int8_preset() -> str:
    """Optimum's AutoQuantizationConfig preset that matches this CPU (avx512_vnni > avx512 > avx2)."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    flags = cpu_flags()
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


@cache
def _probe(provider: str, options: tuple[tuple[str, Any], ...]) -> tuple[bool, str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return False, "onnxruntime is not installed (install the 'cpu' or 'gpu' extra)"
    available = ort.get_available_providers()
    if provider not in available:
        return False, f"{provider} is not in this onnxruntime build (it has: {', '.join(available)})"
    if provider == "CPUExecutionProvider":
        return True, ""
    try:
        import tempfile

        import numpy as np

        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "probe.onnx")
            _identity_graph(path)
            so = ort.SessionOptions()
            so.log_severity_level = 3
            sess = ort.InferenceSession(path, so, providers=[(provider, dict(options))])
            if sess.get_providers()[0] != provider:
                return False, f"{provider} is listed but onnxruntime fell back to {sess.get_providers()}"
            sess.run(None, {"x": np.ones((1, 4), dtype=np.float32)})
    except Exception as e:  # any failure means "not usable here", with its reason
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return False, f"{provider} failed to start: {first[:300]}"
    return True, ""


def _identity_graph(path: str) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "probe", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
