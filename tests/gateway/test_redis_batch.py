"""The replica's Redis calls against a real Redis: ``ScriptBatch`` (one batch per loop pass, on
a connection of its own, each caller its own reply) and the bounded pool callers wait on."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import MaxConnectionsError, RedisError, ResponseError

from services.gateway.app import redis_client
from services.gateway.redis_batch import (
    CLIENT_NAME,
    MAX_BATCH,
    MAX_GROUP,
    BatchScript,
    CpuShare,
    ScriptBatch,
)
from services.gateway.settings import GatewaySettings
from tests.support.processes import RedisServer, free_port

_ECHO = """
if ARGV[1] == 'bad' then return redis.error_reply('refused ' .. KEYS[1]) end
if ARGV[1] == 'raise' then error('raised ' .. KEYS[1]) end
if ARGV[1] == 'wrong' then redis.call('INCRBY', KEYS[1], 'not a number') end
if ARGV[1] == 'nothing' then return nil end
redis.call('INCR', KEYS[1])
return {KEYS[1], ARGV[1]}
"""
_COUNT = "return redis.call('INCR', KEYS[1])"


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    await client.delete(*[f"batch-test:{i}" for i in range(600)])
    for script in BatchScript(client, _ECHO).scripts():
        await client.script_load(script.script)  # so batches are counted without the reload
    yield client
    await client.delete(*[f"batch-test:{i}" for i in range(600)])
    await client.aclose()


@pytest.fixture
async def batches() -> AsyncIterator[Callable[..., ScriptBatch]]:
    """Makes ``ScriptBatch``es that are closed (their connections too) after the test."""
    made: list[ScriptBatch] = []

    def make(client: Redis, **options: Any) -> ScriptBatch:
        made.append(ScriptBatch(client, **options))
        return made[-1]

    yield make
    for batch in made:
        await batch.close()


async def test_calls_of_one_loop_pass_share_one_batch(
    redis: Redis, batches: Callable[..., ScriptBatch]
) -> None:
    batch = batches(redis, timeout=5)
    script = BatchScript(redis, _ECHO)
    replies = await asyncio.gather(
        *(batch.run(script, [f"batch-test:{i}"], [f"v{i}"]) for i in range(50))
    )
    assert replies == [[f"batch-test:{i}", f"v{i}"] for i in range(50)]
    assert batch.batches == 1
    assert await redis.get("batch-test:7") == "1"  # ran once, not retried

    # A later pass is a new batch.
    assert await batch.run(script, ["batch-test:7"], ["again"]) == ["batch-test:7", "again"]
    assert batch.batches == 2


async def test_calls_within_the_window_share_one_batch(
    redis: Redis, batches: Callable[..., ScriptBatch]
) -> None:
    batch = batches(redis, timeout=5, window=0.05)
    script = BatchScript(redis, _ECHO)

    async def later(i: int) -> Any:
        await asyncio.sleep(0.002 * i)  # separate loop passes, all within the window
        return await batch.run(script, [f"batch-test:{i}"], [str(i)])

    replies = await asyncio.gather(*(later(i) for i in range(5)))
    assert [reply[1] for reply in replies] == [str(i) for i in range(5)]
    assert batch.batches == 1


async def test_a_full_batch_goes_out_at_once(
    redis: Redis, batches: Callable[..., ScriptBatch]
) -> None:
    batch = batches(redis, timeout=5, window=30)  # only a full batch can end the wait
    script = BatchScript(redis, _ECHO)
    async with asyncio.timeout(5):
        replies = await asyncio.gather(
            *(batch.run(script, [f"batch-test:{i}"], [str(i)]) for i in range(MAX_BATCH))
        )
    assert [reply[1] for reply in replies] == [str(i) for i in range(MAX_BATCH)]
    assert batch.batches == 1


async def test_one_batch_in_flight_the_rest_waits_for_it(
    redis: Redis, batches: Callable[..., ScriptBatch]
) -> None:
    """Calls made while a batch is out form the next batch, sent when its reply is in."""
    batch = batches(redis, timeout=5)
    script = BatchScript(redis, _ECHO)
    first = asyncio.ensure_future(batch.run(script, ["batch-test:1"], ["first"]))
    async with asyncio.timeout(5):
        while batch.batches == 0:  # until the first batch is out (its reply not yet read)
            await asyncio.sleep(0)
    assert not first.done()
    later = [asyncio.ensure_future(batch.run(script, [f"batch-test:{i}"], [str(i)]))
             for i in range(2, 40)]  # fmt: skip
    assert await first == ["batch-test:1", "first"]
    replies = await asyncio.gather(*later)
    assert [reply[1] for reply in replies] == [str(i) for i in range(2, 40)]
    assert batch.batches == 2  # all 38 in the second


async def test_posted_calls_run_and_report_failures_once_per_batch(
    redis: Redis, batches: Callable[..., ScriptBatch]
) -> None:
    errors: list[tuple[str, str]] = []
    batch = batches(redis, timeout=5, on_error=lambda op, exc: errors.append((op, str(exc))))
    script = BatchScript(redis, _ECHO)
    for i in range(10):
        batch.post(script, [f"batch-test:{i}"], ["ok"], op="release")
    for i in range(3):
        batch.post(script, [f"batch-test:{i}"], ["bad"], op="release")
    await batch.close()
    assert [await redis.get(f"batch-test:{i}") for i in range(10)] == ["1"] * 10
    assert len(errors) == 1 and errors[0][0] == "release"
    assert "refused batch-test:0" in errors[0][1]


_OUTCOMES = ("ok", "bad", "raise", "wrong", "nothing", "ok")


def _outcome(reply: object) -> object:
    """A reply, or its error's type and the part of its text the script wrote."""
    if isinstance(reply, Exception):
        written = re.search(r"(refused|raised) batch-test:\d|not an integer", str(reply))
        return type(reply), written[0] if written else str(reply)
    return reply


