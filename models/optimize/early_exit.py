"""Early exit (adaptive depth) for BERT-style ONNX classifiers: an exit head after an intermediate
encoder layer answers the texts it is sure of; the rest run the remaining layers.

An early exit is a cascade folder (``cascade.py``) of kind ``early_exit`` cut from one built ONNX
candidate (its fused graph, e.g. the dynamically quantized one the pipeline serves):

* ``fast/``: the graph up to encoder layer ``k`` plus the exit head. Outputs the exit logits, the
  hidden state after layer ``k`` and the attention mask index the fused attention nodes share.
* ``fallback/``: the remaining layers and the classifier, reading that hidden state and mask index:
  nothing runs twice, and ``fallback(fast(x))`` equals the whole graph (checked at build).
* ``cascade.json``: the threshold (chosen on the validation split only, with the cascade's rule:
  the least escalation whose accuracy keeps the whole model's minus ``max_accuracy_drop``), the
  exit layer and the head's training figures.

The exit head is trained on the frozen body (DeeBERT's second stage): the hidden state's mean over
the text's tokens, then dense + tanh + classifier (the shape of BERT's pooler and head), on the
whole model's own soft labels (temperature 2) and the gold labels of the training split. Hidden
states are taken one text per call: dynamic INT8 scales its activations per call, so padding in a
batch would move them (and the exits are served one text at a time).

Measured on the packaged data (README, "Early exit"): 16-37% of batch-1 p50 saved for 0.3-1.1
points of test accuracy, depending on the model and the exit layer.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from slimflow.models.optimize import cascade as K
from slimflow.models.optimize.predictors import (
    CANDIDATE_FILE,
    CandidateInfo,
    describe,
    load_predictor,
)
from slimflow.models.optimize.targets import SessionSettings, get_target

KIND = "early_exit"
EXIT_OUTPUT = "exit_logits"
_LAYER_OUT = "/bert/encoder/layer.{k}/output/LayerNorm/LayerNormalization_output_0"
_EMBED_OPS = ("EmbedLayerNormalization", "QEmbedLayerNormalization")


def hidden_name(index: int) -> str:
    """The hidden state after encoder layer ``index`` (0-based) in an exported BERT-style graph."""
    return _LAYER_OUT.format(k=index)


@dataclass
class EncoderGraph:
    """What an exit needs to know of a fused BERT-style encoder graph."""

    layers: list[int]  # encoder layer indexes, in order
    mask_index: str  # the mask index the embedding node gives every fused attention node
    inputs: list[str]
    logits: str  # the graph's (first) output


def inspect_graph(model: Any, where: str = "model.onnx") -> EncoderGraph:
    """The encoder layers and names of ``model``; a clear error for any other graph."""
    g = model.graph
    embed = [n for n in g.node if n.op_type in _EMBED_OPS]
    outputs = {o for n in g.node for o in n.output}
    layers = sorted(
        {int(n.name.split("/encoder/layer.")[1].split("/")[0]) for n in g.node if "/encoder/layer." in n.name}
    )
    if not embed or len(embed[0].output) < 2 or not layers or hidden_name(layers[0]) not in outputs:
        raise ValueError(
            f"{where}: not a fused BERT-style encoder graph (no EmbedLayerNormalization with a mask "
            "index, or no layer output named /bert/encoder/layer.K/output/LayerNorm/...): an early exit "
            "is cut from a built ONNX candidate of a BERT-style classifier (onnx_fp32 or ort_int8_dynamic)"
        )
    return EncoderGraph(layers, embed[0].output[1], [i.name for i in g.input], g.output[0].name)


def check_exit(graph: EncoderGraph, exit_after: int, where: str = "model.onnx") -> None:
    """``exit_after`` (layers run before the exit, 1-based) must leave at least one layer after it."""
    n = len(graph.layers)
    if n < 2:
        raise ValueError(
            f"{where}: this model has {n} encoder layer(s): an early exit needs at least 2 (one before "
            "the exit, one after)"
        )
    if not 1 <= exit_after < n:
        raise ValueError(
            f"{where}: exit_after {exit_after}: this model has {n} encoder layer(s); an exit goes after "
            f"1..{n - 1} of them (after all {n} is the whole model)"
        )


def _declare(graph: Any, name: str, elem: int, dims: list[Any]) -> None:
    from onnx import helper

    if name not in {v.name for v in graph.value_info}:
        graph.value_info.append(helper.make_tensor_value_info(name, elem, dims))


def expose(model: Any, enc: EncoderGraph, hidden: list[str]) -> None:
    """Declare the mask index and hidden states so that graphs can be cut at them."""
    from onnx import TensorProto

    _declare(model.graph, enc.mask_index, TensorProto.INT32, ["batch"])
    for h in hidden:
        _declare(model.graph, h, TensorProto.FLOAT, ["batch", "sequence", None])


def pooled(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Mean of the hidden state over each text's tokens (padding left out)."""
    keep = attention_mask.astype(np.float32)[:, :, None]
    return np.asarray((hidden * keep).sum(1) / keep.sum(1), dtype=np.float32)


