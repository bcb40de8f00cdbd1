"""Make it fast: export (ONNX, fusions, parity), registered quantizers and hardware targets,
predictors, the candidate plan and choice, and honest benchmarks."""
