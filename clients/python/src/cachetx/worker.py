"""The worker loop behind ``EventBus.run`` and ``python -m cachetx worker``.

- Claims a batch (``txevents.poll``), handles its events one by one, acks each success
  and nacks each failure with the exception's text, so the group's backoff and dead
  letters apply.
- Between batches it sleeps until a ``NOTIFY`` on the txevents channel (a dedicated
  ``LISTEN`` connection, psycopg engines only), a stop request, or ``poll_interval``,
  whichever comes first; a full batch is followed by another poll at once.
- Stop request (``EventBus.stop()``, SIGTERM/SIGINT with ``handle_signals``): the batch in
  hand is finished (handled and acked or nacked), nothing more is claimed, the loop
  returns. A second SIGTERM/SIGINT cancels the run instead.
- Cancellation: the interrupted event and the rest of the batch are released (``nack``
  with ``retry_after => 0``) before ``CancelledError`` propagates. Either way no claimed
  event is left waiting for its lease, and none is lost.
- Database errors (server restart, connection lost) are logged and retried after
  ``poll_interval``: claims left behind come back when their lease runs out.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING

from sqlalchemy.exc import DBAPIError, InterfaceError

if TYPE_CHECKING:
    from .bus import EventBus

log = logging.getLogger("cachetx.worker")

NOTIFIES_TIMEOUT = 5.0


async def run_worker(bus: EventBus, *, handle_signals: bool = False) -> None:
    """Run ``bus`` until stopped or cancelled (see the module doc)."""
    loop = asyncio.get_running_loop()
    stopped = bus._start_run()
    signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
    this_run = asyncio.current_task()

    def on_signal() -> None:
        if bus.stop_requested and this_run is not None:
            # A second signal: do not wait for the batch in hand (a slow handler, an
            # impatient operator); cancelling gives its unfinished events back at once.
            log.warning("second signal: cancelling; unfinished events are given back")
            this_run.cancel()
        else:
            bus.stop()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal)
    wake = asyncio.Event()
    listener: asyncio.Task[None] | None = None
    try:
        await bus.ensure_group()
        listener = asyncio.create_task(_listen(bus, wake), name="cachetx-listen")
        log.info("worker for group %r: %s", bus.group, ", ".join(bus.event_types))
        while not bus.stop_requested:
            wake.clear()  # before polling: a NOTIFY that arrives meanwhile is kept
            try:
                claimed = await bus.run_once()
            except (DBAPIError, InterfaceError, OSError) as exc:
                log.warning("database error, retrying in %s: %s", bus.poll_interval, exc)
                claimed = 0
            if bus.stop_requested:
                break
            if claimed >= bus.batch_size:
                continue
            await _wait_any((wake, stopped), bus.poll_interval.total_seconds())
        log.info("worker for group %r stopped", bus.group)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        if listener is not None:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        bus._end_run()
        await bus.close()


async def _wait_any(events: tuple[asyncio.Event, ...], seconds: float) -> None:
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


async def _listen(bus: EventBus, wake: asyncio.Event) -> None:
    """Set ``wake`` on every notification of the channel; reconnect on errors."""
    import psycopg
    from psycopg import sql

    while True:
        try:
            async with bus.engine.connect() as conn:
                raw = await conn.get_raw_connection()
                pg = raw.driver_connection
                if not isinstance(pg, psycopg.AsyncConnection):
                    log.info("LISTEN needs the psycopg driver: polling every %s", bus.poll_interval)
                    return
                try:
                    await pg.set_autocommit(True)
                    await pg.execute(sql.SQL("LISTEN {}").format(sql.Identifier(bus.channel)))
                    wake.set()  # anything committed before LISTEN took effect
                    while True:
                        async for _ in pg.notifies(timeout=NOTIFIES_TIMEOUT):
                            wake.set()
                finally:
                    # Never hand a LISTENing autocommit connection back to the pool.
                    await conn.invalidate()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("LISTEN %s failed, polling meanwhile: %s", bus.channel, exc)
            await asyncio.sleep(bus.poll_interval.total_seconds())
