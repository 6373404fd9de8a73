"""An application module for ``python -m cachetx worker worker_app:event_bus`` (run by
test_worker.py as a subprocess): each handled event's id is appended to a file."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import timedelta

from cachetx import EventBus, current_delivery


@dataclass
class Tick:
    n: int


event_bus = EventBus(
    # Read when the worker runs; the test imports this module only for Tick.
    os.environ.get("CACHETX_TEST_DSN", "postgresql:///unset"),
    group="ticks",
    batch_size=5,
    poll_interval=timedelta(milliseconds=50),
)


@event_bus.subscribe(Tick)
async def record(event: Tick) -> None:
    await asyncio.sleep(0.1)  # slow enough for SIGTERM to land mid-stream
    delivery = current_delivery()
    assert delivery is not None
    # A tiny append: blocking the loop for it is fine in this test app.
    with open(os.environ["CACHETX_TEST_OUT"], "a") as out:  # noqa: ASYNC230
        out.write(f"{delivery.id}\n")


not_a_bus = object()


hanging_bus = EventBus(
    os.environ.get("CACHETX_TEST_DSN", "postgresql:///unset"),
    group="hangs",
    poll_interval=timedelta(milliseconds=50),
)


@hanging_bus.subscribe(Tick)
async def hang(event: Tick) -> None:
    with open(os.environ["CACHETX_TEST_OUT"], "a") as out:  # noqa: ASYNC230
        out.write("started\n")
    await asyncio.Event().wait()


no_subscriber_bus = EventBus("postgresql:///unset", group="nobody")
