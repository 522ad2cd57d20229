"""A whole hive on the nspawn backend, as the operator sees it (issue 16): the dashboard's
terminal is a root shell inside the agent's unprivileged container, and a container that cannot
start — no ``systemd-nspawn``, user namespaces disabled, a container that exits at once, an
unwritable state dir — is a clear error naming the agent and the fix, with the agent shown
crashed / backing off / given up (never idle or busy) in the registry, the events log and the
gateway's ``/api/state``, and the manager told.

Real containers, the real tree, real sqlite, the real gateway on 127.0.0.1 and real websocket
clients; every wait is on an event, a pidfd, a socket or a bounded poll. Skipped only without
root or ``systemd-nspawn``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from hive_actors.agent.notices import notice_text, parse_notice
from hive_actors.config import WebConfig
from hive_actors.containers.base import StopGrace
from hive_actors.containers.nspawn import NspawnBackend
from hive_actors.daemon import Daemon
from hive_actors.modelserver import ModelServer
from hive_actors.store import AgentState, Event, EventKind, MessageKind, Role, Store
from tests.support.daemon import daemon_env, free_port, wait_until
from tests.support.gateway import SPAN, Hive, agent_port, free_port_range, http, state_of
from tests.support.hive import EventWatch, hive_config, start_tree
from tests.support.timeout import TIMEOUT
from tests.support.web import exited, operator_token, ws_connect, ws_read_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("systemd-nspawn") is None,
    reason="the nspawn backend needs root and systemd-nspawn (apt-get install systemd-container)",
)

UP = {str(AgentState.IDLE), str(AgentState.BUSY), str(AgentState.WAITING_APPROVAL),
      str(AgentState.WAITING_OPERATOR)}
"""The states that would show an agent as up."""
DOWN = {str(AgentState.CRASHED), str(AgentState.BACKOFF), str(AgentState.GIVEN_UP)}
FAST_GIVE_UP: dict[str, Any] = {"agent_max_consecutive_failures": 2, "agent_restarts": 100,
                "backoff_min": 0.0, "backoff_max": 0.0, "backoff_factor": 1.0,
                "backoff_jitter": 0.0}
"""Give a broken agent up after two failed starts, with no backoff between them."""


# -- helpers -----------------------------------------------------------------------------------


@contextlib.contextmanager
def nspawn_gateway_hive(
    tmp_path: Path,
    agents: dict[str, Role],
    backend: Callable[[Path], NspawnBackend] | None = None,
    **supervision: Any,
) -> Iterator[Hive]:
    """A whole hive on ``backend = "nspawn"`` (or the NspawnBackend ``backend(state_dir)``
    makes) with the gateway on 127.0.0.1 and the agent pages in a free port range; returns at
    once (waits for no agent)."""
    model = ModelServer()
    model.start()
    try:
        config = replace(
            hive_config(tmp_path, model.url, **supervision),
            backend="nspawn",
            web=WebConfig(port=0, agent_port_base=free_port_range(), agent_port_span=SPAN),
        )
        made = backend(Path(config.state_dir)) if backend is not None else None
        daemon = Daemon(config, backend=made, api_key="loopback-test-key")
        assert isinstance(daemon.backend, NspawnBackend) and daemon.backend.mode == "child"
        root = None
        try:
            root = start_tree(daemon, agents)
            yield Hive(daemon, root, model, EventWatch(daemon.hive.open_store, daemon.hive.bell),
                       daemon.endpoints.base_url(timeout=TIMEOUT))
        finally:
            if root is not None:
                root.stop(block=True, timeout=TIMEOUT * 6)
            daemon.close()
    finally:
        model.stop()


def pidns(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/pid").st_ino


def host_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def host_pid_of(ns_pid: int, leader: int) -> int | None:
    """The host pid of the process that is ``ns_pid`` in ``leader``'s pid namespace."""
    ns = pidns(leader)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if pidns(int(entry)) != ns:
                continue
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:") and int(line.split()[-1]) == ns_pid:
                return int(entry)
    return None


