"""CacheService against a real redis-server with the nscache module."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import enum
import logging
import os
import pickle
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import pydantic
import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError
from servers import RedisServer

from cachetx import (
    CacheKeyError,
    CacheService,
    CacheStats,
    InvalidExpireError,
    InvalidPrefixError,
    LatencySummary,
    SerializationError,
)
from cachetx.keys import default_key


async def test_set_get_delete_roundtrip_a_dict(cache: CacheService) -> None:
    data = {"id": "123", "status": "open", "steps": [1, 2, {"n": "ü"}], "score": 0.5}
    assert await cache.set(key="process:123", value=data, expire=timedelta(hours=1))
    assert await cache.get("process:123") == data
    ttl = await cache.ttl("process:123")
    assert ttl is not None and 3590 <= ttl <= 3600
    assert await cache.delete("process:123") == 1
    assert await cache.get("process:123") is None
    assert await cache.ttl("process:123") is None


async def test_get_of_a_missing_key_is_none_and_counts_a_miss(cache: CacheService) -> None:
    assert await cache.get("nothing") is None
    stats = await cache.stats()
    assert (stats.misses, stats.hits) == (1, 0)


async def test_values_are_stored_as_json_in_the_namespace(
    cache: CacheService, redis_client: aioredis.Redis
) -> None:
    await cache.set("k", {"a": [1, None, True]}, expire=60)
    raw = await redis_client.execute_command("NSCACHE.GET", cache.prefix, "k")
    assert raw == b'{"a":[1,null,true]}'


async def test_fractional_expire_rounds_up(cache: CacheService) -> None:
    await cache.set("k", 1, expire=timedelta(milliseconds=1500))
    assert await cache.ttl("k") == 2


def test_bad_prefix_and_bad_expire_are_typed_errors(redis_client: aioredis.Redis) -> None:
    for bad in ["", "has space", "x" * 65, "a:b"]:
        with pytest.raises(InvalidPrefixError):
            CacheService(redis_client, prefix=bad)
    service = CacheService(redis_client, prefix="ok")
    for expire in [0, -1, timedelta(0), timedelta(seconds=-5), float("nan"), True, "10"]:
        with pytest.raises(InvalidExpireError):
            service.cached(expire=expire)  # type: ignore[arg-type]
    with pytest.raises(InvalidExpireError):
        service.cached(expire=timedelta(seconds=10), refresh=timedelta(seconds=10))
    with pytest.raises(TypeError):
        service.cached(expire=10)(lambda: 1)  # type: ignore[arg-type]


async def test_invalidate_drops_the_whole_namespace_only(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    cache = CacheService(redis_client, prefix=prefix)
    other = CacheService(redis_client, prefix=prefix + "x")
    for i in range(3):
        await cache.set(f"k{i}", i, expire=60)
    await other.set("k0", "kept", expire=60)
    assert await cache.invalidate() == 3
    assert [await cache.get(f"k{i}") for i in range(3)] == [None, None, None]
    assert await other.get("k0") == "kept"
    assert (await cache.stats()).invalidations == 1


async def test_stats_is_the_typed_server_report(cache: CacheService) -> None:
    await cache.set("a", {"x": 1}, expire=60)
    await cache.get("a")
    await cache.get("a")
    await cache.get("b")
    await cache.delete("a")
    stats = await cache.stats()
    assert isinstance(stats, CacheStats)
    assert stats.prefix == cache.prefix
    assert (stats.hits, stats.misses, stats.sets, stats.deletes) == (2, 1, 1, 1)
    assert stats.hit_ratio == pytest.approx(2 / 3)
    assert stats.entries == 0
    assert isinstance(stats.read_latency_us, LatencySummary)
    assert stats.read_latency_us.max >= 1


async def test_cached_runs_once_for_100_concurrent_callers_of_a_cold_key(
    cache: CacheService,
) -> None:
    calls = 0

    @cache.cached(expire=timedelta(minutes=30))
    async def load(candidate_id: str) -> dict[str, str]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.3)  # long enough for every caller to arrive meanwhile
        return {"id": candidate_id, "name": "Ada"}

    results = await asyncio.gather(*(load("42") for _ in range(100)))
    assert calls == 1
    assert results == [{"id": "42", "name": "Ada"}] * 100
    stats = await cache.stats()
    # One lease granted through NSCACHE.FETCH; the other callers were told to WAIT.
    assert stats.leases == 1
    assert stats.lease_waits >= 1
    assert stats.sets == 1


async def test_cached_hits_after_the_first_call_and_keys_by_arguments(
    cache: CacheService,
) -> None:
    calls: list[tuple[int, str]] = []

    @cache.cached(expire=timedelta(minutes=1))
    async def load(x: int, kind: str = "a") -> list[object]:
        calls.append((x, kind))
        return [x, kind]

    assert await load(1) == [1, "a"]
    assert await load(x=1) == [1, "a"]  # same bound arguments, same entry
    assert await load(1, "a") == [1, "a"]
    assert await load(2) == [2, "a"]
    assert calls == [(1, "a"), (2, "a")]
    # The documented key: <module>.<qualname>:<JSON array of the bound arguments>.
    name = f"{__name__}.test_cached_hits_after_the_first_call_and_keys_by_arguments.<locals>.load"
    assert default_key(load.__wrapped__, (1,), {}) == f'{name}:[1,"a"]'  # type: ignore[attr-defined]
    assert await cache.get(f'{name}:[1,"a"]') == [1, "a"]


def test_default_key_hashes_long_or_braced_arguments() -> None:
    async def f(arg: object) -> None:
        return None

    key = default_key(f, ({"a": 1},), {})
    assert key.startswith(f"{f.__module__}.{f.__qualname__}:sha256:")
    assert len(key.rsplit(":", 1)[1]) == 64
    assert default_key(f, ("x" * 300,), {}) != default_key(f, ("y" * 300,), {})

    with pytest.raises(CacheKeyError):
        default_key(f, (object(),), {})


async def test_cached_key_callable_overrides_the_default(cache: CacheService) -> None:
    @cache.cached(expire=60, key=lambda candidate_id: f"candidate:{candidate_id}")
    async def load(candidate_id: str) -> str:
        return f"profile {candidate_id}"

    assert await load("7") == "profile 7"
    assert await cache.get("candidate:7") == "profile 7"


async def test_a_write_back_after_an_invalidation_is_refused(cache: CacheService) -> None:
    """The stale set: a value computed before an invalidation is not cached."""
    calls = 0
    started = asyncio.Event()
    release = asyncio.Event()

    @cache.cached(expire=60)
    async def load() -> int:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return calls

    first = asyncio.create_task(load())
    await started.wait()
    await cache.invalidate()  # e.g. a committed transaction changed the data meanwhile
    release.set()
    assert await first == 1  # the caller still gets what it computed...
    assert (await cache.stats()).stale_sets_rejected == 1
    assert await cache.get(default_key(load.__wrapped__, (), {})) is None  # type: ignore[attr-defined]
    assert await load() == 2  # ...but it was not cached: the next call recomputes


async def test_early_refresh_serves_the_old_value_and_recomputes_in_background(
    cache: CacheService,
) -> None:
    version = 0

    @cache.cached(expire=timedelta(seconds=3), refresh=timedelta(milliseconds=2500))
    async def load() -> int:
        nonlocal version
        version += 1
        return version

    assert await load() == 1
    assert await load() == 1  # more than 2.5 s left: a plain hit
    assert version == 1
    await asyncio.sleep(0.8)  # now inside the refresh window
    assert await load() == 1  # REFRESH: the cached value at once...
    await cache.drain()  # ...while the recomputation runs in the background
    assert version == 2
    assert await load() == 2
    stats = await cache.stats()
    assert stats.refreshes == 1
    assert stats.misses == 1  # the key never missed after the first call


async def test_a_failing_loader_voids_its_lease_so_a_waiter_takes_over(
    cache: CacheService,
) -> None:
    attempts = 0
    first_started = asyncio.Event()

    @cache.cached(expire=60, lease=timedelta(seconds=60))
    async def load() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            first_started.set()
            await asyncio.sleep(0.2)
            raise RuntimeError("backend down")
        return "ok"

    failing = asyncio.create_task(load())
    await first_started.wait()
    waiter = asyncio.create_task(load())
    with pytest.raises(RuntimeError, match="backend down"):
        await failing
    # Without voiding the lease the waiter would wait the lease's 60 s out.
    assert await asyncio.wait_for(waiter, timeout=10) == "ok"
    assert attempts == 2


class Model(pydantic.BaseModel):
    id: int


@dataclass
class Profile:
    id: str
    skills: list[str]


async def test_cached_rebuilds_the_annotated_return_class(cache: CacheService) -> None:
    @cache.cached(expire=60)
    async def load(candidate_id: str) -> Profile:
        return Profile(id=candidate_id, skills=["rust"])

    assert await load("1") == Profile("1", ["rust"])
    hit = await load("1")
    assert isinstance(hit, Profile) and hit == Profile("1", ["rust"])

    async def load_model(n: int) -> Model:
        return Model(id=n)

    @cache.cached(expire=60)
    async def maybe(candidate_id: str) -> Profile | None:
        return None if candidate_id == "none" else Profile(id=candidate_id, skills=[])

    assert await maybe("2") == Profile("2", [])
    assert await maybe("2") == Profile("2", [])  # a hit, rebuilt through the Optional
    assert await maybe("none") is None
    assert await maybe("none") is None

    cached_model = cache.cached(expire=60)(load_model)
    assert await cached_model(3) == Model(id=3)
    assert await cached_model(3) == Model(id=3)
    assert await cache.get(default_key(load_model, (3,), {})) == {"id": 3}


async def test_cached_falls_back_to_get_set_without_fetch(
    redis_server: RedisServer, redis_client: aioredis.Redis, prefix: str
) -> None:
    # A user denied NSCACHE.FETCH stands for a server without it.
    await redis_client.execute_command(
        "ACL", "SETUSER", "nofetch", "on", "nopass", "+@all", "-nscache.fetch", "~*", "&*"
    )
    client = aioredis.Redis(port=redis_server.port, username="nofetch", password="x")
    try:
        cache = CacheService(client, prefix=prefix)
        calls = 0

        @cache.cached(expire=60)
        async def load() -> dict[str, int]:
            nonlocal calls
            calls += 1
            return {"n": calls}

        assert await load() == {"n": 1}
        assert await load() == {"n": 1}
        assert calls == 1
        stats = await cache.stats()
        assert (stats.leases, stats.sets, stats.hits) == (0, 1, 1)
    finally:
        await client.aclose()


async def test_a_client_that_decodes_responses_works_too(
    redis_server: RedisServer, prefix: str
) -> None:
    client = aioredis.Redis(port=redis_server.port, decode_responses=True)
    try:
        cache = CacheService(client, prefix=prefix)
        await cache.set("k", {"a": "é"}, expire=60)
        assert await cache.get("k") == {"a": "é"}

        @cache.cached(expire=60)
        async def load() -> list[int]:
            return [1, 2]

        assert await load() == [1, 2]
        assert await load() == [1, 2]
        assert (await cache.stats()).leases == 1
    finally:
        await client.aclose()


class Level(enum.Enum):
    LOW = "low"
    HIGH = "high"


@dataclass
class Skill:
    name: str
    since: datetime.date


@dataclass
class Candidate:
    id: uuid.UUID
    seen_at: datetime.datetime
    salary: decimal.Decimal
    level: Level
    skills: list[Skill]
    scores: dict[int, float]
    tags: frozenset[str]
    pair: tuple[int, str]


async def test_a_hit_has_the_types_of_the_miss_for_annotated_values(cache: CacheService) -> None:
    # The first (MISS) caller gets what the function returned; hits used to get the
    # JSON form instead: ISO strings for datetimes, str for UUID and Decimal, dicts for
    # nested dataclasses, lists for tuples and sets, string keys for dict[int, ...].
    candidate = Candidate(
        id=uuid.uuid4(),
        seen_at=datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC),
        salary=decimal.Decimal("1234.50"),
        level=Level.HIGH,
        skills=[Skill("rust", datetime.date(2020, 1, 2))],
        scores={1: 0.5, 2: 1.0},
        tags=frozenset({"a", "b"}),
        pair=(1, "x"),
    )

    @cache.cached(expire=60)
    async def load(n: int) -> Candidate:
        return candidate

    @cache.cached(expire=60)
    async def when() -> datetime.datetime:
        return candidate.seen_at

    @cache.cached(expire=60)
    async def many() -> list[Candidate] | None:
        return [candidate]

    assert await load(1) == candidate
    hit = await load(1)
    assert hit == candidate
    assert isinstance(hit.skills[0], Skill) and isinstance(hit.salary, decimal.Decimal)
    assert await when() == await when() == candidate.seen_at
    assert await many() == await many() == [candidate]


async def test_a_loader_that_fails_after_its_lease_ran_out_keeps_a_newer_value(
    cache: CacheService,
) -> None:
    # Voiding the lease is NSCACHE.DEL: once the lease has expired, the key may hold a
    # value written since (or another caller's lease), which the DEL used to destroy.
    @cache.cached(expire=60, key=lambda: "slow", lease=timedelta(milliseconds=100))
    async def load() -> str:
        await asyncio.sleep(0.4)
        raise RuntimeError("backend timed out")

    failing = asyncio.create_task(load())
    await asyncio.sleep(0.2)  # the lease is over
    assert await cache.set("slow", "fresh", expire=60)
    with pytest.raises(RuntimeError, match="timed out"):
        await failing
    assert await cache.get("slow") == "fresh"


async def test_a_loader_slower_than_its_lease_is_reported(
    cache: CacheService, caplog: pytest.LogCaptureFixture
) -> None:
    # The write-back of a loader that outlives its lease is always refused: the function
    # is then never cached, silently, and every call recomputes it.
    @cache.cached(expire=60, key=lambda: "slow", lease=timedelta(milliseconds=50))
    async def load() -> int:
        await asyncio.sleep(0.2)
        return 1

    with caplog.at_level(logging.WARNING, logger="cachetx.cache"):
        assert await load() == 1
    assert await cache.get("slow") is None
    assert "outlived its 50 ms lease" in caplog.text


class _WaitZeroRedis:
    """A server that answers WAIT 0 to the first FETCHes, then HIT."""

    def __init__(self) -> None:
        self.fetches = 0

    async def execute_command(self, *args: object, **options: object) -> object:
        assert args[0] == "NSCACHE.FETCH"
        self.fetches += 1
        if self.fetches <= 20:
            return [b"WAIT", 0]
        return [b"HIT", b"1"]


async def test_a_wait_hint_of_zero_does_not_spin() -> None:
    fake = _WaitZeroRedis()
    cache = CacheService(fake, prefix="p")  # type: ignore[arg-type]

    @cache.cached(expire=60)
    async def load() -> int:
        raise AssertionError("a waiter does not compute")

    started = time.monotonic()
    assert await load() == 1
    # asyncio.sleep(0) between FETCHes: 20 round trips in no time, a busy loop.
    assert time.monotonic() - started >= 0.02


async def test_a_value_utf8_cannot_hold_is_a_serialization_error(cache: CacheService) -> None:
    # A lone surrogate (os.fsdecode of a bad file name) escaped as UnicodeEncodeError.
    with pytest.raises(SerializationError):
        await cache.set("k", {"path": "b\udcffd"}, expire=60)


class PickleSerializer:
    def dumps(self, value: object) -> bytes:
        return pickle.dumps(value)

    def loads(self, data: bytes | str) -> object:
        assert isinstance(data, bytes)
        return pickle.loads(data)


@pytest.mark.parametrize("protocol", [2, 3])
async def test_a_binary_serializer_works_on_a_client_that_decodes_responses(
    redis_server: RedisServer, prefix: str, protocol: int
) -> None:
    # redis-py decoded the stored bytes as UTF-8 before the serializer saw them:
    # UnicodeDecodeError for pickle, msgpack... on decode_responses=True clients.
    client = aioredis.Redis(port=redis_server.port, decode_responses=True, protocol=protocol)
    try:
        cache = CacheService(client, prefix=prefix, serializer=PickleSerializer())
        await cache.set("k", {"raw": b"\xff\x00"}, expire=60)
        assert await cache.get("k") == {"raw": b"\xff\x00"}

        @cache.cached(expire=60)
        async def load() -> object:
            return {"raw": b"\xfe"}

        assert await load() == {"raw": b"\xfe"}
        assert await load() == {"raw": b"\xfe"}  # a hit through NSCACHE.FETCH
        assert (await cache.stats()).hits == 2
    finally:
        await client.aclose()


async def test_a_key_the_acl_denies_does_not_turn_single_flight_off(
    redis_server: RedisServer, redis_client: aioredis.Redis, prefix: str
) -> None:
    # Any NOPERM from FETCH used to switch the service to GET/SET for good, so one
    # denied key (an ACL key pattern) cost every other key its single flight.
    await redis_client.execute_command(
        # nscache checks ACL key patterns against stored names (prefix:{key}).
        "ACL",
        "SETUSER",
        "somekeys",
        "on",
        "nopass",
        "+@all",
        f"~{prefix}:{{ok*",
        "&*",
    )
    client = aioredis.Redis(port=redis_server.port, username="somekeys", password="x")
    try:
        cache = CacheService(client, prefix=prefix)

        @cache.cached(expire=60, key=lambda name: name)
        async def load(name: str) -> str:
            await asyncio.sleep(0.1)
            return name

        with pytest.raises(NoPermissionError):
            await load("denied")
        assert await asyncio.gather(*(load("ok1") for _ in range(5))) == ["ok1"] * 5
        # The namespace's stats need a grant for the whole namespace: read them as admin.
        assert (await CacheService(redis_client, prefix=prefix).stats()).leases == 1
    finally:
        await client.aclose()


def test_default_keys_of_set_arguments_do_not_depend_on_the_hash_seed() -> None:
    # A set's iteration order depends on PYTHONHASHSEED: two workers computed different
    # keys for f({"alpha", "beta", ...}), so they never shared the entry.
    program = (
        "from dataclasses import dataclass\n"
        "from cachetx.keys import default_key\n"
        "@dataclass\n"
        "class Query:\n"
        "    tags: set[str]\n"
        "async def f(tags: frozenset[str], q: Query) -> None: ...\n"
        "words = ['alpha', 'beta', 'gamma', 'delta', 'epsilon']\n"
        "print(default_key(f, (frozenset(words[:2]), Query(set(words))), {}))\n"
    )
    keys = {
        subprocess.run(
            [sys.executable, "-c", program],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in range(1, 6)
    }
    assert len(keys) == 1, keys


async def test_an_entry_that_no_longer_decodes_is_recomputed(
    cache: CacheService, caplog: pytest.LogCaptureFixture
) -> None:
    # After a deploy that changes the return class (a field added), the entries the old
    # version wrote failed every call with SerializationError until they expired.
    calls = 0

    @cache.cached(expire=60, key=lambda candidate_id: f"profile:{candidate_id}")
    async def load(candidate_id: str) -> Profile:
        nonlocal calls
        calls += 1
        return Profile(id=candidate_id, skills=["sql"])

    @cache.cached(expire=60, key=lambda n: f"model:{n}")
    async def load_model(n: int) -> Model:
        return Model(id=n)

    await cache.set("profile:1", {"id": "1", "name": "old shape"}, expire=60)
    await cache.set("model:2", {"id": "not a number"}, expire=60)
    with caplog.at_level(logging.WARNING, logger="cachetx.cache"):
        assert await load("1") == Profile(id="1", skills=["sql"])
        assert await load_model(2) == Model(id=2)
    assert "no longer decodes" in caplog.text
    assert await load("1") == Profile(id="1", skills=["sql"])  # now a hit
    assert calls == 1
    assert await cache.get("profile:1") == {"id": "1", "skills": ["sql"]}


async def test_a_write_back_the_server_refuses_still_returns_the_value(
    redis_server: RedisServer, redis_client: aioredis.Redis, prefix: str
) -> None:
    # The function ran, but storing its value failed (here NOPERM on NSCACHE.SET; in
    # production OOM under maxmemory noeviction, READONLY after a failover): the caller
    # got the error instead of the value, and the lease stayed for the waiters to sit out.
    await redis_client.execute_command(
        "ACL", "SETUSER", "noset", "on", "nopass", "+@all", "-nscache.set", "~*", "&*"
    )
    client = aioredis.Redis(port=redis_server.port, username="noset", password="x")
    try:
        cache = CacheService(client, prefix=prefix)
        calls = 0

        @cache.cached(expire=60, lease=timedelta(seconds=60))
        async def load() -> int:
            nonlocal calls
            calls += 1
            return 7

        assert await load() == 7
        # The lease was freed: the next caller computes at once instead of waiting 60 s.
        assert await asyncio.wait_for(load(), 5) == 7
        assert calls == 2
    finally:
        await client.aclose()
