"""The registered model's behaviour, for every task family: load the candidate with slimflow's own
loader (safetensors or ONNX, nothing unpickled) and answer raw inputs as the family says."""

from __future__ import annotations

from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel

from slimflow.models.optimize.predictors import load_predictor


class SlimflowModel(PythonModel):
    def load_context(self, context: Any) -> None:
        self.predictor = load_predictor(context.artifacts["candidate"], None)

    # A DataFrame hint: MLflow infers no schema from it (the family's input example gives the
    # signature) and does not warn that hints are missing. No return hint: MLflow warns about Any.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        family = self.predictor.family
        inputs = family.parse_input(model_input)
        if not inputs:
            return family.output_frame([])
        outputs = self.predictor.predict(inputs)
        return family.output_frame(family.predictions(outputs, self.predictor.info.labels))
