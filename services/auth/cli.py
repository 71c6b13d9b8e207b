"""``python -m services.auth``: serve, or manage the signing keys.

python -m services.auth                 serve (settings from AUTH_* variables)
python -m services.auth keys list       the keys, which signs, which are published
python -m services.auth keys rotate     add a key and make it the signer
python -m services.auth keys prune      delete retired keys whose tokens have all expired
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

import uvicorn

from services.auth.keys import KeyRing, expired_keys, generate_key, load_keys, retirement_times
from services.auth.settings import AuthSettings
from shared.logging import configure_logging


def _when(ts: int | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _keys_list(settings: AuthSettings) -> int:
    ring = KeyRing(settings.keys_dir, access_ttl=settings.access_ttl)
    ring.load()
    keys = load_keys(settings.keys_dir)
    retired = retirement_times(keys)
    published = {key.kid for key in ring.published()}
    signer = keys[-1].kid
    print(f"{'kid':44} {'created':21} {'retired':21} state")
    for key in keys:
        state = (
            "signing"
            if key.kid == signer
            else ("published" if key.kid in published else "expired (prune)")
        )
        print(f"{key.kid:44} {_when(key.created):21} {_when(retired[key.kid]):21} {state}")
    return 0


def _keys_rotate(settings: AuthSettings) -> int:
    KeyRing(settings.keys_dir, access_ttl=settings.access_ttl).load()
    key = generate_key(settings.keys_dir)
    print(f"new signing key {key.kid}; older keys stay published until their tokens expire")
    return 0


def _keys_prune(settings: AuthSettings) -> int:
    keys = load_keys(settings.keys_dir)
    gone = expired_keys(keys, access_ttl=settings.access_ttl, now=time.time())
    for key in gone:
        key.path.unlink()
        print(f"pruned {key.kid}")
    if not gone:
        print("nothing to prune")
    return 0


def _serve(settings: AuthSettings) -> int:
    configure_logging(settings)
    # Generate the first key before workers start, so they never race to create one.
    KeyRing(settings.keys_dir, access_ttl=settings.access_ttl).load()
    uvicorn.run(
        "services.auth.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=settings.trust_forwarded_for,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parses the command line and runs the command."""
    parser = argparse.ArgumentParser(
        prog="python -m services.auth",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command")
    keys = commands.add_parser("keys", help="manage the signing keys")
    keys.add_argument("action", choices=["list", "rotate", "prune"])
    args = parser.parse_args(argv)
    settings = AuthSettings()
    if args.command == "keys":
        actions = {"list": _keys_list, "rotate": _keys_rotate, "prune": _keys_prune}
        return actions[args.action](settings)
    return _serve(settings)


if __name__ == "__main__":
    sys.exit(main())
