"""A stand-in JWKS endpoint for tests, run as a real process on a loopback port.

``python -m tests.support.jwks_server --port P --keys-file F`` serves the bytes of ``F``
(re-read on every request, so a test rotates keys by rewriting it) at ``/.well-known/jwks.json``
and counts every request it receives. Control endpoints, not counted:

- ``GET /_count`` → ``{"jwks": n, "total": n, "paths": [...]}``, also the health check;
- ``POST /_control`` ``{"delay": s, "status": code, "redirect": url}`` → how later requests
  are answered (slowly, with an error status, or redirected elsewhere);
- ``POST /_reset`` → counters to zero and normal answers.

``JwksServer`` is the test side: it starts the process, writes the file and drives the
control endpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.support.processes import Process, free_port, wait_http_ok

JWKS_PATH = "/.well-known/jwks.json"


def create_app(keys_file: Path) -> Starlette:
    """The JWKS stand-in serving ``keys_file``."""
    state: dict[str, Any] = {}

    def reset() -> None:
        state.update(jwks=0, total=0, paths=[], delay=0.0, status=200, redirect=None)

    async def count(request: Request) -> Response:
        return JSONResponse({k: state[k] for k in ("jwks", "total", "paths")})

    async def control(request: Request) -> Response:
        body = await request.json()
        state.update({k: body[k] for k in ("delay", "status", "redirect") if k in body})
        return Response(status_code=204)

    async def do_reset(request: Request) -> Response:
        reset()
        return Response(status_code=204)

    async def anything(request: Request) -> Response:
        state["total"] += 1
        state["paths"].append(request.url.path)
        if request.url.path == JWKS_PATH:
            state["jwks"] += 1
        if state["delay"]:
            await asyncio.sleep(state["delay"])
        if state["redirect"]:
            return RedirectResponse(state["redirect"], status_code=302)
        if state["status"] != 200:
            return JSONResponse({"error": "failing on purpose"}, status_code=state["status"])
        if request.url.path != JWKS_PATH:
            return Response(status_code=404)
        return Response(keys_file.read_bytes(), media_type="application/json")

    reset()
    return Starlette(
        routes=[
            Route("/_count", count),
            Route("/_control", control, methods=["POST"]),
            Route("/_reset", do_reset, methods=["POST"]),
            Route("/{path:path}", anything),
        ]
    )


@dataclass
class JwksServer:
    """A ``jwks_server`` process on a loopback port, driven from a test."""

    workdir: Path
    port: int = field(default_factory=free_port)
    process: Process | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base_url + JWKS_PATH

    @property
    def keys_file(self) -> Path:
        return self.workdir / f"jwks-{self.port}.json"

    def start(self) -> JwksServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.keys_file.exists():
            self.publish_raw(b'{"keys": []}')
        args = [sys.executable, "-m", "tests.support.jwks_server"]
        args += ["--port", str(self.port), "--keys-file", str(self.keys_file)]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1"}
        log_path = self.workdir / f"jwks-{self.port}.log"
        self.process = Process(args, env, log_path).start()
        try:
            wait_http_ok(self.base_url + "/_count", proc=self.process)
        except BaseException:
            self.process.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def publish(self, jwks: dict[str, Any]) -> None:
        """Serves ``jwks`` from now on."""
        self.publish_raw(orjson.dumps(jwks))

    def publish_raw(self, body: bytes) -> None:
        """Serves ``body`` as the document; renamed into place so no request sees half of it."""
        tmp = self.keys_file.with_suffix(".tmp")
        tmp.write_bytes(body)
        tmp.replace(self.keys_file)

    def counts(self) -> dict[str, Any]:
        return dict(httpx.get(self.base_url + "/_count", timeout=5).json())

    def jwks_requests(self) -> int:
        return int(self.counts()["jwks"])

    def total_requests(self) -> int:
        return int(self.counts()["total"])

    def control(self, **mode: Any) -> None:
        """Sets ``delay``, ``status`` or ``redirect`` for the requests that follow."""
        httpx.post(self.base_url + "/_control", json=mode, timeout=5).raise_for_status()

    def reset(self) -> None:
        httpx.post(self.base_url + "/_reset", timeout=5).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--keys-file", type=Path, required=True)
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.keys_file),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        # A request held by a "delay" must not hold up the process's exit.
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
