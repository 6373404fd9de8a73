"""The seed's examples (issue 12), written as its users write them, against the real
servers."""

from __future__ import annotations

from datetime import timedelta

import redis.asyncio as aioredis
from domain import (
    Candidate,
    CandidateCreated,
    CandidateRepository,
    CreateCandidateCommand,
    NotificationService,
    ProcessStatusUpdated,
    create_schema,
)
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from support import Database, run_until

from cachetx import (
    CacheService,
    DomainError,
    EventBus,
    SqlAlchemyUnitOfWork,
    TransactionManager,
    transaction_context,
)


async def test_seed_cache_service(
    redis_client: aioredis.Redis, engine: AsyncEngine, session: AsyncSession, db: Database
) -> None:
    await create_schema(engine)
    repository = CandidateRepository(session)
    await repository.save(Candidate(id="c1", name="Ada", process_id="p1"))
    await session.commit()

    cache_service = CacheService(redis_client, prefix="candidates")

    @cache_service.cached(expire=timedelta(minutes=30))
    async def get_candidate_profile(candidate_id: str) -> dict:  # type: ignore[type-arg]
        return await repository.get_profile(candidate_id)

    assert await get_candidate_profile("c1") == {"id": "c1", "name": "Ada", "process_id": "p1"}
    db.query("UPDATE candidates SET name = 'changed' WHERE id = 'c1'")
    # Served from Redis: the repository is not read again.
    assert await get_candidate_profile("c1") == {"id": "c1", "name": "Ada", "process_id": "p1"}
    assert repository.profile_reads == 1

    process_data = {"id": "123", "status": "interviewing", "candidates": ["c1"]}
    await cache_service.set(key="process:123", value=process_data, expire=timedelta(hours=1))
    cached_data = await cache_service.get("process:123")
    assert cached_data == process_data
    await cache_service.delete("process:123")
    assert await cache_service.get("process:123") is None


async def test_seed_transactional_create_candidate(
    engine: AsyncEngine, session: AsyncSession, db: Database
) -> None:
    await create_schema(engine)
    repository = CandidateRepository(session)
    event_bus = EventBus(db.plain_url, group="seed", poll_interval=timedelta(milliseconds=50))
    received: list[CandidateCreated] = []

    @event_bus.subscribe(CandidateCreated)
    async def on_created(event: CandidateCreated) -> None:
        received.append(event)

    await event_bus.ensure_group()  # the group sees events committed from now on

    uow = SqlAlchemyUnitOfWork(session)
    transaction_manager = TransactionManager(uow, event_bus)

    @transaction_manager.transactional
    async def create_candidate(command: CreateCandidateCommand) -> None:
        candidate = Candidate.create(command)
        await repository.save(candidate)
        transaction_manager.add_event(
            CandidateCreated(candidate_id=candidate.id, process_id=command.process_id)
        )

    await create_candidate(CreateCandidateCommand(name="Grace", process_id="p9"))

    [(candidate_id,)] = db.query("SELECT id FROM candidates WHERE name = 'Grace'")
    rows = db.query("SELECT event_type, aggregate_type, aggregate_id, payload FROM txevents.outbox")
    assert rows == [
        (
            "CandidateCreated",
            "candidate",
            candidate_id,
            {"candidate_id": candidate_id, "process_id": "p9"},
        )
    ]
    await run_until(event_bus, lambda: bool(received))
    assert received == [CandidateCreated(candidate_id=str(candidate_id), process_id="p9")]


async def test_seed_transaction_context(
    engine: AsyncEngine, session: AsyncSession, db: Database
) -> None:
    await create_schema(engine)
    repository = CandidateRepository(session)
    uow = SqlAlchemyUnitOfWork(session)

    for error_condition in (True, False):
        entity1 = Candidate(id=f"e1-{error_condition}", name="one", process_id="p")
        entity2 = Candidate(id=f"e2-{error_condition}", name="two", process_id="p")
        try:
            async with transaction_context(uow) as tx:
                await repository.save(entity1)
                await repository.save(entity2)
                tx.add_event(CandidateCreated(candidate_id=entity1.id, process_id="p"))
                if error_condition:
                    raise DomainError("Operation failed")  # automatic rollback
        except DomainError as exc:
            assert error_condition and str(exc) == "Operation failed"
        else:
            assert not error_condition

    # The failed block left nothing, the other one committed both rows and its event.
    assert db.query("SELECT id FROM candidates ORDER BY id") == [("e1-False",), ("e2-False",)]
    assert db.query("SELECT aggregate_id FROM txevents.outbox") == [("e1-False",)]


async def test_seed_event_bus_subscribe(
    engine: AsyncEngine, session: AsyncSession, db: Database
) -> None:
    notification_service = NotificationService()
    event_bus = EventBus(db.plain_url, group="notifier", poll_interval=timedelta(milliseconds=50))

    @event_bus.subscribe(ProcessStatusUpdated)
    async def handle_process_status_updated(event: ProcessStatusUpdated) -> None:
        await notification_service.notify_status_change(
            process_id=event.process_id, new_status=event.new_status
        )

    await event_bus.ensure_group()
    uow = SqlAlchemyUnitOfWork(session)
    transaction_manager = TransactionManager(uow, event_bus)

    @transaction_manager.transactional
    async def update_status(process_id: str, new_status: str) -> None:
        transaction_manager.add_event(
            ProcessStatusUpdated(process_id=process_id, new_status=new_status)
        )

    await update_status("p1", "hired")
    assert db.query("SELECT event_type, aggregate_type, aggregate_id FROM txevents.outbox") == [
        ("process.status_updated", "process", "p1")
    ]
    await run_until(event_bus, lambda: bool(notification_service.sent))
    assert notification_service.sent == [("p1", "hired")]
