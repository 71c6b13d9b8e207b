"""The compose load balancer's nginx config, made runnable here for tests.

The test copy differs from deploy/nginx/nginx.conf only where the compose network is needed:
upstream servers point at loopback ports (Debian's nginx predates the open-source ``resolve``
parameter, and the compose names resolve only inside Docker), the certificate is a throwaway
one, and ports, pid and user suit a run without Docker. Every substitution must match exactly,
so a config that drifts from what the tests expect fails loudly instead of going unchecked.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.deploy.tools import DEPLOY, tool
from tests.support.processes import Process

NGINX_CONF = DEPLOY / "nginx" / "nginx.conf"
INSTALL_NGINX = "apt-get install -y nginx"


@dataclass(frozen=True)
class LbPorts:
    """Where the test nginx listens and where each of its upstreams points."""

    https: int
    internal: int
    sticky: tuple[int, ...]
    balanced: tuple[int, ...]
    auth: tuple[int, ...]


def throwaway_cert(home: Path) -> Path:
    """A self-signed pair for 127.0.0.1 in ``home`` (tls.crt, tls.key); returns the cert."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(home / "tls.key"), "-out", str(home / "tls.crt")],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return home / "tls.crt"


def _substitute(text: str, pattern: str, replacement: str, count: int = 1) -> str:
    new, made = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert made == count, f"expected {count} match(es) of {pattern!r} in nginx.conf, got {made}"
    return new


def _servers(ports: tuple[int, ...]) -> str:
    return "\n        ".join(
        f"server 127.0.0.1:{port} max_fails=3 fail_timeout=10s;" for port in ports
    )


def write_test_config(home: Path, ports: LbPorts) -> Path:
    """The test copy of nginx.conf in ``home``, with a throwaway certificate beside it."""
    throwaway_cert(home)
    text = NGINX_CONF.read_text()
    text = _substitute(text, r"^user nginx;$", "")
    text = _substitute(text, r"^pid /var/run/nginx\.pid;$", f"pid {home}/nginx.pid;")
    text = _substitute(text, r"^worker_processes auto;$", "worker_processes 1;")
    text = _substitute(text, r"/etc/nginx/certs/", f"{home}/", count=2)
    text = _substitute(text, r"listen 8443 ssl;", f"listen 127.0.0.1:{ports.https} ssl;")
    text = _substitute(text, r"listen 127\.0\.0\.1:8081;", f"listen 127.0.0.1:{ports.internal};")
    for upstream, upstream_ports in (
        ("gateways_sticky", ports.sticky),
        ("gateways_balanced", ports.balanced),
    ):
        text = _substitute(
            text,
            rf"(upstream {upstream} \{{[^}}]*?)server gateway:8001 resolve [^;]*;",
            lambda m, p=upstream_ports: m.group(1) + _servers(p),
        )
    text = _substitute(text, r"server auth:8000 resolve [^;]*;", lambda _m: _servers(ports.auth))
    assert not re.search(r"^\s*server\s.*\bresolve\b", text, re.MULTILINE)
    path = home / "nginx.conf"
    path.write_text(text)
    return path


def check_config(home: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on a test copy."""
    nginx = tool("nginx", INSTALL_NGINX)
    return subprocess.run(
        [nginx, "-t", "-q", "-p", str(home), "-c", str(config), "-e", "stderr"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


@contextmanager
def running_nginx(home: Path, ports: LbPorts) -> Iterator[Process]:
    """A real nginx on the test copy, in the foreground, stopped by its pid on exit."""
    nginx = tool("nginx", INSTALL_NGINX)
    config = write_test_config(home, ports)
    proc = Process(
        [nginx, "-p", str(home), "-c", str(config), "-e", "stderr", "-g", "daemon off;"],
        env={"PATH": "/usr/sbin:/usr/bin:/bin"},
        log_path=home / "nginx.log",
    ).start()
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.alive(), f"nginx exited:\n{proc.logs()}"
            try:
                socket.create_connection(("127.0.0.1", ports.https), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"nginx did not listen:\n{proc.logs()}"
                time.sleep(0.05)
        yield proc
    finally:
        proc.stop()
