"""How an emit to a room reaches its sockets: locally, and through Redis to other replicas.

``LocalManager`` is python-socketio's in-memory manager (single-node mode). ``RedisManager``
is its pub/sub manager with the transport written for the gateway:

- a room emit is published first, on the ``ChannelPublisher``'s connection without waiting for
  Redis, then delivered to this replica's members (socket.io's Redis adapter does the same);
  publishing is skipped at once (counted as a failure) while the subscription is down, so an
  outage never stalls a sender. Emits with a callback or binary data, which the gateway never
  relays, take python-socketio's own path;
- receiving is fed by ``RedisSubscriber`` instead of python-socketio's own listener task, and
  every message is validated before python-socketio sees it. Only ``emit`` of the gateway's
  server events to a policy room (never a socket id, never "everyone") is accepted: the stock
  manager would also obey ``disconnect``/``close_room``/``enter_room`` messages from anyone who
  can publish on the channel.

Both count deliveries: one per local recipient of every emit.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet
from socketio.async_pubsub_manager import AsyncPubSubManager

from services.gateway.channel_publisher import ChannelPublisher
from services.gateway.metrics import GatewayMetrics
from services.gateway.rooms import is_targetable
from services.gateway.subscriber import RedisSubscriber

log = logging.getLogger(__name__)

SERVER_EVENTS = frozenset({"message", "presence", "notification"})
"""Events that may travel between replicas."""
_MAX_ID = 64


class _DeliveryCounting(socketio.AsyncManager):  # type: ignore[misc]  # socketio is untyped
    """Counts local recipients of every emit, whichever manager sits above it.

    Two costs of the stock manager are removed here, with its behaviour kept:

    - ``basic_disconnect`` and ``get_rooms`` scan every room of the namespace for the sid
      (O(rooms) per disconnect: a close storm of N sockets costs O(N²)). A reverse index
      ``sid -> rooms``, kept by ``basic_enter_room`` / ``basic_leave_room``, makes both touch
      only the socket's own rooms.
    - ``emit`` without a callback creates one asyncio task per recipient and waits for them
      all. Here the packet is encoded once (its Engine.IO form cached in the packet) and, in a
      plain loop, written straight to each recipient's websocket when nothing is queued for
      it (``_LeanSocket.send_now``: no queue, no writer task, frame order kept), else put on
      its Engine.IO queue; closed sessions are skipped, as the stock send would refuse them.
      While the replica is not busy, each member's frame is written as the loop reaches it
      rather than at the end of the loop pass (``Flushes.room_emit``).
    """

    _metrics: GatewayMetrics
    # namespace -> sid -> the rooms the sid is in, in the order it entered them (``None``, the
    # namespace's "connected" room, and the sid's own room included), mirroring ``self.rooms``.
    _sid_rooms: dict[str, dict[str, dict[str | None, None]]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sid_rooms = {}

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str,
        room: str | None = None,
        skip_sid: str | None = None,
        callback: Any = None,
        to: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Delivers to local members, counting them."""
        target = to or room
        members = self.rooms.get(namespace, {}).get(target) if isinstance(target, str) else None
        count = 0
        if members:
            count = len(members) - (1 if skip_sid is not None and skip_sid in members else 0)
            if count > 0:
                self._metrics.deliveries.inc(count)
        if callback:
            await super().emit(
                event, data, namespace, room=target, skip_sid=skip_sid, callback=callback, **kwargs
            )
            return
        # Emits that reach no socket here (another replica's, to rooms without members here:
        # most of them in a large cluster) do not count as this pass's broadcasts.
        at_once = count > 0 and self.server.eio.flushes.room_emit()
        self._send_to_room(event, data, namespace, target, skip_sid, at_once=at_once)

    def _send_to_room(
        self, event: str, data: Any, namespace: str, room: Any, skip_sid: Any, *, at_once: bool
    ) -> None:
        """The stock emit without a callback, with no task per recipient (see the class doc).

        ``at_once``: write each member's frame as the loop reaches it (``Flushes.room_emit``).
        """
        if namespace not in self.rooms:
            return
        if isinstance(data, tuple):
            data = list(data)
        elif data is not None:
            data = [data]
        else:
            data = []
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        pkt = self.server.packet_class(sio_packet.EVENT, namespace=namespace, data=[event, *data])
        encoded = pkt.encode()
        if not isinstance(encoded, list):
            encoded = [encoded]
        eio_pkts = [eio_packet.Packet(eio_packet.MESSAGE, p) for p in encoded]
        for eio_pkt in eio_pkts:
            eio_pkt.encode()  # fills the packet's cache: every writer sends the same frame
        sockets = self.server.eio.sockets
        single = eio_pkts[0] if len(eio_pkts) == 1 else None
        for sid, eio_sid in self.get_participants(namespace, room):
            if sid in skip:
                continue
            socket = sockets.get(eio_sid)
            if socket is None or socket.closed:
                continue
            if single is not None and socket.send_now(single, at_once=at_once):
                continue
            queue = socket.queue
            for eio_pkt in eio_pkts:
                queue.put_nowait(eio_pkt)

    # -- the reverse index sid -> rooms ------------------------------------------------------

    def basic_enter_room(
        self, sid: str, namespace: str, room: str | None, eio_sid: str | None = None
    ) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self._sid_rooms.setdefault(namespace, {}).setdefault(sid, {})[room] = None

    def basic_leave_room(self, sid: str, namespace: str, room: str | None) -> None:
        super().basic_leave_room(sid, namespace, room)
        by_sid = self._sid_rooms.get(namespace)
        if by_sid is None:
            return
        rooms = by_sid.get(sid)
        if rooms is None:
            return
        rooms.pop(room, None)
        if not rooms:
            del by_sid[sid]
            if not by_sid:
                del self._sid_rooms[namespace]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        if namespace not in self.rooms:
            return
        rooms = self._sid_rooms.get(namespace, {}).get(sid)
        for name in list(rooms or ()):
            self.basic_leave_room(sid, namespace, name)
        if sid in self.callbacks:
            del self.callbacks[sid]
        pending = self.pending_connect.get(namespace)
        if pending is not None and sid in pending:
            pending.remove(sid)
            if not pending:
                del self.pending_connect[namespace]
        pending = self.pending_disconnect.get(namespace)
        if pending is not None and sid in pending:
            pending.remove(sid)
            if not pending:
                del self.pending_disconnect[namespace]

    def get_rooms(self, sid: str, namespace: str) -> list[str]:
        """The rooms ``sid`` is in (its own room included, ``None`` not)."""
        rooms = self._sid_rooms.get(namespace, {}).get(sid, ())
        return [name for name in rooms if name is not None]


