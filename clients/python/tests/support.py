"""Helpers shared by the tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from servers import PostgresCluster

from cachetx import EventBus


@dataclass
class Database:
    """A fresh database with txevents, and ways to reach it."""

    cluster: PostgresCluster
    name: str

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg driver)."""
        return self.cluster.url(self.name)

    @property
    def plain_url(self) -> str:
        """A plain ``postgresql://`` URL, as a user would configure it."""
        return self.cluster.url(self.name, driver="postgresql")

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        """Run SQL as the superuser in its own autocommit connection."""
        with psycopg.connect(self.cluster.conninfo(self.name), autocommit=True) as conn:
            cur = conn.execute(sql.encode(), params or None)
            return cur.fetchall() if cur.description else []


async def run_until(bus: EventBus, done: Callable[[], bool], within: float = 20) -> None:
    """Run the bus's worker until ``done()`` holds, then stop it and wait for it."""
    task = asyncio.create_task(bus.run())
    try:
        async with asyncio.timeout(within):
            while not done():
                if task.done():
                    task.result()
                    raise AssertionError("the worker returned before the condition held")
                await asyncio.sleep(0.02)
    finally:
        bus.stop()
        await asyncio.wait_for(task, 20)
