"""Two gateway trees side by side in one session: is a change faster, or was the machine?

On a shared machine the same tree's CPU per connect moves by ±20 % from one minute to the
next, far more than most single changes. This runs a replica of ``--base`` (any git revision,
checked out in a temporary worktree) and one of the working tree on the same pinned core,
Redis and load generator as ``bench_gateway``, and alternates them: each round is a storm of
``--count`` connects at ``--inflight`` in flight against one, then the other (order swapped
every round), every socket closed before the next storm. It prints each round's figures and
the median of the per-round ratios (working tree ÷ base), which the machine's drift mostly
cancels out of. ``--memory`` adds a round that keeps ``--memory`` sockets open on each and
reads RSS per connection, before the CPU rounds (a process's RSS does not shrink after a
close, and memory freed by earlier storms would hide what new sockets take).

``--fanout RATE`` compares room fan-out instead: each round runs ``bench_gateway``'s fan-out
step (two fresh replicas of one tree, ``--clients`` clients in rooms of 100, RATE offered
deliveries/s) for one tree, then the other, and compares the CPU per delivery of the replicas
and Redis, and the delivery p50 and p99.

    SOCKGATE_LOADTEST=1 .venv/bin/python -m loadtests.compare_gateway --base HEAD~1 --rounds 8
    SOCKGATE_LOADTEST=1 .venv/bin/python -m loadtests.compare_gateway --base HEAD~1 --rounds 6 \
        --fanout 75000
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from loadtests.bench_gateway import (
    BenchConfig,
    LoadGenerator,
    Stack,
    bench_fanout,
    bench_stack,
    exit_on_sigterm,
    handshake_storm,
    rss_kb,
    wait_idle,
)
from loadtests.bench_gateway import stop_server as stop
from tests.support.processes import ROOT, Process


@dataclass
class Side:
    """One tree under test and what its rounds measured."""

    name: str
    root: Path
    python: str = sys.executable
    proc: Process | None = None
    url: str = ""
    rounds: list[dict[str, float]] = field(default_factory=list)


@contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """``revision`` checked out in a temporary git worktree, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="sockgate-base-") as parent:
        path = Path(parent) / "tree"
        git = ["git", "-C", str(ROOT)]
        subprocess.run([*git, "worktree", "add", "--detach", "-q", str(path), revision], check=True)
        try:
            yield path
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(path)], check=False)


def storm(
    side: Side, stack: Stack, gen: LoadGenerator, group: str, count: int, inflight: int
) -> dict[str, float]:
    """``count`` connects against ``side`` (left open): rate, p50, p99, CPU per connect (the
    replica's and Redis's)."""
    assert side.proc is not None
    result = handshake_storm(
        gen, side.proc.pid, side.url, group, count, inflight, stack.redis_cpu_s
    )
    return {
        "connects_per_s": result["connects_per_s"],
        "p50_ms": result["latency_ms"]["p50"],
        "p99_ms": result["latency_ms"]["p99"],
        "cpu_ms": result["server_cpu_ms_per_connect"],
        "redis_us": result["redis_cpu_us_per_connect"],
        "not_connected": count - result["connected"],
    }


def close(side: Side, gen: LoadGenerator, group: str) -> None:
    assert side.proc is not None
    gen.call("close", group=group, timeout=120)
    wait_idle([side.proc.pid])


def compare(args: argparse.Namespace, stack: Stack, gen: LoadGenerator, sides: list[Side]) -> None:
    for side in sides:
        side.proc, side.url = stack.start_server(
            "sockgate", side.name, root=side.root, python=side.python
        )
    try:
        for side in sides:
            gen.call("probe", url=side.url, timeout=30)
            storm(side, stack, gen, f"warm-{side.name}", 300, 50)
            close(side, gen, f"warm-{side.name}")
        if args.memory:  # first: later storms leave freed memory the RSS still counts
            for side in sides:
                assert side.proc is not None
                time.sleep(0.5)
                before = rss_kb(side.proc.pid)
                storm(side, stack, gen, f"mem-{side.name}", args.memory, args.inflight)
                time.sleep(1.0)
                print(f"{side.name}: {(rss_kb(side.proc.pid) - before) / args.memory:.1f} KB RSS")
                close(side, gen, f"mem-{side.name}")
        for index in range(args.rounds):
            for side in sides if index % 2 == 0 else sides[::-1]:
                group = f"{side.name}-{index}"
                side.rounds.append(storm(side, stack, gen, group, args.count, args.inflight))
                close(side, gen, group)
        if args.rounds:
            report(sides, _CONNECT_FIGURES, "cpu_ms", "CPU per connect")
    finally:
        for side in sides:
            if side.proc is not None:
                stop(side.proc)