async def test_a_script_error_fails_only_its_own_caller(
    redis: Redis, batches: Callable[..., ScriptBatch]
) -> None:
    """Alone or in a group of calls of one script: the same reply or error for each call."""
    batch = batches(redis, timeout=5)
    script = BatchScript(redis, _ECHO)
    await redis.set("batch-test:3", "text")  # INCRBY on it fails
    alone = [  # one call per batch: the script's plain EVALSHA
        await asyncio.gather(batch.run(script, [f"batch-test:{i}"], [arg]), return_exceptions=True)
        for i, arg in enumerate(_OUTCOMES)
    ]
    await redis.config_resetstat()
    together = await asyncio.gather(  # one batch: one EVALSHA of the grouped form
        *(batch.run(script, [f"batch-test:{i}"], [arg]) for i, arg in enumerate(_OUTCOMES)),
        return_exceptions=True,
    )
    assert (await redis.info("commandstats"))["cmdstat_evalsha"]["calls"] == 1
    assert [_outcome(reply) for (reply,) in alone] == [_outcome(r) for r in together]
    assert [_outcome(r) for r in together] == [
        ["batch-test:0", "ok"],
        (ResponseError, "refused batch-test:1"),
        (ResponseError, "raised batch-test:2"),
        (ResponseError, "not an integer"),
        None,
        ["batch-test:5", "ok"],
    ]
    assert await redis.mget("batch-test:0", "batch-test:1", "batch-test:5") == ["2", None, "2"]


async def test_calls_of_one_script_in_a_row_go_out_as_one_command(
    redis: Redis, batches: Callable[..., ScriptBatch]
) -> None:
    """Five calls of one script, one of another, two of the first: three EVALSHA, in order."""
    batch = batches(redis, timeout=5)
    count, echo = BatchScript(redis, _COUNT), BatchScript(redis, _ECHO)
    for script in (*count.scripts(), *echo.scripts()):
        await redis.script_load(script.script)
    await redis.config_resetstat()
    calls = [batch.run(count, ["batch-test:0"], []) for _ in range(5)]
    calls.append(batch.run(echo, ["batch-test:0"], ["echo"]))
    calls.extend(batch.run(count, ["batch-test:0"], []) for _ in range(2))
    replies = await asyncio.gather(*calls)
    assert replies == [1, 2, 3, 4, 5, ["batch-test:0", "echo"], 7, 8]
    assert batch.batches == 1
    stats = await redis.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 3

    # A long run is cut every MAX_GROUP calls, so no one script holds Redis for long.
    await redis.config_resetstat()
    replies = await asyncio.gather(
        *(batch.run(count, ["batch-test:1"], []) for _ in range(2 * MAX_GROUP + 1))
    )
    assert replies == list(range(1, 2 * MAX_GROUP + 2))
    stats = await redis.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 3


async def test_scripts_are_loaded_again_after_a_flush(
    redis: Redis, batches: Callable[..., ScriptBatch]
) -> None:
    batch = batches(redis, timeout=5)
    script = BatchScript(redis, _ECHO)
    assert await batch.run(script, ["batch-test:1"], ["first"]) == ["batch-test:1", "first"]
    await redis.script_flush()
    replies = await asyncio.gather(
        batch.run(script, ["batch-test:1"], ["after"]),
        batch.run(script, ["batch-test:2"], ["after"]),
    )
    assert replies == [["batch-test:1", "after"], ["batch-test:2", "after"]]
    assert await redis.get("batch-test:1") == "2"  # NOSCRIPT ran nothing; the retry ran once


