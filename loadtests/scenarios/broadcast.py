"""Broadcast fan-out: many users in a few rooms, a few publishers, delivery latency measured.

Users (environment variables, defaults in brackets): ``BROADCAST_USERS`` in all [500, at most
20000], of which ``BROADCAST_PUBLISHERS`` publish [5]; everyone joins one of
``BROADCAST_ROOMS`` rooms ``public:load-<n>`` [5], spread evenly. Each publisher sends
``BROADCAST_RATE`` messages/s [5; keep it under the gateway's per-socket event rate, 20/s by
default]. Users arrive at ``BROADCAST_SPAWN_RATE``/s [100]; the shape holds for
``BROADCAST_HOLD`` s [30] once all are in, then ends the test.

Read in the report: ``SIO message`` (a publisher's ack round trip), ``SIO delivery`` (every
message received, its latency taken from the message's own ``ts``: the gateway's clock when it
accepted the message, so it covers the fan-out through Redis and the other replicas), ``SIO
join``. Deliveries/s is the ``SIO delivery`` request rate.
"""

from __future__ import annotations

from contextlib import suppress

from locust import constant, constant_throughput, task
from locust.exception import StopUser

from loadtests.gateway_user import AckError, GatewayUser
from loadtests.scenarios._common import BoundedShape, env_float, env_int

USERS = env_int("BROADCAST_USERS", 500, 2, 20_000)
PUBLISHERS = env_int("BROADCAST_PUBLISHERS", 5, 1, 1000)
ROOMS = env_int("BROADCAST_ROOMS", 5, 1, 1000)
RATE = env_float("BROADCAST_RATE", 5, 0.1, 100)
SPAWN_RATE = env_float("BROADCAST_SPAWN_RATE", 100, 1, 2000)
HOLD = env_float("BROADCAST_HOLD", 30, 1, 600)


class RoomUser(GatewayUser):
    """A user in one room, back in it after any reconnect."""

    abstract = True

    @property
    def room(self) -> str:
        return f"public:load-{self.number % ROOMS}"

    def on_start(self) -> None:
        if self.connect() is not None and not self.reconnect(jitter=1.0):
            raise StopUser()
        self.join(self.room)

    def on_reconnected(self) -> None:
        self.join(self.room)

    def stay_connected(self) -> None:
        if self.sio is None and not self.reconnecting and not self.reconnect(jitter=1.0):
            raise StopUser()


class ListenerUser(RoomUser):
    """Receives the room's messages (each reported as ``SIO delivery``)."""

    wait_time = constant(5)

    @task
    def listen(self) -> None:
        self.stay_connected()


class PublisherUser(RoomUser):
    """Sends ``BROADCAST_RATE`` messages/s to its room, each acked (``SIO message``)."""

    fixed_count = PUBLISHERS
    wait_time = constant_throughput(RATE)

    @task
    def publish(self) -> None:
        self.stay_connected()
        with suppress(AckError):  # a refused message is reported as a failed SIO message
            self.call("message", {"room": self.room, "text": f"load message from {self.number}"})


class BroadcastShape(BoundedShape):
    """Ramp to ``BROADCAST_USERS``, hold ``BROADCAST_HOLD`` s, stop."""

    def stage(self, elapsed: float) -> tuple[int, float] | None:
        if elapsed < USERS / SPAWN_RATE + HOLD:
            return USERS, SPAWN_RATE
        return None
