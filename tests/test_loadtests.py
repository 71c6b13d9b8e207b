"""The load-test tooling, quickly: the dev-only token minting CLI and the Locust scenarios.

No load is generated here (``make loadtest`` and ``make bench`` do that). Locust is imported
only in a child process: it monkey-patches the standard library with gevent on import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from loadtests.bench import bench_command
from loadtests.bench_gateway import BenchConfig, log_problems
from loadtests.bench_paired import run_paired
from loadtests.bench_report import (
    FIGURES,
    alternating_section,
    headline,
    log_problems_line,
    met,
    paired,
    summary_table,
)
from loadtests.mint_tokens import MintRefused, check_allowed
from shared.tokens import TokenVerifier
from tests.support.keys import new_rsa_key, thumbprint_kid, write_key
from tests.support.processes import ROOT

LOOPBACK_ISSUER = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def signing_key() -> RSAPrivateKey:
    return new_rsa_key()


@pytest.fixture
def keys_dir(tmp_path: Path, signing_key: RSAPrivateKey) -> Path:
    folder = tmp_path / "keys"
    write_key(folder, new_rsa_key(), created=1_000)  # an older key: the newest must sign
    write_key(folder, signing_key, created=2_000)
    return folder


def mint_cli(
    keys_dir: Path, out: Path, issuer: str, *, opt_in: bool, count: int = 3
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(out.parent)}
    if opt_in:
        env["SOCKGATE_LOADTEST"] = "1"
    args = [sys.executable, "-m", "loadtests.mint_tokens", "--keys-dir", str(keys_dir)]
    args += ["--count", str(count), "--issuer", issuer, "--out", str(out)]
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)


def test_minting_is_refused_without_the_opt_in(keys_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tokens.json"
    done = mint_cli(keys_dir, out, LOOPBACK_ISSUER, opt_in=False)
    assert done.returncode == 2
    assert "SOCKGATE_LOADTEST=1" in done.stderr
    assert not out.exists()


def test_minting_is_refused_for_an_issuer_off_loopback(keys_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tokens.json"
    done = mint_cli(keys_dir, out, "https://auth.example.com", opt_in=True)
    assert done.returncode == 2
    assert "loopback" in done.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "issuer",
    [
        "https://auth.example.com",
        "http://10.0.0.5:8000",
        "http://127.0.0.1.example.com",
        "http://localhost.example.com:8000",
        "ftp://127.0.0.1",
    ],
)
def test_only_loopback_issuers_pass_the_check(issuer: str) -> None:
    with pytest.raises(MintRefused, match="loopback"):
        check_allowed(issuer, {"SOCKGATE_LOADTEST": "1"})


@pytest.mark.parametrize(
    "issuer",
    ["http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000", "https://127.0.0.2"],
)
def test_loopback_issuers_pass_the_check_with_the_opt_in(issuer: str) -> None:
    check_allowed(issuer, {"SOCKGATE_LOADTEST": "1"})
    for environ in ({}, {"SOCKGATE_LOADTEST": "0"}, {"SOCKGATE_LOADTEST": "yes"}):
        with pytest.raises(MintRefused, match="SOCKGATE_LOADTEST=1"):
            check_allowed(issuer, environ)


class _OneKey:
    """A KeySource holding one public key."""

    def __init__(self, kid: str, key: RSAPublicKey) -> None:
        self._kid, self._key = kid, key

    def get(self, kid: str) -> RSAPublicKey | None:
        return self._key if kid == self._kid else None

    async def get_unknown(self, kid: str) -> RSAPublicKey | None:
        return None


async def test_minted_tokens_verify_against_the_newest_key(
    keys_dir: Path, tmp_path: Path, signing_key: RSAPrivateKey
) -> None:
    out = tmp_path / "tokens.json"
    done = mint_cli(keys_dir, out, LOOPBACK_ISSUER, opt_in=True, count=3)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_mode & 0o077 == 0  # credentials: readable by the owner only
    document = json.loads(out.read_text())
    kid = thumbprint_kid(signing_key)
    assert document["kid"] == kid
    assert len(document["tokens"]) == 3
    verifier = TokenVerifier(
        issuer=LOOPBACK_ISSUER, audience="gateway", keys=_OneKey(kid, signing_key.public_key())
    )
    subs = set()
    for entry in document["tokens"]:
        header = verifier.header(entry["token"])
        assert header["typ"] == "at+jwt"
        assert header["kid"] == kid
        claims = await verifier.verify(entry["token"])
        assert claims.sub == entry["sub"]
        assert claims.name == entry["name"]
        assert claims.jti
        assert set(claims.raw) == {"iss", "sub", "aud", "iat", "exp", "jti", "name"}
        subs.add(claims.sub)
    assert len(subs) == 3  # one identity per simulated user


def test_locust_scenarios_load_with_their_users_and_one_shape() -> None:
    code = (
        "import sys\n"
        "from locust.util.load_locustfile import load_locustfile\n"
        "for path in sys.argv[1:]:\n"
        "    users, shapes = load_locustfile(path)\n"
        "    print(path.rsplit('/', 1)[1], sorted(users), [type(s).__name__ for s in shapes])\n"
    )
    scenarios = sorted((ROOT / "loadtests" / "scenarios").glob("[a-z]*.py"))
    assert {p.stem for p in scenarios} == {"storm", "broadcast", "token_churn", "login_storm"}
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, scenarios)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.strip().splitlines())
    assert lines["storm.py"] == "['StormUser'] ['StormShape']"
    assert lines["broadcast.py"] == "['ListenerUser', 'PublisherUser'] ['BroadcastShape']"
    assert lines["token_churn.py"] == "['ChurnUser'] ['ChurnShape']"
    assert lines["login_storm.py"] == "['LoginUser'] ['LoginStepShape']"


def test_rate_targets_allow_the_measurement_window_and_nothing_more() -> None:
    """A delivery rate within 1 % of the target meets it; other figures stay strict."""
    figures = {figure.key: figure for figure in FIGURES}
    rate, p99 = figures["deliveries_per_s"], figures["fanout_p99_ms"]
    assert met(rate, 49_942, 49_962) == "✓"
    assert met(rate, 49_000, 49_962) == "✗ target, Node"
    assert met(rate, 49_942, 52_000) == "✗ Node"
    assert met(p99, 49.9, 4.4) == "✗ Node"
    assert met(p99, 50.0, 60.0) == "✗ target"
    connects = figures["connects_per_s"]
    assert met(connects, 1_999, 1_000) == "✗ target"


def test_run_by_run_ratios_pair_the_servers_of_each_run() -> None:
    figures = {figure.key: figure for figure in FIGURES}
    runs: list[dict[str, dict[str, float | None]]] = [
        {
            "sockgate": {"connects_per_s": 2000.0, "cpu_ms_per_connect": 0.40},
            "node": {"connects_per_s": 2500.0, "cpu_ms_per_connect": 0.40},
        },
        {
            "sockgate": {"connects_per_s": 2600.0, "cpu_ms_per_connect": 0.30},
            "node": {"connects_per_s": 2600.0, "cpu_ms_per_connect": 0.33},
        },
        {"sockgate": {"connects_per_s": None}, "node": {"connects_per_s": 2400.0}},
    ]
    assert paired(runs, figures["connects_per_s"]) == ([0.8, 1.0], 1)  # a tie is Node's level
    ratios, level = paired(runs, figures["cpu_ms_per_connect"])  # lower is better
    assert [round(r, 3) for r in ratios] == [1.0, 0.909] and level == 2
    rate = figures["deliveries_per_s"]  # within the rate tolerance counts as Node's level
    assert paired([{"sockgate": {rate.key: 49_700.0}, "node": {rate.key: 50_000.0}}], rate)[1] == 1
    assert paired([{"sockgate": {rate.key: 49_000.0}, "node": {rate.key: 50_000.0}}], rate)[1] == 0


def test_alternating_rounds_report_each_rounds_ratio_and_their_median() -> None:
    def side(connects: float, cpu_ms: float, cpu_us: float) -> dict[str, float | None]:
        return {
            "connects_per_s": connects,
            "cpu_ms_per_connect": cpu_ms,
            "cpu_us_per_delivery": cpu_us,
        }

    rounds = [
        {"sockgate": side(2000, 0.40, 15.0), "node": side(2500, 0.40, 12.0)},
        {"sockgate": side(2400, 0.36, 14.0), "node": side(2000, 0.45, 14.0)},
        {"sockgate": side(2200, 0.50, 16.0), "node": side(2200, 0.40, 20.0)},
    ]
    config = {"connects_per_point": 3000, "headline_inflight": 100}
    text = alternating_section(
        {"paired": rounds, "config": config | {"headline_clients": 1000, "headline_rate": 50_000}}
    )
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if "|" in line}
    # medians per server, each round's ratio in order, the median ratio, rounds at Node's level
    connects = rows["authenticated connects/s, 100 in flight"]
    assert "| 2,200 | 2,200 | 0.80 / 1.20 / 1.00 | 1.00× | 2 of 3 |" in connects
    cpu = rows["server CPU per connect"]
    assert "| 0.40 | 0.40 | 1.00 / 0.80 / 1.25 | 1.00× | 2 of 3 |" in cpu
    delivery = rows["server CPU per delivery at 50,000/s"]
    assert "| 15.0 | 14.0 | 1.25 / 1.00 / 0.80 | 1.00× | 2 of 3 |" in delivery
    assert "fan-out delivery p99" not in text  # figures the rounds do not hold are left out
    assert alternating_section({"paired": [], "config": config}) == ""
    counted = {"runs": [{"sockgate": {"log_problems": 2}}], "paired": rounds}
    assert "over all runs and the alternating rounds" in log_problems_line(counted)
    assert "over all runs (" in log_problems_line(counted | {"paired": []})


def test_the_baseline_is_judged_on_the_alternating_ratio_where_there_is_one() -> None:
    figures = {figure.key: figure for figure in FIGURES}
    cpu, connects = figures["cpu_ms_per_connect"], figures["connects_per_s"]
    assert met(cpu, 0.36, 0.38) == "✓"  # the runs' medians alone
    assert met(cpu, 0.36, 0.38, alternating=1.11) == "✗ Node"
    assert met(cpu, 0.45, 0.40, alternating=0.98) == "✓"
    assert met(cpu, 0.55, 0.40, alternating=0.98) == "✗ target"
    assert met(connects, 2_491, 2_595, alternating=0.85) == "✗ Node"
    assert met(connects, 2_400, 2_595, alternating=1.0) == "✓"


def _storm(connects: float, p99: float, cpu_ms: float, inflight: int = 100) -> dict[str, Any]:
    return {
        "inflight": inflight,
        "connects_per_s": connects,
        "latency_ms": {"p50": p99 / 2, "p99": p99},
        "server_cpu_ms_per_connect": cpu_ms,
    }


def test_the_fresh_replica_storm_is_reported_beside_the_warm_one_and_judged_on_nothing() -> None:
    """Read from the run's ``fresh`` storm; older results, without one, read as unmeasured."""
    config = {"headline_inflight": 100, "headline_clients": 1000, "headline_rate": 50_000}
    warm = {"sweep": [_storm(900, 80, 0.9, inflight=10), _storm(2000, 60, 0.4)], "memory": []}
    result = {"connections": warm, "fanout": [], "fresh": _storm(1500, 130, 0.65)}
    figures = headline(result, config)
    assert (figures["connects_per_s"], figures["cpu_ms_per_connect"]) == (2000, 0.4)
    assert figures["fresh_connects_per_s"] == 1500
    assert figures["fresh_handshake_p99_ms"] == 130
    assert figures["fresh_cpu_ms_per_connect"] == 0.65
    older = headline({"connections": warm, "fanout": []}, config)
    assert older["fresh_connects_per_s"] is None and older["connects_per_s"] == 2000

    node = headline(result | {"fresh": _storm(1000, 200, 0.8)}, config)
    table = summary_table({"sockgate": figures, "node": node})
    row = next(line for line in table.splitlines() if "first storm on a fresh replica" in line)
    # sockgate ÷ Node is shown; with no target there is no verdict either way
    assert "| 1,500 | 1,000 | 1.50× |" in row and row.endswith("| — | — |")