async def test_an_unreachable_server_fails_every_caller_in_time(
    batches: Callable[..., ScriptBatch],
) -> None:
    client = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    errors: list[str] = []
    batch = batches(client, timeout=2, on_error=lambda op, exc: errors.append(op))
    script = BatchScript(client, _ECHO)
    try:
        async with asyncio.timeout(5):
            batch.post(script, ["batch-test:0"], ["x"], op="release")
            results = await asyncio.gather(
                *(batch.run(script, [f"batch-test:{i}"], ["x"]) for i in range(5)),
                return_exceptions=True,
            )
            await batch.close()
    finally:
        await client.aclose()
    assert all(isinstance(r, (RedisError, OSError, TimeoutError)) for r in results), results
    assert errors == ["release"]


async def test_a_caller_that_gives_up_does_not_disturb_the_others(
    redis: Redis, batches: Callable[..., ScriptBatch]
) -> None:
    batch = batches(redis, timeout=5)
    script = BatchScript(redis, _ECHO)
    impatient = asyncio.ensure_future(batch.run(script, ["batch-test:1"], ["gone"]))
    patient = asyncio.ensure_future(batch.run(script, ["batch-test:2"], ["here"]))
    await asyncio.sleep(0)
    impatient.cancel()
    assert await patient == ["batch-test:2", "here"]
    with pytest.raises(asyncio.CancelledError):
        await impatient
    await batch.close()


async def test_a_burst_beyond_the_pool_waits_for_connections(redis_server: RedisServer) -> None:
    """A thousand sockets leaving rooms at once: every call gets through, on a bounded pool."""
    settings = GatewaySettings(redis_url=redis_server.url, redis_max_connections=4)
    client = redis_client(settings)
    stock = Redis.from_url(redis_server.url, max_connections=4)  # redis-py's default pool
    try:
        await client.delete("pool-test")
        results = await asyncio.gather(*(client.incr("pool-test") for _ in range(300)))
        assert sorted(results) == list(range(1, 301))
        with pytest.raises(MaxConnectionsError):  # what the burst did before
            await asyncio.gather(*(stock.incr("pool-test") for _ in range(300)))
    finally:
        await client.delete("pool-test")
        await client.aclose()
        await stock.aclose()


async def test_the_window_ends_once_every_expected_caller_waits(
    redis: Redis, batches: Callable[..., ScriptBatch]
) -> None:
    """With ``expected`` callers all queued, nobody else can join: the batch goes at once."""
    in_progress = 3
    batch = batches(redis, timeout=5, window=30, expected=lambda: in_progress)
    script = BatchScript(redis, _ECHO)

    async def later(i: int) -> Any:
        await asyncio.sleep(0.01 * i)  # separate loop passes
        return await batch.run(script, [f"batch-test:{i}"], [str(i)])

    async with asyncio.timeout(5):  # without the early end the window alone is 30 s
        replies = await asyncio.gather(*(later(i) for i in range(3)))
    assert [reply[1] for reply in replies] == ["0", "1", "2"]
    assert batch.batches == 1  # the three waited for each other, then went together


async def test_posted_calls_and_missing_callers_keep_the_window(
    redis: Redis, batches: Callable[..., ScriptBatch]
) -> None:
    """Calls nobody waits for do not count, and fewer waiting callers than expected wait."""
    batch = batches(redis, timeout=5, window=0.3, expected=lambda: 2)
    script = BatchScript(redis, _ECHO)
    loop = asyncio.get_running_loop()
    started = loop.time()
    batch.post(script, ["batch-test:1"], ["posted"], op="test")
    assert await batch.run(script, ["batch-test:2"], ["waited"]) == ["batch-test:2", "waited"]
    assert loop.time() - started >= 0.25  # one waiting caller of two expected: the window
    assert batch.batches == 1
    assert await redis.get("batch-test:1") == "1"  # the posted call went in the same batch

    idle = batches(redis, timeout=5, window=0.3, expected=lambda: 0)
    started = loop.time()
    await idle.run(script, ["batch-test:3"], ["no handshakes"])
    assert loop.time() - started >= 0.25  # nothing in progress to wait for: the window


