"""Shared fixtures. Under CI=true a skipped test is a failure: root, netns and Docker tests must run."""

from __future__ import annotations

import os
import secrets
from collections.abc import Generator
from pathlib import Path

import pytest

from tests.pg_support import PgCluster, find_bindir
from tests.store_support import Backing

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must run every test: {reason}"


@pytest.fixture(autouse=True, scope="session")
def _private_state_home(tmp_path_factory: pytest.TempPathFactory) -> Generator[None, None, None]:
    """Default CAS counters go to $XDG_STATE_HOME: keep the tests' out of the real one."""
    old = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("xdg-state"))
    yield
    if old is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = old


@pytest.fixture(scope="session")
def pg_cluster() -> Generator[PgCluster, None, None]:
    """One throwaway PostgreSQL cluster for the whole test session (skipped without one)."""
    bindir, why = find_bindir()
    if bindir is None:
        pytest.skip(why)
    cluster = PgCluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_schema(pg_cluster: PgCluster) -> Generator[str, None, None]:
    """A fresh, empty schema in the cluster's database, dropped after the test."""
    name = f"t_{secrets.token_hex(6)}"
    pg_cluster.psql(f'CREATE SCHEMA "{name}"')
    yield name
    pg_cluster.psql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
def backing(request: pytest.FixtureRequest, tmp_path: Path) -> Backing:
    """Each kind of CAS database in turn: the same behaviour tests run against both."""
    if request.param == "sqlite":
        return Backing("sqlite", tmp_path)
    cluster = request.getfixturevalue("pg_cluster")
    schema = request.getfixturevalue("pg_schema")
    return Backing("postgres", tmp_path, cluster, schema)