async def closed_with(port: int, path: str, token: str) -> tuple[int, str]:
    """Open ``path`` and read until the server closes it: its close code and reason."""
    async with ws_connect(port, path, token=token) as sock:
        try:
            while True:
                await asyncio.wait_for(sock.recv(), TIMEOUT)
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            return exc.rcvd.code, exc.rcvd.reason


def of(hive: Hive, kind: EventKind, agent: str) -> list[Event]:
    with hive.daemon.hive.open_store() as store:
        return [e for e in store.events.events_since(0, 100_000)
                if e.kind == kind and e.agent == agent]


def given_up(hive: Hive, agent: str) -> Event:
    return hive.events.wait_for(lambda e: e.kind == EventKind.AGENT_GIVEN_UP
                                and e.agent == agent, timeout=TIMEOUT * 6)


def assert_never_up(hive: Hive, agent: str) -> None:
    """``agent`` never became idle, busy or waiting, and shows given up everywhere."""
    moves = [e.payload["to"] for e in of(hive, EventKind.AGENT_STATE, agent)]
    assert moves and not UP & set(moves), moves
    assert set(moves) <= {"starting"} | DOWN, moves
    with hive.daemon.hive.open_store() as store:
        assert store.registry.get(agent).state is AgentState.GIVEN_UP
    assert state_of(hive, agent)["state"] == "given_up"
    assert hive.daemon.backend is not None
    assert hive.daemon.backend.status(agent).state != "running"


def notice_to(hive: Hive, manager: str, agent: str) -> str:
    """The give-up notice about ``agent`` in ``manager``'s inbox (a system message)."""
    found: dict[str, str] = {}

    def is_it(e: Event) -> bool:
        if not (e.kind == EventKind.MESSAGE_SENT and e.agent == manager
                and e.payload.get("from") == "hive"):
            return False
        with hive.daemon.hive.open_store() as store:
            message = store.messages.get(e.payload["id"])
        notice = parse_notice(message.body)
        if (message.kind is MessageKind.SYSTEM and notice is not None
                and notice.agent == agent and notice.event == "given_up"):
            found["text"] = notice_text(message.body)
            return True
        return False

    hive.events.wait_for(is_it)
    return found["text"]


# -- the terminal through the dashboard ------------------------------------------------------


def test_the_dashboard_terminal_is_a_root_shell_in_the_agents_container(tmp_path: Path) -> None:
    with nspawn_gateway_hive(tmp_path, {"alice": Role.AGENT}) as hive:
        hive.events.wait_for(lambda e: e.kind == EventKind.AGENT_STATE and e.agent == "alice"
                             and e.payload["to"] == "idle", timeout=TIMEOUT * 6)
        status = hive.daemon.backend.status("alice")  # type: ignore[union-attr]
        leader = status.pid
        assert status.state == "running" and leader is not None
        assert state_of(hive, "alice")["state"] == "idle"
        port = agent_port(hive, "alice")

        async def session() -> tuple[list[str], int, int]:
            async with ws_connect(port, "/ws/pty", token=hive.token) as sock:
                opened = time.monotonic()
                # The markers are computed by the shell: the terminal's echo never matches them.
                await sock.send(b"echo BEGIN$((1+1)); id -u; cat /proc/self/uid_map; echo $$; "
                                b"echo END$((2+2))\n")
                out = (await ws_read_until(sock, b"END4\r\n")).decode()
                ms = int((time.monotonic() - opened) * 1000)
                body = out.split("BEGIN2\r\n")[-1].split("END4")[0]
                lines = [x.strip() for x in body.splitlines() if x.strip()]
                ns_pid = int(lines[-1])
                shell = host_pid_of(ns_pid, leader)
                assert shell is not None, f"no process {ns_pid} in alice's container"
                # The websocket is still open: the shell is alive and where it says.
                assert Path(f"/proc/{shell}/comm").read_text().strip() == "bash"
                # … in the hive's container's pid namespace, not this host's, as the mapped uid.
                assert pidns(shell) == pidns(leader) != pidns(os.getpid())
                assert host_uid(shell) == host_uid(leader) != 0
                return lines, shell, ms

        lines, shell, ms = asyncio.run(session())
        uid, uid_map, ns_pid = lines[0], lines[1].split(), int(lines[2])
        assert uid == "0", lines  # root inside …
        assert uid_map[0] == "0" and int(uid_map[1]) > 0 and uid_map[2] == "65536", lines
        base = int(uid_map[1])  # … which is an unprivileged host range outside
        assert host_uid(leader) == base
        # $$ is the shell's pid in the container's pid namespace, not the host's.
        assert shell != ns_pid
        # Closing the terminal ended the shell.
        assert exited(shell, TIMEOUT), f"shell {shell} outlived its terminal"
        # The container lives on, and the agent with it.
        assert hive.daemon.backend.status("alice").pid == leader  # type: ignore[union-attr]
        assert state_of(hive, "alice")["state"] == "idle"
        print(f"\nnspawn terminal: command round trip {ms} ms")


