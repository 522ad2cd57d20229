"""A real systemd, booted in a throwaway ``systemd-nspawn`` container, whose system bus the host
reaches through a bound socket.

:func:`booted_systemd` boots ``systemd-nspawn -D / --volatile=yes --boot`` (a tmpfs root with
the host's ``/usr`` read-only, so the host's Debian systemd 252 and dbus; an empty ``/etc`` that
systemd populates on its first boot), with

* ``--bind=<tmp>/bus:/run/dbus``: the container's ``dbus.socket`` listens at
  ``/run/dbus/system_bus_socket``, which is ``<tmp>/bus/system_bus_socket`` on the host — the
  address a host-side watcher connects to (:attr:`BootedSystemd.address`). The host's root is
  the container's root (no user namespace), so it may start and stop units there;
* ``--bind-ro=<project>``: the project, read-only, at the same path;
* ``--bind-ro`` of :data:`CONTAINER_TEMPLATE` as ``/etc/systemd/system/container@.service`` (a
  stand-in for NixOS's template, with ``Restart=no`` as the hive's NixOS config forces it) and of
  each drop-in directory given (``container@<name>.service.d``);
* ``--private-network``, ``--console=passive``, and ``systemd.firstboot=off
  systemd.unit=basic.target`` for systemd (no first-boot prompt; only what ``basic.target``
  pulls in — ``dbus.socket`` among them — not the services the host's presets enable).

This host does not run systemd as PID 1. Started from the root cgroup, the container's systemd
would take over cgroups of the whole machine, so nspawn is started inside cgroups of its own (one
per mounted hierarchy, made here and removed on the way out).

Waiting is polling with a deadline: the leader (the container's PID 1) appears as nspawn's
child, then ``systemctl is-system-running`` (run in the container through ``nsenter``) answers
``running`` or ``degraded``. Tear-down is certain: SIGTERM to nspawn (the container powers off),
then SIGKILL to nspawn and to the leader (which ends its PID namespace), then SIGKILL to anything
left in the cgroups, which are removed — on success, on failure and on a failed boot alike.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.daemon import wait_until

__all__ = [
    "CONTAINER_TEMPLATE",
    "LOOPER_DROP_IN",
    "BootFailed",
    "BootedSystemd",
    "boot_unavailable",
    "booted_systemd",
]

PROJECT = Path(__file__).resolve().parents[2]
"""The project's root, bound read-only into the container."""

CONTAINER_TEMPLATE = """\
[Unit]
Description=Container '%i' (a stand-in for NixOS's container@.service)
StartLimitIntervalSec=0

[Service]
Type=notify
ExecStart=/usr/bin/python3 -Ic "import os, socket, time; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); a = os.environ['NOTIFY_SOCKET']; s.connect(chr(0) + a[1:] if a[0] == '@' else a); s.send(b'READY=1'); time.sleep(1e9)"
Restart=no
"""
"""The ``container@.service`` the booted systemd loads: one long-running main process per
agent that says ``READY=1`` itself (``Type=notify``, as ``systemd-nspawn`` does for NixOS's
template), no automatic restart (the hive's supervisor owns restarts) and no start rate limit
(tests start the same units many times)."""

LOOPER_DROP_IN = """\
[Unit]
StartLimitIntervalSec=60
StartLimitBurst=3

[Service]
Restart=on-failure
RestartSec=100ms
"""
"""A drop-in that gives one unit (``container@looper.service`` in the tests) systemd's own
restarts and start limit: three automatic restarts, then systemd gives up."""

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_NAMES = itertools.count(1)


class BootFailed(RuntimeError):
    """The container did not boot (the message has nspawn's output)."""


