"""Make it fast: export (ONNX, fusions, parity), registered quantizers and hardware targets,
predictors, the candidate plan and choice, and honest benchmarks."""

from slimflow.models.optimize import cascade as _cascade  # noqa: E402, F401  registers the cascade runtime
from slimflow.models.optimize import early_exit as _early_exit  # noqa: E402, F401  registers its cascade kind
