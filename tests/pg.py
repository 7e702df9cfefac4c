"""A throwaway PostgreSQL server for the tests that run on PostgreSQL.

``pg_server`` (one per session) is the server; ``pg_url`` (one per test) is a
fresh database on it, as ``--db`` names it. The server is started on first use
only, so a run without PostgreSQL tests never starts one:

- ``CHATD_TEST_PG=postgresql://user@host/db`` (a superuser, or a role that may
  CREATE DATABASE) uses that server instead of starting one, and drops the
  databases the tests made at the end;
- otherwise ``initdb`` and ``pg_ctl`` are taken from /usr/lib/postgresql/*/bin
  (Debian's ``postgresql`` package, which ``make test`` installs) and a cluster
  is made in a temporary directory: Unix socket in that directory, no TCP, no
  fsync (a crash of the test machine loses nothing anyone needs). initdb
  refuses to run as root, so as root it runs as the ``postgres`` user.

Without either, the PostgreSQL tests fail with the reason when ``CI`` is set
(CI must not pass by skipping them) and are skipped otherwise.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path

import psycopg
import pytest


def pg_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin that has initdb, or None."""
    found = sorted(
        glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit()
        else 0,
    )
    return Path(found[-1]).parent if found else None


@dataclass
class PgServer:
    """A server the tests may create databases on: ``admin`` is a superuser's URL."""

    admin: str
    #: the databases made so far
    created: list[str] = field(default_factory=list)
    #: pg_ctl of a server the tests started themselves (None: someone else's server)
    pg_ctl: list[str] | None = None

    def stop(self) -> None:
        """Stop a server of the tests' own (fast shutdown: sessions are ended)."""
        assert self.pg_ctl is not None, "not a server the tests started"
        subprocess.run([*self.pg_ctl, "-m", "fast", "-w", "stop"], check=True,
                       capture_output=True, timeout=120)

    def start(self) -> None:
        assert self.pg_ctl is not None, "not a server the tests started"
        subprocess.run([*self.pg_ctl, "-w", "-t", "60", "start"], check=True,
                       capture_output=True, timeout=120)

    def url_of(self, name: str) -> str:
        """The URL of database ``name``: ``admin`` with its path replaced."""
        return urllib.parse.urlsplit(self.admin)._replace(path="/" + name).geturl()

    def create_database(self) -> tuple[str, str]:
        """(name, URL) of a new empty database."""
        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return name, self.url_of(name)

    def drop_databases(self) -> None:
        """Drop every database made (on a server that outlives the session)."""
        with psycopg.connect(self.admin, autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb and pg_ctl refuse root: run them as the postgres user when root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def local_server() -> Iterator[PgServer]:
    """initdb + pg_ctl start in a temporary directory; fast shutdown and removal after."""
    bindir = pg_bin()
    if bindir is None:
        message = (
            "PostgreSQL tests need initdb under /usr/lib/postgresql/*/bin "
            "(apt-get install postgresql; `make test` does) or CHATD_TEST_PG=<superuser URL>"
        )
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    top = Path(tempfile.mkdtemp(prefix="chatd-pg-"))  # short: a socket path has ~100 bytes
    data = top / "data"
    if os.geteuid() == 0:
        shutil.chown(top, "postgres", "postgres")
    run = dict(check=True, capture_output=True, text=True, timeout=120)
    try:
        subprocess.run(
            _as_postgres([str(bindir / "initdb"), "-D", str(data), "-A", "trust",
                          "-U", "postgres", "-E", "UTF8", "--locale=C.UTF-8"]),
            **run,  # type: ignore[call-overload]
        )
        options = (
            f"-c listen_addresses='' -k {top} -c fsync=off -c synchronous_commit=on"
            " -c full_page_writes=off -c shared_buffers=32MB"
        )
        pg_ctl = _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(top / "log"),
                               "-o", options])
        subprocess.run([*pg_ctl, "-w", "-t", "60", "start"], **run)  # type: ignore[call-overload]
    except subprocess.CalledProcessError as exc:
        log = (top / "log").read_text(errors="replace") if (top / "log").exists() else ""
        shutil.rmtree(top, ignore_errors=True)
        pytest.fail(f"cannot start a test PostgreSQL: {exc}\n{exc.stdout}{exc.stderr}{log}",
                    pytrace=False)
    try:
        yield PgServer(f"postgresql://postgres@/postgres?host={top}", pg_ctl=pg_ctl)
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL: CHATD_TEST_PG's, or a throwaway local one."""
    given = os.environ.get("CHATD_TEST_PG")
    if given:
        server = PgServer(given)
        try:
            yield server
        finally:
            server.drop_databases()
        return
    with local_server() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh database for one test, as --db names it.

    Kept until the session ends: a test's daemons may outlive this fixture (they
    stop in their own fixture's teardown, which may come later).
    """
    return pg_server.create_database()[1]