# -- bad input: the operator sees it ---------------------------------------------------------


def broken_host(case: str, tmp_path: Path) -> tuple[Callable[[Path], NspawnBackend], str]:
    """A backend on a host that cannot run any container, and what its error must say."""
    if case == "no systemd-nspawn":
        return (lambda state: NspawnBackend(state, command="no-such-nspawn"),
                (r"container {name}: no-such-nspawn is not on PATH.*"
                 r"apt-get install systemd-container"))
    fake_proc = tmp_path / "proc"
    (fake_proc / "sys" / "user").mkdir(parents=True)
    (fake_proc / "sys" / "user" / "max_user_namespaces").write_text("0\n")
    return (lambda state: NspawnBackend(state, proc=str(fake_proc)),
            (r"container {name}: user namespaces are disabled.*"
             r"sysctl -w user\.max_user_namespaces="))


@pytest.mark.parametrize("case", ["no systemd-nspawn", "user namespaces disabled"])
def test_a_host_that_cannot_run_containers_shows_every_agent_given_up(
    tmp_path: Path, case: str
) -> None:
    make, error = broken_host(case, tmp_path)
    started = time.monotonic()
    with nspawn_gateway_hive(tmp_path, {"boss": Role.MANAGER, "alice": Role.AGENT}, make,
                             **FAST_GIVE_UP) as hive:
        for name in ("alice", "boss"):
            done = given_up(hive, name)
            why = error.format(name=name)
            assert re.search(why, done.payload["notice"]), done.payload
            assert done.payload["notice"].startswith(
                f"{name} given up after 2 failures in a row"), done.payload
            crashes = of(hive, EventKind.AGENT_CRASHED, name)
            assert len(crashes) == 2, crashes
            for crash in crashes:
                assert crash.payload["phase"] == "start", crash.payload
                assert re.search(why, crash.payload["reason"]), crash.payload
            assert_never_up(hive, name)
        # The manager is told about alice (in its inbox, for when it runs again); the
        # manager's own give-up is the operator's to see.
        assert of(hive, EventKind.AGENT_GIVEN_UP, "alice")[0].payload["told"] == "boss"
        assert of(hive, EventKind.AGENT_GIVEN_UP, "boss")[0].payload["told"] == "operator"
        text = notice_to(hive, "boss", "alice")
        assert re.search(error.format(name="alice"), text), text
        # The terminal has no shell to give.
        code, reason = asyncio.run(closed_with(agent_port(hive, "alice"), "/ws/pty", hive.token))
        assert code in (4404, 4409), (code, reason)
        print(f"\n{case}: both agents given up in {time.monotonic() - started:.1f} s")


def standin_nspawn(tmp_path: Path, broken: str) -> Path:
    """A ``systemd-nspawn`` that runs the real one, except for agent ``broken``'s container,
    which exits at once (status 1, a line on stderr) as a container whose PID 1 dies does."""
    real = shutil.which("systemd-nspawn")
    script = tmp_path / "standin-nspawn"
    script.write_text(
        "#!/bin/sh\n"
        'for arg in "$@"; do\n'
        f'  if [ "$arg" = "--machine=hive-{broken}" ]; then\n'
        '    echo "standin: the container of hive-' + broken + ' exited at once" >&2\n'
        "    exit 1\n"
        "  fi\n"
        "done\n"
        f'exec {real} "$@"\n'
    )
    script.chmod(0o755)
    return script


