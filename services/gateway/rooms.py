"""Room names and who may join or target them.

=============  ======================================================
``public:*``   any authenticated user
``user:{sub}`` only that user; every socket joins its own on connect
``private:*``  only users whose token lists the room in ``rooms``
anything else  refused
=============  ======================================================

Socket ids are rooms inside python-socketio (every socket sits in a room named after its sid).
They carry no prefix, so the policy already refuses them; ``is_targetable`` also refuses any
name without a known prefix for traffic arriving from Redis, so no message can be aimed at one
socket by its id.
"""

from __future__ import annotations

import re

from services.gateway.protocol import EventError
from shared.tokens import AccessClaims

ROOM_NAME = re.compile(r"^[A-Za-z0-9:_.-]{1,128}$")
PUBLIC = "public:"
PRIVATE = "private:"
USER = "user:"


def user_room(sub: str) -> str:
    """The room every socket of ``sub`` joins on connect."""
    return USER + sub


def check_name(room: object) -> str:
    """``room`` if it is a well-formed room name, else ``EventError('bad_request')``."""
    if not isinstance(room, str) or not ROOM_NAME.match(room):
        raise EventError("bad_request", "room must match ^[A-Za-z0-9:_.-]{1,128}$")
    return room


def check_join(room: str, claims: AccessClaims) -> None:
    """Raises ``EventError('forbidden')`` unless ``claims`` may join the well-formed ``room``."""
    if room.startswith(PUBLIC) and len(room) > len(PUBLIC):
        return
    if room.startswith(PRIVATE) and room in claims.rooms:
        return
    if room == user_room(claims.sub):
        return
    raise EventError("forbidden", "this room is not open to you")


def still_allowed(room: str, claims: AccessClaims) -> bool:
    """Whether a socket already in ``room`` may stay there under (new) ``claims``."""
    try:
        check_join(room, claims)
    except EventError:
        return False
    return True


def is_targetable(room: object) -> bool:
    """Whether fan-out traffic may be addressed to ``room``: a policy room, never a sid."""
    if not isinstance(room, str):
        return False
    if room.startswith(USER):
        # Subjects are the auth service's to choose (up to 128 characters, any of them).
        return 0 < len(room) - len(USER) <= 128
    return (
        room.startswith((PUBLIC, PRIVATE))
        and room not in (PUBLIC, PRIVATE)
        and ROOM_NAME.match(room) is not None
    )
