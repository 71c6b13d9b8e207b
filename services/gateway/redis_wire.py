"""A redis-py connection's stream, written to and read from directly for the fan-out's traffic.

redis-py connects (TLS, ``AUTH``, ``HELLO``, ``SELECT``, as configured by ``REDIS_URL``); the
fan-out's subscriber and publisher then use the connection's stream themselves, because
redis-py's per-command path is heavy for one small command or message at a time: a pooled
``publish`` waits for its answer behind a retry wrapper, an operation timer and, with a
socket timeout set, a task per write (~38 µs of CPU each); ``PubSub.get_message`` wraps every
message the same way (~34 µs). Here a command is packed by redis-py and written at once,
and whatever Redis sends back is parsed by hiredis' reader (redis-py's own optional parser),
every complete reply of a read at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ResponseError

PARTIAL = object()
"""What ``RedisWire.next_reply`` returns while no complete reply is in."""

_READ_BYTES = 65536


def own_connection(redis: Redis, client_name: str) -> AbstractConnection:
    """A connection of its own, not from ``redis``'s pool but made with its settings (TLS,
    ``AUTH``, ``SELECT`` as ``REDIS_URL`` says), named ``client_name`` in ``CLIENT LIST``."""
    pool = redis.connection_pool
    kwargs = {**pool.connection_kwargs, "client_name": client_name}
    connection: AbstractConnection = pool.connection_class(**kwargs)
    return connection


class RedisWire:
    """Commands out and replies in on one connected redis-py connection.

    Error replies come out of ``next_reply`` as ``ResponseError`` instances (not raised); a
    stream that breaks the protocol raises ``InvalidResponse``, a closed one
    ``ConnectionError`` (both ``RedisError``). With ``as_client``, replies come out as the
    client's own commands return them: errors of redis-py's types (``NoScriptError`` for
    ``NOSCRIPT`` …) and strings decoded when the client has ``decode_responses``.
    """

    def __init__(self, connection: AbstractConnection, *, as_client: bool = False) -> None:
        # redis-py's stream pair, set by ``connect()`` (tests/gateway/test_internals.py).
        reader = getattr(connection, "_reader", None)
        writer = getattr(connection, "_writer", None)
        if not isinstance(reader, asyncio.StreamReader) or not isinstance(
            writer, asyncio.StreamWriter
        ):
            raise RedisConnectionError("the Redis connection is not open")
        self._connection = connection
        self._reader = reader
        self._writer = writer
        options: dict[str, Any] = {"replyError": ResponseError}
        if as_client:  # as redis-py's own hiredis parser is set up (redis/_parsers/hiredis.py)
            options["replyError"] = BaseParser.parse_error
            encoder = connection.encoder
            if encoder.decode_responses:
                options |= {"encoding": encoder.encoding, "errors": encoder.encoding_errors}
        self._replies = hiredis.Reader(
            protocolError=InvalidResponse, notEnoughData=PARTIAL, **options
        )

    async def read(self) -> None:
        """Waits for more bytes from Redis and takes them in for ``next_reply``."""
        data = await self._reader.read(_READ_BYTES)
        if not data:
            raise RedisConnectionError("Redis closed the connection")
        self._replies.feed(data)

    def next_reply(self) -> object:
        """The next complete reply read so far, else ``PARTIAL``."""
        return self._replies.gets()

    def send(self, *args: bytes | str) -> None:
        """Writes the command ``args`` without waiting (its reply comes out of ``next_reply``)."""
        self._writer.writelines(self._connection.pack_command(*args))

    def send_all(self, commands: Iterable[Sequence[Any]]) -> None:
        """Writes every command of ``commands`` in one go (replies in order, as for ``send``)."""
        self._writer.writelines(self._connection.pack_commands(commands))

    def closing(self) -> bool:
        """Whether the connection is closed or closing (nothing written now would arrive)."""
        return self._writer.transport.is_closing()

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel (Redis is slow or gone)."""
        return self._writer.transport.get_write_buffer_size()
