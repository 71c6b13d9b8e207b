"""``docs/benchmarks.md`` and its charts, from the raw results of ``bench_gateway``.

Every figure is the median of the runs; each is set beside the Node baseline measured in the
same run, the floors of the stack from ``PERFORMANCE.md`` and the gateway's targets, as plain
ratios (``sockgate ÷ other``) with the direction that is better.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INF = math.inf

# PERFORMANCE.md, "Floors": a bare uvicorn websockets app, websockets-sansio, deflate off,
# which is how the gateway runs uvicorn (GATEWAY_WS default, per-message deflate off).
FLOORS = {
    "connects_per_s": 3253.0,
    "cpu_ms_per_connect": 0.26,
    "kb_per_connection": 20.0,
    "deliveries_per_s": 126_000.0,
    "cpu_us_per_delivery": 7.9,
}
FLOOR_SOURCE = "PERFORMANCE.md floors: bare uvicorn, websockets-sansio, per-message deflate off"


@dataclass(frozen=True)
class Figure:
    """One headline figure: how to read it from a run, and what it is held against."""

    key: str
    label: str
    unit: str
    higher_is_better: bool
    target: float | None
    target_text: str
    digits: int = 0
    # Share of a rate target that counts as meeting it. A measured delivery rate divides by
    # the span from the first send to the last delivery, so even a run that delivers every
    # message on time lands a little under the offered rate (the Node baseline's 49,962/s at
    # 50,000/s offered, say).
    tolerance: float = 0.0


FIGURES = (
    Figure(
        "connects_per_s", "authenticated connects/s, 100 in flight", "/s", True, 2000, "≥ 2,000"
    ),
    Figure("handshake_p50_ms", "handshake p50, 100 in flight", "ms", False, None, "", 1),
    Figure("handshake_p99_ms", "handshake p99, 100 in flight", "ms", False, 150, "< 150", 1),
    Figure("cpu_ms_per_connect", "server CPU per connect", "ms", False, 0.5, "≤ 0.5", 2),
    Figure(
        "core_cpu_ms_per_connect", "… with Redis's, the core they share", "ms", False, None, "", 3
    ),
    Figure(
        "fresh_connects_per_s", "connects/s, first storm on a fresh replica", "/s", True, None, ""
    ),
    Figure("fresh_handshake_p99_ms", "… its handshake p99", "ms", False, None, "", 1),
    Figure("fresh_cpu_ms_per_connect", "… its server CPU per connect", "ms", False, None, "", 2),
    Figure("kb_per_connection", "server memory per idle connection", "KB", False, 20, "≤ 20", 1),
    Figure("rss_mb_max_idle", "server RSS with the most idle connections", "MB", False, None, ""),
    Figure(
        "deliveries_per_s",
        "fan-out deliveries/s, 2 replicas, 1,000 clients, 50,000/s offered",
        "/s",
        True,
        50_000,
        "≥ 50,000",
        tolerance=0.01,
    ),
    Figure("fanout_p50_ms", "fan-out delivery p50 at that rate", "ms", False, None, "", 1),
    Figure("fanout_p99_ms", "fan-out delivery p99 at that rate", "ms", False, 50, "< 50", 1),
    Figure(
        "max_deliveries_p99_50",
        "highest deliveries/s measured with p99 < 50 ms (1,000 clients)",
        "/s",
        True,
        50_000,
        "≥ 50,000",
        tolerance=0.01,
    ),
    Figure("cpu_us_per_delivery", "server CPU per delivery at 50,000/s", "µs", False, None, "", 1),
)


def median(values: Iterable[float | None]) -> float | None:
    """The median of the measured values (``None``: not measured; ``INF``: never arrived)."""
    measured = [v for v in values if v is not None]
    if not measured:
        return None
    return statistics.median_low(measured) if INF in measured else statistics.median(measured)


def latency(value: float | None) -> float:
    """A latency percentile from the load generator: ``None`` there means lost, so ``INF``."""
    return INF if value is None else value


def _point(points: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for point in points:
        if all(point.get(k) == v for k, v in match.items()):
            return point
    return None


def core_cpu_ms(storm: dict[str, Any]) -> float | None:
    """The server's and Redis's CPU per connect of a storm: Redis shares the server's core.

    ``None`` for storms measured before Redis's CPU was (older results).
    """
    redis_us = storm.get("redis_cpu_us_per_connect")
    if redis_us is None:
        return None
    return float(storm["server_cpu_ms_per_connect"]) + float(redis_us) / 1000


def headline(result: dict[str, Any], config: dict[str, Any]) -> dict[str, float | None]:
    """The headline figures of one server in one run."""
    sweep = result["connections"]["sweep"]
    memory = result["connections"]["memory"]
    fanout = result["fanout"]
    figures: dict[str, float | None] = dict.fromkeys(f.key for f in FIGURES)
    at = _point(sweep, inflight=config["headline_inflight"])
    if at is not None:
        figures["connects_per_s"] = at["connects_per_s"]
        figures["handshake_p50_ms"] = at["latency_ms"]["p50"]
        figures["handshake_p99_ms"] = at["latency_ms"]["p99"]
        figures["cpu_ms_per_connect"] = at["server_cpu_ms_per_connect"]
        figures["core_cpu_ms_per_connect"] = core_cpu_ms(at)
    fresh = result.get("fresh")  # runs before the fresh-replica storm existed have none
    if fresh is not None:
        figures["fresh_connects_per_s"] = fresh["connects_per_s"]
        figures["fresh_handshake_p99_ms"] = fresh["latency_ms"]["p99"]
        figures["fresh_cpu_ms_per_connect"] = fresh["server_cpu_ms_per_connect"]
    if len(memory) > 1 and memory[-1]["connections"]:
        figures["kb_per_connection"] = (memory[-1]["rss_kb"] - memory[0]["rss_kb"]) / memory[-1][
            "connections"
        ]
        figures["rss_mb_max_idle"] = memory[-1]["rss_kb"] / 1024
    clients = config["headline_clients"]
    step = _point(fanout, clients=clients, offered_rate=config["headline_rate"])
    if step is not None:
        figures["deliveries_per_s"] = step["deliveries_per_s"]
        figures["fanout_p50_ms"] = latency(step["latency_ms"]["p50"])
        figures["fanout_p99_ms"] = latency(step["latency_ms"]["p99"])
        figures["cpu_us_per_delivery"] = step["server_cpu_us_per_delivery"]
    good = [
        p["deliveries_per_s"]
        for p in fanout
        if p["clients"] == clients and p["latency_ms"]["p99"] is not None
        if p["latency_ms"]["p99"] < 50
    ]
    figures["max_deliveries_p99_50"] = max(good) if good else 0.0
    return figures


def headlines(data: dict[str, Any]) -> list[dict[str, dict[str, float | None]]]:
    """Each run's ``{server: {figure: value}}``."""
    config = data["config"]
    return [
        {server: headline(result, config) for server, result in run.items()} for run in data["runs"]
    ]