def boot_unavailable() -> str | None:
    """Why this machine cannot boot such a container (a reason to skip), or None."""
    if os.geteuid() != 0:
        return "booting a systemd container needs root"
    for tool in ("systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: apt-get install systemd-container)"
    return None


def _cgroup_dirs(name: str) -> list[Path]:
    """``name``'s directory in every mounted cgroup hierarchy a process can join without
    configuring it first (cpuset needs cpus and mems set: left alone)."""
    dirs = []
    for hierarchy in sorted(_CGROUP_ROOT.iterdir()):
        if (hierarchy / "cgroup.procs").exists() and hierarchy.name != "cpuset":
            dirs.append(hierarchy / name)
    if (_CGROUP_ROOT / "cgroup.procs").exists():  # a unified-only host
        dirs = [_CGROUP_ROOT / name]
    return dirs


def _pids_under(directory: Path) -> set[int]:
    pids: set[int] = set()
    for procs in directory.rglob("cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(line) for line in procs.read_text().split())
    return pids


def _remove_tree(directory: Path) -> None:
    if not directory.exists():
        return
    for sub in sorted((p for p in directory.rglob("*") if p.is_dir()),
                      key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    directory.rmdir()


def _poll(condition, timeout: float, what: str, interval: float = 0.02):  # type: ignore[no-untyped-def]
    """``condition()``'s first truthy value (a bounded poll, :func:`wait_until`)."""
    return wait_until(condition, timeout, what, interval=interval)


@dataclass
class BootedSystemd:
    """A running booted container: its bus address and ways to act inside it."""

    machine: str
    nspawn: subprocess.Popen[bytes]
    leader: int
    """The container's PID 1 as the host sees it."""
    workdir: Path
    address: str
    """``unix:path=…/system_bus_socket``: the container's system bus, from the host."""
    boot_seconds: float
    """From starting nspawn to ``is-system-running`` saying running or degraded."""

    def run(self, *argv: str, check: bool = True, timeout: float = 30.0) -> str:
        """Run ``argv`` inside the container (every namespace of its PID 1); its stdout."""
        proc = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", *argv],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_PAGER": "", "LC_ALL": "C"},
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{argv} in {self.machine} exited {proc.returncode}: "
                               f"{proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout.decode(errors="replace")

    def systemctl(self, *args: str, check: bool = True) -> str:
        """``systemctl ARGS`` inside (blocking on its job, as ``nixos-container`` does)."""
        return self.run("systemctl", "--no-pager", "--no-ask-password", *args, check=check)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show -p …`` of ``unit`` as a dict."""
        out = self.systemctl("show", unit, *(f"--property={p}" for p in properties))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def host_pid(self, pid: int) -> int:
        """The host's pid of the process that is ``pid`` inside the container."""
        own_ns = os.readlink(f"/proc/{self.leader}/ns/pid")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "ns" / "pid") != own_ns:
                    continue
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("NSpid:") and int(line.split()[-1]) == pid:
                        return int(entry.name)
            except (OSError, ValueError):
                continue
        raise LookupError(f"no process is pid {pid} inside {self.machine}")

    def main_pid(self, unit: str) -> int:
        """The unit's ``MainPID`` (inside the container); 0 when it has none."""
        return int(self.show(unit, "MainPID")["MainPID"])

    def kill9(self, unit: str) -> int:
        """``kill -9`` from the host of the unit's main process; returns its host pid."""
        pid = self.host_pid(_poll(lambda: self.main_pid(unit), 10.0, f"{unit}'s MainPID"))
        os.kill(pid, signal.SIGKILL)
        return pid


def _leader_of(nspawn: subprocess.Popen[bytes]) -> int | None:
    if nspawn.poll() is not None:
        raise BootFailed(f"systemd-nspawn exited {nspawn.returncode}")
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{nspawn.pid}/task").iterdir():
            with contextlib.suppress(OSError):
                children += [int(c) for c in (task / "children").read_text().split()]
    for child in children:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{child}/ns/pid") != os.readlink("/proc/self/ns/pid"):
                return child
    return None


def python_dirs() -> list[str]:
    """The directories this Python runs from: a venv's prefix and the interpreter's own (a
    venv's ``bin/python`` links to the base interpreter, elsewhere). Bound read-only into a
    booted container, they let the hive's Python run there at the same paths."""
    return list(dict.fromkeys([sys.prefix, sys.base_prefix]))


@contextlib.contextmanager
def booted_systemd(
    *,
    drop_ins: Mapping[str, str] | None = None,
    boot_timeout: float = 60.0,
    stop_timeout: float = 15.0,
    binds: Sequence[str] = (),
    binds_ro: Sequence[str] = (),
    private_network: bool = True,
) -> Iterator[BootedSystemd]:
    """Boot the container, yield it once systemd is up (``running`` or ``degraded``), and tear
    it down with certainty. ``drop_ins``: ``{unit name: drop-in text}`` bound as
    ``/etc/systemd/system/<unit>.d/hive-test.conf``; ``binds`` / ``binds_ro``: host paths
    bound at the same path, read-write / read-only (those that exist);
    ``private_network=False``: the host's network (nothing of basic.target configures it)."""
    reason = boot_unavailable()
    if reason is not None:
        raise BootFailed(reason)
    machine = f"hive-boot-{os.getpid()}-{next(_NAMES)}"
    workdir = Path(tempfile.mkdtemp(prefix=f"{machine}-"))
    bus = workdir / "bus"
    bus.mkdir()
    template = workdir / "container@.service"
    template.write_text(CONTAINER_TEMPLATE)
    units = [f"--bind-ro={template}:/etc/systemd/system/container@.service"]
    for unit, text in (drop_ins or {}).items():
        directory = workdir / f"{unit}.d"
        directory.mkdir()
        (directory / "hive-test.conf").write_text(text)
        units.append(f"--bind-ro={directory}:/etc/systemd/system/{unit}.d")
    log_path = workdir / "nspawn.log"
    cgroups = _cgroup_dirs(machine)
    nspawn: subprocess.Popen[bytes] | None = None
    leader: int | None = None
    try:
        for directory in cgroups:
            directory.mkdir()
        argv = [
            "systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "-D", "/",
            "--volatile=yes", "--boot", f"--machine={machine}", "--console=passive",
            *(["--private-network"] if private_network else []), f"--bind={bus}:/run/dbus",
            f"--bind-ro={PROJECT}", *units,
            *(f"--bind={p}" for p in binds if os.path.exists(p)),
            *(f"--bind-ro={p}" for p in binds_ro if os.path.exists(p)),
            "systemd.firstboot=off", "systemd.unit=basic.target",
        ]
        # The shell joins the new cgroups, then becomes nspawn (no preexec_fn in a threaded
        # process).
        join = 'for p in $HIVE_CGROUPS; do echo $$ > "$p/cgroup.procs" || exit 70; done; exec "$@"'
        started = time.monotonic()
        with open(log_path, "wb") as log:
            nspawn = subprocess.Popen(
                ["/bin/sh", "-c", join, "sh", *argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                     "HIVE_CGROUPS": " ".join(map(str, cgroups))},
            )
        try:
            leader = _poll(lambda: _leader_of(nspawn), boot_timeout, "the container's PID 1")
            booted = BootedSystemd(machine, nspawn, leader, workdir,
                                   f"unix:path={bus}/system_bus_socket", 0.0)

            def up() -> bool:
                state = booted.run("systemctl", "is-system-running", check=False).strip()
                if nspawn.poll() is not None:
                    raise BootFailed(f"systemd-nspawn exited {nspawn.returncode}")
                return state in ("running", "degraded") and (bus / "system_bus_socket").exists()

            _poll(up, boot_timeout - (time.monotonic() - started), "systemd's boot", 0.05)
        except (BootFailed, TimeoutError) as exc:
            raise BootFailed(f"{machine} did not boot: {exc}; nspawn said:\n"
                             f"{log_path.read_text(errors='replace')[-3000:]}") from None
        booted.boot_seconds = time.monotonic() - started
        yield booted
    finally:
        _tear_down(nspawn, leader, cgroups, stop_timeout)
        shutil.rmtree(workdir, ignore_errors=True)


def _tear_down(nspawn: subprocess.Popen[bytes] | None, leader: int | None,
               cgroups: list[Path], timeout: float) -> None:
    """Power the container off, or kill it; nothing of it is left when this returns."""
    if nspawn is not None and nspawn.poll() is None:
        nspawn.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
        try:
            nspawn.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    for pid in ([nspawn.pid] if nspawn is not None and nspawn.poll() is None else []) + (
            [leader] if leader is not None else []):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if nspawn is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            nspawn.wait(timeout)
    def all_gone() -> bool:
        left = set().union(*(_pids_under(d) for d in cgroups if d.exists()))
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return not left

    wait_until(all_gone, timeout, "every process of the container gone", interval=0.02)
    for directory in cgroups:
        _remove_tree(directory)
