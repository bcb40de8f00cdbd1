"""Release: promotion gates (a pure ``decide()``), the MLflow registry and its aliases, model
cards, the registered pyfunc model, MLflow tracking plumbing and the model server."""
