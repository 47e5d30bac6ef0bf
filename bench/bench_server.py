"""Web server under load, on loopback, bounded in requests and time.

Starts `python -m bonefrac serve` on 127.0.0.1 and a free port, posts N real radiographs with C uploads in
flight, and reports requests/s, latency p50/p99 and errors (must be 0). /healthz latency is measured idle
and then while the load runs: the ratio shows whether inference really stays off the event loop.

    python bench/bench_server.py                     # the bundled model (or an untrained Lite0 of its shape)
    python bench/bench_server.py --model /tmp/smoke  # a checkpoint file or training run folder
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from _common import bundled_or_fresh, real_images


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


async def wait_ready(client: httpx.AsyncClient, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError("server did not become ready")


async def health_latencies(client: httpx.AsyncClient, stop: asyncio.Event | None, n: int, gap: float) -> list[float]:
    """Time /healthz every `gap` seconds: n times, or until `stop` is set."""
    out: list[float] = []
    while (stop is None and len(out) < n) or (stop is not None and not stop.is_set()):
        t = time.perf_counter()
        r = await client.get("/healthz")
        if r.status_code == 200:
            out.append(time.perf_counter() - t)
        await asyncio.sleep(gap)
    return out


async def run(args: argparse.Namespace, base_url: str, proc: subprocess.Popen) -> dict[str, float]:
    images = [p.read_bytes() for p in real_images(args.requests)]
    limits = httpx.Limits(max_connections=args.concurrency + 2)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:
        await wait_ready(client, proc, args.startup_timeout)
        for data in images[:2]:  # warm-up: first-call costs are not throughput
            await client.post("/api/predict", files={"file": ("warmup.jpg", data)})
        idle = await health_latencies(client, None, 50, 0.02)

        latencies: list[float] = []
        errors = 0
        gate = asyncio.Semaphore(args.concurrency)

        async def one(i: int, data: bytes) -> None:
            nonlocal errors
            async with gate:
                t = time.perf_counter()
                try:
                    r = await client.post("/api/predict", files={"file": (f"img{i}.jpg", data)})
                    ok = r.status_code == 200 and "probability" in r.json()
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t)
                errors += not ok

        stop = asyncio.Event()
        poller = asyncio.create_task(health_latencies(client, stop, 0, 0.02))
        start = time.perf_counter()
        await asyncio.gather(*(one(i, data) for i, data in enumerate(images)))
        wall = time.perf_counter() - start
        stop.set()
        loaded = await poller
    return {
        "requests": args.requests,
        "errors": errors,
        "wall_s": wall,
        "req_per_s": args.requests / wall,
        "p50_ms": ms(latencies, 50),
        "p99_ms": ms(latencies, 99),
        "health_idle_p50_ms": ms(idle, 50),
        "health_idle_p99_ms": ms(idle, 99),
        "health_load_p50_ms": ms(loaded, 50),
        "health_load_p99_ms": ms(loaded, 99),
        "health_samples_under_load": len(loaded),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint or run folder (default: the bundled model, else a fresh Lite0)")
    ap.add_argument("--backend", default="auto", choices=("auto", "onnx", "torch"))
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=4, help="uploads in flight")
    ap.add_argument("--server-concurrency", type=int, default=2, help="the server's --concurrency")
    ap.add_argument("--startup-timeout", type=float, default=180)
    ap.add_argument("--timeout", type=float, default=600, help="give up after this many seconds in all")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bonefrac-bench-") as tmp:
        model = args.model or str(bundled_or_fresh(Path(tmp)))
        port = free_port()
        log = open(Path(tmp) / "server.log", "w+")
        cmd = [
            sys.executable,
            "-m",
            "bonefrac",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model",
            model,
            "--backend",
            args.backend,
            "--concurrency",
            str(args.server_concurrency),
        ]
        env = {k: v for k, v in os.environ.items() if k != "BONEFRAC_TOKEN"}  # loopback: the requests send none
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**env, "PYTHONUNBUFFERED": "1"})
        try:
            result = asyncio.run(asyncio.wait_for(run(args, f"http://127.0.0.1:{port}", proc), args.timeout))
        except BaseException:
            log.seek(0)
            print(log.read()[-3000:], file=sys.stderr)
            raise
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()

    print(
        f"model {args.model or 'bundled or fresh Lite0-256'} ({args.backend}), server concurrency "
        f"{args.server_concurrency}, {args.requests} uploads {args.concurrency} at a time"
    )
    print(
        f"  predict: {result['req_per_s']:.1f} req/s, p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, "
        f"errors {result['errors']}  (wall {result['wall_s']:.1f} s)"
    )
    print(f"  /healthz idle:  p50 {result['health_idle_p50_ms']:.1f} ms, p99 {result['health_idle_p99_ms']:.1f} ms")
    print(
        f"  /healthz load:  p50 {result['health_load_p50_ms']:.1f} ms, p99 {result['health_load_p99_ms']:.1f} ms "
        f"({result['health_samples_under_load']} samples)"
    )
    print(
        f"  load/idle ratio: p50 {result['health_load_p50_ms'] / result['health_idle_p50_ms']:.1f}x, "
        f"p99 {result['health_load_p99_ms'] / result['health_idle_p99_ms']:.1f}x"
    )
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
