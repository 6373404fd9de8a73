"""Unit of work, TransactionManager and transaction_context against a real Postgres with
txevents: events exist if and only if the transaction commits."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar

import pytest
from domain import Candidate, CandidateCreated, CandidateRepository, create_schema
from servers import PostgresCluster
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from support import Database

from cachetx import (
    DomainError,
    EventError,
    MetricsUnavailableError,
    SqlAlchemyUnitOfWork,
    TransactionManager,
    TransactionMetrics,
    transaction_context,
)


@dataclass
class Renamed:
    event_type: ClassVar[str] = "process.renamed"
    aggregate_type: ClassVar[str] = "process"
    aggregate_id: int
    name: str


@dataclass
class Plain:
    n: int


def outbox(db: Database) -> list[tuple[object, ...]]:
    return db.query(
        "SELECT event_type, aggregate_type, aggregate_id, payload, headers"
        " FROM txevents.outbox ORDER BY id"
    )


async def test_transactional_commits_rows_and_events_together(
    engine: AsyncEngine, session: AsyncSession, db: Database
) -> None:
    await create_schema(engine)
    manager = TransactionManager(SqlAlchemyUnitOfWork(session))

    @manager.transactional
    async def rename(process_id: int, name: str) -> str:
        await CandidateRepository(session).save(Candidate(id=name, name=name, process_id="p"))
        manager.add_event(Renamed(aggregate_id=process_id, name=name), headers={"by": "test"})
        manager.add_event(Plain(n=1))
        return name

    assert await rename(7, "x") == "x"
    assert outbox(db) == [
        ("process.renamed", "process", "7", {"aggregate_id": 7, "name": "x"}, {"by": "test"}),
        ("Plain", None, None, {"n": 1}, {}),
    ]
    assert db.query("SELECT id FROM candidates") == [("x",)]


async def test_a_rolled_back_transactional_call_leaves_no_event(
    engine: AsyncEngine, session: AsyncSession, db: Database
) -> None:
    await create_schema(engine)
    manager = TransactionManager(SqlAlchemyUnitOfWork(session))

    @manager.transactional
    async def create(name: str, fail: bool) -> None:
        await CandidateRepository(session).save(Candidate(id=name, name=name, process_id="p"))
        manager.add_event(CandidateCreated(candidate_id=name, process_id="p"))
        # Written to the outbox inside the transaction, as commit would, then rolled back.
        await manager.uow.emit_pending()
        if fail:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await create("gone", fail=True)
    assert outbox(db) == []
    assert db.query("SELECT id FROM candidates") == []
    assert manager.uow.pending_events == ()

    # Positive control: the same call without the failure leaves its row and its event.
    await create("kept", fail=False)
    assert [row[2] for row in outbox(db)] == ["kept"]
    assert db.query("SELECT id FROM candidates") == [("kept",)]


async def test_events_are_emitted_on_the_transactions_own_connection(
    engine: AsyncEngine, session: AsyncSession, db: Database
) -> None:
    """A commit that fails at COMMIT time (a deferred constraint) takes its events with it:
    they were written by the same transaction."""
    async with engine.begin() as conn:
        await conn.execute(
            text("CREATE TABLE uniq (v int, CONSTRAINT u UNIQUE (v) DEFERRABLE INITIALLY DEFERRED)")
        )
    uow = SqlAlchemyUnitOfWork(session)
    with pytest.raises(IntegrityError):
        async with transaction_context(uow) as tx:
            await session.execute(text("INSERT INTO uniq VALUES (1), (1)"))
            tx.add_event(Plain(n=2))
    assert outbox(db) == []

    async with transaction_context(uow) as tx:
        await session.execute(text("INSERT INTO uniq VALUES (1)"))
        tx.add_event(Plain(n=3))
    assert [row[3] for row in outbox(db)] == [{"n": 3}]


async def test_transaction_context_rolls_back_on_domain_error_and_reraises(
    engine: AsyncEngine, session: AsyncSession, db: Database
) -> None:
    await create_schema(engine)
    repository = CandidateRepository(session)
    uow = SqlAlchemyUnitOfWork(session)

    class RuleBroken(DomainError):
        pass

    with pytest.raises(RuleBroken):
        async with transaction_context(uow) as tx:
            await repository.save(Candidate(id="a", name="a", process_id="p"))
            tx.add_event(Plain(n=1))
            raise RuleBroken("a candidate can apply once")
    assert db.query("SELECT count(*) FROM candidates") == [(0,)]
    assert outbox(db) == []

    # Cancellation rolls back too.
    async def cancelled_block() -> None:
        async with transaction_context(uow):
            await repository.save(Candidate(id="b", name="b", process_id="p"))
            await asyncio.sleep(60)

    task = asyncio.create_task(cancelled_block())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert db.query("SELECT count(*) FROM candidates") == [(0,)]

    # Positive control: the same block without the error commits.
    async with transaction_context(uow) as tx:
        await repository.save(Candidate(id="c", name="c", process_id="p"))
        tx.add_event(Plain(n=2))
    assert db.query("SELECT id FROM candidates") == [("c",)]
    assert [row[3] for row in outbox(db)] == [{"n": 2}]


async def test_nested_transactional_calls_join_the_outer_transaction(
    engine: AsyncEngine, session: AsyncSession, db: Database
) -> None:
    await create_schema(engine)
    manager = TransactionManager(SqlAlchemyUnitOfWork(session))

    @manager.transactional
    async def inner() -> None:
        manager.add_event(Plain(n=1))

    @manager.transactional
    async def outer() -> None:
        await inner()
        raise DomainError("outer fails after inner returned")

    with pytest.raises(DomainError):
        await outer()
    assert outbox(db) == []  # inner did not commit on its own


def test_add_event_refuses_what_is_not_an_event(session: AsyncSession) -> None:
    uow = SqlAlchemyUnitOfWork(session)
    for bad in [{"a": 1}, "text", Plain]:
        with pytest.raises(EventError):
            uow.add_event(bad)
    assert uow.pending_events == ()


async def test_metrics_reads_txevents_metrics_when_the_view_exists(
    session: AsyncSession, db: Database
) -> None:
    manager = TransactionManager(SqlAlchemyUnitOfWork(session))
    [(has_view,)] = db.query("SELECT to_regclass('txevents.metrics') IS NOT NULL")
    metrics = await manager.metrics()
    if not has_view:
        # The installed txevents predates SPEC 3.4's metrics: documented as None.
        assert metrics is None
        return
    assert isinstance(metrics, TransactionMetrics)
    assert metrics.database == db.name
    assert metrics["datname"] == db.name
    assert not session.in_transaction()  # it did not leave a transaction open


async def test_metrics_without_preload_is_a_typed_error() -> None:
    cluster = PostgresCluster(preload=False)
    try:
        name = cluster.create_database()
        db = Database(cluster, name)
        [(has_view,)] = db.query("SELECT to_regclass('txevents.metrics') IS NOT NULL")
        if not has_view:
            pytest.skip("the installed txevents has no txevents.metrics view yet (issue 9)")
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(db.url)
        try:
            async with AsyncSession(engine) as session:
                manager = TransactionManager(SqlAlchemyUnitOfWork(session))
                with pytest.raises(MetricsUnavailableError, match="shared_preload_libraries"):
                    await manager.metrics()
        finally:
            await engine.dispose()
    finally:
        cluster.stop()


async def test_nested_blocks_on_one_unit_of_work_join_the_outer_transaction(
    engine: AsyncEngine, session: AsyncSession, db: Database
) -> None:
    # A transaction_context (or another manager's transactional call) inside a
    # transactional call used to COMMIT the outer work half done: the outer failure
    # then left the inner rows and events committed.
    await create_schema(engine)
    uow = SqlAlchemyUnitOfWork(session)
    manager = TransactionManager(uow)
    other = TransactionManager(uow)
    repository = CandidateRepository(session)

    @other.transactional
    async def helper() -> None:
        await repository.save(Candidate(id="h", name="h", process_id="p"))
        other.add_event(Plain(n=3))

    @manager.transactional
    async def outer() -> None:
        await repository.save(Candidate(id="o", name="o", process_id="p"))
        async with transaction_context(uow) as tx:
            await repository.save(Candidate(id="i", name="i", process_id="p"))
            tx.add_event(Plain(n=1))
        await helper()
        manager.add_event(Plain(n=2))
        raise DomainError("outer fails after the inner blocks ended")

    with pytest.raises(DomainError):
        await outer()
    assert db.query("SELECT id FROM candidates") == []
    assert outbox(db) == []
    # Positive control: the same calls without the failure commit everything once.
    async with transaction_context(uow):
        await helper()
        async with transaction_context(uow) as tx:
            tx.add_event(Plain(n=4))
    assert db.query("SELECT id FROM candidates") == [("h",)]
    assert [row[3] for row in outbox(db)] == [{"n": 3}, {"n": 4}]


async def test_an_event_postgres_cannot_store_fails_at_add_event(
    session: AsyncSession, db: Database
) -> None:
    # jsonb refuses NUL and UTF-8 cannot hold lone surrogates: such events used to be
    # accepted by add_event and fail the whole transaction at commit.
    uow = SqlAlchemyUnitOfWork(session)
    async with transaction_context(uow) as tx:
        for text_ in ["nul \x00", "b\udcffd"]:
            with pytest.raises(EventError, match=r"cannot encode process\.renamed"):
                tx.add_event(Renamed(aggregate_id=1, name=text_))
            with pytest.raises(EventError):
                tx.add_event(Plain(n=1), headers={"h": text_})
        tx.add_event(Renamed(aggregate_id=1, name="a backslash and u0000: \\u0000"))
    assert [row[3] for row in outbox(db)] == [
        {"aggregate_id": 1, "name": "a backslash and u0000: \\u0000"}
    ]


def test_transactional_refuses_a_plain_function_at_decoration(session: AsyncSession) -> None:
    # Like cached() and subscribe(): a sync function used to run inside the transaction
    # and then fail at the await, rolling its work back.
    manager = TransactionManager(SqlAlchemyUnitOfWork(session))

    def sync_work() -> None:
        pass

    with pytest.raises(TypeError, match="async function"):
        manager.transactional(sync_work)  # type: ignore[arg-type]


class _CountingUnitOfWork(SqlAlchemyUnitOfWork):
    def __init__(self) -> None:
        self._pending = []
        self._depth = 0
        self.commits = 0

    async def commit(self) -> None:
        self.commits += 1

    async def rollback(self) -> None:
        pass


async def test_an_outer_block_ending_first_does_not_leave_the_unit_of_work_joined() -> None:
    # Misuse (two tasks in one unit of work) must not break it for good: when the
    # outermost block ended before the joined one, the count went negative and every
    # later block "joined" a transaction nobody would commit.
    uow = _CountingUnitOfWork()
    inner_entered = asyncio.Event()
    outer_done = asyncio.Event()

    async def outer() -> None:
        async with transaction_context(uow):
            await inner_entered.wait()
        outer_done.set()

    async def inner() -> None:
        await asyncio.sleep(0)  # the outer block is open
        async with transaction_context(uow):
            inner_entered.set()
            await outer_done.wait()

    await asyncio.gather(outer(), inner())
    assert uow.commits == 1
    async with transaction_context(uow):
        pass
    assert uow.commits == 2  # a block of its own again
