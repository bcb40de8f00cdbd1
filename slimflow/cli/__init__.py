"""The ``slimflow`` command line: one module per group of commands, all on ``app``.

Heavy libraries (torch, prefect, mlflow, great_expectations) are imported inside the commands,
so ``--help`` and config errors answer at once. Exit codes: 0 finished, 1 failure,
2 bad usage or config, 3 data validation failed.
"""

from slimflow.cli.app import app

# Each module registers its commands on ``app``; ``--help`` lists them in this order.
# isort: off
from slimflow.cli import init, run, bench, generate, data, registry, ui, gc, servers  # noqa: E402,F401
# isort: on


def main() -> None:
    app()


__all__ = ["app", "main"]
