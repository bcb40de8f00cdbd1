import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_harness():
    """One temporary Prefect API for the whole session (it takes ~15-20 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def stack():
    """PostgreSQL, MLflow, Prefect (auth on) and a worker on loopback ports, for one test module."""
    from tests.integration.servers_stack import start_stack

    yield from start_stack()
