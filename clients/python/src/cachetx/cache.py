"""``CacheService``: one nscache namespace, seen from asyncio code.

Every call is one nscache command (README, "nscache reference"): ``get`` is
``NSCACHE.GET``, ``set`` ``NSCACHE.SET``, ``delete`` ``NSCACHE.DEL``, ``invalidate``
``NSCACHE.INVALIDATE`` and ``stats`` ``NSCACHE.STATS prefix JSON``. ``cached`` follows the
README's "cached() with leases" recipe on ``NSCACHE.FETCH``.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import inspect
import json
import logging
import math
import re
import typing
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar

from redis.asyncio import Redis
from redis.client import NEVER_DECODE
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from .errors import CachetxError, InvalidExpireError, InvalidPrefixError, SerializationError
from .keys import default_key
from .serialization import JsonSerializer, Serializer, from_jsonable

log = logging.getLogger("cachetx.cache")

P = ParamSpec("P")
R = TypeVar("R")

_PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_LEASE_MS = 3_600_000
# Longest sleep on a WAIT reply (the server suggests 1-50 ms).
MAX_WAIT_MS = 1000
DEFAULT_LEASE = timedelta(seconds=5)


def _text(value: Any) -> str:
    """A reply element as text, whether the client decodes responses or not."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def expire_seconds(expire: timedelta | int | float) -> int:
    """Whole seconds for ``NSCACHE.SET``'s ttl, rounded up so an entry never lives
    shorter than asked; :class:`InvalidExpireError` unless positive."""
    if isinstance(expire, bool) or not isinstance(expire, timedelta | int | float):
        raise InvalidExpireError(f"expire must be a timedelta or seconds, got {expire!r}")
    seconds = expire.total_seconds() if isinstance(expire, timedelta) else float(expire)
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidExpireError(f"expire must be positive, got {expire!r}")
    return math.ceil(seconds)


def _milliseconds(value: timedelta, what: str, upper: int) -> int:
    ms = math.ceil(value.total_seconds() * 1000)
    if not 1 <= ms <= upper:
        raise InvalidExpireError(f"{what} must be from 1 ms to {upper} ms, got {value!r}")
    return ms


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles of a command's time inside Redis, in microseconds."""

    p50: int = 0
    p90: int = 0
    p99: int = 0
    p999: int = 0
    max: int = 0


@dataclass(frozen=True)
class CacheStats:
    """A namespace's statistics on one Redis node (``NSCACHE.STATS prefix JSON``;
    field meanings in the README's NSCACHE.STATS table)."""

    prefix: str
    hits: int = 0
    misses: int = 0
    hit_ratio: float = 0.0
    sets: int = 0
    deletes: int = 0
    invalidations: int = 0
    expired: int = 0
    evicted: int = 0
    entries: int = 0
    bytes: int = 0
    read_latency_us: LatencySummary = LatencySummary()
    write_latency_us: LatencySummary = LatencySummary()
    leases: int = 0
    lease_waits: int = 0
    refreshes: int = 0
    stale_sets_rejected: int = 0

    @classmethod
    def from_json(cls, data: builtins.bytes | str) -> CacheStats:
        """Parse the JSON reply; fields this version does not know are ignored."""
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict):
                raise TypeError("not an object")
            values: dict[str, Any] = {}
            for field in fields(cls):
                if field.name not in raw:
                    continue
                value = raw[field.name]
                if field.name.endswith("_latency_us"):
                    known = {f.name for f in fields(LatencySummary)}
                    value = LatencySummary(**{k: int(v) for k, v in value.items() if k in known})
                elif field.name == "hit_ratio":
                    value = float(value)
                elif field.name != "prefix":
                    value = int(value)
                values[field.name] = value
            return cls(**values)
        except (ValueError, TypeError, AttributeError) as exc:
            raise CachetxError(f"unexpected NSCACHE.STATS JSON reply: {exc}") from exc