def medians(runs: list[dict[str, dict[str, float | None]]]) -> dict[str, dict[str, float | None]]:
    """``{server: {figure: median over the runs}}`` of ``headlines``."""
    per_server: dict[str, list[dict[str, float | None]]] = {}
    for run in runs:
        for server, figures in run.items():
            per_server.setdefault(server, []).append(figures)
    return {
        server: {f.key: median(r.get(f.key) for r in runs) for f in FIGURES}
        for server, runs in per_server.items()
    }


def paired(
    runs: list[dict[str, dict[str, float | None]]], figure: Figure
) -> tuple[list[float], int]:
    """sockgate ÷ Node in each run that has both, and in how many sockgate was at Node's level.

    The two servers of one run were measured minutes apart on the same machine, so these
    ratios carry less of the machine's drift than a ratio of the medians.
    """
    ratios: list[float] = []
    level = 0
    for run in runs:
        s, n = run.get("sockgate", {}).get(figure.key), run.get("node", {}).get(figure.key)
        if s is None or n is None or INF in (s, n) or n == 0:
            continue
        ratios.append(s / n)
        if not _worse(figure, s, n):
            level += 1
    return ratios, level


def paired_table(runs: list[dict[str, dict[str, float | None]]]) -> str:
    rows = [
        "| figure | sockgate ÷ Node, run by run | runs with sockgate at Node's level or better |",
        "|---|---|---|",
    ]
    for f in FIGURES:
        ratios, level = paired(runs, f)
        if ratios:
            listed = " / ".join(f"{r:.2f}" for r in ratios)
            rows.append(f"| {f.label} | {listed} | {level} of {len(ratios)} |")
    return "\n".join(rows)


