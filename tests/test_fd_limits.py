"""Many agents, many descriptors: the process backend works with descriptors above 1023
(``select`` cannot watch those), and the daemon raises its descriptor limit at start-up and
says when the host's limit is too low."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hive_actors.containers import ContainerSpec, ProcessBackend, StopGrace
from hive_actors.containers.procgroup import read_line
from hive_actors.fdlimit import (
    BASE_FDS,
    FDS_PER_AGENT,
    agents_for_fds,
    agents_for_memory,
    fds_for_agents,
    raise_nofile_limit,
)

TIMEOUT = float(os.environ.get("HIVE_TEST_TIMEOUT", "10"))
HIGH = 1100
"""Dummy descriptors held open: what the backend opens next lands above 1023."""
NOFILE = resource.RLIMIT_NOFILE


@pytest.fixture
def high_descriptors() -> Iterator[list[int]]:
    """~1100 descriptors open in this process (the soft limit raised for them first), so every
    descriptor opened meanwhile is above 1023; all closed and the limit restored after."""
    soft, hard = resource.getrlimit(NOFILE)
    want = HIGH + 512
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"the hard descriptor limit ({hard}) is below {want}")
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(NOFILE, (want, hard))
    fds: list[int] = []
    try:
        fds.append(os.open(os.devnull, os.O_RDONLY))
        while len(fds) < HIGH:
            fds.append(os.dup(fds[0]))
        yield fds
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        resource.setrlimit(NOFILE, (soft, hard))


def plug(fds: list[int]) -> None:
    """Fill every free descriptor below 1024 again (something may have closed one since the
    fixture ran): the next descriptor opened is above 1023."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    fds.append(devnull)  # kept: closing it would free the slot it took
    while True:
        fd = os.dup(devnull)
        if fd > 1023:
            os.close(fd)
            return
        fds.append(fd)