class CacheService:
    """An nscache namespace (``prefix``) on a ``redis.asyncio.Redis`` client.

    Values are encoded by ``serializer`` (JSON by default, see
    :mod:`cachetx.serialization`); ``get`` returns plain JSON types (dicts, lists...).
    The client may decode responses or not. Namespace-wide commands (``invalidate``,
    ``stats``) act on the node the client talks to (one node, not a cluster).

    >>> cache = CacheService(redis.asyncio.Redis(), prefix="candidates")
    """

    def __init__(
        self,
        redis_client: Redis,
        prefix: str,
        *,
        serializer: Serializer | None = None,
    ) -> None:
        if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
            raise InvalidPrefixError(
                f"invalid prefix {prefix!r}: 1 to 64 characters of A-Z a-z 0-9 _ . -"
            )
        self.redis = redis_client
        self.prefix = prefix
        self.serializer: Serializer = serializer or JsonSerializer()
        # None until the first FETCH tells whether the server (or this user) has it.
        self._fetch_supported: bool | None = None
        self._refreshes: set[asyncio.Task[None]] = set()

    async def _command(self, *args: Any) -> Any:
        # redis-py's execute_command is untyped; replies are checked where they are used.
        return await self.redis.execute_command(*args)  # type: ignore[no-untyped-call]

    async def _read(self, *args: Any) -> Any:
        """A command whose reply carries stored values: read as bytes even when the
        client decodes responses, so a serializer's bytes (not UTF-8 text, e.g. pickle
        or msgpack) reach ``loads`` intact instead of failing in redis-py's decoder."""
        return await self.redis.execute_command(*args, **{NEVER_DECODE: True})  # type: ignore[no-untyped-call]

    async def get(self, key: str | bytes) -> Any | None:
        """The value stored under ``key``, or None when there is none (a miss)."""
        raw = await self._read("NSCACHE.GET", self.prefix, key)
        return None if raw is None else self.serializer.loads(raw)

    async def set(self, key: str | bytes, value: Any, expire: timedelta | int | float) -> bool:
        """Store ``value`` under ``key`` for ``expire`` (a timedelta or seconds, rounded up
        to whole seconds). Returns True when written."""
        ttl = expire_seconds(expire)
        data = self.serializer.dumps(value)
        reply = await self._command("NSCACHE.SET", self.prefix, key, ttl, data)
        return reply is not None

    async def delete(self, *keys: str | bytes) -> int:
        """Delete entries; returns how many live entries were removed."""
        if not keys:
            return 0
        return int(await self._command("NSCACHE.DEL", self.prefix, *keys))

    async def ttl(self, key: str | bytes) -> int | None:
        """Seconds left for ``key``, or None when there is no live entry."""
        seconds = int(await self._command("NSCACHE.TTL", self.prefix, key))
        return None if seconds < 0 else seconds

    async def invalidate(self) -> int:
        """Invalidate the whole namespace in O(1) (``NSCACHE.INVALIDATE``); returns the
        number of live entries invalidated."""
        return int(await self._command("NSCACHE.INVALIDATE", self.prefix))

    async def stats(self) -> CacheStats:
        """The namespace's server-side statistics (``NSCACHE.STATS prefix JSON``)."""
        raw = await self._command("NSCACHE.STATS", self.prefix, "JSON")
        return CacheStats.from_json(raw)

    async def drain(self) -> None:
        """Wait for the early refreshes started by ``cached`` that are still running
        (call before shutdown; refresh errors are logged, not raised)."""
        while self._refreshes:
            await asyncio.gather(*list(self._refreshes), return_exceptions=True)

    def cached(
        self,
        expire: timedelta | int | float,
        *,
        key: Callable[..., str | bytes] | None = None,
        refresh: timedelta | None = None,
        lease: timedelta = DEFAULT_LEASE,
        serializer: Serializer | None = None,
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
        """Cache an async function's results for ``expire``, with single flight.

        - Key: :func:`cachetx.keys.default_key` (``<module>.<qualname>:<JSON args>``), or
          ``key(*args, **kwargs)`` when given.
        - Single flight: ``NSCACHE.FETCH`` grants one caller per key a lease (``MISS``);
          it runs the function and writes back with ``NSCACHE.SET ... LEASE token``;
          concurrent callers get ``WAIT`` and retry after the server's hint, then read
          the value. ``lease`` must exceed the function's worst-case time. If the
          function raises, the lease is voided (``NSCACHE.DEL`` of the missing entry)
          so a waiter takes over at once, and the exception propagates.
        - A write-back refused because the key was written or invalidated meanwhile is
          not retried: the caller still gets the value it computed.
        - ``refresh``: when the entry has less than this left, one caller gets
          ``REFRESH``: it returns the cached value and recomputes in the background.
        - When the server has no ``NSCACHE.FETCH`` (an older module, or an ACL that
          denies it), the decorator falls back to ``NSCACHE.GET``/``NSCACHE.SET``
          without single flight.
        - Values are encoded by ``serializer`` (default: the service's). When the
          function's return annotation is a dataclass or pydantic model, cached values
          are rebuilt into it.
        """
        ttl = expire_seconds(expire)
        lease_ms = _milliseconds(lease, "lease", MAX_LEASE_MS)
        window_ms: int | None = None
        if refresh is not None:
            window_ms = _milliseconds(refresh, "refresh", ttl * 1000)
            if window_ms >= ttl * 1000:
                raise InvalidExpireError("refresh must be shorter than expire")
        codec = serializer or self.serializer

        def decorator(func: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
            if not inspect.iscoroutinefunction(func):
                raise TypeError(f"cached() needs an async function, got {func!r}")
            try:
                return_type = typing.get_type_hints(func).get("return")
            except Exception:  # unresolvable annotations: return plain JSON values
                return_type = None

            @functools.wraps(func)
            async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                cache_key = key(*args, **kwargs) if key else default_key(func, args, kwargs)

                async def compute() -> R:
                    return await func(*args, **kwargs)

                return await self._cached_call(
                    cache_key, compute, ttl, lease_ms, window_ms, codec, return_type
                )

            return wrapper

        return decorator

    def _decode(self, codec: Serializer, raw: Any, return_type: Any) -> Any:
        return from_jsonable(codec.loads(raw), return_type)

    async def _cached_call(
        self,
        key: str | bytes,
        compute: Callable[[], Awaitable[R]],
        ttl: int,
        lease_ms: int,
        window_ms: int | None,
        codec: Serializer,
        return_type: Any,
    ) -> R:
        if self._fetch_supported is False:
            return await self._get_or_set(key, compute, ttl, codec, return_type)
        fetch: list[Any] = ["NSCACHE.FETCH", self.prefix, key, lease_ms]
        if window_ms is not None:
            fetch += ["REFRESH", window_ms]
        dropped = False
        while True:
            try:
                reply = await self._read(*fetch)
            except (ResponseError, NoPermissionError) as exc:
                if not _lacks_command(exc):
                    raise
                log.warning("NSCACHE.FETCH unavailable (%s): cached() uses GET/SET", exc)
                self._fetch_supported = False
                return await self._get_or_set(key, compute, ttl, codec, return_type)
            self._fetch_supported = True
            status = _text(reply[0])
            if status in ("HIT", "REFRESH"):
                try:
                    value = self._decode(codec, reply[1], return_type)
                except SerializationError as exc:
                    if dropped:
                        raise
                    # Written by an older version of the function (a field added, a type
                    # changed): recompute it rather than fail every call until it expires.
                    log.warning("cached(): dropping %r, which no longer decodes: %s", key, exc)
                    await self._command("NSCACHE.DEL", self.prefix, key)
                    dropped = True
                    continue
                if status == "HIT":
                    return typing.cast(R, value)
            if status == "WAIT":
                # The server says 1-50 ms; never spin on 0, never oversleep a bad hint.
                await asyncio.sleep(min(max(int(reply[1]), 1), MAX_WAIT_MS) / 1000)
                continue
            if status == "REFRESH":
                task = asyncio.create_task(self._refresh(key, compute, ttl, reply[2], codec))
                self._refreshes.add(task)
                task.add_done_callback(self._refreshes.discard)
                return typing.cast(R, value)
            if status == "MISS":
                token = reply[1]
                loop = asyncio.get_running_loop()
                lease_ends = loop.time() + lease_ms / 1000
                try:
                    value = await compute()
                    data = codec.dumps(value)
                except BaseException:
                    # Void our lease so a waiter recomputes now instead of after lease_ms.
                    # Once the lease has run out, the key may hold another caller's lease
                    # or a fresh value: deleting it would throw those away.
                    if loop.time() < lease_ends:
                        await asyncio.shield(self._void_lease(key))
                    raise
                try:
                    written = await self._write_back(key, ttl, data, token)
                except RedisError as exc:
                    # The value is computed: a cache that cannot store it (maxmemory with
                    # noeviction, a replica after failover, NOPERM...) must not fail the
                    # call. Free the key for the next caller.
                    log.warning("cached(): could not store %r, returning it uncached: %s", key, exc)
                    await asyncio.shield(self._void_lease(key))
                    return value
                if not written and loop.time() >= lease_ends:
                    log.warning(
                        "cached(): computing %r outlived its %d ms lease, so the value was "
                        "not cached (and other callers computed it too); raise lease=",
                        key,
                        lease_ms,
                    )
                return value
            raise CachetxError(f"unexpected NSCACHE.FETCH reply {reply!r}")

    async def _void_lease(self, key: str | bytes) -> None:
        try:
            await self._command("NSCACHE.DEL", self.prefix, key)
        except Exception as exc:  # the lease then just runs out
            log.warning("could not void the lease of %r: %s", key, exc)

    async def _write_back(self, key: str | bytes, ttl: int, data: bytes, token: Any) -> bool:
        reply = await self._command("NSCACHE.SET", self.prefix, key, ttl, data, "LEASE", token)
        if reply is None:
            log.debug("write-back of %r refused: written or invalidated meanwhile", key)
        return reply is not None

    async def _refresh(
        self,
        key: str | bytes,
        compute: Callable[[], Awaitable[Any]],
        ttl: int,
        token: Any,
        codec: Serializer,
    ) -> None:
        try:
            data = codec.dumps(await compute())
            await self._write_back(key, ttl, data, token)
        except Exception:
            log.exception("early refresh of %r failed; the entry expires as usual", key)

    async def _get_or_set(
        self,
        key: str | bytes,
        compute: Callable[[], Awaitable[R]],
        ttl: int,
        codec: Serializer,
        return_type: Any,
    ) -> R:
        raw = await self._read("NSCACHE.GET", self.prefix, key)
        if raw is not None:
            try:
                return typing.cast(R, self._decode(codec, raw, return_type))
            except SerializationError as exc:
                log.warning("cached(): replacing %r, which no longer decodes: %s", key, exc)
        value = await compute()
        data = codec.dumps(value)
        try:
            await self._command("NSCACHE.SET", self.prefix, key, ttl, data)
        except RedisError as exc:
            log.warning("cached(): could not store %r, returning it uncached: %s", key, exc)
        return value


def _lacks_command(exc: Exception) -> bool:
    """True when the server has no NSCACHE.FETCH or the ACL denies the command itself;
    a NOPERM for one key (an ACL key pattern) says nothing about the others."""
    text = str(exc).lower()
    if "nscache.fetch" not in text:
        return False
    return isinstance(exc, NoPermissionError) or "unknown command" in text


__all__ = ["CacheService", "CacheStats", "LatencySummary"]
