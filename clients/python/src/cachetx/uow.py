"""Unit of work over a SQLAlchemy ``AsyncSession``, with domain events in the same
transaction.

Events added during a transaction are written with ``txevents.emit`` on the session's
own connection just before ``COMMIT``, so they exist if and only if the transaction
commits: a rollback (or an error at commit) leaves no event, and consumer groups and
``LISTEN txevents`` see them only after the commit.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from .errors import MetricsUnavailableError
from .events import EncodedEvent, encode_event

if TYPE_CHECKING:
    from .bus import EventBus

log = logging.getLogger("cachetx.uow")

P = ParamSpec("P")
R = TypeVar("R")

_EMIT = text(
    "SELECT txevents.emit(CAST(:event_type AS text), CAST(:payload AS jsonb), "
    "CAST(:aggregate_type AS text), CAST(:aggregate_id AS text), CAST(:headers AS jsonb))"
)


class SqlAlchemyUnitOfWork:
    """A transaction on one ``AsyncSession`` plus the events to emit in it.

    ``session`` is the session your repositories use. ``commit`` flushes the session,
    emits the pending events with ``txevents.emit`` on the same connection and commits;
    ``rollback`` rolls back and drops them. One unit of work belongs to one task at a
    time, like its session.
    """

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self._pending: list[EncodedEvent] = []
        # How many transaction_context blocks are open on this unit of work: an inner
        # one (a transactional call, another manager's, a helper's own block) joins
        # the outermost, which alone commits or rolls back.
        self._depth = 0

    def add_event(self, event: Any, *, headers: dict[str, Any] | None = None) -> None:
        """Queue ``event`` (a dataclass or pydantic model, see :mod:`cachetx.events`)
        for this transaction. It is encoded now, so a bad event fails at the call."""
        self._pending.append(encode_event(event, headers))

    @property
    def pending_events(self) -> tuple[EncodedEvent, ...]:
        """The events queued since the last commit or rollback."""
        return tuple(self._pending)

    async def emit_pending(self) -> list[int]:
        """Write the queued events into the open transaction now; returns their ids.
        ``commit`` calls it; call it yourself to get the ids before committing."""
        ids: list[int] = []
        while self._pending:
            event = self._pending[0]
            result = await self.session.execute(
                _EMIT,
                {
                    "event_type": event.event_type,
                    "payload": event.payload,
                    "aggregate_type": event.aggregate_type,
                    "aggregate_id": event.aggregate_id,
                    "headers": event.headers,
                },
            )
            ids.append(int(result.scalar_one()))
            self._pending.pop(0)
        return ids

    async def commit(self) -> None:
        """Emit the queued events and commit the session's transaction."""
        await self.emit_pending()
        await self.session.commit()

    async def rollback(self) -> None:
        """Roll the session's transaction back; queued events are dropped."""
        self._pending.clear()
        await self.session.rollback()


@asynccontextmanager
async def transaction_context(uow: SqlAlchemyUnitOfWork) -> AsyncIterator[SqlAlchemyUnitOfWork]:
    """Run a block as one transaction: commit (with the queued events) when it ends
    normally, roll back when it raises anything (``DomainError``, any other exception,
    cancellation), and re-raise. A block opened on ``uow`` while another is open on it
    (directly, or by a ``transactional`` call) joins the outer transaction: only the
    outermost block commits or rolls back.

    >>> async with transaction_context(uow) as tx:
    ...     await repository.save(entity1)
    ...     tx.add_event(EntitySaved(id=entity1.id))
    """
    if uow._depth:
        # Nested in an open block of the same unit of work: part of its transaction.
        # Committing here would commit the outer block's work half done.
        uow._depth += 1
        try:
            yield uow
        finally:
            # Never below 0, even if the outermost block ended first (a unit of work
            # misused by two tasks at once): the next block must start a transaction.
            uow._depth = max(uow._depth - 1, 0)
        return
    uow._depth = 1
    try:
        try:
            yield uow
        except BaseException:
            await _rollback_quietly(uow)
            raise
        try:
            await uow.commit()
        except BaseException:
            # A failed COMMIT (e.g. a deferred constraint) leaves the session needing a
            # rollback.
            await _rollback_quietly(uow)
            raise
    finally:
        uow._depth = 0