def test_redis_cpu_is_added_to_the_servers_as_the_core_they_share() -> None:
    """Per connect: the server's CPU-ms plus Redis's CPU-µs; older storms read as unmeasured."""
    config = {"headline_inflight": 100, "headline_clients": 1000, "headline_rate": 50_000}
    storm = _storm(2600, 55, 0.36) | {"redis_cpu_us_per_connect": 12.0}
    sockgate = headline({"connections": {"sweep": [storm], "memory": []}, "fanout": []}, config)
    assert sockgate["cpu_ms_per_connect"] == 0.36
    assert sockgate["core_cpu_ms_per_connect"] == pytest.approx(0.372)
    node_storm = _storm(2700, 52, 0.36) | {"redis_cpu_us_per_connect": 0.0}
    node = headline({"connections": {"sweep": [node_storm], "memory": []}, "fanout": []}, config)
    row = next(
        line
        for line in summary_table({"sockgate": sockgate, "node": node}).splitlines()
        if "with Redis's" in line
    )
    assert "| 0.372 | 0.360 | 1.03× |" in row and row.endswith("| — | — |")  # no verdict
    older = headline(
        {"connections": {"sweep": [_storm(2600, 55, 0.36)], "memory": []}, "fanout": []}, config
    )
    assert older["core_cpu_ms_per_connect"] is None


