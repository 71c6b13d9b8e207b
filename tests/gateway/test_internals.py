"""The gateway's replacements for python-socketio/engineio internals, checked against the originals.

The manager's reverse room index must always agree with the stock full scan, and the lean
packet queue must behave as ``asyncio.Queue`` for everything engineio asks of it.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from socketio.base_manager import BaseManager

from services.gateway.fanout import LocalManager
from services.gateway.metrics import GatewayMetrics
from services.gateway.server import Flag, PacketQueue
from shared.metrics import new_registry


def test_reverse_room_index_agrees_with_the_full_scan() -> None:
    manager = LocalManager(GatewayMetrics(new_registry(process_metrics=False)))
    rng = random.Random(1234)
    sids = [f"sid{i}" for i in range(40)]
    rooms = [f"public:room{i}" for i in range(15)]
    for step in range(6000):
        sid, room, roll = rng.choice(sids), rng.choice(rooms), rng.random()
        if roll < 0.5:
            manager.basic_enter_room(sid, "/", room, eio_sid=f"e-{sid}")
        elif roll < 0.8:
            manager.basic_leave_room(sid, "/", room)
        elif roll < 0.93:
            manager.basic_disconnect(sid, "/")
        else:
            manager.basic_close_room(room, "/")
        if step % 250 == 0 or step == 5999:
            for each in sids:
                expected = BaseManager.get_rooms(manager, each, "/")
                assert sorted(manager.get_rooms(each, "/")) == sorted(expected), (step, each)


def test_disconnect_leaves_every_room_of_the_socket_only() -> None:
    manager = LocalManager(GatewayMetrics(new_registry(process_metrics=False)))
    for room in ("public:a", "public:b", "user:1"):
        manager.basic_enter_room("s1", "/", room, eio_sid="e1")
    manager.basic_enter_room("s2", "/", "public:a", eio_sid="e2")
    manager.basic_disconnect("s1", "/")
    assert manager.get_rooms("s1", "/") == []
    assert manager.get_rooms("s2", "/") == ["public:a"]
    assert set(manager.rooms["/"]) == {"public:a"}


async def test_packet_queue_behaves_like_an_asyncio_queue() -> None:
    queue, reference = PacketQueue(), asyncio.Queue[int]()
    rng = random.Random(99)
    for _ in range(2000):
        if rng.random() < 0.55:
            item = rng.randrange(10_000)
            queue.put_nowait(item)
            reference.put_nowait(item)
        elif not reference.empty():
            assert queue.get_nowait() == reference.get_nowait()
        else:
            with pytest.raises(asyncio.QueueEmpty):
                queue.get_nowait()
        assert queue.qsize() == reference.qsize()
        assert queue.empty() == reference.empty()


async def test_packet_queue_wakes_a_waiting_getter_and_joins() -> None:
    queue = PacketQueue()
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    queue.put_nowait("frame")
    assert await asyncio.wait_for(getter, 1) == "frame"

    # A cancelled getter must not swallow the wake-up meant for the next one.
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    first.cancel()
    queue.put_nowait("next")
    assert await asyncio.wait_for(second, 1) == "next"

    queue.put_nowait("a")
    joined = asyncio.create_task(queue.join())
    await asyncio.sleep(0)
    assert not joined.done()
    for _ in range(3):  # "frame", "next" and "a" were taken out or are pending
        if not queue.empty():
            queue.get_nowait()
        queue.task_done()
    await asyncio.wait_for(joined, 1)
    with pytest.raises(ValueError, match="too many"):
        queue.task_done()


def test_packet_queue_reports_every_put() -> None:
    """A websocket session starts its writer from ``on_put``; every put must reach it."""
    queue = PacketQueue()
    seen: list[int] = []
    queue.on_put = lambda: seen.append(queue.qsize())
    queue.put_nowait("a")
    asyncio.run(queue.put("b"))
    queue.put_nowait(None)
    assert seen == [1, 2, 3]
    assert [queue.get_nowait() for _ in range(3)] == ["a", "b", None]


@pytest.mark.parametrize("make", [asyncio.Event, Flag], ids=["asyncio.Event", "Flag"])
async def test_flag_behaves_like_an_asyncio_event(make: type[asyncio.Event] | type[Flag]) -> None:
    """uvicorn's flow control uses ``set``, ``clear``, ``is_set`` and ``wait``."""
    flag = make()
    assert not flag.is_set()
    waiters = [asyncio.ensure_future(flag.wait()) for _ in range(3)]
    cancelled = asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    flag.set()
    assert flag.is_set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert await flag.wait() is True  # set: returns at once
    flag.clear()
    assert not flag.is_set()
    late = asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0)
    assert not late.done()
    flag.set()
    assert await late is True
