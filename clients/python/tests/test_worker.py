"""``python -m cachetx worker`` as a subprocess: SIGTERM finishes the batch in hand and
loses no event."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession
from support import Database
from worker_app import Tick

from cachetx import EventBus, SqlAlchemyUnitOfWork, TransactionManager

HERE = Path(__file__).parent


def start_worker(
    db: Database, out: Path, target: str = "worker_app:event_bus"
) -> subprocess.Popen[str]:
    env = dict(os.environ, CACHETX_TEST_DSN=db.plain_url, CACHETX_TEST_OUT=str(out))
    return subprocess.Popen(
        [sys.executable, "-m", "cachetx", "worker", target],
        cwd=HERE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def record_nothing(event: Tick) -> None:
    raise AssertionError("only the subprocess handles events")


async def test_worker_stops_on_sigterm_without_losing_an_event(
    session: AsyncSession, db: Database, tmp_path: Path
) -> None:
    # The group exists before the events commit, as it would in production.
    setup = EventBus(db.plain_url, group="ticks")
    setup.subscribe(Tick)(record_nothing)
    await setup.ensure_group()
    await setup.close()
    manager = TransactionManager(SqlAlchemyUnitOfWork(session))

    @manager.transactional
    async def publish() -> None:
        for n in range(60):
            manager.add_event(Tick(n=n))

    await publish()
    emitted = {int(row[0]) for row in db.query("SELECT id FROM txevents.outbox")}  # type: ignore[call-overload]
    assert len(emitted) == 60

    out = tmp_path / "handled.txt"
    worker = start_worker(db, out)
    try:
        deadline = time.monotonic() + 30
        while not (out.exists() and len(out.read_text().split()) >= 7):
            assert worker.poll() is None, worker.communicate()[0]
            assert time.monotonic() < deadline, "the worker handled nothing"
            await asyncio.sleep(0.02)
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, output
    assert "stopped" in output

    handled = [int(line) for line in out.read_text().split()]
    assert len(handled) == len(set(handled))
    # SIGTERM landed mid-stream, and the batch in hand (5 events) was finished.
    assert 7 <= len(handled) < 60
    assert len(handled) % 5 == 0
    # Nothing lost, nothing left claimed: every event not handled is offered at once,
    # on its first attempt.
    rest = db.query("SELECT id, attempt FROM txevents.poll('ticks', 1000)")
    assert set(handled) | {int(row[0]) for row in rest} == emitted  # type: ignore[call-overload]
    assert set(handled).isdisjoint(int(row[0]) for row in rest)  # type: ignore[call-overload]
    assert {row[1] for row in rest} == {1}


def test_worker_entry_point_refuses_what_is_not_an_event_bus(db: Database, tmp_path: Path) -> None:
    worker = start_worker(db, tmp_path / "x", target="worker_app:not_a_bus")
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 2
    assert "not a cachetx.EventBus" in output

    worker = start_worker(db, tmp_path / "x", target="no_such_module:event_bus")
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 2
    assert "no module named 'no_such_module'" in output

    # Used to get past the usage checks and die in ensure_group with a traceback.
    worker = start_worker(db, tmp_path / "x", target="worker_app:no_subscriber_bus")
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 2, output
    assert "has no subscriber" in output
    assert "Traceback" not in output


def test_worker_entry_point_refuses_a_bad_log_level(db: Database, tmp_path: Path) -> None:
    # Used to be a ValueError traceback from logging.basicConfig.
    worker = subprocess.Popen(
        [sys.executable, "-m", "cachetx", "worker", "worker_app:event_bus", "--log-level", "LOUD"],
        cwd=HERE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 2, output
    assert "unknown logging level 'LOUD'" in output
    assert "Traceback" not in output


async def test_a_second_sigterm_stops_a_worker_stuck_in_a_handler(
    session: AsyncSession, db: Database, tmp_path: Path
) -> None:
    # The first SIGTERM waits for the batch in hand; with a hung handler that took the
    # whole lease (30 s), and SIGTERM again did nothing.
    setup = EventBus(db.plain_url, group="hangs")
    setup.subscribe(Tick)(record_nothing)
    await setup.ensure_group()
    await setup.close()
    manager = TransactionManager(SqlAlchemyUnitOfWork(session))

    @manager.transactional
    async def publish() -> None:
        manager.add_event(Tick(n=1))

    await publish()
    out = tmp_path / "started.txt"
    worker = start_worker(db, out, target="worker_app:hanging_bus")
    try:
        deadline = time.monotonic() + 30
        while not out.exists():
            assert worker.poll() is None, worker.communicate()[0]
            assert time.monotonic() < deadline, "the handler did not start"
            await asyncio.sleep(0.02)
        worker.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert worker.poll() is None  # the first one waits for the handler
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 1, output
    assert "second signal" in output
    # Given back at once, not after the 30 s lease.
    rows = db.query("SELECT payload FROM txevents.poll('hangs', 10)")
    assert rows == [({"n": 1},)]
