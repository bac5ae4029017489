"""Shared fixtures: isolated environment, ledgers on SQLite and PostgreSQL, the Ollama emulator."""

from __future__ import annotations

import contextlib
import functools
import gc
import io
import os
import sys
import threading
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from ollama_meter._runtime import SERVING
from ollama_meter.cli import main
from ollama_meter.ledger import close_ledgers
from ollama_meter.testing import OllamaEmulator
from ollama_meter.upstream import reset_breakers
from tests._pg import PgCluster, create_database, memory_folder, postgres_server
from tests._process_output import forget, tails
from tests._schedule import long_first
from tests._templates import LedgerTemplates, ledger_templates

# The cyclic collector as a served ``ometer`` has it (``_runtime.serving``): new objects are
# looked at every 10,000, not Python's 700, from here on (collecting imports every test module
# and builds their strategies: 12.0 s of CPU a worker, 8.2 s so), and what collecting made is
# frozen (``pytest_collection_finish``). At the default, the collector's looks at the old
# objects walked every module, test and strategy again: 15 % of the CPU of
# tests/integrity/test_cli_fuzz.py. Only when it runs changes: reference counting frees what
# it frees as before.
gc.set_threshold(SERVING, *gc.get_threshold()[1:])

# No timing thresholds in tests: Hypothesis' default 200 ms deadline per example fails
# tests on a busy machine (CI shares two cores) for being slow, not for being wrong.
settings.register_profile("ometer", deadline=None)
# CI (`.ci/run`, `--hypothesis-profile=ci`) draws the same examples on every run and machine:
# a clean clone keeps no example database, and a property that fails once in hundreds of
# runs (a draw of the host's zone list, 2026-12-06) failed a submission no run before it had
# shown. Exploring is the work of runs at a desk, which draw new examples each time.
settings.register_profile("ci", deadline=None, derandomize=True)
settings.load_profile("ometer")

# Each test's files (its SQLite ledgers, spools, exports, a fresh clone) in memory where
# /dev/shm has room, as PostgreSQL's are (tests/_pg.py): on disk each ledger made, spool line
# synced and file renamed in place waited on the machine's disk (tests/cli: 3.0 s in 1,122
# fdatasync calls on disk, 0.05 s in memory). A process killed with -9 loses nothing either
# way; a test that needs a full or small disk mounts one of its own (tests/_tmpfs.py).
# PYTEST_DEBUG_TEMPROOT is where pytest makes its numbered base folder; one set is kept.
if "PYTEST_DEBUG_TEMPROOT" not in os.environ and (_memory := memory_folder()) is not None:
    os.environ["PYTEST_DEBUG_TEMPROOT"] = _memory

# The README's test command runs the suite on every core (pytest-xdist, ``-n auto``), with
# one worker more than there are cores: many tests wait on real processes, servers and
# timeouts, and one worker a core left a quarter of CI's two cores idle (74 % busy, run 123);
# a third worker runs while the others wait. More than four would mostly contend for the one
# PostgreSQL server CI shares between them.
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0)) + 1))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long tests first, so that no worker runs one alone at the end (tests/_schedule.py)."""
    long_first(items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report ends with the last words of the real processes it started
    (tests/_process_output.py); their files are closed once the test is torn down."""
    report = yield
    if report.failed:
        report.sections.extend(tails())
    if call.when == "teardown":
        forget()
    return report


def pytest_collection_finish() -> None:
    """What collecting made (every module, test and strategy) is frozen: never walked again."""
    gc.collect()
    gc.freeze()


_CLEAR_PREFIXES = ("OMETER_", "OLLAMA_", "OTEL_", "LANGFUSE_", "TRACELOOP_")
# What CI sets for the test run itself: a server to use, and "fail, don't skip"; where
# the browser tests save their screenshots.
_KEEP = frozenset(
    {
        "OMETER_TEST_PG_URL",
        "OMETER_TEST_REQUIRE_PG",
        "OMETER_TEST_REQUIRE_PGBOUNCER",
        "OMETER_TEST_REQUIRE_BROWSER",
        "OMETER_TEST_SCREENSHOTS",
    }
)


_MADE: list[tuple[str, str]] = []
"""(server, database) made for the running test alone (``db_url``): dropped after it ends. A
module's or a test's own ``_fresh_pg_database`` is not: a module shares its database."""

_ENDED: list[tuple[str, str]] = []
"""The databases of the test that ended last, dropped when the next one ends."""


def _drop(made: list[tuple[str, str]]) -> None:
    while made:
        server, name = made.pop()
        # A private cluster the test has removed answers no more: nothing left to drop.
        with contextlib.suppress(DBAPIError), _admin(server).connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(autouse=True)
def _drop_pg_databases() -> Iterator[None]:
    """Drop the PostgreSQL databases a test made once the next test ends (set up first, so
    torn down last). Left in place they filled the server's disk: 7.5 MB each, about 600 per
    worker, and a minute to delete at the end of the run. Dropped as the test itself ended,
    a database its ledgers had just closed still had their sessions ending, and DROP
    DATABASE waits 100 ms for such a session to go before it looks again."""
    yield
    _drop(_ENDED)
    _ENDED.extend(_MADE)
    _MADE.clear()