async def _rollback_quietly(uow: SqlAlchemyUnitOfWork) -> None:
    try:
        await uow.rollback()
    except Exception:  # the original exception matters more than a failed rollback
        log.exception("rollback failed")


@dataclass(frozen=True)
class TransactionMetrics:
    """This database's row of ``txevents.metrics`` (SPEC 3.4): every column by name in
    :attr:`values` (``metrics["rollback_rate"]`` reads one)."""

    database: str
    values: Mapping[str, Any]

    def __getitem__(self, column: str) -> Any:
        return self.values[column]


class TransactionManager:
    """The seed's transaction manager: ``transactional`` runs a coroutine function in
    one transaction of ``uow``; ``add_event`` queues an event into the transaction in
    progress. ``event_bus`` is the :class:`~cachetx.EventBus` the events are meant for
    (optional; kept for the seed's signature and for :meth:`metrics`-style wiring)."""

    def __init__(self, uow: SqlAlchemyUnitOfWork, event_bus: EventBus | None = None) -> None:
        self.uow = uow
        self.event_bus = event_bus
        # Per task, so a transactional call nested in another joins it (see transactional).
        self._active: contextvars.ContextVar[bool] = contextvars.ContextVar(
            f"cachetx_tx_{id(self)}", default=False
        )

    def add_event(self, event: Any, *, headers: dict[str, Any] | None = None) -> None:
        """Queue ``event`` for the current transaction (written only if it commits)."""
        self.uow.add_event(event, headers=headers)

    def transactional(self, func: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        """Decorate a coroutine function: it runs in a transaction that commits (with its
        events) when it returns and rolls back when it raises. A ``transactional`` call
        made inside another joins the outer transaction."""
        if not inspect.iscoroutinefunction(func):
            # A plain function would run inside the transaction, then fail at the await
            # with a TypeError that rolls its work back.
            raise TypeError(f"transactional needs an async function, got {func!r}")

        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if self._active.get():
                return await func(*args, **kwargs)
            token = self._active.set(True)
            started = time.monotonic()
            try:
                async with transaction_context(self.uow):
                    result = await func(*args, **kwargs)
            finally:
                self._active.reset(token)
                log.debug("%s took %.3f s", func.__qualname__, time.monotonic() - started)
            return result

        return wrapper

    async def metrics(self) -> TransactionMetrics | None:
        """This database's ``txevents.metrics`` row, or None when the installed
        txevents has no metrics view (or no row for this database). Raises
        :class:`MetricsUnavailableError` when the view exists but the server cannot
        serve it (txevents not in ``shared_preload_libraries``). Runs in a savepoint
        when a transaction is open, else in its own transaction, so it never disturbs
        the unit of work."""
        session = self.uow.session
        in_tx = session.in_transaction()
        nested = await session.begin_nested() if in_tx else None
        try:
            exists = (
                await session.execute(text("SELECT to_regclass('txevents.metrics') IS NOT NULL"))
            ).scalar_one()
            if not exists:
                return None
            try:
                result = await session.execute(
                    text("SELECT * FROM txevents.metrics WHERE datname = current_database()")
                )
            except DBAPIError as exc:
                orig = exc.orig
                sqlstate = getattr(orig, "sqlstate", None)
                message = str(getattr(getattr(orig, "diag", None), "message_primary", None) or orig)
                raise MetricsUnavailableError(message, sqlstate) from exc
            row = result.mappings().first()
            if row is None:
                return None
            return TransactionMetrics(database=str(row["datname"]), values=dict(row))
        finally:
            if nested is not None:
                await nested.rollback()
            else:
                await session.rollback()