def compare_fanout(
    args: argparse.Namespace,
    config: BenchConfig,
    stack: Stack,
    gen: LoadGenerator,
    sides: list[Side],
) -> None:
    """Alternating fan-out steps of the two trees; the median ratio of CPU per delivery."""
    step = replace(config, fanout_clients=(args.clients,), fanout_rates=(args.fanout,))
    for index in range(args.rounds):
        for side in sides if index % 2 == 0 else sides[::-1]:
            (point,) = bench_fanout(
                "sockgate", stack, gen, step, lambda line: None, root=side.root, python=side.python
            )
            side.rounds.append(_fanout_figures(point))
    report(sides, _FANOUT_FIGURES, "cpu_us", "CPU per delivery")


def _fanout_figures(point: dict[str, Any]) -> dict[str, float]:
    latency = point["latency_ms"]
    p50, p99 = latency.get("p50"), latency["p99"]
    return {
        "deliveries_per_s": point["deliveries_per_s"],
        "p50_ms": float("inf") if p50 is None else round(p50, 2),
        "p99_ms": float("inf") if p99 is None else round(p99, 1),
        "cpu_us": point["server_cpu_us_per_delivery"],
    }


# What a round's figures hold: (key, label, decimals), as printed per round and as medians.
Figures = tuple[tuple[str, str, int], ...]
_CONNECT_FIGURES: Figures = (
    ("connects_per_s", "connects/s", 0),
    ("p50_ms", "p50 ms", 1),
    ("p99_ms", "p99 ms", 1),
    ("cpu_ms", "CPU-ms per connect", 3),
    ("redis_us", "Redis CPU-µs per connect", 1),
)
_FANOUT_FIGURES: Figures = (
    ("deliveries_per_s", "deliveries/s", 0),
    ("p50_ms", "p50 ms", 2),
    ("p99_ms", "p99 ms", 1),
    ("cpu_us", "CPU-µs per delivery", 2),
)


def report(sides: list[Side], figures: Figures, cost: str, cost_label: str) -> None:
    """Each side's rounds and medians, then the per-round ratios of ``cost`` (new ÷ base)."""
    base, new = sides
    for side in sides:
        rows = side.rounds
        per_round = ", ".join(
            f"{label} {[round(r[key], digits or None) for r in rows]}"
            for key, label, digits in figures
        )
        medians = ", ".join(
            f"{label} {statistics.median(r[key] for r in rows):,.{digits}f}"
            for key, label, digits in figures
        )
        print(f"{side.name}: {per_round}")
        print(f"{side.name} medians: {medians}")
        lost = sum(r.get("not_connected", 0) for r in rows)
        if lost:
            print(f"{side.name}: {lost:.0f} sockets did not connect")
    ratios = [n[cost] / b[cost] for b, n in zip(base.rounds, new.rounds, strict=True)]
    print(f"{cost_label}, {new.name} / {base.name}, per round: {[round(r, 3) for r in ratios]}")
    print(f"median ratio: {statistics.median(ratios):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--base", default="HEAD", help="git revision to compare against")
    parser.add_argument(
        "--base-python",
        default=sys.executable,
        help="interpreter the base runs on (with its own venv): compares interpreter builds",
    )
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--count", type=int, default=3000, help="connects per storm")
    parser.add_argument("--inflight", type=int, default=100)
    parser.add_argument("--memory", type=int, default=0, help="idle sockets for an RSS round")
    parser.add_argument("--fanout", type=int, default=0, help="compare fan-out at RATE/s")
    parser.add_argument("--clients", type=int, default=1000, help="fan-out clients")
    args = parser.parse_args()
    exit_on_sigterm()
    config = BenchConfig(
        runs=1,
        servers=("sockgate",),
        idle_steps=(max(args.count, args.memory, args.clients),),
    )
    with worktree(args.base) as base_root, bench_stack(config, print) as (stack, gen):
        sides = [Side("base", base_root, args.base_python), Side("working tree", ROOT)]
        if args.fanout:
            compare_fanout(args, config, stack, gen, sides)
        else:
            compare(args, stack, gen, sides)


if __name__ == "__main__":
    main()
