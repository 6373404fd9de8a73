"""Real servers for the tests: a redis-server with the nscache module and a private
PostgreSQL cluster with txevents, each on a free port in its own temp dir, stopped by
the fixtures even when tests fail."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import psycopg

REPO = Path(__file__).resolve().parents[3]
PG_BINDIR = Path(os.environ.get("TXEVENTS_PG_BINDIR", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nscache_module() -> Path:
    """The module to load: $NSCACHE_MODULE, or the release build (built if missing)."""
    path = Path(os.environ.get("NSCACHE_MODULE") or REPO / "target/release/libnscache.so")
    if not path.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "nscache"], cwd=REPO, check=True)
    if not path.exists():
        raise RuntimeError(f"nscache module not found at {path}")
    return path


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RUST_BACKTRACE", None)  # leaks into server logs and error details
    return env


class RedisServer:
    """``redis-server --loadmodule libnscache.so`` on a free loopback port."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="cachetx-py-redis-")
        self.port = free_port()
        self.log = open(Path(self.dir) / "redis.log", "wb")
        self.process = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", self.dir, "--save", "", "--appendonly", "no",
                "--loadmodule", str(nscache_module()),
            ],
            stdout=self.log, stderr=subprocess.STDOUT, env=_server_env(),
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.read_log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer: {self.read_log()}")
            time.sleep(0.05)

    def read_log(self) -> str:
        return (Path(self.dir) / "redis.log").read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgresCluster:
    """A private cluster (initdb + pg_ctl) with ``shared_preload_libraries=txevents``,
    listening on a unix socket in its temp dir only. As root, the server runs as the
    ``postgres`` user (Postgres refuses root)."""

    def __init__(self, *, preload: bool = True) -> None:
        # Short path under /tmp: the socket path must stay under 107 bytes.
        self.dir = tempfile.mkdtemp(prefix="ctxpy-", dir="/tmp")
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = f"{self.dir}/data"
        self.port = free_port()
        self._run([str(PG_BINDIR / "initdb"), "-D", self.data, "-A", "trust", "-E", "UTF8",
                   "--no-sync", "--locale=C", "-U", "postgres"])  # fmt: skip
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses='' -c fsync=off"
            " -c max_connections=200"
        )
        if preload:
            options += " -c shared_preload_libraries=txevents"
        try:
            self._run([str(PG_BINDIR / "pg_ctl"), "-D", self.data, "-o", options,
                       "-l", f"{self.dir}/server.log", "-w", "-t", "60", "start"])  # fmt: skip
        except RuntimeError as exc:
            log = Path(f"{self.dir}/server.log")
            raise RuntimeError(f"{exc}\n{log.read_text() if log.exists() else ''}") from exc
        self._databases = 0

    def _run(self, argv: list[str]) -> None:
        if self.as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, env=_server_env(), cwd="/")
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")

    def conninfo(self, dbname: str) -> str:
        return f"host={self.dir} port={self.port} user=postgres dbname={dbname}"

    def url(self, dbname: str, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://postgres@/{dbname}?host={quote(self.dir, safe='')}&port={self.port}"

    def create_database(self) -> str:
        """A fresh database with ``CREATE EXTENSION txevents``; returns its name."""
        self._databases += 1
        name = f"t{self._databases}"
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        with psycopg.connect(self.conninfo(name), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION txevents")
        return name

    def stop(self) -> None:
        try:
            self._run([str(PG_BINDIR / "pg_ctl"), "-D", self.data, "-m", "immediate", "-w",
                       "stop"])  # fmt: skip
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