def alternating_table(rounds: list[dict[str, dict[str, float | None]]]) -> str:
    """The paired rounds (``bench_paired``): each server's median, and sockgate ÷ Node."""
    meds = medians(rounds)
    sock, node = meds.get("sockgate", {}), meds.get("node", {})
    rows = [
        "| figure | sockgate | Node baseline | sockgate ÷ Node, round by round | median ratio "
        "| rounds with sockgate at Node's level or better |",
        "|---|---|---|---|---|---|",
    ]
    for f in FIGURES:
        ratios, level = paired(rounds, f)
        if not ratios:
            continue
        listed = " / ".join(f"{r:.2f}" for r in ratios)
        rows.append(
            f"| {f.label} | {fmt_figure(f, sock.get(f.key))} | {fmt_figure(f, node.get(f.key))} "
            f"| {listed} | {statistics.median(ratios):.2f}× | {level} of {len(ratios)} |"
        )
    return "\n".join(rows)


def alternating_section(data: dict[str, Any]) -> str:
    """The paired rounds' part of the summary, or nothing when the run has none."""
    rounds = data.get("paired") or []
    if not rounds:
        return ""
    cfg = data["config"]
    return f"""

Alternating (`loadtests/bench_paired.py`, after the runs): both servers up at once, the same
headline step on one and then the other, seconds apart, the order swapped every round;
{len(rounds)} rounds of a storm of {cfg["connects_per_point"]:,} connects at
{cfg["headline_inflight"]} in flight (one replica each) and a fan-out step of
{cfg["headline_clients"]:,} clients at {cfg["headline_rate"]:,}/s offered (two replicas each),
after the same warm-up for both. The machine's minute-to-minute drift, which the runs above
carry between one server's steps and the other's, mostly cancels out of these ratios:

{alternating_table(rounds)}"""


# --- formatting -------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return "—"
    if value == INF:
        return "lost"
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}".strip() if unit and unit != "/s" else text


def fmt_figure(figure: Figure, value: float | None) -> str:
    if figure.key == "max_deliveries_p99_50" and value == 0:
        return "none (p99 ≥ 50 ms at every rate)"
    return fmt(value, figure.digits)


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0 or INF in (a, b):
        return "—"
    return f"{a / b:.2f}×"


def meets_target(figure: Figure, value: float) -> bool:
    """Whether ``value`` meets the figure's target (``<`` strict, ``≤``/``≥`` inclusive)."""
    assert figure.target is not None
    if figure.target_text.startswith("<"):
        return value < figure.target
    if figure.target_text.startswith("≤"):
        return value <= figure.target
    return value >= figure.target * (1 - figure.tolerance)


def _worse(figure: Figure, value: float, other: float) -> bool:
    if figure.higher_is_better:
        return value < other * (1 - figure.tolerance)
    return value > other


def met(
    figure: Figure, value: float | None, node: float | None, alternating: float | None = None
) -> str:
    """✓ when the target is met and the Node baseline matched; ✗ with what failed.

    ``alternating`` is the median sockgate ÷ Node of the alternating rounds: where given, the
    baseline is judged on it rather than on ``value`` against ``node``.
    """
    if value is None or value == INF:
        return "✗ target" + (", Node" if node not in (None, INF) else "")
    failures = []
    if figure.target is not None and not meets_target(figure, value):
        failures.append("target")
    if alternating is not None:
        if _worse(figure, alternating, 1.0):
            failures.append("Node")
    elif node is not None and node != INF and _worse(figure, value, node):
        failures.append("Node")
    return "✓" if not failures else "✗ " + ", ".join(failures)