def test_a_container_that_exits_at_once_is_given_up_and_the_manager_told(
    tmp_path: Path,
) -> None:
    script = standin_nspawn(tmp_path, "alice")
    started = time.monotonic()
    with nspawn_gateway_hive(
        tmp_path, {"boss": Role.MANAGER, "alice": Role.AGENT},
        lambda state: NspawnBackend(state, command=str(script), start_timeout=TIMEOUT,
                                    grace=StopGrace(sigint=2, sigterm=2, sigkill=2)),
        **FAST_GIVE_UP,
    ) as hive:
        done = given_up(hive, "alice")
        give_up_s = time.monotonic() - started
        notice = done.payload["notice"]
        log_path = tmp_path / "hive" / "agents" / "alice" / "nspawn.log"
        assert notice.startswith("alice given up after 2 failures in a row (limit [supervision] "
                                 "agent_max_consecutive_failures = 2); last: failed to start: "
                                 "container alice: systemd-nspawn said nothing"), notice
        for needle in ("exit 1", "exited at once", str(log_path),
                       "standin: the container of hive-alice exited at once",
                       'set [hive] backend = "process"'):
            assert needle in notice, (needle, notice)
        crashes = of(hive, EventKind.AGENT_CRASHED, "alice")
        assert len(crashes) == 2 and all(c.payload["phase"] == "start" for c in crashes)
        assert all("container alice:" in c.payload["reason"] for c in crashes)
        assert done.payload["told"] == "boss"
        assert_never_up(hive, "alice")
        # No container of alice's is left behind, and its state is kept.
        assert (tmp_path / "hive" / "agents" / "alice" / "state").is_dir()
        # The manager, in its own real container, got the notice in its inbox.
        assert notice_to(hive, "boss", "alice") == notice
        hive.events.wait_for(lambda e: e.kind == EventKind.AGENT_STATE and e.agent == "boss"
                             and e.payload["to"] == "idle", timeout=TIMEOUT * 6)
        boss = hive.daemon.backend.status("boss")  # type: ignore[union-attr]
        assert boss.state == "running" and boss.pid is not None and host_uid(boss.pid) != 0
        assert state_of(hive, "boss")["state"] in UP
        code, reason = asyncio.run(closed_with(agent_port(hive, "alice"), "/ws/pty", hive.token))
        assert code in (4404, 4409), (code, reason)
        print(f"\nexits at once: given up in {give_up_s:.1f} s")


def test_a_state_dir_that_is_a_file_is_given_up_naming_the_agent_and_the_fix(
    tmp_path: Path,
) -> None:
    state = tmp_path / "hive" / "agents" / "alice" / "state"
    state.parent.mkdir(parents=True)
    state.write_text("not a directory")
    with nspawn_gateway_hive(tmp_path, {"alice": Role.AGENT}, **FAST_GIVE_UP) as hive:
        done = given_up(hive, "alice")
        notice = done.payload["notice"]
        # The agent, the path and the fix (before the fix: "[Errno 17] File exists: '…'").
        assert re.search(r"failed to start: (agent|container) alice: '?[^ ]*/agents/alice/"
                         r"state'? (is in the way|is not a directory)", notice), notice
        assert "move that file away" in notice and "Errno" not in notice, notice
        crashes = of(hive, EventKind.AGENT_CRASHED, "alice")
        assert len(crashes) == 2, crashes
        assert all("move that file away" in c.payload["reason"] for c in crashes), crashes
        assert_never_up(hive, "alice")
        assert state.read_text() == "not a directory"  # nothing of the operator's touched


# -- an unwritable state dir: `hive serve` under a read-only bind mount -------------------------


