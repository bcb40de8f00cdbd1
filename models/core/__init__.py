"""The bottom layer: errors, names, locks, provenance, environment defaults, plug-in registries,
model-folder I/O and small process/logging helpers. Imports nothing else from slimflow."""
