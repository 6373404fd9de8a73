"""Fixtures: one redis-server (nscache) and one Postgres cluster (txevents) per test
session, a fresh namespace prefix and a fresh database per test."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from servers import PostgresCluster, RedisServer
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from support import Database

from cachetx import CacheService

_prefixes = itertools.count(1)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(port=redis_server.port)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def prefix() -> str:
    """A namespace no other test uses."""
    return f"ns{next(_prefixes)}"


@pytest.fixture
async def cache(redis_client: aioredis.Redis, prefix: str) -> AsyncIterator[CacheService]:
    service = CacheService(redis_client, prefix=prefix)
    yield service
    await service.drain()


@pytest.fixture
def db(pg_cluster: PostgresCluster) -> Database:
    return Database(pg_cluster, pg_cluster.create_database())


@pytest.fixture
async def engine(db: Database) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(db.url)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
async def session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with AsyncSession(engine, expire_on_commit=False) as s:
        yield s