def collect(
    session: Any, encode: Any, texts: list[str], outputs: list[str], batch: int = 1
) -> list[np.ndarray]:
    """Per text: each output of ``session``; 3-d ones (hidden states) pooled over the text's tokens.
    One text per call by default (see the module docstring)."""
    got: list[list[np.ndarray]] = [[] for _ in outputs]
    names = {i.name for i in session.get_inputs()}
    for i in range(0, len(texts), batch):
        x = encode(texts[i : i + batch])
        for j, r in enumerate(session.run(outputs, {k: v for k, v in x.items() if k in names})):
            got[j].append(pooled(r, x["attention_mask"]) if r.ndim == 3 else r)
    return [np.concatenate(g) for g in got]


def train_head(
    x: np.ndarray,
    soft: np.ndarray,
    gold: np.ndarray,
    epochs: int = 20,
    seed: int = 0,
    temperature: float = 2.0,
) -> dict[str, np.ndarray]:
    """Dense + tanh + classifier on pooled hidden states: half distillation from the whole model's
    logits (``soft``, at ``temperature``), half cross-entropy on the gold labels. Returns the
    weights as the graph uses them (``w1``, ``b1``, ``w2``, ``b2``; x @ w + b)."""
    import torch

    torch.manual_seed(seed)
    n_in, n_out = x.shape[1], soft.shape[1]
    head = torch.nn.Sequential(torch.nn.Linear(n_in, n_in), torch.nn.Tanh(), torch.nn.Linear(n_in, n_out))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
    xt, st, gt = torch.tensor(x), torch.tensor(soft, dtype=torch.float32), torch.tensor(gold)
    t = temperature
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 128):
            idx = perm[i : i + 128]
            out = head(xt[idx])
            kd = torch.nn.functional.kl_div(
                torch.log_softmax(out / t, -1), torch.softmax(st[idx] / t, -1), reduction="batchmean"
            )
            loss = 0.5 * kd * t**2 + 0.5 * torch.nn.functional.cross_entropy(out, gt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    w1, b1, w2, b2 = (p.detach().numpy().astype(np.float32) for p in head.parameters())
    return {"w1": w1.T.copy(), "b1": b1, "w2": w2.T.copy(), "b2": b2}


def head_logits(x: np.ndarray, head: dict[str, np.ndarray]) -> np.ndarray:
    """The exit head on pooled hidden states, in numpy (what the appended graph nodes compute)."""
    return np.asarray(np.tanh(x @ head["w1"] + head["b1"]) @ head["w2"] + head["b2"], dtype=np.float32)


def with_head(model: Any, hidden: str, head: dict[str, np.ndarray]) -> Any:
    """``model`` with the exit head on ``hidden``: the mean over the text's tokens (attention_mask
    1), dense + tanh, classifier -> output ``exit_logits``."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    for name, arr in head.items():
        g.initializer.append(numpy_helper.from_array(arr, f"exit_head.{name}"))
    g.initializer.append(numpy_helper.from_array(np.array([2], dtype=np.int64), "exit_head.last"))
    g.initializer.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "exit_head.seq"))

    def node(op: str, ins: list[str], out: str, name: str, **kw: Any) -> Any:
        return helper.make_node(op, ins, [out], name=f"exit_head/{name}", **kw)

    g.node.extend(
        [
            node("Cast", ["attention_mask"], "exit_head.m0", "Cast", to=TensorProto.FLOAT),
            node("Unsqueeze", ["exit_head.m0", "exit_head.last"], "exit_head.m", "Unsqueeze"),
            node("Mul", [hidden, "exit_head.m"], "exit_head.hm", "Mask"),
            node("ReduceSum", ["exit_head.hm", "exit_head.seq"], "exit_head.s", "Sum", keepdims=0),
            node("ReduceSum", ["exit_head.m", "exit_head.seq"], "exit_head.n", "Count", keepdims=0),
            node("Div", ["exit_head.s", "exit_head.n"], "exit_head.x", "Mean"),
            node("MatMul", ["exit_head.x", "exit_head.w1"], "exit_head.h0", "MatMul1"),
            node("Add", ["exit_head.h0", "exit_head.b1"], "exit_head.h1", "Add1"),
            node("Tanh", ["exit_head.h1"], "exit_head.h2", "Tanh"),
            node("MatMul", ["exit_head.h2", "exit_head.w2"], "exit_head.l0", "MatMul2"),
            node("Add", ["exit_head.l0", "exit_head.b2"], EXIT_OUTPUT, "Add2"),
        ]
    )
    _declare(g, EXIT_OUTPUT, TensorProto.FLOAT, ["batch", head["b2"].shape[0]])
    return model


def split(model: Any, enc: EncoderGraph, index: int, head: dict[str, np.ndarray]) -> tuple[Any, Any]:
    """(A, B): A = inputs -> exit logits, hidden state after layer ``index``, mask index; B = that
    hidden state and mask index -> the graph's logits."""
    from onnx.utils import Extractor

    hidden = hidden_name(index)
    headed = with_head(model, hidden, head)
    expose(headed, enc, [hidden])
    ex = Extractor(headed)
    part_a = ex.extract_model(enc.inputs, [EXIT_OUTPUT, hidden, enc.mask_index])
    part_b = ex.extract_model([hidden, enc.mask_index], [enc.logits])
    return part_a, part_b


def _session(model: Any, target: str, settings: SessionSettings) -> Any:
    return get_target(target).session(model.SerializeToString(), settings=settings)


@dataclass
class EarlyExitBuild:
    choice: K.ThresholdChoice
    exit_after: int
    layers: int
    head: dict[str, Any]  # training rows and epochs, head-alone accuracies
    parity_max_abs_diff: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.choice.to_dict(), "exit_after": self.exit_after, "layers": self.layers,
                "head": self.head, "parity_max_abs_diff": self.parity_max_abs_diff}  # fmt: skip