class LocalManager(_DeliveryCounting):
    """Rooms in memory, for a replica running alone."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        super().__init__()
        self._metrics = metrics


class RedisManager(AsyncPubSubManager, _DeliveryCounting):  # type: ignore[misc]
    """Rooms shared by every replica through one Redis channel (see the module doc)."""

    name = "sockgate-redis"

    def __init__(
        self, *, channel: str, metrics: GatewayMetrics, publisher: ChannelPublisher
    ) -> None:
        super().__init__(channel=channel, logger=log)
        self._metrics = metrics
        self._publisher = publisher
        self.subscriber: RedisSubscriber | None = None
        # A published message is python-socketio's message dict, ``host_id`` its last key:
        # this replica's own messages, which every subscriber reads back, end with this.
        self._own_ending = orjson.dumps({"host_id": self.host_id})[1:]

    def initialize(self) -> None:
        """Starts nothing: ``RedisSubscriber`` feeds ``handle_message`` instead of a listener."""

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str | None = None,
        room: str | None = None,
        skip_sid: str | None = None,
        callback: Any = None,
        to: str | None = None,
        **kwargs: Any,
    ) -> None:
        """python-socketio's emit with the publish sent first (see the module doc).

        The message is the dict python-socketio's ``AsyncPubSubManager.emit`` builds.
        """
        room = to or room
        args = list(data) if isinstance(data, tuple) else [data]
        if (
            kwargs.get("ignore_queue")
            or callback is not None
            or sio_packet.Packet.data_is_binary(args)
        ):
            await super().emit(
                event, data, namespace=namespace or "/", room=room, skip_sid=skip_sid,
                callback=callback, **kwargs,
            )  # fmt: skip
            return
        message = {
            "method": "emit",
            "event": event,
            "data": args,
            "binary": False,
            "namespace": namespace or "/",
            "room": room,
            "skip_sid": skip_sid,
            "callback": None,
            "host_id": self.host_id,
        }
        self._publish_now(message)
        await self._handle_emit(message)

    async def _publish(self, data: dict[str, Any]) -> None:
        """python-socketio's hook, for the messages its own code publishes."""
        self._publish_now(data)

    def _publish_now(self, message: dict[str, Any]) -> None:
        if self.subscriber is None or not self.subscriber.up:
            self._metrics.redis_publish_failures.inc()
            return
        self._publisher.publish(self.channel, orjson.dumps(message))

    async def handle_message(self, raw: bytes) -> None:
        """One message from the fan-out channel; ``ValueError`` when it is refused."""
        if raw.endswith(self._own_ending):
            return  # our own publish, already delivered locally: not worth parsing
        message = parse_emit(raw)
        if message["host_id"] == self.host_id:
            return  # our own publish, already delivered locally
        await self._handle_emit(message)


def parse_emit(raw: bytes) -> dict[str, Any]:
    """The emit a channel message asks for, rebuilt from checked fields; else ``ValueError``."""
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(message, dict):
        raise ValueError("not an object")
    if message.get("method") != "emit":
        raise ValueError("method is not emit")
    host_id, event, data = message.get("host_id"), message.get("event"), message.get("data")
    room, skip_sid = message.get("room"), message.get("skip_sid")
    if not isinstance(host_id, str) or not 0 < len(host_id) <= _MAX_ID:
        raise ValueError("bad host_id")
    if event not in SERVER_EVENTS:
        raise ValueError("event is not a server event")
    if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], dict):
        raise ValueError("data is not one object")
    if message.get("binary", False) is not False or message.get("callback") is not None:
        raise ValueError("binary payloads and callbacks are not relayed")
    if message.get("namespace", "/") != "/":
        raise ValueError("unknown namespace")
    if not is_targetable(room):
        raise ValueError("room is not a policy room")
    if skip_sid is not None and (not isinstance(skip_sid, str) or len(skip_sid) > _MAX_ID):
        raise ValueError("bad skip_sid")
    return {
        "method": "emit",
        "event": event,
        "data": data,
        "binary": False,
        "namespace": "/",
        "room": room,
        "skip_sid": skip_sid,
        "callback": None,
        "host_id": host_id,
    }
