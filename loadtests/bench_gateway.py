"""Gateway benchmark: sockgate's two hot paths beside a tutorial-style Node socket.io server.

Measured for each server, in the same run, with the same tokens, client and machine:

- handshakes: authenticated connects/s and handshake latency percentiles at a fixed number of
  handshakes in flight (10 … 200; 100 is the headline), and the server's CPU per connect;
  the same storm as the first traffic of a freshly started replica;
- memory: the server's RSS while it holds 1,000 … 10,000 idle authenticated connections;
- room fan-out: two replicas and Redis, rooms of 100 members spread over both replicas, a
  few publishers per room sending at an offered rate (open loop); deliveries/s reached,
  delivery latency percentiles (publisher's send → receiver, one clock) and server CPU per
  delivery.

The servers (one replica, or both replicas of the fan-out, and Redis) are pinned to CPU 0; the
load generator (``node_baseline/loadgen.mjs``, raw ``ws`` clients, checked first with the
official ``socket.io-client``) and this orchestrator to CPU 1. CPU and memory are read from
each server process itself (``/proc/<pid>/stat`` and ``status``). Every process is started on
a loopback port and stopped by its pid.

Tokens come from ``loadtests.mint_tokens`` with the real auth service's key (the auth service
runs, and serves the JWKS the gateway fetches), so minting must be allowed:
``SOCKGATE_LOADTEST=1``. ``make bench`` runs this through ``loadtests.bench``, which also
writes ``docs/benchmarks.md``; on its own:

    SOCKGATE_LOADTEST=1 .venv/bin/python -m loadtests.bench_gateway --runs 1 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
from cryptography.hazmat.primitives import serialization

from loadtests.mint_tokens import MintRefused, mint_tokens, newest_key
from tests.support.processes import ROOT, Process, RedisServer, free_port, wait_http_ok

NODE_DIR = ROOT / "loadtests" / "node_baseline"
SERVERS = ("sockgate", "node")
ROOM_SIZE = 100
SERVER_CPU = 0
CLIENT_CPU = 1


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures; ``quick()`` is a small version for development."""

    runs: int = 3
    servers: tuple[str, ...] = SERVERS
    inflight_sweep: tuple[int, ...] = (10, 50, 100, 200)
    headline_inflight: int = 100
    connects_per_point: int = 3000
    idle_steps: tuple[int, ...] = (1000, 2500, 5000, 10000)
    fanout_clients: tuple[int, ...] = (500, 1000, 2000)
    headline_clients: int = 1000
    fanout_rates: tuple[int, ...] = (25_000, 50_000, 75_000, 100_000)
    headline_rate: int = 50_000
    step_seconds: float = 3.0
    drain_seconds: float = 2.0
    # Alternating headline steps after the runs (``loadtests.bench_paired``). Sixteen: runs P
    # and Q of the history, the same code, gave the handshake p50 1.04 and 1.00 on eight each,
    # a spread as wide as the gap they judged.
    paired_rounds: int = 16

    @classmethod
    def quick(cls, runs: int = 1, servers: tuple[str, ...] = SERVERS) -> BenchConfig:
        return cls(
            runs=runs,
            servers=servers,
            inflight_sweep=(50, 100),
            connects_per_point=1000,
            idle_steps=(1000, 2000),
            fanout_clients=(1000,),
            fanout_rates=(25_000, 50_000),
            step_seconds=2.0,
            drain_seconds=1.5,
            paired_rounds=2,
        )


# --- the server processes, read from /proc ----------------------------------------------------


