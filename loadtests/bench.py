"""``make bench``: every benchmark, then ``docs/benchmarks.md`` and its charts, regenerated whole.

1. ``python -m loadtests.bench_auth`` (the auth service: hashing, login, refresh), its
   Markdown section taken as printed;
2. ``loadtests.bench_gateway`` (handshakes, memory, fan-out; sockgate beside the Node
   baseline), then ``loadtests.bench_paired`` (the headline steps of both servers in
   alternation), raw results kept in ``var/bench/gateway.json``;
3. charts in ``docs/benchmarks/*.png`` (matplotlib) and the document itself.

Needs ``SOCKGATE_LOADTEST=1`` (the gateway benchmark mints tokens with the auth key; see
``loadtests.mint_tokens``). The full run takes about a quarter of an hour on 2 cores.

    SOCKGATE_LOADTEST=1 .venv/bin/python -m loadtests.bench [--runs 3] [--quick]
    .venv/bin/python -m loadtests.bench --from var/bench/gateway.json --auth-from F.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from loadtests.bench_gateway import (
    SERVERS,
    BenchConfig,
    exit_on_sigterm,
    run_bench,
    save_json,
)
from loadtests.bench_paired import run_paired
from loadtests.bench_report import document, draw_charts, gateway_section
from loadtests.mint_tokens import MintRefused
from tests.support.processes import ROOT

DOC = ROOT / "docs" / "benchmarks.md"
CHARTS = ROOT / "docs" / "benchmarks"
RAW = ROOT / "var" / "bench"
DEFAULT_RUNS = 3


def run_auth_bench(runs: int) -> str:
    """The auth section, as ``loadtests.bench_auth`` prints it."""
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.bench_auth", "--runs", str(runs)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"bench_auth failed:\n{done.stderr[-4000:]}")
    return done.stdout


def bench_command(runs: int, *, quick: bool = False) -> str:
    """The ``make`` command that measures ``runs`` runs, as the document states it."""
    if quick:
        return "make bench BENCH_ARGS=--quick"
    return "make bench" if runs == DEFAULT_RUNS else f'make bench BENCH_ARGS="--runs {runs}"'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    parser.add_argument("--quick", action="store_true", help="small sweeps, one run")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--from", dest="from_json", type=Path, help="reuse gateway results")
    parser.add_argument("--auth-from", type=Path, help="reuse an auth section (Markdown)")
    parser.add_argument("--out", type=Path, default=DOC)
    args = parser.parse_args(argv)
    exit_on_sigterm()

    RAW.mkdir(parents=True, exist_ok=True)
    if args.auth_from:
        auth_md = args.auth_from.read_text()
    else:
        print("auth service benchmark (loadtests.bench_auth) …", flush=True)
        auth_md = run_auth_bench(1 if args.quick else args.runs)
        RAW.mkdir(parents=True, exist_ok=True)
        (RAW / "auth.md").write_text(auth_md)
    if args.from_json:
        data = json.loads(args.from_json.read_text())
    else:
        servers = tuple(s for s in args.servers.split(",") if s)
        cfg = (
            BenchConfig.quick(1, servers)
            if args.quick
            else BenchConfig(runs=args.runs, servers=servers)
        )
        raw = RAW / "gateway.json"
        try:
            data = run_bench(
                cfg,
                log=lambda line: print(line, flush=True),
                checkpoint=lambda partial: save_json(raw, partial),
                paired=run_paired,
            )
        except MintRefused as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
        save_json(raw, data)
    draw_charts(data, CHARTS)
    command = bench_command(data["config"]["runs"], quick=args.quick)
    rel = Path(CHARTS).relative_to(args.out.parent) if args.out == DOC else CHARTS
    args.out.write_text(document(gateway_section(data, command, str(rel)), auth_md))
    print(f"wrote {args.out} and {CHARTS}/*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
