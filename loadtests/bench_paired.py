"""sockgate and the Node baseline in alternation: the headline ratios with less of the drift.

A run of ``make bench`` measures one server's whole run (memory, handshake sweep, fan-out
sweep, ~1.5 min) before the other's, and on this shared machine the CPU a unit of work costs
moves by ±20 % from one minute to the next: more than the gap being measured. Here both servers
are up at once and each round runs the same headline step on one, then the other (the order
swapped every round), seconds apart:

- a handshake storm: ``connects_per_point`` connects at ``headline_inflight`` in flight on one
  replica of each, every socket closed before the next storm;
- a fan-out step: ``headline_clients`` clients in rooms of 100 on two replicas of each (both
  pairs and Redis on the servers' core, one pair idle while the other works),
  ``headline_rate`` deliveries/s offered.

Each server is first warmed by the same work (three storms, one fan-out step: Node's first
fan-out step costs it ~40 % more user CPU than the next: round 8 of the history) so that neither
pays its warm-up (Node's JIT, sockgate's caches) inside the rounds. A round holds the figures of
``bench_report.FIGURES`` that these steps measure, per server, so the report reads them like a
run's headline figures.
"""

from __future__ import annotations

from collections.abc import Callable

from loadtests.bench_gateway import (
    ROOM_SIZE,
    BenchConfig,
    LoadGenerator,
    Stack,
    fanout_step,
    handshake_storm,
    stop_server,
    wait_idle,
)
from loadtests.bench_report import core_cpu_ms, latency
from tests.support.processes import Process

Round = dict[str, dict[str, float | None]]
WARM_STORMS = 3
FANOUT_STEP_BASE = 10_000  # step numbers of their own, apart from the runs' steps


def paired_handshakes(
    stack: Stack, gen: LoadGenerator, cfg: BenchConfig, log: Callable[[str], None]
) -> list[Round]:
    """``cfg.paired_rounds`` alternating handshake storms on one replica of each server."""
    servers: dict[str, tuple[Process, str]] = {}
    rounds: list[Round] = []
    try:
        for kind in cfg.servers:
            servers[kind] = stack.start_server(kind, f"{kind}-paired")
        for proc, url in servers.values():
            gen.call("probe", url=url, timeout=30)
            for _ in range(WARM_STORMS):
                handshake_storm(
                    gen,
                    proc.pid,
                    url,
                    "paired-warm",
                    cfg.connects_per_point,
                    cfg.headline_inflight,
                    stack.redis_cpu_s,
                )
                gen.call("close", group="paired-warm", timeout=60)
        for index in range(cfg.paired_rounds):
            order = list(servers) if index % 2 == 0 else list(servers)[::-1]
            figures: Round = {}
            for kind in order:
                proc, url = servers[kind]
                result = handshake_storm(
                    gen,
                    proc.pid,
                    url,
                    "paired",
                    cfg.connects_per_point,
                    cfg.headline_inflight,
                    stack.redis_cpu_s,
                )
                gen.call("close", group="paired", timeout=60)
                wait_idle([proc.pid])
                figures[kind] = {
                    "connects_per_s": result["connects_per_s"],
                    "handshake_p50_ms": result["latency_ms"]["p50"],
                    "handshake_p99_ms": result["latency_ms"]["p99"],
                    "cpu_ms_per_connect": result["server_cpu_ms_per_connect"],
                    "core_cpu_ms_per_connect": core_cpu_ms(result),
                }
            rounds.append(figures)
            log(f"paired handshakes, round {index + 1}: {_describe(figures, 'cpu_ms_per_connect')}")
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
    return rounds


def paired_fanout(
    stack: Stack, gen: LoadGenerator, cfg: BenchConfig, log: Callable[[str], None]
) -> list[Round]:
    """``cfg.paired_rounds`` alternating fan-out steps on two replicas of each server."""
    replicas: dict[str, list[tuple[Process, str]]] = {kind: [] for kind in cfg.servers}
    rooms = max(1, cfg.headline_clients // ROOM_SIZE)
    rounds: list[Round] = []
    step = FANOUT_STEP_BASE
    try:
        for kind in cfg.servers:
            for i in range(2):
                replicas[kind].append(stack.start_server(kind, f"{kind}-paired-replica{i + 1}"))
        for kind, pair in replicas.items():
            urls = [url for _, url in pair]
            gen.call("probe", url=urls[0], timeout=30)
            group = f"paired-fanout-{kind}"
            gen.call(
                "connect",
                group=group,
                urls=urls,
                count=cfg.headline_clients,
                inflight=100,
                timeout=300,
            )
            gen.call("join", group=group, rooms=rooms, replicas=len(urls))
        pids = {
            kind: [p.pid for p, _ in pair] + [stack.redis_pid] for kind, pair in replicas.items()
        }
        for kind in replicas:  # warm-up, not counted
            step += 1
            fanout_step(
                gen, pids[kind], f"paired-fanout-{kind}", rooms, cfg.headline_rate, cfg, step
            )
        for index in range(cfg.paired_rounds):
            order = list(replicas) if index % 2 == 0 else list(replicas)[::-1]
            figures: Round = {}
            for kind in order:
                step += 1
                group = f"paired-fanout-{kind}"
                result = fanout_step(gen, pids[kind], group, rooms, cfg.headline_rate, cfg, step)
                figures[kind] = {
                    "deliveries_per_s": result["deliveries_per_s"],
                    "fanout_p50_ms": latency(result["latency_ms"]["p50"]),
                    "fanout_p99_ms": latency(result["latency_ms"]["p99"]),
                    "cpu_us_per_delivery": result["server_cpu_us_per_delivery"],
                }
            rounds.append(figures)
            log(f"paired fan-out, round {index + 1}: {_describe(figures, 'cpu_us_per_delivery')}")
        for kind in replicas:
            gen.call("close", group=f"paired-fanout-{kind}", timeout=60)
    finally:
        for pair in replicas.values():
            for proc, _ in pair:
                stop_server(proc)
    return rounds


def run_paired(
    stack: Stack, gen: LoadGenerator, cfg: BenchConfig, log: Callable[[str], None]
) -> list[Round]:
    """Both phases; round ``i`` holds the ``i``-th storm and the ``i``-th fan-out step.

    Nothing when the run does not measure both servers or asks for no paired rounds.
    """
    if not {"sockgate", "node"} <= set(cfg.servers) or cfg.paired_rounds <= 0:
        return []
    handshakes = paired_handshakes(stack, gen, cfg, log)
    fanout = paired_fanout(stack, gen, cfg, log)
    return [
        {kind: h.get(kind, {}) | f.get(kind, {}) for kind in cfg.servers}
        for h, f in zip(handshakes, fanout, strict=True)
    ]


def _describe(figures: Round, key: str) -> str:
    return ", ".join(f"{kind} {values.get(key) or 0:.3g}" for kind, values in figures.items())