def cpu_ms(pid: int) -> float:
    """User + system CPU time the process has used so far, in milliseconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks * 1000 / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    """The process's resident set size, KB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def wait_idle(
    pids: list[int], *, threshold: float = 0.05, window: float = 0.5, limit: float = 60.0
) -> float:
    """Waits until the processes together use under ``threshold`` of a core; returns the wait.

    Closing thousands of sockets leaves work behind (disconnect handlers, timers); a phase
    measured before it is done would be charged for it.
    """
    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = sum(cpu_ms(pid) for pid in pids)
        time.sleep(window)
        if sum(cpu_ms(pid) for pid in pids) - before < threshold * window * 1000:
            break
    return time.monotonic() - started


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` stops the processes it started."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def pin_all_threads(pid: int, cpu: int) -> None:
    """Pins every thread of ``pid`` (threads started later inherit it) to ``cpu``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cpu})


def pinned(cpu: int | None, args: list[str]) -> list[str]:
    """``args`` under ``taskset -c cpu`` (taskset execs, so the pid stays the server's)."""
    if cpu is None or not shutil.which("taskset"):
        return args
    return ["taskset", "-c", str(cpu), *args]


def raise_fd_limit(needed: int) -> int:
    """Raises this process's soft open-files limit (children inherit it); returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


# --- the cluster around the servers under test -----------------------------------------------


@dataclass
class Stack:
    """Redis, the auth service (its key and JWKS) and the minted tokens, shared by all runs."""

    workdir: Path
    server_cpu: int | None
    redis: RedisServer | None = None
    auth: Process | None = None
    auth_url: str = ""
    tokens_file: Path = field(init=False)
    public_key_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.tokens_file = self.workdir / "tokens.json"
        self.public_key_file = self.workdir / "public.pem"

    def start(self, token_count: int) -> Stack:
        self.redis = RedisServer(free_port(), self.workdir).start()
        if self.server_cpu is not None and self.redis.process is not None:
            pin_all_threads(self.redis.process.pid, self.server_cpu)
        port = free_port()
        self.auth_url = f"http://127.0.0.1:{port}"
        env = {
            **base_env(),
            "AUTH_PORT": str(port),
            "AUTH_ISSUER": self.auth_url,
            "AUTH_DATABASE_URL": f"sqlite:///{self.workdir}/auth.db",
            "AUTH_KEYS_DIR": str(self.workdir / "keys"),
        }
        args = [sys.executable, "-m", "services.auth"]
        self.auth = Process(args, env, self.workdir / "auth.log").start()
        wait_http_ok(f"{self.auth_url}/healthz", proc=self.auth)
        keys_dir = self.workdir / "keys"
        document = mint_tokens(keys_dir, count=token_count, issuer=self.auth_url, ttl=4 * 3600)
        self.tokens_file.write_text(json.dumps(document))
        public = newest_key(keys_dir).public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key_file.write_bytes(public)
        return self

    def stop(self) -> None:
        if self.auth is not None:
            self.auth.stop()
        if self.redis is not None:
            self.redis.stop()

    @property
    def redis_pid(self) -> int:
        assert self.redis is not None
        assert self.redis.process is not None
        return self.redis.process.pid

    def redis_cpu_s(self) -> float:
        """The CPU Redis has used so far, in seconds, from its ``INFO cpu`` (to the µs;
        ``/proc`` counts 10 ms ticks, and a storm costs Redis only two to four of them)."""
        assert self.redis is not None
        with redis.Redis.from_url(self.redis.url) as client:
            info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def start_server(
        self, kind: str, name: str, root: Path = ROOT, python: str = sys.executable
    ) -> tuple[Process, str]:
        """One replica of ``kind`` on a free loopback port, pinned; waits until healthy.

        ``root`` is the checkout a sockgate replica runs from and ``python`` the interpreter
        it runs on (others for A/B runs).
        """
        assert self.redis is not None
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**base_env(), "REDIS_URL": self.redis.url, "JWT_ISSUER": self.auth_url}
        if kind == "sockgate":
            env |= {"GATEWAY_PORT": str(port), "JWKS_URL": f"{self.auth_url}/.well-known/jwks.json"}
            args = [python, "-m", "services.gateway"]
        elif kind == "node":
            env |= {"PORT": str(port), "JWT_PUBLIC_KEY_FILE": str(self.public_key_file)}
            args = ["node", str(NODE_DIR / "server.mjs")]
        else:
            raise ValueError(f"unknown server {kind!r}")
        proc = Process(
            pinned(self.server_cpu, args), env, self.workdir / f"{name}.log", cwd=root
        ).start()
        try:
            wait_http_ok(f"{url}/healthz", proc=proc)
            if self.server_cpu is not None:
                pin_all_threads(proc.pid, self.server_cpu)
        except BaseException:
            stop_server(proc)
            raise
        return proc, url


def stop_server(proc: Process) -> None:
    """Stops a replica at once: SIGINT skips the gateway's SIGTERM drain (nothing to drain)."""
    proc.signal(signal.SIGINT)
    if proc.wait(5) is None:
        proc.stop()


_PROBLEM_LEVELS = ("warning", "error", "critical")


def log_problems(paths: list[Path]) -> int:
    """Warnings and errors the servers logged (JSON records), over every file in ``paths``.

    A replica that sheds work under load says so in its log (a failed Redis write, a lost
    notice) while the figures may look fine: the report shows the count beside them.
    """
    count = 0
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                level = json.loads(line).get("level")
            except (ValueError, AttributeError):
                continue
            count += level in _PROBLEM_LEVELS
    return count


def base_env() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(ROOT)),
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "WARNING",
        "NODE_ENV": "production",
    }


# --- the Node load generator ------------------------------------------------------------------


class LoadGenerator:
    """``loadgen.mjs`` as a child process, driven one JSON command at a time."""

    def __init__(self, workdir: Path, cpu: int | None) -> None:
        args = pinned(cpu, ["node", str(NODE_DIR / "loadgen.mjs")])
        self._log = (workdir / "loadgen.log").open("ab")
        self._proc = subprocess.Popen(
            args,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._ref = 0
        self._expect(0, timeout=20)

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _expect(self, ref: int, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"load generator: no answer to command {ref} in {timeout}s")
            line = self._lines.get(timeout=remaining)
            if line is None:
                raise RuntimeError("the load generator exited")
            message = json.loads(line)
            if message.get("ref") != ref:
                continue
            if not message["ok"]:
                raise RuntimeError(f"load generator: {message['error']}")
            return message["result"]

    def call(self, op: str, timeout: float = 120, **args: Any) -> Any:
        """Runs one command; returns its result or raises."""
        self._ref += 1
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"op": op, "ref": self._ref, **args}) + "\n")
        self._proc.stdin.flush()
        return self._expect(self._ref, timeout)

    def stop(self) -> None:
        if self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.close()
                self._proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait(5)
        self._log.close()


# --- the measurements -------------------------------------------------------------------------


def handshake_storm(
    gen: LoadGenerator,
    pid: int,
    url: str,
    group: str,
    count: int,
    inflight: int,
    redis_cpu: Callable[[], float],
) -> dict[str, Any]:
    """``count`` connects to ``url`` at ``inflight`` in flight, left open in ``group``.

    The load generator's figures, with the server's CPU per connect read from ``pid`` and
    Redis's from ``redis_cpu`` (``Stack.redis_cpu_s``): it runs on the server's core, so what
    a connect costs it there is the core's too (sockgate's cluster-wide per-user limit).
    """
    wait_idle([pid])
    redis_before = redis_cpu()
    before = cpu_ms(pid)
    result = gen.call(
        "connect", group=group, urls=[url], count=count, inflight=inflight, timeout=300
    )
    used = cpu_ms(pid) - before
    connected = max(1, result["connected"])
    result["inflight"] = inflight
    result["server_cpu_ms_per_connect"] = used / connected
    result["redis_cpu_us_per_connect"] = (redis_cpu() - redis_before) * 1e6 / connected
    return result


def fanout_step(
    gen: LoadGenerator,
    pids: list[int],
    group: str,
    rooms: int,
    rate: int,
    cfg: BenchConfig,
    step: int,
) -> dict[str, Any]:
    """``rate`` deliveries/s offered to ``group``'s rooms; the CPU the processes ``pids`` used."""
    wait_idle(pids)  # the joins' presence notices, the last step's backlog
    before = [cpu_ms(pid) for pid in pids]
    result = gen.call(
        "fanout",
        group=group,
        rooms=rooms,
        msgs_per_s=rate / (ROOM_SIZE - 1),
        duration_s=cfg.step_seconds,
        drain_s=cfg.drain_seconds,
        step=step,
        timeout=cfg.step_seconds + cfg.drain_seconds + 60,
    )
    used = [cpu_ms(pid) - b for pid, b in zip(pids, before, strict=True)]
    delivered = max(1, min(result["delivered"], result["expected"]))
    return result | {
        "offered_rate": rate,
        "server_cpu_ms": used,
        "server_cpu_us_per_delivery": 1000 * sum(used) / delivered,
    }


def bench_fresh_storm(
    kind: str, stack: Stack, gen: LoadGenerator, cfg: BenchConfig, log: Callable[[str], None]
) -> dict[str, Any]:
    """The headline storm on a replica that has served nothing yet, then stopped.

    Every other step runs on a warmed server. A replica that takes over from a dead one, or
    joins in a rolling deploy, meets its clients' reconnects cold: the first connections
    after ``/healthz`` answers (start-up itself is not counted: ``handshake_storm`` waits
    for the process to go idle first).
    """
    proc, url = stack.start_server(kind, f"{kind}-fresh")
    try:
        result = handshake_storm(
            gen,
            proc.pid,
            url,
            "fresh",
            cfg.connects_per_point,
            cfg.headline_inflight,
            stack.redis_cpu_s,
        )
        gen.call("close", group="fresh", timeout=60)
    finally:
        stop_server(proc)
    log(
        f"  {kind}: first storm on a fresh replica: {result['connects_per_s']:.0f} connects/s, "
        f"p99 {result['latency_ms']['p99']:.1f} ms, "
        f"{result['server_cpu_ms_per_connect']:.2f} CPU-ms/connect"
    )
    return result


def bench_connections(
    kind: str, stack: Stack, gen: LoadGenerator, cfg: BenchConfig, log: Callable[[str], None]
) -> dict[str, Any]:
    """Memory with idle connections, then the handshake sweep, on one fresh replica."""
    proc, url = stack.start_server(kind, f"{kind}-single")
    try:
        gen.call("probe", url=url, timeout=30)
        # Warm up allocators and caches (the first connections pay one-off costs), then idle.
        gen.call("connect", group="warm", urls=[url], count=200, inflight=50)
        gen.call("close", group="warm")
        wait_idle([proc.pid])
        time.sleep(0.5)
        memory = [{"connections": 0, "rss_kb": rss_kb(proc.pid)}]
        opened = 0
        for target in cfg.idle_steps:
            result = gen.call(
                "connect",
                group="idle",
                urls=[url],
                count=target - opened,
                inflight=cfg.headline_inflight,
                offset=opened,
                timeout=300,
            )
            opened = target
            time.sleep(1.0)
            memory.append(
                {"connections": result["open"], "rss_kb": rss_kb(proc.pid), "target": target}
            )
            log(f"  {kind}: {result['open']} idle connections, RSS {memory[-1]['rss_kb']} KB")
        started = time.monotonic()
        gen.call("close", group="idle", timeout=60)
        settle = wait_idle([proc.pid])
        close_s = time.monotonic() - started
        log(f"  {kind}: closing {opened} idle connections took {close_s:.1f} s of server work")

        sweep = []
        for inflight in cfg.inflight_sweep:
            result = handshake_storm(
                gen, proc.pid, url, "sweep", cfg.connects_per_point, inflight, stack.redis_cpu_s
            )
            sweep.append(result)
            log(
                f"  {kind}: {inflight:>3} in flight: {result['connects_per_s']:.0f} connects/s, "
                f"p99 {result['latency_ms']['p99']:.1f} ms, "
                f"{result['server_cpu_ms_per_connect']:.2f} CPU-ms/connect"
            )
            gen.call("close", group="sweep", timeout=60)
    finally:
        stop_server(proc)
    return {"memory": memory, "sweep": sweep, "close_idle_s": close_s, "settle_s": settle}


def bench_fanout(
    kind: str,
    stack: Stack,
    gen: LoadGenerator,
    cfg: BenchConfig,
    log: Callable[[str], None],
    root: Path = ROOT,
    python: str = sys.executable,
) -> list[dict[str, Any]]:
    """Room fan-out through two replicas and Redis, for each client count and offered rate.

    ``root`` is the checkout sockgate's replicas run from and ``python`` their interpreter
    (others for A/B runs).
    """
    replicas = [
        stack.start_server(kind, f"{kind}-replica{i + 1}", root=root, python=python)
        for i in range(2)
    ]
    urls = [url for _, url in replicas]
    pids = [proc.pid for proc, _ in replicas] + [stack.redis_pid]
    points = []
    try:
        gen.call("probe", url=urls[0], timeout=30)
        step = 0
        for clients in cfg.fanout_clients:
            rooms = max(1, clients // ROOM_SIZE)
            connected = gen.call(
                "connect", group="fanout", urls=urls, count=clients, inflight=100, timeout=300
            )
            joined = gen.call("join", group="fanout", rooms=rooms, replicas=len(urls))
            for rate in cfg.fanout_rates:
                step += 1
                result = fanout_step(gen, pids, "fanout", rooms, rate, cfg, step)
                result |= {
                    "clients": clients,
                    "connected": connected["connected"],
                    "joined": joined["joined"],
                    "rooms": rooms,
                }
                points.append(result)
                p99 = result["latency_ms"]["p99"]
                log(
                    f"  {kind}: {clients} clients, offered {rate}/s: "
                    f"{result['deliveries_per_s']:.0f} deliveries/s, "
                    f"p99 {'lost' if p99 is None else f'{p99:.1f} ms'}, "
                    f"{result['server_cpu_us_per_delivery']:.1f} CPU-µs/delivery"
                )
                if rate >= cfg.headline_rate and saturated(result):
                    break  # higher offered rates only pile up more backlog
            gen.call("close", group="fanout", timeout=60)
            wait_idle(pids)
    finally:
        for proc, _ in replicas:
            stop_server(proc)
    return points


def saturated(point: dict[str, Any]) -> bool:
    """The server fell behind: deliveries well under offered, or over 1 % never arrived."""
    p99 = point["latency_ms"]["p99"]
    return p99 is None or p99 > 1000 or point["deliveries_per_s"] < 0.8 * point["offered_rate"]


def interpreter() -> str:
    """The Python version and the binary it runs from: which build of 3.11 moves the figures."""
    return f"{platform.python_version()} ({os.path.realpath(sys.executable)})"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "kernel": platform.release(),
        "python": interpreter(),
        "node": node.stdout.strip(),
        "pinned": os.cpu_count() is not None and os.cpu_count() >= 2,  # type: ignore[operator]
    }


@contextmanager
def bench_stack(
    cfg: BenchConfig, log: Callable[[str], None]
) -> Iterator[tuple[Stack, LoadGenerator]]:
    """The auth service, Redis, tokens and the load generator, stopped on the way out."""
    two_cores = (os.cpu_count() or 1) >= 2
    server_cpu = SERVER_CPU if two_cores else None
    if two_cores:
        os.sched_setaffinity(0, {CLIENT_CPU})  # this process and the load generator
    tokens = max(cfg.idle_steps[-1], cfg.connects_per_point, max(cfg.fanout_clients)) + 16
    limit = raise_fd_limit(tokens + 2048)
    if limit < tokens + 1024:
        raise SystemExit(f"open-files limit {limit} is too low for {tokens} connections")
    with tempfile.TemporaryDirectory(prefix="sockgate-bench-") as tmp:
        stack = Stack(Path(tmp), server_cpu)
        gen: LoadGenerator | None = None
        try:
            log(f"minting {tokens} tokens with the auth service's key")
            stack.start(tokens)
            gen = LoadGenerator(Path(tmp), CLIENT_CPU if two_cores else None)
            gen.call("tokens", file=str(stack.tokens_file))
            yield stack, gen
        finally:
            if gen is not None:
                gen.stop()
            stack.stop()


Paired = Callable[["Stack", "LoadGenerator", BenchConfig, Callable[[str], None]], list[Any]]


def run_bench(
    cfg: BenchConfig,
    log: Callable[[str], None] = print,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    paired: Paired | None = None,
) -> dict[str, Any]:
    """Every run of every server; the raw results, medians are taken by the report.

    ``checkpoint`` gets the results so far after every run, so a long benchmark interrupted
    late still leaves its finished runs behind. ``paired`` (``bench_paired.run_paired``), when
    given, runs after them on the same stack; its rounds are kept under ``"paired"``.
    """
    started = time.time()
    runs: list[dict[str, Any]] = []
    rounds: list[Any] = []

    def results_so_far() -> dict[str, Any]:
        return {
            "config": asdict(cfg),
            "machine": machine(),
            "started": started,
            "seconds": time.time() - started,
            "runs": runs,
            "paired": rounds,
        }

    with bench_stack(cfg, log) as (stack, gen):
        for run in range(cfg.runs):
            results: dict[str, Any] = {}
            # Alternate the order so neither server always runs first on a warming machine.
            order = cfg.servers if run % 2 == 0 else tuple(reversed(cfg.servers))
            for kind in order:
                log(f"run {run + 1}/{cfg.runs}: {kind}")
                results[kind] = {
                    "fresh": bench_fresh_storm(kind, stack, gen, cfg, log),
                    "connections": bench_connections(kind, stack, gen, cfg, log),
                    "fanout": bench_fanout(kind, stack, gen, cfg, log),
                }
            for kind in order:
                logs = sorted(stack.workdir.glob(f"{kind}-*.log"))
                results[kind]["log_problems"] = log_problems(logs)  # all runs so far
            runs.append(results)
            if checkpoint is not None:
                checkpoint(results_so_far())
        if paired is not None:
            rounds.extend(paired(stack, gen, cfg, log))
            for kind, result in (runs[-1] if runs else {}).items():  # counts over every log
                result["log_problems"] = log_problems(sorted(stack.workdir.glob(f"{kind}-*.log")))
    return results_so_far()


def save_json(path: Path, data: dict[str, Any]) -> None:
    """Writes ``data`` to ``path``, creating its folder (``var/`` may be cleaned meanwhile)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a small sweep, for development")
    parser.add_argument("--servers", default=",".join(SERVERS), help="sockgate,node")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench" / "gateway.json")
    args = parser.parse_args(argv)
    servers = tuple(s for s in args.servers.split(",") if s)
    exit_on_sigterm()
    cfg = (
        BenchConfig.quick(args.runs, servers)
        if args.quick
        else BenchConfig(runs=args.runs, servers=servers)
    )
    try:
        run_bench(cfg, checkpoint=lambda results: save_json(args.out, results))
    except MintRefused as exc:
        print(f"bench_gateway: {exc}", file=sys.stderr)
        return 2
    print(f"results -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
