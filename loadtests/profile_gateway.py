"""Where a gateway replica spends its CPU on the two hot paths: ``py-spy`` under benchmark load.

Same set-up as ``bench_gateway`` (pinned servers, the Node load generator, minted tokens), with
``py-spy record`` attached to the replica while it serves:

1. ``handshake``: connects at 100 in flight, each socket kept open;
2. ``fanout``: two replicas and Redis, rooms of 100, at an offered deliveries/s rate
   (``--rate``), py-spy on replica 1;
3. ``close``: ``--idle`` idle sockets closed by their clients at once, and the work the
   replica does until it is idle again.

For each it writes the collapsed stacks under ``--out`` (``handshake.txt``, ``fanout.txt``: the
input of any flame-graph tool, or speedscope) and prints the functions with the most samples,
by own time and by inclusive time. Profiling slows the
replica, so these runs are never part of the benchmark's figures.

    SOCKGATE_LOADTEST=1 .venv/bin/python -m loadtests.profile_gateway --seconds 8
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from loadtests.bench_gateway import (
    ROOM_SIZE,
    BenchConfig,
    LoadGenerator,
    Stack,
    bench_stack,
    exit_on_sigterm,
    wait_idle,
)
from loadtests.bench_gateway import stop_server as stop
from tests.support.processes import ROOT


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed (pip install -e '.[load]')")
    return found


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """Starts ``py-spy record`` on ``pid`` for ``seconds``, writing collapsed stacks to ``out``."""
    args = [py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds))]
    args += ["--rate", "200", "--format", "raw", "--output", str(out), "--nonblocking"]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def summarise(raw: Path, top: int = 25) -> str:
    """The hottest functions of a collapsed-stack file, by own and by inclusive samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{raw.name}: {total} samples"]
    for title, counter in (("own time", own), ("inclusive", inclusive)):
        lines.append(f"  top by {title}:")
        for frame, count in counter.most_common(top):
            lines.append(f"    {100 * count / max(1, total):5.1f}%  {frame}")
    return "\n".join(lines)


def _short(frame: str) -> str:
    """``func (path/to/site-packages/pkg/mod.py:12)`` → ``func (pkg/mod.py:12)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", str(ROOT) + "/", "lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})" if where else name


def profile_handshakes(stack: Stack, gen: LoadGenerator, seconds: float, out: Path) -> Path:
    proc, url = stack.start_server("sockgate", "profile-single")
    raw = out / "handshake.txt"
    try:
        gen.call("probe", url=url)
        spy = record(proc.pid, seconds, raw)
        time.sleep(1.0)  # py-spy attaches
        deadline = time.monotonic() + seconds - 1.5
        while time.monotonic() < deadline:
            gen.call("connect", group="p", urls=[url], count=1000, inflight=100)
            gen.call("close", group="p")
        spy.wait(seconds + 30)
    finally:
        stop(proc)
    return raw


def profile_fanout(stack: Stack, gen: LoadGenerator, seconds: float, rate: int, out: Path) -> Path:
    replicas = [stack.start_server("sockgate", f"profile-replica{i + 1}") for i in range(2)]
    raw = out / "fanout.txt"
    try:
        urls = [url for _, url in replicas]
        gen.call("connect", group="f", urls=urls, count=1000, inflight=100)
        gen.call("join", group="f", rooms=1000 // ROOM_SIZE, replicas=2)
        time.sleep(1.0)
        spy = record(replicas[0][0].pid, seconds, raw)
        time.sleep(1.0)
        result = gen.call(
            "fanout",
            group="f",
            rooms=1000 // ROOM_SIZE,
            msgs_per_s=rate / (ROOM_SIZE - 1),
            duration_s=seconds - 2,
            drain_s=3,
            step=1,
            timeout=seconds + 60,
        )
        spy.wait(seconds + 30)
        print(f"fan-out under profile: {result.get('deliveries_per_s', 0):.0f} deliveries/s")
    finally:
        for proc, _ in replicas:
            stop(proc)
    return raw


def profile_close(stack: Stack, gen: LoadGenerator, idle: int, out: Path) -> Path:
    proc, url = stack.start_server("sockgate", "profile-close")
    raw = out / "close.txt"
    try:
        gen.call("connect", group="c", urls=[url], count=idle, inflight=100, timeout=300)
        wait_idle([proc.pid])
        seconds = 60.0
        spy = record(proc.pid, seconds, raw)
        time.sleep(1.0)
        started = time.monotonic()
        gen.call("close", group="c", timeout=120)
        wait_idle([proc.pid], limit=seconds - 2)
        print(f"closing {idle} idle sockets: server busy {time.monotonic() - started:.1f} s")
        spy.send_signal(signal.SIGINT)  # py-spy stops and writes what it sampled
        spy.wait(30)
    finally:
        stop(proc)
    return raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=int, default=25_000, help="offered deliveries/s")
    parser.add_argument("--idle", type=int, default=5000, help="sockets closed at once")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "profile")
    parser.add_argument(
        "--only",
        choices=("handshake", "fanout", "close"),
        action="append",
        help="profile only these paths (repeatable); all three by default",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    exit_on_sigterm()
    cfg = BenchConfig(runs=1, servers=("sockgate",), idle_steps=(args.idle,))
    with bench_stack(cfg, print) as (stack, gen):
        only = set(args.only or ("handshake", "fanout", "close"))
        raws = []
        if "handshake" in only:
            raws.append(profile_handshakes(stack, gen, args.seconds, args.out))
        if "fanout" in only:
            raws.append(profile_fanout(stack, gen, args.seconds, args.rate, args.out))
        if "close" in only:
            raws.append(profile_close(stack, gen, args.idle, args.out))
    for raw in raws:
        if raw.exists():
            print(summarise(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
