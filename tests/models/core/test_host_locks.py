"""Benchmarks never overlap heavy work of other pipelines on the same host (two processes here)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from slimflow.models.core import locks


@pytest.fixture(autouse=True)
def private_locks(tmp_path, monkeypatch):
    # the subprocesses inherit it: this test's locks are not the machine's
    monkeypatch.setenv("SLIMFLOW_HOST_LOCK_DIR", str(tmp_path))


HEAVY = """
import sys, time
from slimflow.models.core.locks import cpu_work
with cpu_work() as held:
    print("in", time.time(), held, flush=True)
    time.sleep(float(sys.argv[1]))
print("out", time.time(), flush=True)
"""

BENCH = """
import sys, time
from slimflow.models.core.locks import measuring_alone
t0 = time.time()
print("asking", t0, flush=True)
with measuring_alone(60, 60) as info:
    print("in", time.time(), info["cpu_lock"], flush=True)
    time.sleep(float(sys.argv[1]))
print("out", time.time(), flush=True)
"""


def start(code: str, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, str(seconds)], stdout=subprocess.PIPE, text=True)


def line(p: subprocess.Popen) -> list[str]:
    return p.stdout.readline().split()


def test_a_benchmark_waits_for_running_heavy_work_and_says_so():
    heavy = start(HEAVY, 1.5)
    try:
        assert line(heavy)[0] == "in"
        with locks.measuring_alone(10, 30) as info:
            inside = time.time()
        out = line(heavy)
        assert out[0] == "out" and inside >= float(out[1])  # measured only after the work ended
        assert info["cpu_lock"] == "held" and info["cpu_lock_wait_s"] >= 1.0
    finally:
        heavy.kill()


def test_heavy_work_waits_while_a_benchmark_measures():
    bench = start(BENCH, 1.5)
    try:
        line(bench)
        assert line(bench)[:3:2] == ["in", "held"]
        with locks.cpu_work(30) as held:
            inside = time.time()
        assert held and inside >= float(line(bench)[1])
    finally:
        bench.kill()


def test_a_waiting_benchmark_is_not_starved_by_heavy_work_that_arrives_later():
    """The turnstile: heavy work A runs; a benchmark queues; heavy work B, arriving after it, must
    wait for the benchmark instead of joining A (and so on forever)."""
    a = start(HEAVY, 2.0)
    bench = None
    try:
        assert line(a)[0] == "in"
        bench = start(BENCH, 1.0)
        assert line(bench)[0] == "asking"
        time.sleep(0.5)  # the benchmark now holds the benchmark lock and waits for the CPU lock
        with locks.cpu_work(30):
            b_inside = time.time()
        a_out = float(line(a)[1])
        bench_in, bench_out = float(line(bench)[1]), float(line(bench)[1])
        assert a_out <= bench_in <= bench_out <= b_inside, (a_out, bench_in, bench_out, b_inside)
    finally:
        for p in (a, bench):
            if p is not None:
                p.kill()


def test_heavy_work_is_reentrant_and_a_benchmark_inside_it_does_not_deadlock():
    t0 = time.monotonic()
    with locks.cpu_work(5) as outer:
        with locks.cpu_work(5) as inner:
            with locks.measuring_alone(5, 5) as info:
                pass
    assert outer and inner and info["cpu_lock"] == "nested"
    assert time.monotonic() - t0 < 3


def test_heavy_work_goes_ahead_unlocked_after_its_timeout():
    bench = start(BENCH, 5.0)
    try:
        line(bench)
        assert line(bench)[0] == "in"
        t0 = time.monotonic()
        with locks.cpu_work(0.5) as held:
            waited = time.monotonic() - t0
        assert held is False and 0.4 < waited < 3
    finally:
        bench.kill()