@pytest.fixture(scope="session", autouse=True)
def _drop_the_last_pg_databases() -> Iterator[None]:
    yield
    _drop(_ENDED)


@pytest.fixture(autouse=True)
def _close_ledgers() -> Iterator[None]:
    """Each test's ledgers (and budget gates) are its own: release them when it ends."""
    before = sys.gettrace(), threading.gettrace()
    yield
    if gates := sys.modules.get("ollama_meter.budgets._keeper"):
        # Their keepers renewed leases in the next test's time (its caplog), against a
        # database the test's end dropped.
        gates.close_gates(give_back=False)
    close_ledgers()
    reset_breakers()
    # Coverage measures the suite through these hooks: a test that set its own and left None
    # behind stopped it for every later test in its process (94 % reported for 96 %).
    assert (sys.gettrace(), threading.gettrace()) == before, (
        "the test left another trace function in place: put back what sys.gettrace() and "
        "threading.gettrace() gave before it"
    )


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No user settings, no .env, no real ledger: every test starts from nothing."""
    for name in list(os.environ):
        if name.startswith(_CLEAR_PREFIXES) and name not in _KEEP:
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("OMETER_TIMEZONE", "UTC")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("OMETER_RETRY_BACKOFF", "0.01")  # retries without the wait
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str | None]:
    with postgres_server() as url:
        yield url


def _private_cluster() -> Iterator[PgCluster]:
    made = PgCluster.create()
    if made is None:
        if os.environ.get("OMETER_TEST_REQUIRE_PG"):
            pytest.fail("OMETER_TEST_REQUIRE_PG is set but PostgreSQL's initdb/pg_ctl are missing")
        pytest.skip("no PostgreSQL binaries to make a private cluster")
    made.start()
    try:
        yield made
    finally:
        made.remove()


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL server this test may stop, start, freeze and resume."""
    yield from _private_cluster()


@pytest.fixture(scope="module")
def module_cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL server shared by a module's tests; each leaves it running."""
    yield from _private_cluster()


@functools.cache
def _admin(server: str) -> Engine:
    """The one connection per server (and process) that makes and drops the tests' databases.

    An engine of its own for each made a connection, and SQLAlchemy's first look at the
    server, twice in every PostgreSQL test (about 0.1 s of the ~0.25 s a database cost). The
    connection is checked before each use: a test may end the server's sessions, and a
    private cluster may have been stopped and started since."""
    return create_engine(
        f"{server}/postgres",
        isolation_level="AUTOCOMMIT",
        pool_size=1,
        pool_pre_ping=True,
        connect_args={"connect_timeout": 5},
    )


def _fresh_pg_database(server: str) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with _admin(server).connect() as conn:
        create_database(conn, name)
    return f"{server}/{name}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, pg_server: str | None) -> str:
    """A fresh, empty ledger URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    if pg_server is None:
        if os.environ.get("OMETER_TEST_REQUIRE_PG"):
            pytest.fail("OMETER_TEST_REQUIRE_PG is set but no PostgreSQL server could be started")
        pytest.skip("no PostgreSQL server available (install postgresql or set OMETER_TEST_PG_URL)")
    made = _fresh_pg_database(pg_server)
    _MADE.append((pg_server, made.rsplit("/", 1)[1]))  # this test's own: dropped when it ends
    return made


@pytest.fixture(scope="session")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerTemplates]:
    """Recorded ledgers made once per process, copied into a test's ``db_url``
    (tests/_templates.py)."""
    with ledger_templates(tmp_path_factory.mktemp("templates"), _admin) as made:
        yield made


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(scope="session")
def emulator_session() -> Iterator[OllamaEmulator]:
    with OllamaEmulator() as emu:
        yield emu


@pytest.fixture
def emulator(emulator_session: OllamaEmulator, monkeypatch: pytest.MonkeyPatch) -> OllamaEmulator:
    """The session's emulator, reset, with OLLAMA_HOST pointing at it.

    Answers an earlier test left running (a slow reply whose caller was cut or went away)
    are let finish first: counted here, they would be this test's in-flight calls and
    hang-ups. Latencies go back to none: a test that slowed it and did not say so again
    slowed every test after it. ``hurry`` also ends the pauses under way: a reply paced
    at a second a token, or a whole reply's one long pause, would outlast the wait."""
    emulator_session.hurry()
    emulator_session.wait_idle(10)  # their replies are fast once hurried
    emulator_session.reset()
    monkeypatch.setenv("OLLAMA_HOST", emulator_session.url)
    return emulator_session


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Run ``ometer ARGS`` in-process through the real entry point; returns code and output."""

    def run(*args: str, stdin: str | None = None) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["ometer", *args])
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


# The real-gateway fixtures serve every folder (budgets and integrity tests start gateways too).
from tests.gateway.conftest import (  # noqa: E402
    app,
    app_gateway,
    app_on,
    gateway,
    serve,
    serve_on,
)

__all__ = ["app", "app_gateway", "app_on", "gateway", "serve", "serve_on"]
