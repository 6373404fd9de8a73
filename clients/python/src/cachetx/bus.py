"""``EventBus``: subscribers of domain events, served by a txevents consumer group.

The bus owns one consumer group (``group``). Its event types are the type names of the
subscribed classes (:func:`cachetx.events.event_type_of`). A group receives the events
committed after it was created: start a worker, or call :meth:`EventBus.ensure_group`,
before the first event you want it to see is committed. An existing group is used as it
is (its event types, ``max_attempts`` and backoff are not changed).

Delivery is at least once (a handler may see an event again after a crash or a lost
ack): make handlers idempotent, e.g. by :func:`current_delivery` ``().id``.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .errors import EventError, WorkerConfigError
from .events import Delivery, decode_event, event_type_of
from .worker import run_worker

log = logging.getLogger("cachetx.bus")

E = TypeVar("E")
Handler = Callable[[Any], Awaitable[None]]

_current: contextvars.ContextVar[Delivery | None] = contextvars.ContextVar(
    "cachetx_delivery", default=None
)

MAX_ERROR_TEXT = 4000
# What Postgres text cannot hold: NUL, and lone surrogates (not encodable as UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def current_delivery() -> Delivery | None:
    """The txevents row (id, attempt, headers...) of the event whose handler is running
    in this task, or None outside a handler."""
    return _current.get()


def error_text(exc: BaseException) -> str:
    """What a failed handler's nack records: ``ExceptionClass: message``, cut to
    ``MAX_ERROR_TEXT`` characters and made storable as Postgres text (NUL characters
    and lone surrogates, e.g. from ``os.fsdecode``, are replaced: either would make the
    nack itself fail)."""
    try:
        message = str(exc)
    except Exception as str_error:  # a broken __str__ must not stop the nack
        message = f"<unprintable: {type(str_error).__qualname__}>"
    text_ = f"{type(exc).__qualname__}: {message}"[:MAX_ERROR_TEXT]
    return _UNSTORABLE.sub("\ufffd", text_)


def _engine_from(dsn_or_engine: str | AsyncEngine) -> tuple[AsyncEngine, bool]:
    if isinstance(dsn_or_engine, AsyncEngine):
        return dsn_or_engine, False
    if not isinstance(dsn_or_engine, str | URL):
        raise WorkerConfigError(
            "EventBus needs a database URL or an AsyncEngine, got "
            f"{type(dsn_or_engine).__qualname__} (for a sync Engine, pass its URL)"
        )
    url = make_url(dsn_or_engine)
    if url.drivername in ("postgresql", "postgres"):
        # A plain libpq DSN: use psycopg 3, the driver the package depends on.
        url = url.set(drivername="postgresql+psycopg")
    return create_async_engine(url, pool_size=2, max_overflow=2), True


def _positive(value: timedelta, what: str) -> timedelta:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise WorkerConfigError(f"{what} must be a positive timedelta, got {value!r}")
    return value


def _delivery(row: Any) -> Delivery:
    """A polled row (payload and headers as JSON text) as a Delivery; a row whose JSON
    cannot be decoded keeps its text and the reason, for the nack."""
    error: str | None = None
    try:
        payload = json.loads(row.payload)
        headers = json.loads(row.headers) if row.headers is not None else {}
    except (ValueError, RecursionError) as exc:
        payload, headers = row.payload, {}
        error = f"cannot decode the event's JSON: {type(exc).__qualname__}: {exc}"
    return Delivery(
        id=row.id,
        event_type=row.event_type,
        aggregate_type=row.aggregate_type,
        aggregate_id=row.aggregate_id,
        payload=payload,
        headers=headers if isinstance(headers, dict) else {},
        occurred_at=row.occurred_at,
        attempt=row.attempt,
        decode_error=error,
    )


class EventBus:
    """Handlers of domain events, run over the txevents consumer group ``group``.

    ``dsn_or_engine`` is a database URL (``postgresql://...``; the psycopg driver is used)
    or a SQLAlchemy ``AsyncEngine``. ``max_attempts``, ``backoff_base`` and
    ``backoff_max`` apply when the bus creates the group (``txevents.create_consumer``).
    A worker claims ``batch_size`` events per poll for ``lease``, the time its handlers
    have for the batch (see :meth:`run_once`); it wakes on
    ``LISTEN channel`` (psycopg engines) and polls every ``poll_interval`` anyway (retries
    fall due without a notification).

    >>> event_bus = EventBus("postgresql://app@db/app", group="notifications")
    >>> @event_bus.subscribe(ProcessStatusUpdated)
    ... async def on_status(event: ProcessStatusUpdated) -> None: ...
    """

    def __init__(
        self,
        dsn_or_engine: str | AsyncEngine,
        group: str,
        *,
        batch_size: int = 16,
        lease: timedelta = timedelta(seconds=30),
        poll_interval: timedelta = timedelta(seconds=1),
        channel: str = "txevents",
        max_attempts: int = 10,
        backoff_base: timedelta = timedelta(seconds=1),
        backoff_max: timedelta = timedelta(minutes=5),
    ) -> None:
        if not isinstance(group, str) or not 1 <= len(group.encode("utf-8")) <= 63:
            raise WorkerConfigError(f"group must be 1 to 63 bytes, got {group!r}")
        if not isinstance(batch_size, int) or not 1 <= batch_size <= 10000:
            raise WorkerConfigError(f"batch_size must be from 1 to 10000, got {batch_size!r}")
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise WorkerConfigError(f"max_attempts must be >= 1, got {max_attempts!r}")
        self._dsn_or_engine = dsn_or_engine
        self._engine: AsyncEngine | None = None
        self._owns_engine = False
        self.group = group
        self.batch_size = batch_size
        self.lease = _positive(lease, "lease")
        self.poll_interval = _positive(poll_interval, "poll_interval")
        self.channel = channel
        self.max_attempts = max_attempts
        self.backoff_base = _positive(backoff_base, "backoff_base")
        self.backoff_max = _positive(backoff_max, "backoff_max")
        if self.backoff_max < self.backoff_base:
            raise WorkerConfigError("backoff_max must be >= backoff_base")
        self._handlers: dict[str, list[Handler]] = {}
        self._classes: dict[str, type] = {}
        self._group_ready = False
        self._stop_requested = False
        # Set by stop(); the worker loop waits on it next to the LISTEN wake-up. Made
        # anew by each run(), so that the event belongs to the running loop.
        self._stopped: asyncio.Event | None = None

    # -- subscribers ---------------------------------------------------------------

    def subscribe(
        self, event_cls: type[E]
    ) -> Callable[[Callable[[E], Awaitable[None]]], Callable[[E], Awaitable[None]]]:
        """Register the decorated coroutine function as a handler of ``event_cls``
        events. Several handlers of one type run in registration order; the event is
        acked when all succeed, and nacked (all run again on retry) when one raises."""
        event_type = event_type_of(event_cls)
        known = self._classes.get(event_type)
        if known is not None and known is not event_cls:
            raise WorkerConfigError(
                f"event type {event_type!r} is already bound to {known.__qualname__}"
            )

        def decorator(handler: Callable[[E], Awaitable[None]]) -> Callable[[E], Awaitable[None]]:
            if not inspect.iscoroutinefunction(handler):
                raise WorkerConfigError(f"subscribe() needs an async handler, got {handler!r}")
            self._classes[event_type] = event_cls
            self._handlers.setdefault(event_type, []).append(handler)
            return handler

        return decorator

    @property
    def event_types(self) -> list[str]:
        """The event types the bus has handlers for, sorted."""
        return sorted(self._handlers)

    # -- database ------------------------------------------------------------------

    @property
    def engine(self) -> AsyncEngine:
        """The engine the bus uses (created from the DSN on first use)."""
        if self._engine is None:
            self._engine, self._owns_engine = _engine_from(self._dsn_or_engine)
        return self._engine

    async def ensure_group(self) -> bool:
        """Create the consumer group for the subscribed types if it does not exist;
        returns True when it was created now."""
        if not self._handlers:
            raise WorkerConfigError(f"EventBus {self.group!r} has no subscriber")
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    text(
                        "SELECT txevents.create_consumer(CAST(:name AS text), "
                        "CAST(:types AS text[]), CAST(:max_attempts AS int), "
                        "CAST(:base AS interval), CAST(:max AS interval))"
                    ),
                    {
                        "name": self.group,
                        "types": self.event_types,
                        "max_attempts": self.max_attempts,
                        "base": self.backoff_base,
                        "max": self.backoff_max,
                    },
                )
            created = True
        except DBAPIError as exc:
            sqlstate = getattr(exc.orig, "sqlstate", None)
            if sqlstate == "42501":  # insufficient_privilege: not a txevents_admin
                # A worker may run as a role with txevents_consumer only; the group
                # is then created by an admin, and poll says 42704 if it is missing.
                log.info(
                    "cannot create consumer group %r (no txevents_admin grant); using it as it is",
                    self.group,
                )
            elif sqlstate != "42710":  # duplicate_object
                raise
            else:
                await self._check_group_types()
            created = False
        self._group_ready = True
        return created

    async def _check_group_types(self) -> None:
        """Warn when the existing group does not cover every subscribed type: events of
        the others are never delivered to it. Best effort: reading the group's row
        needs the extension owner's rights; without them nothing is checked."""
        try:
            async with self.engine.connect() as conn:
                row = (
                    await conn.execute(
                        text("SELECT event_types FROM txevents.consumers WHERE name = :g"),
                        {"g": self.group},
                    )
                ).first()
        except DBAPIError:
            return
        if row is None or row.event_types is None:  # NULL: every type
            return
        missing = sorted(set(self.event_types) - set(row.event_types))
        if missing:
            log.warning(
                "consumer group %r exists without event types %s: their handlers will "
                "never run; recreate the group (txevents.drop_consumer, then start the "
                "worker) or subscribe them in a new group",
                self.group,
                ", ".join(missing),
            )

    async def poll(self) -> list[Delivery]:
        """Claim up to ``batch_size`` events for ``lease`` (``txevents.poll``, in its own
        short transaction)."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                text(
                    # payload and headers as text, decoded here one row at a time: a
                    # row psycopg cannot decode (JSON nested deeper than Python's
                    # recursion limit) failed the whole poll, which rolled its claims
                    # back, so the batch came back forever and the worker crashed.
                    "SELECT id, event_type, aggregate_type, aggregate_id,"
                    " payload::text AS payload, headers::text AS headers,"
                    " occurred_at, attempt FROM txevents.poll(CAST(:g AS text),"
                    " CAST(:max AS int), CAST(:lease AS interval))"
                ),
                {"g": self.group, "max": self.batch_size, "lease": self.lease},
            )
            return [_delivery(row) for row in result]

    async def ack(self, ids: list[int]) -> int:
        """Mark events processed (``txevents.ack``); returns how many the group held."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                text("SELECT txevents.ack(CAST(:g AS text), CAST(:ids AS bigint[]))"),
                {"g": self.group, "ids": ids},
            )
            return int(result.scalar_one())

    async def nack(self, event_id: int, error: str, retry_after: timedelta | None = None) -> bool:
        """Report a failure (``txevents.nack``): True when the event will be offered
        again after the group's backoff (or ``retry_after``), False when it went to the
        dead letters."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                text(
                    "SELECT txevents.nack(CAST(:g AS text), CAST(:id AS bigint),"
                    " CAST(:err AS text), CAST(:after AS interval))"
                ),
                {"g": self.group, "id": event_id, "err": error, "after": retry_after},
            )
            return bool(result.scalar_one())

    # -- handling ------------------------------------------------------------------

    async def handle(self, delivery: Delivery) -> None:
        """Decode ``delivery`` into its class and run its handlers (raises what they raise)."""
        handlers = self._handlers.get(delivery.event_type)
        if not handlers:
            raise WorkerConfigError(f"no handler for event type {delivery.event_type!r}")
        if delivery.decode_error is not None:
            raise EventError(delivery.decode_error)
        event = decode_event(self._classes[delivery.event_type], delivery.payload)
        token = _current.set(delivery)
        try:
            for handler in handlers:
                await handler(event)
        finally:
            _current.reset(token)

    async def process(self, delivery: Delivery, *, deadline: float | None = None) -> bool:
        """Handle one claimed event, then ack it, or nack it with the exception's text.
        With ``deadline`` (the running loop's ``time()``), handlers still running then
        are cancelled and the event is nacked with a ``TimeoutError``. Returns True when
        acked."""
        try:
            try:
                async with asyncio.timeout_at(deadline) as scope:
                    await self.handle(delivery)
            except TimeoutError:
                if not scope.expired():
                    raise
                raise TimeoutError(
                    f"the handlers did not finish within the claim's lease ({self.lease})"
                ) from None
        except Exception as exc:
            log.warning(
                "%s %s (attempt %d) failed: %s",
                delivery.event_type,
                delivery.id,
                delivery.attempt,
                error_text(exc),
            )
            if not await self.nack(delivery.id, error_text(exc)):
                log.error("%s %s went to the dead letters", delivery.event_type, delivery.id)
            return False
        await self.ack([delivery.id])
        return True

    async def run_once(self) -> int:
        """Poll one batch and process it; returns the number of events claimed.

        A stop request (:meth:`stop`) lets the batch finish. If the task is cancelled,
        the events of the batch not yet done (the interrupted one included) are given
        back at once with ``nack(..., retry_after => 0)``, so another worker takes them
        without waiting for the lease (this counts as an attempt).

        The batch is claimed for ``lease``: past it, another worker may claim the same
        events. So handlers still running when the lease ends are cancelled and their
        event nacked (``TimeoutError``, the group's backoff applies), and the events not
        started by then are left unclaimed for the next poll. A hung handler therefore
        holds the worker for at most ``lease``."""
        if not self._group_ready:
            await self.ensure_group()
        loop = asyncio.get_running_loop()
        lease_ends = loop.time() + self.lease.total_seconds()
        batch = await self.poll()
        for index, delivery in enumerate(batch):
            if loop.time() >= lease_ends:
                log.warning(
                    "the lease of the batch ran out: %d events left for the next poll",
                    len(batch) - index,
                )
                break
            try:
                await self.process(delivery, deadline=lease_ends)
            except BaseException:
                # Cancelled (or a failed ack/nack): give the rest back now.
                await asyncio.shield(self._release(batch[index:]))
                raise
        return len(batch)

    async def _release(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            try:
                await self.nack(
                    delivery.id, "worker stopped before finishing the event", timedelta(0)
                )
            except Exception as exc:  # e.g. acked just before: nothing to give back
                log.warning("could not release %s %s: %s", delivery.event_type, delivery.id, exc)

    def _start_run(self) -> asyncio.Event:
        """Clear a previous stop request; returns the event :meth:`stop` sets, made in
        the running loop."""
        self._stop_requested = False
        self._stopped = asyncio.Event()
        return self._stopped

    def _end_run(self) -> None:
        self._stopped = None

    def stop(self) -> None:
        """Ask :meth:`run` to return after the batch in hand (SIGTERM does this)."""
        self._stop_requested = True
        if self._stopped is not None:
            self._stopped.set()

    async def run(self, *, handle_signals: bool = False) -> None:
        """Consume the group until :meth:`stop` (or SIGTERM/SIGINT with
        ``handle_signals=True``, which ``python -m cachetx worker`` uses) or cancellation;
        see :mod:`cachetx.worker`."""
        await run_worker(self, handle_signals=handle_signals)

    @property
    def stop_requested(self) -> bool:
        """True once :meth:`stop` was called (reset when :meth:`run` starts)."""
        return self._stop_requested

    async def close(self) -> None:
        """Dispose of the engine if the bus created it."""
        if self._engine is not None and self._owns_engine:
            await self._engine.dispose()
            self._engine = None