async def test_a_busy_replica_waits_the_busy_window_and_a_quiet_one_the_short_one(
    redis: Redis, batches: Callable[..., ScriptBatch]
) -> None:
    """``busy`` picks the window at the first call of each batch."""
    busy = False
    batch = batches(redis, timeout=5, window=0.02, busy_window=0.4, busy=lambda: busy)
    script = BatchScript(redis, _ECHO)
    loop = asyncio.get_running_loop()

    async def one_batch(i: int) -> float:
        started = loop.time()
        await batch.run(script, [f"batch-test:{i}"], ["x"])
        return loop.time() - started

    assert await one_batch(1) < 0.3  # quiet: the 20 ms window
    busy = True
    assert await one_batch(2) >= 0.35  # busy: the 400 ms one
    busy = False
    assert await one_batch(3) < 0.3
    assert batch.batches == 3

    # The early end holds whichever window applies: every expected caller in, it goes.
    busy = True
    eager = batches(redis, timeout=5, busy_window=30, busy=lambda: busy, expected=lambda: 1)
    async with asyncio.timeout(5):  # a 30 s window, ended by the one expected caller
        assert await eager.run(script, ["batch-test:4"], ["y"]) == ["batch-test:4", "y"]


def test_cpu_share_says_busy_from_the_last_span_of_cpu_over_wall_time() -> None:
    clock = {"cpu": 10.0, "wall": 100.0}
    share = CpuShare(threshold=0.5, span=0.05, cpu=lambda: clock["cpu"], wall=lambda: clock["wall"])
    assert not share()  # nothing measured yet

    clock["wall"] += 60.0  # a quiet minute, then a burst: quiet over the span that ended
    clock["cpu"] += 0.5
    assert not share()
    clock["wall"] += 0.02  # within the next span: the last decision holds
    clock["cpu"] += 0.02
    assert not share()
    clock["wall"] += 0.04  # that span done: 0.05 s of CPU in 0.06 s
    clock["cpu"] += 0.03
    assert share()
    clock["wall"] += 0.1  # a tenth of a core over the next span: quiet again
    clock["cpu"] += 0.01
    assert not share()
    clock["wall"] += 0.1  # over half a core: busy
    clock["cpu"] += 0.06
    assert share()


async def _batch_connections(redis: Redis) -> list[dict[str, Any]]:
    """The connections ``ScriptBatch``es hold, as Redis lists them."""
    return [c for c in await redis.client_list() if c.get("name") == CLIENT_NAME]


async def test_batches_use_one_connection_of_their_own_and_close_it(
    redis: Redis, batches: Callable[..., ScriptBatch]
) -> None:
    batch = batches(redis, timeout=5)
    script = BatchScript(redis, _ECHO)
    for i in range(3):
        assert await batch.run(script, [f"batch-test:{i}"], ["x"]) == [f"batch-test:{i}", "x"]
    assert len(await _batch_connections(redis)) == 1
    await batch.close()
    async with asyncio.timeout(5):
        while await _batch_connections(redis):
            await asyncio.sleep(0.01)


async def test_a_batch_whose_connection_redis_closed_goes_out_once_on_a_new_one(
    redis: Redis, batches: Callable[..., ScriptBatch]
) -> None:
    """A Redis restart or a killed client: the next batch finds its connection dead."""
    batch = batches(redis, timeout=5)
    script = BatchScript(redis, _ECHO)
    assert await batch.run(script, ["batch-test:1"], ["first"]) == ["batch-test:1", "first"]
    (connection,) = await _batch_connections(redis)
    assert await redis.client_kill_filter(_id=connection["id"]) == 1
    await asyncio.sleep(0.05)  # the close reaches the replica's side
    assert await batch.run(script, ["batch-test:1"], ["again"]) == ["batch-test:1", "again"]
    assert await redis.get("batch-test:1") == "2"  # each ran once
    assert batch.batches == 3  # the write on the dead connection, then the batch again
    (replaced,) = await _batch_connections(redis)
    assert replaced["id"] != connection["id"]


async def test_replies_are_what_the_client_itself_would_return(
    redis_server: RedisServer, batches: Callable[..., ScriptBatch]
) -> None:
    """Bytes from a client that does not decode; redis-py's error types either way."""
    raw = Redis.from_url(redis_server.url)
    try:
        batch = batches(raw, timeout=5)
        script = BatchScript(raw, _ECHO)
        assert await batch.run(script, ["batch-test:1"], ["x"]) == [b"batch-test:1", b"x"]
        await raw.script_flush()  # NOSCRIPT must come back as redis-py's NoScriptError ...
        assert await batch.run(script, ["batch-test:1"], ["y"]) == [b"batch-test:1", b"y"]
        assert await raw.get("batch-test:1") == b"2"  # ... for the batch to load it and go again
    finally:
        await raw.delete("batch-test:1")
        await raw.aclose()
