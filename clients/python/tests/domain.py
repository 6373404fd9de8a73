"""The seed's application, as its users write it: a SQLAlchemy model, a repository,
commands, events and a notification service. Test code, talking to the real database."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, ClassVar

import pydantic
from sqlalchemy import String, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Candidate(Base):
    __tablename__ = "candidates"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    name: Mapped[str]
    process_id: Mapped[str]

    @classmethod
    def create(cls, command: CreateCandidateCommand) -> Candidate:
        return cls(id=str(uuid.uuid4()), name=command.name, process_id=command.process_id)


@dataclass
class CreateCandidateCommand:
    name: str
    process_id: str


@dataclass
class CandidateCreated:
    """Event type defaults to the class name; aggregate from the class attribute and
    the aggregate_id property."""

    aggregate_type: ClassVar[str] = "candidate"

    candidate_id: str
    process_id: str

    @property
    def aggregate_id(self) -> str:
        return self.candidate_id


class ProcessStatusUpdated(pydantic.BaseModel):
    """A pydantic event with an explicit type name."""

    event_type: ClassVar[str] = "process.status_updated"
    aggregate_type: ClassVar[str] = "process"

    process_id: str
    new_status: str

    @property
    def aggregate_id(self) -> str:
        return self.process_id


class CandidateRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.profile_reads = 0

    async def save(self, candidate: Candidate) -> None:
        self.session.add(candidate)
        await self.session.flush()

    async def get_profile(self, candidate_id: str) -> dict[str, Any]:
        self.profile_reads += 1
        row = (
            await self.session.execute(select(Candidate).where(Candidate.id == candidate_id))
        ).scalar_one()
        return {"id": row.id, "name": row.name, "process_id": row.process_id}


class NotificationService:
    """Collects the notifications it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def notify_status_change(self, process_id: str, new_status: str) -> None:
        self.sent.append((process_id, new_status))


async def create_schema(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(text("SELECT 1"))
