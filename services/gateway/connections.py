"""The live Socket.IO connections of this replica and what each one is allowed.

python-socketio keeps rooms and transport state; this registry keeps the gateway's own view of
each socket (whose token, which rooms it joined, its rate limit, its expiry schedule), indexed by
sid and by user, so revocations and the per-user limit never scan every socket.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from services.gateway.limits import AbuseMeter, TokenBucket
from services.gateway.rooms import user_room
from shared.tokens import AccessClaims

if TYPE_CHECKING:
    from services.gateway.expiry import ExpiryEntry


_NO_RAW: dict[str, Any] = {}  # shared by every socket's claims; nothing writes to it


def lean_claims(claims: AccessClaims) -> AccessClaims:
    """``claims`` without ``raw`` and ``jti``, for keeping on a socket.

    ``raw`` is the token's whole decoded payload (~1 KB per socket as dicts, lists and strings);
    it is read once, during the handshake, and the typed fields hold all a socket needs (the
    token id is not among them: revocations go by user and issue time).
    """
    return replace(claims, raw=_NO_RAW, jti="")


@dataclass(slots=True, eq=False)
class Connection:
    """One accepted socket."""

    sid: str
    eio_sid: str
    claims: AccessClaims
    bucket: TokenBucket
    abuse: AbuseMeter
    rooms: set[str] = field(default_factory=set)
    """Rooms joined through ``join``; the automatic ``user:{sub}`` room is not counted."""
    expiry: ExpiryEntry | None = None
    """The socket's entry in the ``ExpiryScheduler``, while its expiry is scheduled."""
    closing: bool = False
    """Set once the gateway decided to cut the socket, so it is cut only once."""

    @property
    def sub(self) -> str:
        """The user the socket belongs to."""
        return self.claims.sub

    @property
    def user_room(self) -> str:
        """The socket's own ``user:{sub}`` room."""
        return user_room(self.claims.sub)

    def cancel_timers(self) -> None:
        """Stops the expiry warning and cut-off, when the token is replaced or the socket goes."""
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None


class Connections:
    """The registry of accepted sockets by sid and by user."""

    def __init__(self) -> None:
        self._by_sid: dict[str, Connection] = {}
        self._by_sub: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._by_sid)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._by_sid.values()))

    def get(self, sid: str) -> Connection | None:
        """The connection with ``sid``, if it is accepted and still open."""
        return self._by_sid.get(sid)

    def count_for(self, sub: str) -> int:
        """How many sockets ``sub`` has on this replica."""
        return len(self._by_sub.get(sub, ()))

    def of_user(self, sub: str) -> list[Connection]:
        """The sockets of ``sub`` on this replica."""
        return [self._by_sid[sid] for sid in self._by_sub.get(sub, ())]

    def add(self, conn: Connection) -> None:
        """Registers an accepted socket."""
        self._by_sid[conn.sid] = conn
        self._by_sub.setdefault(conn.sub, set()).add(conn.sid)

    def remove(self, sid: str) -> Connection | None:
        """Forgets a socket that went away; returns it if it was registered."""
        conn = self._by_sid.pop(sid, None)
        if conn is None:
            return None
        conn.cancel_timers()
        sids = self._by_sub.get(conn.sub)
        if sids is not None:
            sids.discard(sid)
            if not sids:
                del self._by_sub[conn.sub]
        return conn