def _line(fd: int, timeout: float = TIMEOUT) -> bytes:
    """One line from ``fd`` (poll: the descriptor is above 1023)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    data = b""
    while not data.endswith(b"\n"):
        if not poller.poll(int(timeout * 1000)):
            raise AssertionError(f"no line within {timeout}s (got {data!r})")
        chunk = os.read(fd, 1)
        if not chunk:
            break
        data += chunk
    return data


def test_process_backend_with_descriptors_above_1023(
    tmp_path: Path, high_descriptors: list[int]
) -> None:
    assert max(high_descriptors) > 1023
    backend = ProcessBackend(
        tmp_path / "hive", grace=StopGrace(sigint=2.0, sigterm=2.0, sigkill=3.0)
    )
    try:
        backend.create("alice", ContainerSpec())
        plug(high_descriptors)
        backend.start("alice")  # the keeper's ready line is read from a pipe above 1023
        assert backend.status("alice").state == "running"
        plug(high_descriptors)
        proc = backend.exec("alice", [sys.executable, "-c", "print('hello from', 'alice')"])
        assert proc.stdout is not None and proc.stdout.fileno() > 1023
        assert _line(proc.stdout.fileno()) == b"hello from alice\n"
        assert proc.wait(TIMEOUT) == 0
        proc.stdout.close()
        assert proc.stderr is not None
        proc.stderr.close()
        stopped = backend.stop("alice")
        assert stopped is not None and stopped.expected
        plug(high_descriptors)
        backend.start("alice")  # and again, after a stop
        assert backend.stop("alice") is not None
    finally:
        backend.close()


def test_read_line_above_1023(high_descriptors: list[int]) -> None:
    plug(high_descriptors)
    proc = subprocess.Popen(
        # It says it is ready, then waits for its stdin to close (at the test's end).
        [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.fileno() > 1023
        assert read_line(proc.stdout, TIMEOUT) == b"ready"
        assert read_line(proc.stdout, 0.05) == b""  # nothing more: the timeout, not a hang
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.wait(TIMEOUT)
        proc.stdout.close()


# -- the start-up raise and the report ---------------------------------------------------------


class StandinLimits:
    """getrlimit/setrlimit over a (soft, hard) pair; ``refuse``: setrlimit fails."""

    def __init__(self, soft: int, hard: int, refuse: bool = False) -> None:
        self.limits = (soft, hard)
        self.refuse = refuse
        self.calls: list[tuple[int, int]] = []

    def get(self, which: int) -> tuple[int, int]:
        assert which == NOFILE
        return self.limits

    def set(self, which: int, limits: tuple[int, int]) -> None:
        assert which == NOFILE
        self.calls.append(limits)
        if self.refuse:
            raise ValueError("not allowed to raise maximum limit")
        soft, hard = limits
        assert soft <= hard or hard == resource.RLIM_INFINITY
        self.limits = limits


def _raise(fake: StandinLimits, agents: int | None = None, memory: int | None = None,
           nr_open: int = 1 << 20):
    return raise_nofile_limit(
        agents, getrlimit=fake.get, setrlimit=fake.set, nr_open=lambda: nr_open,
        memory=lambda: memory, logger=logging.getLogger("test.fdlimit"),
    )


def test_soft_limit_raised_to_hard(caplog: pytest.LogCaptureFixture) -> None:
    fake = StandinLimits(1024, 524288)
    with caplog.at_level(logging.INFO, logger="test.fdlimit"):
        got = _raise(fake, agents=1000)
    assert fake.calls == [(524288, 524288)] and fake.limits == (524288, 524288)
    assert got.raised and got.enough and got.before == 1024 and got.soft == 524288
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "raised from 1024 to 524288" in caplog.text


def test_unlimited_hard_limit_goes_to_nr_open() -> None:
    fake = StandinLimits(1024, resource.RLIM_INFINITY)
    got = _raise(fake, agents=10, nr_open=65536)
    assert fake.calls == [(65536, resource.RLIM_INFINITY)] and got.soft == 65536


def test_nothing_to_do_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    fake = StandinLimits(65536, 65536)
    with caplog.at_level(logging.INFO, logger="test.fdlimit"):
        got = _raise(fake, agents=1000)
    assert fake.calls == [] and not got.raised and got.enough
    assert caplog.records == []


def test_low_hard_limit_is_reported_with_the_fix(caplog: pytest.LogCaptureFixture) -> None:
    fake = StandinLimits(1024, 4096)
    with caplog.at_level(logging.INFO, logger="test.fdlimit"):
        got = _raise(fake, agents=1000)
    assert got.soft == 4096 and not got.enough
    assert got.room == (4096 - BASE_FDS) // FDS_PER_AGENT
    [record] = caplog.records  # one line
    assert record.levelno == logging.WARNING
    need = fds_for_agents(1000)
    assert "the limit is 4096 (hard limit 4096)" in record.getMessage()
    assert f"LimitNOFILE={need}" in record.getMessage()
    assert f"ulimit -n {need}" in record.getMessage()


def test_a_refused_raise_keeps_the_limit_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = StandinLimits(1024, 65536, refuse=True)
    with caplog.at_level(logging.INFO, logger="test.fdlimit"):
        got = _raise(fake, agents=1000)
    assert got.soft == 1024 and got.error and not got.enough
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "raising it failed: not allowed" in record.getMessage()


def test_the_default_scale_is_what_memory_holds(caplog: pytest.LogCaptureFixture) -> None:
    gib = 1 << 30
    assert agents_for_memory(4 * gib, 8 << 20) == 512
    assert agents_for_memory(None) == 0
    fits = agents_for_memory(64 * gib)
    fake = StandinLimits(1024, fds_for_agents(fits) - 1)  # one short of that many agents
    with caplog.at_level(logging.INFO, logger="test.fdlimit"):
        got = _raise(fake, memory=64 * gib)
    assert got.agents == fits and not got.enough
    assert "this host's memory holds" in caplog.text
    fake = StandinLimits(1024, fds_for_agents(fits))
    assert _raise(fake, memory=64 * gib).enough


def test_agents_for_fds_inverts_fds_for_agents() -> None:
    for agents in (0, 1, 300, 1000, 5000):
        assert agents_for_fds(fds_for_agents(agents)) == agents
    assert agents_for_fds(resource.RLIM_INFINITY) > 10**6