def test_no_alternating_rounds_without_both_servers() -> None:
    """Only sockgate asked for: nothing to alternate with, so nothing is started."""
    cfg = BenchConfig(servers=("sockgate",))
    assert run_paired(None, None, cfg, print) == []  # type: ignore[arg-type]  # never touched
    assert run_paired(None, None, BenchConfig(paired_rounds=0), print) == []  # type: ignore[arg-type]


def test_log_problems_counts_warning_and_error_records_only(tmp_path: Path) -> None:
    first, second = tmp_path / "sockgate-single.log", tmp_path / "sockgate-replica1.log"
    first.write_text(
        '{"level":"info","msg":"gateway starting"}\n'
        '{"level":"warning","msg":"could not publish to Redis"}\n'
        "Traceback (most recent call last):\n"
        "{not json\n"
        '{"level":"error","msg":"closing a connection failed"}\n'
    )
    second.write_text('{"level":"critical","msg":"x"}\n{"level":"debug","msg":"y"}\n')
    assert log_problems([first, second, tmp_path / "missing.log"]) == 3


def test_the_document_states_the_command_that_measured_its_runs() -> None:
    assert bench_command(3) == "make bench"
    assert bench_command(5) == 'make bench BENCH_ARGS="--runs 5"'
    assert bench_command(1, quick=True) == "make bench BENCH_ARGS=--quick"
