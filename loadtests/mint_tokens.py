"""Access tokens for thousands of simulated users, minted with the auth service's own key.

DEV AND LOAD-TEST ONLY. Load tests need one access token per simulated user; getting them
through ``/v1/auth/login`` would cost one argon2id hash per user (about 20 ms of CPU each, by
design) and would measure the auth service instead of the gateway. This tool skips the login:
it reads the auth service's newest private key from ``AUTH_KEYS_DIR`` and signs tokens itself,
with exactly the header and claims the service issues (``services.auth.tokens``).

That is only acceptable on a developer's machine. Whoever holds the private key can mint a
token for ANY identity, and every gateway trusting the JWKS will accept it: this is the
capability an attacker would want. So the tool refuses to run unless

- ``SOCKGATE_LOADTEST=1`` is set in its environment (an explicit, visible opt-in), and
- the issuer it signs for is a loopback URL (``http://127.0.0.1…``, ``localhost``, ``[::1]``):
  a production issuer is never loopback, so a production key folder mounted by mistake
  still yields nothing a production gateway would accept.

The minted users do not exist in the auth service's database; the gateway never asks (it
verifies tokens locally), which is what makes this useful for gateway load tests.

    SOCKGATE_LOADTEST=1 .venv/bin/python -m loadtests.mint_tokens \\
        --keys-dir var/keys --count 5000 --out var/tokens.json

The output is JSON: ``{"issuer", "audience", "kid", "exp", "tokens": [{"sub", "name",
"token"}, ...]}``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from services.auth.keys import SigningKey, load_keys
from services.auth.store import UserRecord
from services.auth.tokens import AccessTokenIssuer

OPT_IN_VARIABLE = "SOCKGATE_LOADTEST"
DEFAULT_ISSUER = "http://127.0.0.1:8000"


class MintRefused(Exception):
    """Minting is not allowed here; the message says why."""


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` is http(s) to a loopback host (127.0.0.0/8, ``localhost``, ``[::1]``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    host = parts.hostname
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_allowed(issuer: str, environ: dict[str, str] | os._Environ[str]) -> None:
    """Raises ``MintRefused`` unless this is an explicit dev/load-test setting (see module doc)."""
    if environ.get(OPT_IN_VARIABLE) != "1":
        raise MintRefused(
            f"refusing to mint tokens: set {OPT_IN_VARIABLE}=1 to confirm this is a dev or "
            "load-test setup (anyone holding the signing key can mint any identity)"
        )
    if not is_loopback_url(issuer):
        raise MintRefused(
            f"refusing to mint tokens for issuer {issuer!r}: only a loopback issuer "
            "(http://127.0.0.1, localhost, [::1]) is allowed"
        )


@dataclass(frozen=True, slots=True)
class _FixedSigner:
    """The one piece of ``KeyRing`` that ``AccessTokenIssuer`` reads: the signer."""

    signer: SigningKey


def newest_key(keys_dir: Path) -> SigningKey:
    """The key the auth service signs with now: the newest in its folder. Never creates one."""
    if not keys_dir.is_dir():
        raise MintRefused(f"no key folder at {keys_dir}: start the auth service once first")
    keys = load_keys(keys_dir)
    if not keys:
        raise MintRefused(f"no signing key in {keys_dir}: start the auth service once first")
    return keys[-1]


def mint_tokens(
    keys_dir: Path,
    *,
    count: int,
    issuer: str,
    audience: str = "gateway",
    ttl: int = 3600,
    prefix: str = "load",
    environ: dict[str, str] | os._Environ[str] = os.environ,
    now: float | None = None,
) -> dict[str, Any]:
    """``count`` access tokens for users ``{prefix}-000000`` …, signed by the newest key.

    The claims and header come from the auth service's own ``AccessTokenIssuer``, so they
    stay the same as what ``/v1/auth/login`` hands out.
    """
    check_allowed(issuer, environ)
    if count < 1:
        raise ValueError("count must be at least 1")
    key = newest_key(keys_dir)
    issuer_impl = AccessTokenIssuer(
        _FixedSigner(key),  # type: ignore[arg-type]  # duck-typed: only .signer is read
        issuer=issuer,
        audience=audience,
        ttl=ttl,
    )
    now = time.time() if now is None else now
    width = max(6, len(str(count - 1)))
    tokens = []
    for i in range(count):
        sub = f"{prefix}-{i:0{width}d}"
        name = f"{prefix}{i}"
        user = UserRecord(
            id=sub, username=name, email="", password_hash="", created_at=now, revoked_before=None
        )
        tokens.append({"sub": sub, "name": name, "token": issuer_impl.issue(user, now)})
    return {
        "issuer": issuer,
        "audience": audience,
        "kid": key.kid,
        "exp": int(now) + ttl,
        "tokens": tokens,
    }


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit status 2 when minting is refused."""
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.mint_tokens",
        description="Mint access tokens for load tests (dev only; needs SOCKGATE_LOADTEST=1).",
    )
    parser.add_argument(
        "--keys-dir",
        type=Path,
        default=Path(os.environ.get("AUTH_KEYS_DIR", "./var/keys")),
        help="the auth service's key folder (default: $AUTH_KEYS_DIR or ./var/keys)",
    )
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument(
        "--issuer",
        default=os.environ.get("AUTH_ISSUER", DEFAULT_ISSUER),
        help="the iss claim; must be a loopback URL (default: $AUTH_ISSUER or %(default)s)",
    )
    parser.add_argument("--audience", default=os.environ.get("AUTH_AUDIENCE", "gateway"))
    parser.add_argument("--ttl", type=int, default=3600, help="token lifetime, seconds")
    parser.add_argument("--prefix", default="load", help="user ids are {prefix}-000000 …")
    parser.add_argument("--out", type=Path, default=Path("var/tokens.json"))
    args = parser.parse_args(argv)
    try:
        document = mint_tokens(
            args.keys_dir,
            count=args.count,
            issuer=args.issuer,
            audience=args.audience,
            ttl=args.ttl,
            prefix=args.prefix,
        )
    except MintRefused as exc:
        print(f"mint_tokens: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # tokens are credentials
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle)
    tmp.replace(args.out)
    print(f"{args.count} tokens for {args.issuer} (kid {document['kid']}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
