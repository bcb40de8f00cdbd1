"""The task-family interface: everything that depends on *what the model is for* (classify a
text, generate text) rather than on its architecture or on the stage that uses it.

Training, distillation, pruning, export, quantization checks, benchmarks, serving and the MLflow
entry all ask the family: load a model for the task, encode a batch, the loss, evaluation and the
primary metric, the distillation loss, the ONNX export task, how outputs become predictions, the
agreement check of a quantized candidate against its FP32 source, the serving request/response
schema, and the MLflow model entry. A new family is one folder that registers a ``TaskFamily``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from slimflow.models.config.base import Strict


class AgreementConfig(Strict):
    """How a quantized candidate is checked against its FP32 source on the validation split."""

    min_agreement: float = Field(
        0.97, gt=0, le=1, description="Share of validation rows on which it predicts what FP32 predicts."
    )
    min_class_ratio: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Collapse guard: every class FP32 predicts for at least 5% of rows must be "
        "predicted at least this fraction as often by the quantized model.",
    )


@dataclass
class AgreementReport:
    passed: bool
    agreement: float
    rows: int
    reference_share: dict[str, float]
    candidate_share: dict[str, float]
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TaskFamily:
    """One task family. Methods take plain inputs (models, tokenizers, arrays) and return results;
    no MLflow, no Prefect, no files beyond the model folder they are given."""

    name: ClassVar[str] = ""
    onnx_task: ClassVar[str] = ""  # optimum's export task
    peft_task_type: ClassVar[str] = ""  # peft.TaskType member
    head_names: ClassVar[tuple[str, ...]] = ()  # task-head module names (peft wraps them itself)
    metrics: ClassVar[tuple[str, ...]] = ()  # evaluation figures, higher is better
    primary_metric: ClassVar[str] = ""  # the one gates, retention and the candidate choice use
    generative: ClassVar[bool] = False  # outputs are generated text (predictors.GenerativePredictor)
    latency_label: ClassVar[str] = "latency, test-text lengths"  # what a candidate's p50/p95 time
    input_column: ClassVar[str] = "text"  # what a model reads, in the prepared split files
    output_key: ClassVar[str] = "label"  # the answer in a prediction record (what must match when served)
    target_column: ClassVar[str] = "label"  # what it should answer
    # optional pipeline sections this family's models can go through
    stages: ClassVar[tuple[str, ...]] = ("distill", "compress", "optimize", "promote")

    # ------------------------------------------------------------------------------ data
    def prepare_data(
        self, cfg: Any, out_dir: str | Path, source_sha256: str, report_dir: str | Path | None = None
    ) -> tuple[Any, Any]:
        """Validate (Great Expectations), clean and split the data for this family: the
        ``PreparedData`` and the validation report (labelled texts by default)."""
        from slimflow.models.data.prepare import prepare

        return prepare(cfg, out_dir, source_sha256, report_dir, task=self.name)

    def trained_heads(self, arch: Any) -> tuple[str, ...]:
        """Modules trained in full beside adapters or frozen layers: the architecture's new task
        head (and pooler) by default; a family that keeps the pretrained output layer has none."""
        return tuple(arch.head_modules)

    # ---------------------------------------------------------------------------- models
    def load_pretrained(
        self, ref: str, labels: list[str], cache_dir: str | Path, dropout: float | None = None,
        token: str | None = None,
    ) -> tuple[Any, Any]:  # fmt: skip
        """A pretrained model with a new task head for ``labels``, and its tokenizer."""
        raise NotImplementedError

    auto_model: ClassVar[str] = ""  # the transformers Auto class of this family's models
    auto_peft_model: ClassVar[str] = ""  # peft's Auto class of an unmerged adapter folder

    def load_trained(self, path: str | Path) -> tuple[Any, Any]:
        """A model slimflow saved (``save``: merged weights, or an unmergeable adapter folder such
        as prefix tuning), in eval mode, and its tokenizer; safetensors only, no remote code."""
        import transformers

        path = Path(path)
        if (path / "adapter_config.json").exists():
            import peft

            model = getattr(peft, self.auto_peft_model).from_pretrained(path, use_safetensors=True)
        else:
            auto = getattr(transformers, self.auto_model)
            model = auto.from_pretrained(path, use_safetensors=True, trust_remote_code=False)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        return model.eval(), self.prepare_tokenizer(tokenizer)

    def inference_meta(self, train_set: Any) -> dict[str, Any]:
        """What inference needs to know from the training data, saved with a trained model
        (``slimflow_model.json``) and carried by its candidates; nothing for classifiers."""
        return {}

    def prepare_tokenizer(self, tokenizer: Any) -> Any:
        """What a family's tokenizer needs beyond the saved one (a chat template, say)."""
        return tokenizer

    def save(self, model: Any, tokenizer: Any, out_dir: Path, meta: dict[str, Any]) -> Path:
        """Weights as safetensors, the tokenizer, and ``slimflow_model.json`` naming the family."""
        from slimflow.models.core.modelfiles import write_meta

        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        write_meta(out_dir, {**meta, "task": self.name})
        return out_dir

    # ------------------------------------------------------------------------- training
    def encode(self, tokenizer: Any, frame: Any, labels: list[str], max_length: int) -> Any:
        """A split's frame as ``Encoded`` examples."""
        raise NotImplementedError

    def loss(self, model: Any, inputs: Any, targets: Any) -> Any:
        raise NotImplementedError

    def evaluate(self, model: Any, data: Any, batch_size: int, pad_id: int) -> dict[str, float]:
        """``loss`` plus every figure in ``metrics``."""
        raise NotImplementedError

    def probe_logits(self, model: Any, data: Any, batch_size: int, pad_id: int) -> Any:
        """A [rows, values] array of logits that a merge or export must reproduce (the parity
        check after folding adapters): the classification logits by default."""
        from slimflow.models.families.batching import predict_logits

        return predict_logits(model, data, batch_size, pad_id)

    # The teacher's soft targets: cached once per run (one row of class logits per example), or,
    # when they are per token over a vocabulary (far too large to store), computed by the teacher
    # beside the student on every batch.
    online_soft_targets: ClassVar[bool] = False

    def kd_batch(self, inputs: dict[str, Any], labels: Any) -> tuple[dict[str, Any], Any]:
        """What the student and teacher read in a distillation batch, and what ``kd_loss`` takes
        as ``targets``: the batch as it is and its labels."""
        return inputs, labels

    def kd_loss(
        self, student_out: Any, teacher_out: Any, targets: Any, temperature: float, alpha: float
    ) -> Any:
        raise NotImplementedError

    # ---------------------------------------------------------------------- inference
    def score(self, outputs: Any, gold: list[str], labels: list[str]) -> dict[str, Any]:
        """Test figures of raw model outputs against gold answers (numbers; a family may add a
        ``report`` with details such as per-class figures, for the run's plots)."""
        raise NotImplementedError

    def test_figures(self, predictor: Any, frame: Any) -> dict[str, Any]:
        """A candidate's figures on a prepared test split (``score`` of its predictions)."""
        outputs = predictor.predict(frame[self.input_column].tolist())
        return self.score(outputs, frame[self.target_column].tolist(), predictor.info.labels)

    def agreement(
        self, reference: Any, candidate: Any, labels: list[str], cfg: AgreementConfig
    ) -> AgreementReport:
        raise NotImplementedError

    def predictions(self, outputs: Any, labels: list[str]) -> list[dict[str, Any]]:
        """Model outputs as the serving response's prediction records."""
        raise NotImplementedError

    # ------------------------------------------------------------------------ serving
    def request_schema(self, max_batch: int, max_chars: int) -> type:
        """The pydantic request body of ``POST /predict`` (by default ``{"texts": [...]}``)."""
        from slimflow.models.families.schema import request_model

        return request_model(max_batch, max_chars)

    def response_schema(self) -> type:
        raise NotImplementedError

    # ------------------------------------------------------------------- MLflow model
    # The registered pyfunc entry (slimflow/models/release/mlflow_entry.py) is one file for every
    # family; it asks the family how to read its input and shape its output.
    def input_example(self) -> Any:
        raise NotImplementedError

    def parse_input(self, model_input: Any) -> list[Any]:
        """The inputs of a pyfunc ``predict`` call: a frame's ``input_column``, or a list."""
        import pandas as pd

        col = self.input_column
        if isinstance(model_input, pd.DataFrame):
            if col not in model_input.columns:
                raise ValueError(f"input needs a {col!r} column, got {list(model_input.columns)}")
            return model_input[col].astype(str).tolist()
        return [str(t) for t in model_input]

    def output_frame(self, records: list[dict[str, Any]]) -> Any:
        raise NotImplementedError
