"""Auth service benchmark: password hash cost, login and refresh latency, login throughput.

Runs the real service (production argon2id parameters) under uvicorn on a loopback port,
pinned to CPU 0 with ``taskset`` when available, and drives it from this process on CPU 1.
Prints a Markdown section with the medians of ``--runs`` runs.

    .venv/bin/python -m loadtests.bench_auth --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from argon2 import PasswordHasher

from loadtests.bench_gateway import interpreter
from tests.support.processes import Process, free_port, wait_http_ok

PASSWORD = "correct horse battery staple"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def hash_ms(samples: int = 20) -> float:
    hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        hasher.hash(PASSWORD)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def start_auth(workdir: Path) -> tuple[Process, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AUTH_PORT": str(port),
        "AUTH_ISSUER": url,
        "AUTH_DATABASE_URL": f"sqlite:///{workdir}/auth.db",
        "AUTH_KEYS_DIR": str(workdir / "keys"),
        "AUTH_IP_BURST": "1000000",
        "AUTH_IP_RATE_PER_MINUTE": "100000000",
        "LOG_LEVEL": "WARNING",
    }
    args = [sys.executable, "-m", "services.auth"]
    if shutil.which("taskset"):
        args = ["taskset", "-c", "0", *args]
    proc = Process(args, env, workdir / "auth.log").start()
    wait_http_ok(f"{url}/healthz", proc=proc)
    return proc, url


async def one_run(url: str, run: int) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        name = f"bench{run}"
        await client.post(
            "/v1/auth/register",
            json={"username": name, "email": f"{name}@example.com", "password": PASSWORD},
        )
        login_ms = []
        pair = {}
        for _ in range(30):
            started = time.perf_counter()
            response = await client.post(
                "/v1/auth/login", json={"username": name, "password": PASSWORD}
            )
            login_ms.append((time.perf_counter() - started) * 1000)
            pair = response.json()
        refresh_ms = []
        token = pair["refresh_token"]
        for _ in range(300):
            started = time.perf_counter()
            response = await client.post("/v1/auth/refresh", json={"refresh_token": token})
            refresh_ms.append((time.perf_counter() - started) * 1000)
            token = response.json()["refresh_token"]
        access = pair["access_token"]
        me_ms = []
        for _ in range(300):
            started = time.perf_counter()
            await client.get("/v1/users/me", headers={"Authorization": f"Bearer {access}"})
            me_ms.append((time.perf_counter() - started) * 1000)

        async def login() -> int:
            response = await client.post(
                "/v1/auth/login", json={"username": name, "password": PASSWORD}
            )
            return response.status_code

        started = time.perf_counter()
        statuses = await asyncio.gather(*(login() for _ in range(100)))
        elapsed = time.perf_counter() - started
        assert all(s == 200 for s in statuses), statuses
    return {
        "login_p50": statistics.median(login_ms),
        "login_p95": percentile(login_ms, 0.95),
        "refresh_p50": statistics.median(refresh_ms),
        "refresh_p99": percentile(refresh_ms, 0.99),
        "me_p50": statistics.median(me_ms),
        "logins_per_s": 100 / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_auth(Path(tmp))
        try:
            results = [asyncio.run(one_run(url, i)) for i in range(args.runs)]
        finally:
            proc.stop()
    hashed = statistics.median(hash_ms() for _ in range(args.runs))
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print(f"""## Auth service

Command: `.venv/bin/python -m loadtests.bench_auth --runs {args.runs}` — server pinned to CPU 0
(`taskset -c 0`), client on the other core; SQLite store; argon2id t=2, m=19 MiB, p=1 (OWASP).
Machine: {platform.machine()}, {os.cpu_count()} cores, Python {interpreter()}.
Medians of {args.runs} runs.

| figure | value |
|---|---|
| argon2id hash, one password (in process) | {hashed:.1f} ms |
| login latency, sequential, p50 / p95 | {med["login_p50"]:.1f} / {med["login_p95"]:.1f} ms |
| login throughput, 100 in flight (hash concurrency 4) | {med["logins_per_s"]:.0f} logins/s |
| refresh latency, sequential, p50 / p99 | {med["refresh_p50"]:.2f} / {med["refresh_p99"]:.2f} ms |
| `GET /v1/users/me` (token verification + user lookup), p50 | {med["me_p50"]:.2f} ms |
""")


if __name__ == "__main__":
    main()
