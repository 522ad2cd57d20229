"""``hive demo --backend``: the demo hive in real nspawn containers where the host allows it,
and one clear line naming the fix (exit 2, nothing started) where it does not. The CLI runs as
a subprocess; every wait is a bounded poll (``wait_until``) or the subprocess's own end."""

from __future__ import annotations

import io
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hive_actors.cli import main
from tests.support.daemon import wait_until
from tests.support.timeout import TIMEOUT

AGENTS = ("boss", "alice", "bob")
ROOT = os.geteuid() == 0


def hive(*argv: str, env: dict[str, str] | None = None,
         wrap: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """``hive ARGV`` as a subprocess (``wrap``: a command line it runs under)."""
    return subprocess.run([*(wrap or []), sys.executable, "-m", "hive_actors", *argv],
                          capture_output=True, text=True, timeout=TIMEOUT * 3, check=False,
                          stdin=subprocess.DEVNULL, env=env)


def fake_nspawn(tmp_path: Path) -> Path:
    """A directory with an executable named systemd-nspawn (the preflight only looks it up)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "systemd-nspawn"
    tool.write_text("#!/bin/sh\nexit 1\n")
    tool.chmod(0o755)
    return bin_dir


def assert_refused(done: subprocess.CompletedProcess[str], state: Path, *needles: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr  # one line, the fix in it
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not state.exists(), "the refused demo started something"


# -- refused, with the fix -----------------------------------------------------------------------


def test_without_systemd_nspawn_the_demo_names_the_package(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    state = tmp_path / "state"
    done = hive("demo", "--backend", "nspawn", "--check", "--port", "0", "--state-dir",
                str(state), env={**os.environ, "PATH": str(empty)})
    assert_refused(done, state,
                   "Error: hive demo --backend nspawn cannot run here: systemd-nspawn is not on "
                   f"PATH ({empty}): install it (Debian: apt-get install systemd-container)",
                   "hive demo --backend process")


@pytest.mark.skipif(not ROOT or shutil.which("unshare") is None,
                    reason="needs root and unshare to mount over a /proc file privately")
def test_with_user_namespaces_disabled_the_demo_names_the_sysctl(tmp_path: Path) -> None:
    # The sysctl is the host's: a private mount namespace shows the demo a 0 in its place.
    zero = tmp_path / "max_user_namespaces"
    zero.write_text("0\n")
    state = tmp_path / "state"
    limit = "/proc/sys/user/max_user_namespaces"
    env = {**os.environ, "PATH": f"{fake_nspawn(tmp_path)}:{os.environ.get('PATH', '')}"}
    done = hive("demo", "--backend", "nspawn", "--check", "--port", "0", "--state-dir",
                str(state), env=env,
                wrap=["unshare", "-m", "sh", "-c",
                      f"mount --bind {shlex.quote(str(zero))} {limit} && exec \"$@\"", "sh"])
    assert_refused(done, state,
                   "Error: hive demo --backend nspawn cannot run here: user namespaces are "
                   f"disabled ({limit} is 0)",
                   "enable them (sysctl -w user.max_user_namespaces=65536)",
                   "hive demo --backend process")


def test_not_root_and_nixos_are_refused_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("PATH", str(fake_nspawn(tmp_path)))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    out, err = io.StringIO(), io.StringIO()
    code = main(["demo", "--backend", "nspawn", "--check", "--state-dir", str(state)],
                out=out, err=err)
    assert code == 2 and out.getvalue() == ""
    assert err.getvalue() == (
        "Error: hive demo --backend nspawn cannot run here: the nspawn backend needs root "
        "(systemd-nspawn makes the containers; this runs as uid 1000): run it as root (sudo); "
        "or run the demo without containers (hive demo --backend process)\n")
    monkeypatch.undo()

    done = hive("demo", "--backend", "nixos", "--check", "--state-dir", str(state))
    assert_refused(done, state, "Error: hive demo --backend nixos: its containers need a NixOS "
                   "host", "hive demo --backend nspawn")
    bogus = hive("demo", "--backend", "docker", "--state-dir", str(state))
    assert bogus.returncode == 2
    assert bogus.stderr.startswith("Error: argument --backend: invalid choice: 'docker' "
                                   "(choose from 'process', 'nixos', 'nspawn')"), bogus.stderr


# -- the demo in real containers -----------------------------------------------------------------


def _status(pid: int | str) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _keepers(state: Path) -> dict[str, tuple[int, str, int]]:
    """The demo's containers' PID 1s — keepers whose parent is a systemd-nspawn binding that
    agent's directory under ``state`` (the hive's child or a unit's, alike): agent -> (host
    uid, first uid_map line, pid namespace inode)."""
    found: dict[str, tuple[int, str, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if b"hive_actors.containers.keeper" not in argv or b"--init" not in argv:
                continue
            if Path(f"/proc/{entry}/comm").read_text().strip() == "systemd-nspawn":
                continue  # nspawn's own child, still setting the container up (not yet PID 1)
            name = argv[argv.index(b"--name") + 1].decode()
            parent = _status(entry)["PPid"]
            bind = f"={state}/agents/{name}/state:".encode()
            if Path(f"/proc/{parent}/comm").read_text().strip() != "systemd-nspawn" or not any(
                    bind in arg for arg in Path(f"/proc/{parent}/cmdline").read_bytes().split(
                        b"\0")):
                continue
            uid = int(_status(entry)["Uid"].split()[0])
            uid_map = Path(f"/proc/{entry}/uid_map").read_text().splitlines()[0].strip()
            found[name] = (uid, uid_map, os.stat(f"/proc/{entry}/ns/pid").st_ino)
        except (OSError, KeyError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours
    return found


@pytest.mark.skipif(not ROOT or shutil.which("systemd-nspawn") is None,
                    reason="the nspawn backend needs root and systemd-nspawn "
                           "(apt-get install systemd-container)")
def test_demo_check_on_nspawn_runs_every_agent_in_an_unprivileged_container(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    demo = subprocess.Popen(
        [sys.executable, "-m", "hive_actors", "--log-level", "warning", "demo", "--backend",
         "nspawn", "--check", "--port", "0", "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    seen: dict[str, tuple[int, str, int]] = {}
    try:
        def all_up() -> bool:
            seen.update(_keepers(state.absolute()))
            return set(AGENTS) <= set(seen) or demo.poll() is not None

        wait_until(all_up, TIMEOUT * 6, "the demo's three containers", interval=0.05)
        out, err = demo.communicate(timeout=TIMEOUT * 18)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0, out + err
    assert "demo check: the scripted exchange played out" in out
    assert "containers     nspawn: an unprivileged systemd-nspawn container" in out
    assert set(seen) == set(AGENTS), (seen, out, err)
    ours = os.stat("/proc/self/ns/pid").st_ino
    for name, (uid, uid_map, ns) in seen.items():
        # uid 0 inside is an unprivileged host range: "0 <base> 65536", base > 0.
        inside, base, size = (int(x) for x in uid_map.split())
        assert (inside, size) == (0, 65536) and base > 0 and uid == base, (name, uid_map, uid)
        assert ns != ours, f"{name}'s keeper is in the host's pid namespace"
        assert f"  container of {name}: leader pid " in out
        line = next(x for x in out.splitlines() if x.startswith(f"  container of {name}:"))
        assert line.endswith(f"host uid {uid}"), line
        assert (state / "agents" / name / "nspawn.log").exists()