def build_early_exit(
    source: str | Path,
    out: str | Path,
    exit_after: int,
    train: Any,
    validation: Any,
    measure: K.Confidence = "max_prob",
    max_accuracy_drop: float = 0.002,
    epochs: int = 20,
    threads: int = 0,
    name: str = "",
    parity_rows: int = 32,
    max_train_examples: int | None = None,
) -> EarlyExitBuild:
    """Write an early-exit candidate folder at ``out`` from the built ONNX candidate ``source``:
    the exit head trained on ``train`` (``text``, ``label``; a seeded sample of
    ``max_train_examples`` rows when it has more), the threshold chosen on ``validation`` only; the
    cut checked against the whole graph on validation texts (one per call, < 1e-4)."""
    import onnx

    if max_train_examples is not None and len(train) > max_train_examples:
        train = train.sample(n=max_train_examples, random_state=0)

    source, out = Path(source), Path(out)
    info = describe(source)
    if info.runtime != "onnxruntime" or not info.model_file:
        raise ValueError(
            f"{source}: an early exit is cut from an ONNX Runtime candidate, not a {info.runtime} one"
        )
    path = source / info.model_file
    model = onnx.load(str(path))
    enc = inspect_graph(model, str(path))
    check_exit(enc, exit_after, str(path))
    index = enc.layers[exit_after - 1]
    labels = list(info.labels)
    unknown = sorted((set(train["label"]) | set(validation["label"])) - set(labels))
    if unknown:
        raise ValueError(f"labels {unknown} of the data are not among the model's labels {labels}")
    gold = {s: np.array([labels.index(y) for y in f["label"]]) for s, f in (("train", train), ("validation",
            validation))}  # fmt: skip
    whole = load_predictor(source, threads or None)
    # features and exit logits as the whole model runs one text (its tuned settings, when tuned here)
    settings = whole.settings_for(1) if hasattr(whole, "settings_for") else SessionSettings(threads=threads)

    def encode(texts: list[str]) -> dict[str, np.ndarray]:
        return whole.encode(texts, length=None)

    hidden = hidden_name(index)
    expose(model, enc, [hidden])
    from onnx.utils import Extractor

    probe = _session(Extractor(model).extract_model(enc.inputs, [enc.logits, hidden]), info.target, settings)
    feats = {s: collect(probe, encode, f["text"].tolist(), [enc.logits, hidden])
             for s, f in (("train", train), ("validation", validation))}  # fmt: skip
    del probe
    head = train_head(feats["train"][1], feats["train"][0], gold["train"], epochs)
    part_a, part_b = split(onnx.load(str(path)), enc, index, head)
    val_texts = validation["text"].tolist()
    exit_val = collect(_session(part_a, info.target, settings), encode, val_texts, [EXIT_OUTPUT])[0]
    # The cut, chained, is the whole graph: checked without ONNX Runtime's cross-node fusions (graph
    # level basic, on both sides), which would otherwise fuse differently at the cut (an Add +
    # LayerNormalization fused in the whole graph, not across two) and move INT8 logits by ~3e-3.
    exact = SessionSettings(threads=threads, graph_level="basic")
    sess_a, sess_b, sess_w = (_session(m, info.target, exact) for m in (part_a, part_b, model))
    worst = 0.0
    for t in val_texts[:parity_rows]:
        x = {k: v for k, v in encode([t]).items() if k in enc.inputs}
        _, h, m = sess_a.run(None, x)
        got = sess_b.run(None, {hidden: h, enc.mask_index: m})[0]
        worst = max(worst, float(np.abs(got - sess_w.run(None, x)[0]).max()))
    if worst >= 1e-4:
        raise ValueError(
            f"{path}: the graph cut after layer {exit_after} differs from the whole one by {worst:.2e}"
        )
    choice = K.choose_threshold(
        exit_val, feats["validation"][0], gold["validation"], measure, max_accuracy_drop
    )
    head_info = {
        "epochs": epochs, "train_rows": len(train),
        "train_accuracy": float((head_logits(feats["train"][1], head).argmax(1) == gold["train"]).mean()),
        "validation_accuracy": float((exit_val.argmax(1) == gold["validation"]).mean()),
    }  # fmt: skip

    out.mkdir(parents=True, exist_ok=True)
    extra = [f for f in source.iterdir() if f.is_file() and f.name not in (info.model_file, CANDIDATE_FILE,
             "runtime.json") and not f.name.startswith(f"{info.model_file}.")]  # fmt: skip
    for part, graph, variant in (("fast", part_a, f"{info.variant}_exit{exit_after}"),
                                 ("fallback", part_b, f"{info.variant}_after{exit_after}")):  # fmt: skip
        d = out / part
        d.mkdir(exist_ok=True)
        for f in extra:  # tokenizer, labels, configuration: each part loads on its own
            shutil.copy2(f, d / f.name)
        onnx.save(graph, str(d / "model.onnx"))
        replace(info, variant=variant, model_file="model.onnx").save(d)
    spec = {
        "kind": KIND, "fallback_reads": "fast", "name": name,
        "fast": f"{info.variant} exit head after layer {exit_after}",
        "fallback": f"{info.variant} layers {exit_after + 1}..{len(enc.layers)}", **choice.to_dict(),
        "exit_after": exit_after, "layers": len(enc.layers), "hidden": hidden, "mask_index": enc.mask_index,
        "head": head_info, "parity_max_abs_diff": worst, "source": str(source.resolve()),
    }  # fmt: skip
    (out / K.CASCADE_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")
    CandidateInfo(
        K.CASCADE_RUNTIME, info.target, KIND, info.source, None, info.max_length, labels, None, info.task
    ).save(out)
    return EarlyExitBuild(choice, exit_after, len(enc.layers), head_info, worst)


def read_source(folder: str | Path) -> Path:
    """The candidate folder an early exit was cut from (as it was when built)."""
    return Path(str(K.read_spec(folder)["source"]))


class EarlyExitPredictor(K.CascadePredictor):
    """The cut graph: ``fast`` (to the exit) runs on the whole batch; ``fallback`` (the remaining
    layers) on the rows whose exit is not confident, from the hidden state ``fast`` computed."""

    def __init__(self, folder: Path, info: CandidateInfo, threads: int | None) -> None:
        super().__init__(folder, info, threads)
        self.hidden, self.mask_index = str(self.spec["hidden"]), str(self.spec["mask_index"])
        if not hasattr(self.fast, "outputs"):
            raise ValueError(f"{folder / 'fast'}: an early exit's parts are ONNX Runtime graphs")

    @property
    def position_limit(self) -> int:
        return self.fast.position_limit

    @property
    def input_names(self) -> set[str]:
        return self.fast.input_names

    def encode(self, texts: list[str], length: int | None = None) -> dict[str, np.ndarray]:
        return self.fast.encode(texts, length)

    def route(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        exit_logits, hidden, mask = self.fast.outputs(batch)[:3]  # type: ignore[attr-defined]
        out = np.asarray(exit_logits, dtype=np.float32)
        esc = K.escalated(K.confidence(out, self.measure), self.threshold)
        if esc.any():
            rows = np.flatnonzero(esc)
            out = out.copy()
            out[esc] = self.fallback.logits({self.hidden: hidden[rows], self.mask_index: mask[rows]})
        return out, esc


K.CASCADE_KINDS[KIND] = EarlyExitPredictor
