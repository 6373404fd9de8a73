"""EventBus against a real txevents consumer group: retries with backoff, dead letters,
LISTEN wake-up, cancellation."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import enum
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import pytest
from domain import ProcessStatusUpdated
from sqlalchemy.ext.asyncio import AsyncSession
from support import Database, run_until

from cachetx import (
    EventBus,
    EventError,
    SqlAlchemyUnitOfWork,
    TransactionManager,
    WorkerConfigError,
    current_delivery,
)


@dataclass
class Flaky:
    n: int


async def emit(session: AsyncSession, *events: object) -> None:
    manager = TransactionManager(SqlAlchemyUnitOfWork(session))

    @manager.transactional
    async def publish() -> None:
        for event in events:
            manager.add_event(event)

    await publish()


async def test_a_handler_that_fails_twice_is_retried_with_backoff_then_acked(
    session: AsyncSession, db: Database
) -> None:
    bus = EventBus(
        db.plain_url,
        group="flaky",
        max_attempts=5,
        backoff_base=timedelta(milliseconds=400),
        poll_interval=timedelta(milliseconds=20),
    )
    seen: list[tuple[int, float, Flaky]] = []

    @bus.subscribe(Flaky)
    async def handle(event: Flaky) -> None:
        delivery = current_delivery()
        assert delivery is not None
        seen.append((delivery.attempt, time.monotonic(), event))
        if delivery.attempt < 3:
            raise ConnectionError(f"attempt {delivery.attempt} failed")

    await bus.ensure_group()
    await emit(session, Flaky(n=1))
    await run_until(bus, lambda: len(seen) == 3)

    assert [attempt for attempt, _, _ in seen] == [1, 2, 3]
    assert all(event == Flaky(n=1) for _, _, event in seen)
    # The group's equal-jitter backoff: after attempt n the delay is at least half of
    # base * 2^(n-1), i.e. 200 ms then 400 ms.
    assert seen[1][1] - seen[0][1] >= 0.2
    assert seen[2][1] - seen[1][1] >= 0.4
    # Acked: nothing left to deliver, nothing dead, the claim is gone.
    assert db.query("SELECT count(*) FROM txevents.dead_letters") == [(0,)]
    assert db.query("SELECT count(*) FROM txevents.retries") == [(0,)]
    assert db.query("SELECT count(*) FROM txevents.claims") == [(0,)]
    await asyncio.sleep(1)  # longer than any backoff: a retry would be due by now
    assert db.query("SELECT id FROM txevents.poll('flaky', 10)") == []


async def test_a_handler_that_always_fails_ends_in_the_dead_letters(
    session: AsyncSession, db: Database
) -> None:
    bus = EventBus(
        db.plain_url,
        group="broken",
        max_attempts=3,
        backoff_base=timedelta(milliseconds=50),
        poll_interval=timedelta(milliseconds=20),
    )
    attempts: list[int] = []

    @bus.subscribe(Flaky)
    async def handle(event: Flaky) -> None:
        delivery = current_delivery()
        assert delivery is not None
        attempts.append(delivery.attempt)
        raise ValueError(f"cannot handle {event.n}")

    await bus.ensure_group()
    await emit(session, Flaky(n=9))

    def dead() -> list[tuple[object, ...]]:
        return db.query(
            "SELECT consumer, event_type, payload, attempts, last_error FROM txevents.dead_letters"
        )

    await run_until(bus, lambda: bool(dead()))
    assert dead() == [("broken", "Flaky", {"n": 9}, 3, "ValueError: cannot handle 9")]
    assert attempts == [1, 2, 3]
    assert db.query("SELECT count(*) FROM txevents.retries") == [(0,)]


async def test_the_worker_is_woken_by_listen(session: AsyncSession, db: Database) -> None:
    # Polling alone would take a minute; a NOTIFY after the commit wakes the worker.
    bus = EventBus(db.plain_url, group="listen", poll_interval=timedelta(seconds=60))
    received: list[ProcessStatusUpdated] = []
    got_one = asyncio.Event()

    @bus.subscribe(ProcessStatusUpdated)
    async def handle(event: ProcessStatusUpdated) -> None:
        received.append(event)
        got_one.set()

    await bus.ensure_group()
    task = asyncio.create_task(bus.run())
    try:
        await asyncio.sleep(1)  # the worker polled (nothing) and now sleeps
        assert received == []
        await emit(session, ProcessStatusUpdated(process_id="p", new_status="open"))
        await asyncio.wait_for(got_one.wait(), 15)
    finally:
        bus.stop()
        await asyncio.wait_for(task, 20)
    assert received == [ProcessStatusUpdated(process_id="p", new_status="open")]
    assert isinstance(received[0], ProcessStatusUpdated)


async def test_cancelling_the_worker_releases_the_batch_in_hand(
    session: AsyncSession, db: Database
) -> None:
    bus = EventBus(db.plain_url, group="cancel", lease=timedelta(minutes=10), batch_size=10)
    started = asyncio.Event()

    @bus.subscribe(Flaky)
    async def handle(event: Flaky) -> None:
        started.set()
        await asyncio.sleep(3600)

    await bus.ensure_group()
    await emit(session, *(Flaky(n=i) for i in range(3)))
    task = asyncio.create_task(bus.run())
    await asyncio.wait_for(started.wait(), 15)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Released at once (not after the 10 minute lease): another worker gets all three.
    rows = db.query("SELECT payload, attempt FROM txevents.poll('cancel', 10)")
    assert sorted(row[0]["n"] for row in rows) == [0, 1, 2]  # type: ignore[index]
    assert {row[1] for row in rows} == {2}


async def test_subscribe_refuses_non_event_classes_and_bad_settings(db: Database) -> None:
    bus = EventBus(db.plain_url, group="g")
    with pytest.raises(EventError):
        bus.subscribe(dict)

    def not_async(event: Flaky) -> None:
        pass

    with pytest.raises(WorkerConfigError):
        bus.subscribe(Flaky)(not_async)  # type: ignore[arg-type]
    with pytest.raises(WorkerConfigError):
        await bus.ensure_group()  # no subscriber
    for kwargs in [{"group": ""}, {"group": "x" * 64}, {"group": "g", "batch_size": 0}]:
        with pytest.raises(WorkerConfigError):
            EventBus(db.plain_url, **kwargs)  # type: ignore[arg-type]
    await bus.close()


async def test_an_undecodable_payload_is_nacked_with_the_reason(
    session: AsyncSession, db: Database
) -> None:
    bus = EventBus(db.plain_url, group="decode", max_attempts=1)

    @bus.subscribe(Flaky)
    async def handle(event: Flaky) -> None:
        raise AssertionError("not reached")

    await bus.ensure_group()
    db.query("SELECT txevents.emit('Flaky', '{\"m\": 1}')")
    assert await bus.run_once() == 1
    [(error,)] = db.query("SELECT last_error FROM txevents.dead_letters")
    assert isinstance(error, str) and error.startswith("EventError: cannot decode Flaky")
    await bus.close()


async def test_a_handler_error_whose_text_postgres_cannot_store_is_still_nacked(
    session: AsyncSession, db: Database
) -> None:
    # A lone surrogate (os.fsdecode of a bad file name) or a NUL in the message made
    # the nack itself fail: the worker crashed with UnicodeEncodeError.
    bus = EventBus(
        db.plain_url, group="text", max_attempts=1, poll_interval=timedelta(milliseconds=20)
    )
    handled: list[int] = []

    @bus.subscribe(Flaky)
    async def handle(event: Flaky) -> None:
        if event.n == 1:
            raise ValueError("no such file: b\udcffd")
        if event.n == 2:
            raise ValueError("nul \x00 here")
        handled.append(event.n)

    await bus.ensure_group()
    await emit(session, Flaky(n=1), Flaky(n=2), Flaky(n=3))
    await run_until(bus, lambda: handled == [3])
    rows = db.query("SELECT payload, last_error FROM txevents.dead_letters ORDER BY event_id")
    assert [(row[0]["n"], row[1]) for row in rows] == [  # type: ignore[index]
        (1, "ValueError: no such file: b\ufffdd"),
        (2, "ValueError: nul \ufffd here"),
    ]


async def test_a_worker_role_without_txevents_admin_uses_the_existing_group(
    session: AsyncSession, db: Database
) -> None:
    # README "Roles": workers need txevents_consumer only; create_consumer is an
    # admin's. ensure_group used to fail with 42501 even though the group existed.
    db.query("CREATE ROLE py_worker LOGIN; GRANT txevents_consumer TO py_worker")
    admin = EventBus(db.plain_url, group="least")
    received: list[Flaky] = []

    @admin.subscribe(Flaky)
    async def handle(event: Flaky) -> None:
        received.append(event)

    assert await admin.ensure_group()
    await admin.close()
    bus = EventBus(
        db.plain_url.replace("postgres@", "py_worker@"),
        group="least",
        poll_interval=timedelta(milliseconds=20),
    )
    bus.subscribe(Flaky)(handle)
    assert await bus.ensure_group() is False
    await emit(session, Flaky(n=5))
    await run_until(bus, lambda: received == [Flaky(n=5)])


def test_event_bus_refuses_a_sync_engine_with_a_typed_error(db: Database) -> None:
    from sqlalchemy import create_engine

    sync_engine = create_engine(db.url)
    with pytest.raises(WorkerConfigError, match="AsyncEngine"):
        _ = EventBus(sync_engine, group="g").engine  # type: ignore[arg-type]
    sync_engine.dispose()


class Priority(enum.Enum):
    LOW = 1
    HIGH = 2


@dataclass
class Line:
    sku: str
    price: decimal.Decimal


@dataclass
class OrderPlaced:
    order_id: uuid.UUID
    placed_at: datetime.datetime
    total: decimal.Decimal
    priority: Priority
    lines: list[Line]
    tags: tuple[str, ...] = ()
    due: datetime.date | None = None


async def test_handlers_get_event_fields_in_their_annotated_types(
    session: AsyncSession, db: Database
) -> None:
    # add_event writes datetimes, UUIDs and Decimals as strings; the handler used to get
    # those strings (and dicts for nested dataclasses), so `event.total + 1` failed.
    bus = EventBus(db.plain_url, group="typed", poll_interval=timedelta(milliseconds=20))
    received: list[OrderPlaced] = []

    @bus.subscribe(OrderPlaced)
    async def handle(event: OrderPlaced) -> None:
        received.append(event)

    sent = OrderPlaced(
        order_id=uuid.uuid4(),
        placed_at=datetime.datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=datetime.UTC),
        total=decimal.Decimal("10.10"),
        priority=Priority.HIGH,
        lines=[Line("a", decimal.Decimal("10.10"))],
        tags=("x", "y"),
        due=datetime.date(2024, 6, 1),
    )
    await bus.ensure_group()
    await emit(session, sent)
    await run_until(bus, lambda: bool(received))
    assert received == [sent]
    assert isinstance(received[0].lines[0], Line)


async def test_a_hung_handler_holds_the_worker_for_the_lease_only(
    session: AsyncSession, db: Database
) -> None:
    # A handler that never returns used to stall the worker for good, while its claim
    # ran out and another worker could take the same event.
    bus = EventBus(
        db.plain_url,
        group="hang",
        lease=timedelta(seconds=1),
        batch_size=4,
        max_attempts=2,
        backoff_base=timedelta(milliseconds=50),
        poll_interval=timedelta(milliseconds=20),
    )
    handled: list[int] = []

    @bus.subscribe(Flaky)
    async def handle(event: Flaky) -> None:
        if event.n == 0:
            await asyncio.Event().wait()  # hangs
        handled.append(event.n)

    await bus.ensure_group()
    await emit(session, Flaky(n=0), Flaky(n=1), Flaky(n=2))
    # The events behind the hung one were left unclaimed when the lease ran out: they
    # come back (attempt 2) and are handled, while the hung one is nacked each time.
    await run_until(
        bus,
        lambda: sorted(handled) == [1, 2] and bool(db.query("SELECT 1 FROM txevents.dead_letters")),
        within=15,
    )
    [(error,)] = db.query("SELECT last_error FROM txevents.dead_letters")
    assert error == "TimeoutError: the handlers did not finish within the claim's lease (0:00:01)"


@dataclass
class Added:
    n: int


async def test_a_subscriber_the_existing_group_does_not_cover_is_reported(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    # A handler added to the code of a service whose group already exists never ran,
    # silently: the group keeps the event types it was created with.
    first = EventBus(db.plain_url, group="grows")
    first.subscribe(Flaky)(_ignore)
    assert await first.ensure_group()
    await first.close()
    second = EventBus(db.plain_url, group="grows")
    second.subscribe(Flaky)(_ignore)
    second.subscribe(Added)(_ignore)
    with caplog.at_level(logging.WARNING, logger="cachetx.bus"):
        assert await second.ensure_group() is False
    await second.close()
    assert "exists without event types Added" in caplog.text


async def _ignore(event: object) -> None:
    pass


async def test_a_payload_nested_too_deep_for_python_is_dead_lettered_not_a_crash(
    db: Database,
) -> None:
    # Valid jsonb (a captured table, another producer) nested deeper than Python's
    # recursion limit: psycopg's decoding raised RecursionError inside poll, which rolled
    # the claims back, so every poll failed the same way and the worker crashed, with
    # the good events of the batch stuck behind the poison one.
    bus = EventBus(db.plain_url, group="deep", max_attempts=1)
    handled: list[int] = []

    @bus.subscribe(Flaky)
    async def handle(event: Flaky) -> None:
        handled.append(event.n)

    await bus.ensure_group()
    depth = 3000
    db.query("SELECT txevents.emit('Flaky', %s::jsonb)", '{"n":' + "[" * depth + "]" * depth + "}")
    db.query("SELECT txevents.emit('Flaky', '{\"n\": 1}')")
    assert await bus.run_once() == 2
    await bus.close()
    assert handled == [1]
    [(error,)] = db.query("SELECT last_error FROM txevents.dead_letters")
    assert isinstance(error, str)
    assert error.startswith("EventError: cannot decode the event's JSON: RecursionError")
