"""The suite's fixtures (every one of them: a test gets a fixture by parameter, never by import)
and no actor left behind. Helpers, classes and constants live in :mod:`tests.support`."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from hive_actors.harness import ClaudeBinary, find_claude
from hive_actors.modelserver import ModelServer
from hive_actors.store import Store
from tests.support import pages
from tests.support.booted import (
    LOOPER_DROP_IN,
    BootedSystemd,
    boot_unavailable,
    booted_systemd,
)
from tests.support.probe import ProbeHandle
from tests.support.store import WallClock, open_store
from tests.support.timeout import TIMEOUT

os.environ.setdefault("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")


@pytest.fixture
def probe() -> ProbeHandle:
    return ProbeHandle()


@pytest.fixture
def sigint_ignored() -> Iterator[None]:
    """This process ignores SIGINT (as a test run in the background of a script does)."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.fixture(autouse=True)
def _stop_all_actors() -> Any:
    yield
    # Oldest first: a tree's root stops its own children (in reverse order), so no supervisor
    # sees a child vanish under it and restarts it mid-teardown.
    for _ in range(5):
        refs = pykka.ActorRegistry.get_all()
        if not refs:
            return
        for ref in refs:
            try:
                ref.stop(block=True, timeout=TIMEOUT)
            except pykka.ActorDeadError:
                pass
    raise AssertionError(f"actors still alive after the test: {pykka.ActorRegistry.get_all()}")


@pytest.fixture
def booted() -> Iterator[BootedSystemd]:
    """A real systemd 252 booted in a throwaway nspawn container (:mod:`tests.support.booted`),
    its system bus reachable from here at ``booted.address``; skipped only without root or
    without systemd-nspawn (a boot that fails is a failure)."""
    reason = boot_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with booted_systemd(drop_ins={"container@looper.service": LOOPER_DROP_IN}) as systemd:
        yield systemd


@pytest.fixture(scope="session")
def claude() -> ClaudeBinary:
    """The real ``claude`` CLI (bundled with claude-agent-sdk), found and version-checked once."""
    return find_claude()


@pytest.fixture
def server() -> Iterator[ModelServer]:
    """The project's loopback model server, on a free port of 127.0.0.1."""
    with ModelServer() as s:
        yield s


# -- the store tests ----------------------------------------------------------------------------


@pytest.fixture
def clock() -> WallClock:
    """A settable wall clock for the store's ``now`` (:class:`tests.support.store.WallClock`)."""
    return WallClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "hive.db"


@pytest.fixture
def state_root(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def state_store(db_path: Path, clock: WallClock, state_root: Path) -> Iterator[Store]:
    """A store whose agents' state dirs live under ``state_root``."""
    with open_store(db_path, clock, state_dirs=lambda name: state_root / name) as store:
        yield store


# -- the page tests (headless Chromium through Playwright) --------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module's tests (a skip, or a failure on CI, without it)."""
    with pages.chromium() as chromium:
        yield chromium


@pytest.fixture
def tab(browser: Any) -> Iterator[pages.Tab]:
    """A fresh page that records page errors and console errors."""
    with pages.new_tab(browser) as out:
        yield out
