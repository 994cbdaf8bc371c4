"""Unit-test fixtures that need a service: a real PostgreSQL server for the shared request log (pg_helpers)."""

from __future__ import annotations

import uuid

import pytest
from pg_helpers import new_database, postgres_server, why_not


@pytest.fixture(scope="session")
def postgres():
    """An admin URL of a PostgreSQL server started for this session (stopped at its end); skipped, with the reason,
    where one cannot run."""
    reason = why_not()
    if reason:
        pytest.skip(f"no PostgreSQL server: {reason}")
    try:
        server = postgres_server()
        url = server.__enter__()
    except RuntimeError as exc:
        pytest.skip(f"PostgreSQL could not start here: {exc}")
    yield url
    server.__exit__(None, None, None)


@pytest.fixture
def pg_url(postgres):
    """A new, empty database on the session's server, for one test."""
    return new_database(postgres, f"t_{uuid.uuid4().hex[:12]}")
