"""MLflow "models from code" entry point of a registered slimflow model (no pickled objects).

MLflow runs this file when the model is loaded (``mlflow.pyfunc.load_model``); it is not imported
by slimflow itself. The model predicts labels from raw text: the tokenizer ships in the candidate
folder, and ONNX Runtime sessions get their target's provider explicitly.
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class SlimflowClassifier(PythonModel):
    def load_context(self, context: Any) -> None:
        from models.runtime import load_predictor

        self.predictor = load_predictor(context.artifacts["candidate"], None)

    # No type hints here: MLflow reads them as an input schema and warns about Any.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        import numpy as np
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            if "text" not in model_input.columns:
                raise ValueError(f"input needs a 'text' column, got {list(model_input.columns)}")
            texts = model_input["text"].astype(str).tolist()
        else:
            texts = [str(t) for t in model_input]
        labels = self.predictor.info.labels
        if not texts:
            return pd.DataFrame({"label": pd.Series([], dtype=str), "score": pd.Series([], dtype=float)})
        logits = self.predictor.predict(texts)
        z = np.exp(logits - logits.max(-1, keepdims=True))
        prob = z / z.sum(-1, keepdims=True)
        return pd.DataFrame({"label": [labels[i] for i in prob.argmax(-1)], "score": prob.max(-1)})


mlflow.models.set_model(SlimflowClassifier())
