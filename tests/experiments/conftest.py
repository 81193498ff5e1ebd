"""Fixtures of the experiment tests: throwaway PostgreSQL servers (see ``tests/postgres.py``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from postgres import PostgresServer, PostgresUnavailable


def _server() -> PostgresServer:
    try:
        server = PostgresServer()
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):  # CI's machine has the binaries: a missing server there is a broken set-up
            pytest.fail(f"PostgreSQL tests cannot run in CI: {exc}")
        pytest.skip(f"PostgreSQL tests need a local server: {exc}")
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session (tests that stop it use :func:`private_postgres`)."""
    server = _server()
    yield server
    server.close()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A ``postgresql://`` URL of a fresh, empty database on the session's server."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own, which it may stop and restart."""
    server = _server()
    yield server
    server.close()