def summary_table(
    meds: dict[str, dict[str, float | None]],
    rounds: list[dict[str, dict[str, float | None]]] | None = None,
) -> str:
    """The headline figures; with alternating ``rounds``, their median ratio beside the runs'."""
    sock, node = meds.get("sockgate", {}), meds.get("node", {})
    floor_keys = {
        "connects_per_s": "connects_per_s",
        "cpu_ms_per_connect": "cpu_ms_per_connect",
        "kb_per_connection": "kb_per_connection",
        "max_deliveries_p99_50": "deliveries_per_s",
        "cpu_us_per_delivery": "cpu_us_per_delivery",
    }
    rows = [
        "| figure | better | sockgate | Node baseline | sockgate ÷ Node | … alternating | floor "
        "| sockgate ÷ floor | target | met (target, ≥ Node) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in FIGURES:
        s, n = sock.get(f.key), node.get(f.key)
        floor = FLOORS.get(floor_keys.get(f.key, ""))
        ratios, _ = paired(rounds or [], f)
        alternating = statistics.median(ratios) if ratios else None
        verdict = met(f, s, n, alternating) if f.target_text else "—"
        rows.append(
            f"| {f.label} ({f.unit}) | {'higher' if f.higher_is_better else 'lower'} "
            f"| {fmt_figure(f, s)} | {fmt_figure(f, n)} | {ratio(s, n)} "
            f"| {'—' if alternating is None else f'{alternating:.2f}×'} "
            f"| {fmt(floor, 2 if floor and floor < 10 else 0)} | {ratio(s, floor)} "
            f"| {f.target_text or '—'} | {verdict} |"
        )
    return "\n".join(rows)


def _median_by(
    data: dict[str, Any],
    server: str,
    rows: Callable[[dict[str, Any]], list[dict[str, Any]]],
    key: Callable[[dict[str, Any]], Any],
    value: Callable[[dict[str, Any]], float | None],
) -> dict[Any, float | None]:
    """For each ``key`` of the rows, the median of ``value`` over the runs."""
    collected: dict[Any, list[float | None]] = {}
    for run in data["runs"]:
        if server in run:
            for row in rows(run[server]):
                collected.setdefault(key(row), []).append(value(row))
    return {k: median(v) for k, v in sorted(collected.items())}


def handshake_series(data: dict[str, Any], server: str, field: str) -> dict[int, float | None]:
    getters: dict[str, Callable[[dict[str, Any]], float | None]] = {
        "connects_per_s": lambda r: r["connects_per_s"],
        "p50": lambda r: r["latency_ms"]["p50"],
        "p90": lambda r: r["latency_ms"]["p90"],
        "p99": lambda r: r["latency_ms"]["p99"],
        "cpu": lambda r: r["server_cpu_ms_per_connect"],
        "client": lambda r: r["client_cpu_pct"],
    }
    return _median_by(
        data, server, lambda r: r["connections"]["sweep"], lambda r: r["inflight"], getters[field]
    )


def memory_series(data: dict[str, Any], server: str) -> dict[int, float | None]:
    return _median_by(
        data,
        server,
        lambda r: r["connections"]["memory"],
        lambda r: r.get("target", 0),
        lambda r: r["rss_kb"] / 1024,
    )


def fanout_series(data: dict[str, Any], server: str, field: str) -> dict[tuple[int, int], Any]:
    getters: dict[str, Callable[[dict[str, Any]], float | None]] = {
        "deliveries_per_s": lambda r: r["deliveries_per_s"],
        "p50": lambda r: latency(r["latency_ms"]["p50"]),
        "p99": lambda r: latency(r["latency_ms"]["p99"]),
        "cpu": lambda r: r["server_cpu_us_per_delivery"],
        "client": lambda r: r["client_cpu_pct"],
    }
    return _median_by(
        data,
        server,
        lambda r: r["fanout"],
        lambda r: (r["clients"], r["offered_rate"]),
        getters[field],
    )


def max_sustained(data: dict[str, Any], server: str) -> dict[int, float]:
    """Per client count: the median over runs of the best deliveries/s with p99 < 50 ms."""
    per_clients: dict[int, list[float | None]] = {}
    for run in data["runs"]:
        if server not in run:
            continue
        best: dict[int, float] = {}
        for p in run[server]["fanout"]:
            p99 = p["latency_ms"]["p99"]
            best.setdefault(p["clients"], 0.0)
            if p99 is not None and p99 < 50:
                best[p["clients"]] = max(best[p["clients"]], p["deliveries_per_s"])
        for clients, value in best.items():
            per_clients.setdefault(clients, []).append(value)
    return {c: float(median(v) or 0.0) for c, v in sorted(per_clients.items())}


def handshake_table(data: dict[str, Any], servers: list[str]) -> str:
    rows = [
        "| in flight | server | connects/s | p50 ms | p90 ms | p99 ms | server CPU-ms/connect "
        "| load generator CPU % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for inflight in data["config"]["inflight_sweep"]:
        for server in servers:
            cells = [handshake_series(data, server, f).get(inflight) for f in
                     ("connects_per_s", "p50", "p90", "p99", "cpu", "client")]  # fmt: skip
            rows.append(
                f"| {inflight} | {server} | {fmt(cells[0])} | {fmt(cells[1], 1)} "
                f"| {fmt(cells[2], 1)} | {fmt(cells[3], 1)} | {fmt(cells[4], 2)} "
                f"| {fmt(cells[5])} |"
            )
    return "\n".join(rows)


def memory_table(data: dict[str, Any], servers: list[str]) -> str:
    series = {s: memory_series(data, s) for s in servers}
    steps = sorted({k for s in series.values() for k in s})
    header = "| idle connections | " + " | ".join(f"{s} RSS MB" for s in servers) + " |"
    rows = [header, "|---|" + "---|" * len(servers)]
    for step in steps:
        cells = " | ".join(fmt(series[s].get(step), 1) for s in servers)
        rows.append(f"| {step:,} | {cells} |")
    return "\n".join(rows)


def close_line(data: dict[str, Any], servers: list[str]) -> str:
    """How long each server stays busy once all its idle sockets are closed at once."""
    parts = []
    for s in servers:
        value = median(
            run[s]["connections"].get("close_idle_s") for run in data["runs"] if s in run
        )
        parts.append(f"{s} {fmt(value, 1)} s")
    idle = data["config"]["idle_steps"][-1]
    return (
        f"Closing all {idle:,} idle sockets at once (the clients close them), until the server "
        f"is idle again (under 5 % of a core): {', '.join(parts)}."
    )


def log_problems_line(data: dict[str, Any]) -> str:
    """How many warnings and errors sockgate's replicas logged over the whole benchmark."""
    last = data["runs"][-1].get("sockgate", {}) if data["runs"] else {}
    if "log_problems" not in last:
        return ""
    scope = "all runs and the alternating rounds" if data.get("paired") else "all runs"
    return (
        f"\n\nWarnings and errors in sockgate's logs over {scope} (a replica that sheds work "
        f"under load, a failed Redis write or a lost notice, says so there): "
        f"{last['log_problems']:,}."
    )


def fanout_table(data: dict[str, Any], servers: list[str]) -> str:
    rows = [
        "| clients | offered deliveries/s | server | deliveries/s | p50 ms | p99 ms "
        "| server CPU-µs/delivery | load generator CPU % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    fields = ("deliveries_per_s", "p50", "p99", "cpu", "client")
    series = {s: {f: fanout_series(data, s, f) for f in fields} for s in servers}
    keys = sorted({k for s in servers for k in series[s]["deliveries_per_s"]})
    for clients, rate in keys:
        for s in servers:
            if (clients, rate) not in series[s]["deliveries_per_s"]:
                continue
            get = {f: series[s][f][(clients, rate)] for f in series[s]}
            rows.append(
                f"| {clients:,} | {rate:,} | {s} | {fmt(get['deliveries_per_s'])} "
                f"| {fmt(get['p50'], 1)} | {fmt(get['p99'], 1)} | {fmt(get['cpu'], 1)} "
                f"| {fmt(get['client'])} |"
            )
    return "\n".join(rows)


# --- charts -----------------------------------------------------------------------------------

COLORS = {"sockgate": "#1f77b4", "node": "#ff7f0e"}
LOST_MS = 10_000  # where a lost p99 is drawn on the log scale
LABELS = {"sockgate": "sockgate", "node": "Node baseline (socket.io, tutorial style)"}


def draw_charts(data: dict[str, Any], out_dir: Path) -> list[Path]:
    """PNG charts beside the document; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    servers = [s for s in ("sockgate", "node") if any(s in run for run in data["runs"])]
    paths = []

    def finite(series: dict[Any, float | None]) -> tuple[list[Any], list[float]]:
        items = [(k, v) for k, v in series.items() if v is not None and v != INF]
        return [k for k, _ in items], [v for _, v in items]

    def latency_line(ax: Any, series: dict[Any, float | None], server: str) -> None:
        """A p99 line; points where deliveries were lost drawn as × on the LOST_MS line."""
        x, y = finite(series)
        ax.plot(x, y, marker="o", color=COLORS[server], label=LABELS[server])
        lost = [k for k, v in series.items() if v == INF]
        if lost:
            ax.plot(lost, [LOST_MS] * len(lost), "x", ms=10, mew=2, color=COLORS[server],
                    label=f"{server}: over 1 % lost")  # fmt: skip

    # Handshakes: latency percentiles and connects/s against handshakes in flight.
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for s in servers:
        for field, style in (("p50", "--"), ("p99", "-")):
            x, y = finite(handshake_series(data, s, field))
            left.plot(x, y, style, marker="o", color=COLORS[s], label=f"{s} {field}")
        x, y = finite(handshake_series(data, s, "connects_per_s"))
        right.plot(x, y, marker="o", color=COLORS[s], label=LABELS[s])
    left.axhline(150, color="grey", lw=0.8, ls=":", label="target p99 150 ms")
    left.set(xlabel="handshakes in flight", ylabel="handshake latency, ms",
             title="Handshake latency percentiles")  # fmt: skip
    right.axhline(2000, color="grey", lw=0.8, ls=":", label="target 2,000/s")
    right.set(xlabel="handshakes in flight", ylabel="authenticated connects/s",
              title="Connect throughput", ylim=(0, None))  # fmt: skip
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir / "handshake.png"))

    # Fan-out: best deliveries/s within p99 < 50 ms and p99 at the headline rate, per clients.
    config = data["config"]
    fig, (left, mid, right) = plt.subplots(1, 3, figsize=(15, 4.2))
    width = 0.38
    for i, s in enumerate(servers):
        best = max_sustained(data, s)
        xs = list(range(len(best)))
        left.bar([x + (i - 0.5) * width for x in xs], list(best.values()), width,
                 color=COLORS[s], label=LABELS[s])  # fmt: skip
        left.set_xticks(xs, [f"{c:,}" for c in best])
        p99 = fanout_series(data, s, "p99")
        latency_line(mid, {c: v for (c, r), v in p99.items() if r == config["headline_rate"]}, s)
        by_rate = {r: v for (c, r), v in p99.items() if c == config["headline_clients"]}
        latency_line(right, by_rate, s)
    left.axhline(50_000, color="grey", lw=0.8, ls=":", label="target 50,000/s")
    left.set(xlabel="clients (rooms of 100, 2 replicas)", ylabel="deliveries/s",
             title="Highest deliveries/s with p99 < 50 ms")  # fmt: skip
    mid.axhline(50, color="grey", lw=0.8, ls=":", label="target p99 50 ms")
    mid.set(xlabel="clients", ylabel="delivery p99, ms", yscale="log",
            title=f"p99 at {config['headline_rate']:,} deliveries/s offered")  # fmt: skip
    right.axhline(50, color="grey", lw=0.8, ls=":", label="target p99 50 ms")
    right.set(xlabel="offered deliveries/s", ylabel="delivery p99, ms", yscale="log",
              title=f"p99 vs offered rate, {config['headline_clients']:,} clients")  # fmt: skip
    for ax in (left, mid, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir / "fanout.png"))

    # Memory: RSS against idle connections held.
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for s in servers:
        x, y = finite(memory_series(data, s))
        ax.plot(x, y, marker="o", color=COLORS[s], label=LABELS[s])
    ax.set(xlabel="idle authenticated connections", ylabel="server RSS, MB",
           title="Memory with idle connections", ylim=(0, None))  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir / "memory.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- the document -----------------------------------------------------------------------------


def gateway_section(data: dict[str, Any], command: str, charts_rel: str) -> str:
    """The gateway part of ``docs/benchmarks.md``."""
    cfg, m = data["config"], data["machine"]
    servers = [s for s in ("sockgate", "node") if any(s in run for run in data["runs"])]
    runs = headlines(data)
    meds = medians(runs)
    pinning = (
        "the servers (each replica, and Redis) on CPU 0 (`taskset -c 0`), the load "
        "generator and the orchestrator on CPU 1"
        if m.get("pinned")
        else "no pinning (fewer than 2 cores)"
    )
    return f"""## Gateway: sockgate beside the Node baseline

Command: `{command}` ({data["seconds"] / 60:.1f} min). Medians of {cfg["runs"]} runs.

Machine: {m["cpu"]}, {m["cores"]} cores, {m["memory_gib"]} GiB, Linux {m["kernel"]},
Python {m["python"]}, Node {m["node"]}; loopback only. The machine is shared with other work:
compare figures of one run as ratios.

Pinning: {pinning}.

- **sockgate**: `python -m services.gateway` (uvicorn, websockets-sansio, deflate off, uvloop),
  `REDIS_URL` set (cluster mode), default limits; keys from the real auth service's JWKS.
- **Node baseline**: `loadtests/node_baseline/server.mjs` — Express + socket.io 4, a
  `jsonwebtoken` RS256 middleware with the public key, `@socket.io/redis-adapter`; the same
  event contract (join/message acks, message fan-out, presence), no limits (tutorial style).
- **Load generator**: `loadtests/node_baseline/loadgen.mjs`, raw `ws` clients speaking
  Engine.IO 4 / Socket.IO 5 over websocket (a client's cost per message stays far below the
  server's); every server is first checked with the official `socket.io-client`. Tokens are
  minted with the auth service's key (`loadtests/mint_tokens.py`), one user per connection.
- **CPU and memory** are read from the server process itself (`/proc/<pid>/stat`, `status`):
  CPU per connect over the 100-in-flight point. Redis runs on the servers' core, so "… with
  Redis's" adds what a connect cost Redis there (its `INFO cpu`): sockgate's cluster-wide
  per-user limit is one grouped script call per connect; Node's adapter does no Redis work
  on a connect. Memory per connection is
  (RSS with {cfg["idle_steps"][-1]:,} idle connections − RSS before) ÷ connections, after a
  warm-up of 200 connects.
- **Warm and fresh**: the handshake figures at 100 in flight are measured on a replica that
  has already served thousands of connects (the memory steps come first). "First storm on a
  fresh replica" is the same storm ({cfg["connects_per_point"]:,} connects) as the very first
  traffic of a replica started moments before (start-up not counted): what a replacement
  replica, or a new one in a rolling deploy, meets when its clients reconnect at once. V8
  compiles Node's handshake path during its first few thousand connects; CPython 3.11 has no
  JIT (its specialising interpreter settles within a few calls of each function).
- **Fan-out**: two replicas and Redis on CPU 0; rooms of 100 members spread evenly over both
  replicas; publishers (≤ 12 messages/s each, under the gateway's per-socket rate limit) send
  at the offered rate for {cfg["step_seconds"]:g} s, open loop; latency is publisher send →
  receiver (one clock), counted over every expected delivery (a delivery still missing after
  {cfg["drain_seconds"]:g} s of drain counts as slower than all); deliveries/s over the time the
  deliveries really took. CPU per delivery sums both replicas and Redis.

### Summary

{summary_table(meds, data.get("paired"))}

Floors: {FLOOR_SOURCE}. "… alternating": the median sockgate ÷ Node of the alternating rounds
below, where they measure the figure. "met" needs the target and at least the Node baseline,
judged on that ratio where there is one (it carries the least of the machine's drift), else
on the medians of the runs. A delivery
rate meets its target, and matches Node's, within 1 %: the measured rate divides by the span
from the first send to the last delivery, so a run that delivers everything on time still lands
just under the offered rate.{log_problems_line(data)}

Run by run (both servers of a run measured minutes apart, so each ratio carries less of the
machine's drift than the ratio of the medians above):

{paired_table(runs)}{alternating_section(data)}

### Handshakes

![Handshake latency and throughput against handshakes in flight]({charts_rel}/handshake.png)

{handshake_table(data, servers)}

### Memory

![RSS against idle connections]({charts_rel}/memory.png)

{memory_table(data, servers)}

{close_line(data, servers)}

### Room fan-out, two replicas + Redis

![Fan-out deliveries/s and p99 against clients]({charts_rel}/fanout.png)

{fanout_table(data, servers)}

"lost": over 1 % of the expected deliveries had not arrived by the end of the drain, so the
percentile is unbounded. Steps above a server's saturation point (p99 over 1 s, or under 80 %
of the offered rate delivered) past the headline rate are skipped.
"""


HISTORY = Path(__file__).with_name("benchmark_history.md")


def document(gateway_md: str, auth_md: str) -> str:
    """The whole document: generated figures, then the hand-kept before/after history."""
    history = HISTORY.read_text().strip() if HISTORY.exists() else ""
    return f"""# Benchmarks

Generated by `make bench` (`loadtests/bench.py`); do not edit by hand. Every figure comes from a
script under `loadtests/`, with the command that produced it. This machine is shared and noisy:
compare figures from one run as ratios, not across runs.

{gateway_md.strip()}

{auth_md.strip()}

{history}
"""
