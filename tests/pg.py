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
from collections.abc import Iterator

import pytest

from .pg_cluster import MISSING, ClusterError, PgServer, local_cluster, pg_bin

__all__ = ["PgServer", "local_server", "pg_bin", "pg_server", "pg_url"]


@contextlib.contextmanager
def local_server() -> Iterator[PgServer]:
    """A throwaway cluster (:func:`tests.pg_cluster.local_cluster`, no fsync);
    without initdb the test is skipped, or failed when ``CI`` is set."""
    if pg_bin() is None:
        message = f"PostgreSQL tests need {MISSING} or CHATD_TEST_PG=<superuser URL>"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(local_cluster())
        except ClusterError as exc:
            pytest.fail(f"cannot start a test PostgreSQL: {exc}", pytrace=False)
        yield server


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
