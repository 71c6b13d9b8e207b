"""The demo web app under ``/demo/``: static files, the Socket.IO client and a small config.

The page (``web/``) is plain ES modules with no build step. It talks to the auth API on its own
origin and to the gateways named in ``/demo/config.json``; the official ``socket.io-client``
ESM build is served from ``node_modules`` (installed by ``npm ci``) at
``/demo/vendor/socket.io.esm.min.js``. Every demo response carries a Content-Security-Policy
that lets the page load only its own scripts and connect only to its origin and those gateways.

Nothing here is mounted unless the app factory asks for it (``AUTH_DEMO=true``).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

ROOT = Path(__file__).resolve().parents[2]
WEB_DIR = ROOT / "web"
VENDOR_DIR = ROOT / "node_modules" / "socket.io-client" / "dist"
VENDOR_FILES = ("socket.io.esm.min.js", "socket.io.esm.min.js.map")
PREFIX = "/demo"


class DemoNotInstalled(RuntimeError):
    """The demo's files are missing: ``web/`` or ``npm ci``'s socket.io-client build."""


def mount_demo(
    app: FastAPI,
    *,
    gateway_urls: list[str],
    page_origin: str | None = None,
    refresh_margin: int = 60,
    web_dir: Path = WEB_DIR,
    vendor_dir: Path = VENDOR_DIR,
) -> None:
    """Serves the demo page at ``/demo/``, wired to ``gateway_urls``.

    ``page_origin`` is the origin the gateways accept (their ``GATEWAY_CORS_ORIGINS``): the page
    tells the visitor to go there when it is opened from another. ``refresh_margin`` is how many
    seconds before expiry the page refreshes its access token. Raises ``DemoNotInstalled`` at
    start-up, not at the first request, when the files are missing.
    """
    gateways = [_origin(url) for url in gateway_urls]
    if not gateways:
        raise ValueError("the demo needs at least one gateway URL")
    if not (web_dir / "index.html").is_file():
        raise DemoNotInstalled(f"{web_dir / 'index.html'} is missing")
    if not (vendor_dir / VENDOR_FILES[0]).is_file():
        raise DemoNotInstalled(f"{vendor_dir / VENDOR_FILES[0]} is missing: run `npm ci`")

    headers = _security_headers(gateways)
    config = {
        "authUrl": "",  # the auth API is on the page's own origin
        "gateways": gateways,
        "pageOrigin": _origin(page_origin) if page_origin else None,
        "refreshMarginSeconds": refresh_margin,
    }

    async def demo_config() -> Response:
        return JSONResponse(config, headers=headers)

    async def redirect_to_page() -> Response:
        return RedirectResponse(f"{PREFIX}/", status_code=308)

    app.add_api_route(PREFIX, redirect_to_page, methods=["GET"], include_in_schema=False)
    app.add_api_route(
        f"{PREFIX}/config.json", demo_config, methods=["GET"], include_in_schema=False
    )
    for name in VENDOR_FILES:
        if (vendor_dir / name).is_file():  # the source map is optional
            _add_file_route(app, f"{PREFIX}/vendor/{name}", vendor_dir / name, headers)
    app.mount(PREFIX, _DemoFiles(directory=web_dir, html=True, headers=headers), name="demo")


def _add_file_route(app: FastAPI, path: str, file: Path, headers: dict[str, str]) -> None:
    # One route per file, so nothing else in node_modules is ever reachable.
    async def serve() -> Response:
        return FileResponse(file, headers=headers)

    app.add_api_route(path, serve, methods=["GET"], include_in_schema=False)


class _DemoFiles(StaticFiles):
    """``StaticFiles`` that adds the demo's security and cache headers to every response."""

    def __init__(self, *, directory: Path, html: bool, headers: dict[str, str]) -> None:
        super().__init__(directory=directory, html=html)
        self._headers = headers

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(self._headers)
        return response


def _security_headers(gateways: list[str]) -> dict[str, str]:
    # ws:// and wss:// are listed explicitly: not every browser maps http sources to ws.
    sockets = [g.replace("http://", "ws://", 1).replace("https://", "wss://", 1) for g in gateways]
    connect = " ".join(["'self'", *gateways, *sockets])
    return {
        "Content-Security-Policy": (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src {connect}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        # The demo is small and changes with the code: always revalidate.
        "Cache-Control": "no-cache",
    }


def _origin(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http(s) URL")
    return f"{parts.scheme}://{parts.netloc}"