@contextlib.contextmanager
def serve_with_read_only(
    tmp_path: Path, read_only: Path
) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    """``hive serve`` (nspawn backend) in a mount namespace of its own where ``read_only`` is
    a read-only bind mount of itself; yields its base URL, its log and its process."""
    model = ModelServer()
    model.start()
    port = free_port()
    state_dir = tmp_path / "hive"
    config = tmp_path / "hive.toml"
    sup = {"turn_deadline": 60.0, **FAST_GIVE_UP}
    config.write_text("\n".join([
        "[hive]", f'state_dir = "{state_dir}"', 'backend = "nspawn"',
        "[nspawn]", 'mode = "child"',
        "[web]", 'host = "127.0.0.1"', f"port = {port}",
        f"agent_port_base = {free_port_range()}", f"agent_port_span = {SPAN}",
        "[model]", f'base_url = "{model.url}"', 'api_key_env = "HIVE_NSPAWN_TEST_KEY"',
        'default = "claude-sonnet-test"',
        "[supervision]", *(f"{k} = {json.dumps(v)}" for k, v in sup.items()),
    ]) + "\n")
    log_path = tmp_path / "daemon.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             'mount --bind -o ro "$0" "$0" && exec "$@"', str(read_only),
             sys.executable, "-m", "hive_actors", "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=tmp_path,
            env=daemon_env("HIVE_NSPAWN_TEST_KEY"), start_new_session=True,
        )
    try:
        yield f"http://127.0.0.1:{port}", log_path, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(TIMEOUT * 6)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(TIMEOUT)
        model.stop()


def test_a_read_only_state_dir_is_given_up_naming_the_agent_and_the_fix(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "hive"
    state = state_dir / "agents" / "alice" / "state"
    state.mkdir(parents=True)
    store = Store.open(state_dir / "hive.db")
    try:
        store.registry.register("alice", role=Role.AGENT)
    finally:
        store.close()
    with serve_with_read_only(tmp_path, state) as (base, log_path, proc):

        def tail() -> str:
            return log_path.read_text(errors="replace")[-3000:]

        def row() -> dict[str, Any] | None:
            if proc.poll() is not None:
                raise AssertionError(f"hive serve exited ({proc.returncode}):\n{tail()}")
            try:
                with http(base, token=operator_token(tmp_path / "hive")) as api:
                    rows = api.get("/api/state").json()["agents"]
            except OSError:
                return None
            except Exception:  # noqa: BLE001  (not up yet)
                return None
            found = [r for r in rows if r["name"] == "alice"]
            return found[0] if found and found[0]["state"] == "given_up" else None

        wait_until(row, TIMEOUT * 9, "alice given up in /api/state", describe=tail)
        with http(base, token=operator_token(tmp_path / "hive")) as api:
            events = api.get("/api/events", params={"since": 0, "limit": 1000}).json()["events"]
        mine = [e for e in events if e["agent"] == "alice"]
        moves = [e["payload"]["to"] for e in mine if e["kind"] == "agent.state"]
        assert moves and not UP & set(moves), moves
        crashes = [e for e in mine if e["kind"] == "agent.crashed"]
        assert len(crashes) == 2, crashes
        (done,) = [e for e in mine if e["kind"] == "agent.given_up"]
        for text in [c["payload"]["reason"] for c in crashes] + [done["payload"]["notice"]]:
            # The agent, the path and the fix (before the fix: a bare "crashed in on_start:
            # OSError: [Errno 30] Read-only file system: '…/.hive-session.tmp'").
            assert re.search(r"(agent|container) alice: its (state dir|"
                             r"directories under) '[^']*/agents/alice(/state)?' cannot be written",
                             text), text
            assert str(state) in text and "Read-only file system" in text, text
            assert "read-only mount" in text and "OSError" not in text, text
    # Outside the daemon's mount namespace nothing was mounted, and the dir is as it was.
    assert not any(str(state) in line for line in Path("/proc/self/mountinfo").read_text()
                   .splitlines())
    assert list(state.iterdir()) == []
