"""MLflow "models from code" entry point of a registered slimflow model (no pickled objects).

MLflow runs this file when the model is loaded with ``mlflow.pyfunc.load_model``; slimflow's own
server and batch prediction never run it (they load the registered candidate as data,
``serving.load_as_data``). The behaviour lives in ``pyfunc.py``.
"""

import mlflow

from slimflow.models.release.pyfunc import SlimflowModel

mlflow.models.set_model(SlimflowModel())
