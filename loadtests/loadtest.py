"""``make loadtest``: one bounded, headless Locust scenario against a sockgate cluster on loopback.

By default it starts its own cluster on free loopback ports (a Redis-compatible server, the
auth service on a fresh SQLite file, two gateway replicas), with the settings a load test from
one address needs (the auth service's per-address limits raised; for ``token_churn`` a 60 s
access-token lifetime). With ``--gateways`` it targets a running deployment instead (``make
run``, or compose ports published on 127.0.0.1): every URL must be loopback.

Then it mints tokens with the auth service's key (``loadtests.mint_tokens``: needs
``SOCKGATE_LOADTEST=1``), runs ``locust --headless --processes N`` (every core by default) on
the scenario's locustfile, whose ``LoadTestShape`` ends the run, with ``--run-time`` as a hard
bound, and writes the reports under ``--out`` (``var/loadtest/``): ``<scenario>_stats.csv``,
``_stats_history.csv``, ``_failures.csv``, ``_exceptions.csv`` and ``<scenario>.html``. Every
process it started is stopped by its pid.

    SOCKGATE_LOADTEST=1 .venv/bin/python -m loadtests.loadtest --scenario storm --users 1000
    SOCKGATE_LOADTEST=1 .venv/bin/python -m loadtests.loadtest --scenario broadcast \\
        --gateways http://127.0.0.1:8001,http://127.0.0.1:8002 --auth http://127.0.0.1:8000 \\
        --keys-dir var/keys
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import sys
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.bench_gateway import exit_on_sigterm
from loadtests.mint_tokens import MintRefused, is_loopback_url, mint_tokens
from tests.support.processes import ROOT, Process, RedisServer, free_port, start_service

SCENARIOS = ("storm", "broadcast", "token_churn", "login_storm")
MAX_USERS = 20_000
MAX_RUN_SECONDS = 900
# The variables each scenario reads for --users / --spawn-rate / --hold.
KNOBS = {
    "storm": ("STORM_USERS", "STORM_RATE", "STORM_HOLD"),
    "broadcast": ("BROADCAST_USERS", "BROADCAST_SPAWN_RATE", "BROADCAST_HOLD"),
    "token_churn": ("CHURN_USERS", "CHURN_SPAWN_RATE", "CHURN_HOLD"),
    "login_storm": (None, None, "LOGIN_STEP_SECONDS"),
}


@dataclass
class LocalCluster:
    """Redis, the auth service and N gateway replicas on free loopback ports."""

    workdir: Path
    gateways: int = 2
    access_ttl: int = 900
    processes: list[Process] = field(default_factory=list)
    redis: RedisServer | None = None
    auth_url: str = ""
    gateway_urls: list[str] = field(default_factory=list)

    @property
    def keys_dir(self) -> Path:
        return self.workdir / "keys"

    def start(self) -> LocalCluster:
        if self.workdir.exists():
            shutil.rmtree(self.workdir)  # a fresh database and key every run
        self.workdir.mkdir(parents=True)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.redis = RedisServer(free_port(), self.workdir).start()
        port = free_port()
        self.auth_url = f"http://127.0.0.1:{port}"
        common = {"LOG_LEVEL": "WARNING", "REDIS_URL": self.redis.url}
        auth_env = {
            **common,
            "AUTH_PORT": str(port),
            "AUTH_ISSUER": self.auth_url,
            "AUTH_DATABASE_URL": f"sqlite:///{self.workdir}/auth.db",
            "AUTH_KEYS_DIR": str(self.keys_dir),
            "AUTH_ACCESS_TTL": str(self.access_ttl),
            # All the load comes from 127.0.0.1: the per-address limit would refuse it first.
            "AUTH_IP_RATE_PER_MINUTE": "10000000",
            "AUTH_IP_BURST": "100000",
        }
        self.processes.append(
            start_service(
                "services.auth", auth_env, self.workdir / "auth.log", f"{self.auth_url}/healthz"
            )
        )
        for i in range(self.gateways):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            env = {
                **common,
                "GATEWAY_PORT": str(port),
                "JWT_ISSUER": self.auth_url,
                "GATEWAY_TOKEN_EXPIRING_LEAD": str(min(60, self.access_ttl // 3)),
            }
            log = self.workdir / f"gateway{i + 1}.log"
            self.processes.append(start_service("services.gateway", env, log, f"{url}/healthz"))
            self.gateway_urls.append(url)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.signal(signal.SIGINT)  # at once: a gateway's SIGTERM would drain first
            proc.stop()
        self.processes.clear()
        if self.redis is not None:
            self.redis.stop()


def locust_command(args: argparse.Namespace, host: str) -> list[str]:
    out: Path = args.out
    return [
        sys.executable, "-m", "locust",
        "-f", str(ROOT / "loadtests" / "scenarios" / f"{args.scenario}.py"),
        "--headless",
        "--processes", str(args.processes),
        "--run-time", f"{args.run_time}s",
        "--stop-timeout", "10",
        "--host", host,
        "--csv", str(out / args.scenario),
        "--csv-full-history",
        "--html", str(out / f"{args.scenario}.html"),
        "--exit-code-on-error", "0",
        "--loglevel", "WARNING",
        "--only-summary",
    ]  # fmt: skip


def print_summary(out: Path, scenario: str) -> None:
    """The per-request lines of the stats CSV: count, failures, rate, percentiles."""
    stats = out / f"{scenario}_stats.csv"
    if not stats.exists():
        print(f"no stats written ({stats})")
        return
    print(f"\n{'request':32} {'count':>8} {'fail':>6} {'req/s':>8} {'p50':>7} {'p99':>7} ms")
    with stats.open() as handle:
        for row in csv.DictReader(handle):
            name = f"{row['Type']} {row['Name']}".strip()
            print(
                f"{name[:32]:32} {row['Request Count']:>8} {row['Failure Count']:>6} "
                f"{float(row['Requests/s']):>8.1f} {row['50%']:>7} {row['99%']:>7}"
            )
    failures = out / f"{scenario}_failures.csv"
    if failures.exists():
        with failures.open() as handle:
            for row in csv.DictReader(handle):
                print(f"  failure {row['Name']}: {row['Error']} × {row['Occurrences']}")
    print(f"\nreports: {out}/{scenario}_*.csv, {out}/{scenario}.html")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.loadtest", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--scenario", choices=SCENARIOS, default="storm")
    parser.add_argument("--users", type=int, help="users at the peak (scenario default if unset)")
    parser.add_argument("--spawn-rate", type=float, help="users started per second")
    parser.add_argument("--hold", type=float, help="seconds held at the peak (login: per step)")
    parser.add_argument("--run-time", type=int, default=120, help="hard bound, seconds")
    parser.add_argument("--processes", type=int, default=-1, help="Locust workers; -1: a core each")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "loadtest")
    parser.add_argument("--gateways", help="comma-separated gateway URLs of a running cluster")
    parser.add_argument("--auth", help="the auth service URL (with --gateways)")
    parser.add_argument("--keys-dir", type=Path, help="the auth service's AUTH_KEYS_DIR")
    parser.add_argument("--issuer", help="the tokens' iss (default: the --auth URL)")
    parser.add_argument("--ca-file", type=Path, help="CA bundle for https:// targets")
    args = parser.parse_args(argv)

    if args.users is not None and not 1 <= args.users <= MAX_USERS:
        parser.error(f"--users must be between 1 and {MAX_USERS}")
    if not 10 <= args.run_time <= MAX_RUN_SECONDS:
        parser.error(f"--run-time must be between 10 and {MAX_RUN_SECONDS} seconds")
    if args.gateways and not (args.auth and args.keys_dir):
        parser.error("--gateways needs --auth and --keys-dir (to mint tokens)")
    args.out.mkdir(parents=True, exist_ok=True)
    exit_on_sigterm()

    cluster: LocalCluster | None = None
    locust: Process | None = None
    try:
        if args.gateways:
            gateway_urls = [u.strip().rstrip("/") for u in args.gateways.split(",") if u.strip()]
            auth_url, keys_dir = args.auth.rstrip("/"), args.keys_dir
        else:
            ttl = 60 if args.scenario == "token_churn" else 900
            print("starting a local cluster: Redis, auth, 2 gateways (loopback, free ports)")
            cluster = LocalCluster(args.out / "cluster", access_ttl=ttl).start()
            gateway_urls, auth_url, keys_dir = (
                cluster.gateway_urls,
                cluster.auth_url,
                cluster.keys_dir,
            )
        for url in [*gateway_urls, auth_url]:
            if not is_loopback_url(url):
                print(f"loadtest: refusing to send load to {url}: loopback only", file=sys.stderr)
                return 2

        tokens_file = args.out / "tokens.json"
        count = min(MAX_USERS, (args.users or 1000) + 100)
        document = mint_tokens(
            keys_dir, count=count, issuer=args.issuer or auth_url, ttl=args.run_time + 3600
        )
        tokens_file.write_text(json.dumps(document))
        tokens_file.chmod(0o600)

        env = {
            **os.environ,
            "SOCKGATE_TOKENS": str(tokens_file),
            "SOCKGATE_GATEWAYS": ",".join(gateway_urls),
            "SOCKGATE_AUTH_URL": auth_url,
            "PYTHONUNBUFFERED": "1",
        }
        if args.ca_file:
            env["SOCKGATE_CA_FILE"] = str(args.ca_file.resolve())
        users_var, rate_var, hold_var = KNOBS[args.scenario]
        for var, value in ((users_var, args.users), (rate_var, args.spawn_rate),
                           (hold_var, args.hold)):  # fmt: skip
            if var and value is not None:
                env[var] = str(value)
        host = auth_url if args.scenario == "login_storm" else gateway_urls[0]
        command = locust_command(args, host)
        print(f"locust: {args.scenario} against {host} (bounded by {args.run_time}s)")
        locust = Process(command, env, args.out / f"{args.scenario}.log").start()
        if locust.wait(args.run_time + 60) is None:
            print("locust did not stop in time; stopping it", file=sys.stderr)
        print_summary(args.out, args.scenario)
    except MintRefused as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    finally:
        if locust is not None:
            locust.stop(grace=15)
            with suppress(ProcessLookupError):
                os.killpg(locust.pid, signal.SIGKILL)  # its forked workers, if any were left
        if cluster is not None:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
