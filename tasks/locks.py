"""One writer at a time per registered model.

MLflow has no locks: version numbers are MAX+1 and "find this candidate, else register it" or
"read champion, set previous, set champion" from two pipelines at once can interleave (duplicate
versions of one candidate, a promotion lost from the previous/champion chain). Registry writes of
a pipeline therefore hold a lock named after the model:

- a Prefect server (PREFECT_API_URL): a global concurrency limit of 1, so runs on different
  workers and machines queue on the server;
- a sqlite MLflow store: an exclusive file lock beside the database file (same machine by
  construction);
- neither (a tracking server without a Prefect server): no shared lock exists; the writes go ahead
  and every alias move is still read back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from slimflow.models.core.locks import LockTimeout, file_lock
from slimflow.models.core.names import check_name

log = logging.getLogger(__name__)


@contextmanager
def registry_lock(model_name: str, tracking_uri: str, timeout_s: float = 900.0) -> Iterator[str]:
    """Hold the model's registry lock; yields which kind was taken ('prefect', 'file' or 'none')."""
    check_name(model_name, "model name")
    if tracking_uri.startswith("sqlite:///"):
        with file_lock(
            Path(tracking_uri[len("sqlite:///") :]).with_name(f".{model_name}.registry.lock"), timeout_s
        ):
            yield "file"
    elif _prefect_server():
        with _prefect_lock(f"slimflow-registry-{model_name}", timeout_s):
            yield "prefect"
    else:
        log.warning(
            "no Prefect server and no sqlite store: registry writes for %s are not serialised", model_name
        )
        yield "none"


def _prefect_server() -> bool:
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)  # PREFECT_API_URL, a profile or a test server


@contextmanager
def _prefect_lock(name: str, timeout_s: float) -> Iterator[None]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:
                pass  # another pipeline created it first
    with ExitStack() as held:
        try:
            held.enter_context(concurrency(name, occupy=1, timeout_seconds=timeout_s, strict=True))
        except TimeoutError:  # only waiting for the slot; the body's own errors pass through
            raise LockTimeout(
                f"Prefect concurrency limit {name!r} still held after {timeout_s:.0f} s"
            ) from None
        yield
