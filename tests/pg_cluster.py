"""A throwaway local PostgreSQL cluster, for the tests and the bench alike:
``initdb`` and ``pg_ctl`` from /usr/lib/postgresql/<version>/bin (Debian's
``postgresql`` package), a cluster in a temporary directory, Unix socket in that
directory, no TCP; fast shutdown and removal after. initdb refuses to run as
root, so as root both run as the ``postgres`` user.

Standard library and psycopg only, no pytest: :mod:`tests.pg` wraps it in the
tests' fixtures (skipping or failing when there is no PostgreSQL), and the bench
imports it as ``tests.pg_cluster`` (as it does :mod:`tests.daemon_process`).
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

#: what to install when there is no initdb
MISSING = "initdb under /usr/lib/postgresql/*/bin (apt-get install postgresql; `make postgres`)"

#: server settings of a test cluster: nothing a crash of the machine loses matters
FAST = "-c fsync=off -c synchronous_commit=on -c full_page_writes=off -c shared_buffers=32MB"
#: server settings that pay what a production server pays for each commit
DURABLE = "-c fsync=on -c synchronous_commit=on -c full_page_writes=on -c shared_buffers=128MB"


class ClusterError(RuntimeError):
    """initdb or pg_ctl start failed; the message has their output and the log."""


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
    """A server one may create databases on: ``admin`` is a superuser's URL."""

    admin: str
    #: the databases made so far
    created: list[str] = field(default_factory=list)
    #: pg_ctl of a server started here (None: someone else's server)
    pg_ctl: list[str] | None = None
    #: its data directory (None: someone else's server)
    data: Path | None = None

    def stop(self) -> None:
        """Stop a server of our own (fast shutdown: sessions are ended)."""
        assert self.pg_ctl is not None, "not a server started here"
        subprocess.run([*self.pg_ctl, "-m", "fast", "-w", "stop"], check=True,
                       capture_output=True, timeout=120)

    def start(self) -> None:
        assert self.pg_ctl is not None, "not a server started here"
        subprocess.run([*self.pg_ctl, "-w", "-t", "60", "start"], check=True,
                       capture_output=True, timeout=120)

    def postmaster_pid(self) -> int:
        """The pid of a server of our own (its backends are its children)."""
        assert self.data is not None, "not a server started here"
        return int((self.data / "postmaster.pid").read_text().split()[0])

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
        """Drop every database made (on a server that outlives its user)."""
        with psycopg.connect(self.admin, autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb and pg_ctl refuse root: run them as the postgres user when root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def local_cluster(settings: str = FAST) -> Iterator[PgServer]:
    """initdb + pg_ctl start (server ``settings``: ``-c name=value ...``) in a
    temporary directory; fast shutdown and removal after.

    Raises FileNotFoundError (its message says what to install) when there is
    no initdb, :class:`ClusterError` when the cluster does not start.
    """
    bindir = pg_bin()
    if bindir is None:
        raise FileNotFoundError(MISSING)
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
        options = f"-c listen_addresses='' -k {top} {settings}"
        pg_ctl = _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(top / "log"),
                               "-o", options])
        subprocess.run([*pg_ctl, "-w", "-t", "60", "start"], **run)  # type: ignore[call-overload]
    except subprocess.CalledProcessError as exc:
        log = (top / "log").read_text(errors="replace") if (top / "log").exists() else ""
        shutil.rmtree(top, ignore_errors=True)
        raise ClusterError(f"{exc}\n{exc.stdout}{exc.stderr}{log}") from None
    try:
        yield PgServer(f"postgresql://postgres@/postgres?host={top}", pg_ctl=pg_ctl, data=data)
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(top, ignore_errors=True)
