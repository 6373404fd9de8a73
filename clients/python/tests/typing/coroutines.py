"""Checked by test_typing.py with ``mypy --strict``: what the decorators return is a
coroutine function, so its calls go to ``asyncio.create_task`` like the original's."""

import asyncio

from cachetx import CacheService, TransactionManager


async def main(cache: CacheService, manager: TransactionManager) -> None:
    @cache.cached(expire=60)
    async def load(x: int) -> str:
        return str(x)

    @manager.transactional
    async def write(x: int) -> int:
        return x

    loaded: asyncio.Task[str] = asyncio.create_task(load(1))
    written: asyncio.Task[int] = asyncio.create_task(write(1))
    await asyncio.gather(loaded, written)
