"""The process backend's "container": a tiny long-lived process that anchors a process group.

``python -m hive_actors.containers.keeper keep --name NAME``
    Started by the backend as a process-group leader in the agent's directory. Like
    PID 1 inside a real container it ignores SIGINT, SIGTERM and SIGHUP (a turn's SIGINT to the
    group must not end the container); only SIGKILL, a crash or the hive end it. It prints
    ``ready`` once its signal dispositions are set (the backend's readiness handshake), then
    blocks on its stdin, the control pipe: EOF means the hive closed it (an orderly stop, once
    the rest of the group is gone) or the hive died, and then it sends SIGTERM to what is left
    of its group and exits 0.

``python -m hive_actors.containers.keeper keep --name NAME --init``
    The same as a container's PID 1 (the nspawn backend): it also reaps the orphans the kernel
    hands it, so none of them stays a zombie.

``python -m hive_actors.containers.keeper keep --name NAME --init --unit``
    The container's PID 1 when ``systemd-nspawn`` runs as a systemd unit (the nspawn backend's
    unit mode): there is no control pipe (systemd gives nspawn ``/dev/null``), so it says
    ``READY=1`` on ``$NOTIFY_SOCKET`` (nspawn's, passed on to systemd with
    ``--notify-ready=yes``) and then waits: SIGTERM (a ``StopUnit``: systemd's SIGTERM to nspawn,
    passed on with ``--kill-signal=SIGTERM``) ends it with status 0, so the unit ends
    ``inactive``; a SIGKILL leaves it ``failed`` (a crash).

``python -m hive_actors.containers.keeper tty [--cwd DIR] [--unset VAR]... -- ARGV...``
    Makes the PTY on its stdin its controlling terminal (it was started as a session leader),
    changes to DIR, drops VARs from the environment and execs ARGV: how the backend runs a
    login shell with working job control and Ctrl-C.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import termios
from collections.abc import Sequence

__all__ = ["main"]

_IGNORED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _reap_orphans(_sig: int, _frame: object) -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def _notify_ready() -> None:
    """``READY=1`` to ``$NOTIFY_SOCKET`` (a path, or ``@`` for the abstract namespace)."""
    import socket

    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address[0] == "@":
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.send(b"READY=1")


def _keep(args: Sequence[str]) -> int:
    unit = args[2:] == ["--init", "--unit"]
    init = args[2:] == ["--init"] or unit
    if len(args) not in (2, 3, 4) or args[0] != "--name" or (len(args) > 2 and not init):
        print("usage: keeper keep --name NAME [--init [--unit]]", file=sys.stderr)
        return 2
    for sig in _IGNORED:
        signal.signal(sig, signal.SIG_IGN)
    if init:
        signal.signal(signal.SIGCHLD, _reap_orphans)
    if unit:
        # systemd's stop: nspawn's --kill-signal=SIGTERM. Exit 0, so the stop reads as one
        # (inactive); a kill -9 makes nspawn fail (a crash).
        signal.signal(signal.SIGTERM, lambda _sig, _frame: os._exit(0))
        os.write(1, f"ready {os.getpid()}\n".encode())
        _notify_ready()
        while True:  # until SIGKILL: nspawn's answer to systemd's stop, or a crash
            signal.pause()
    os.write(1, f"ready {os.getpid()}\n".encode())
    # Nothing more goes to stdout; the backend closes its end after the handshake.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass  # a broken control pipe means the same as EOF
    # The hive is gone or done with us: whatever still runs in the group goes too (we ignore
    # SIGTERM ourselves, so this does not cut our own exit short).
    try:
        os.killpg(0, signal.SIGTERM)
    except OSError:
        pass
    return 0


def _tty(args: Sequence[str]) -> int:
    usage = "usage: keeper tty [--cwd DIR] [--unset VAR]... -- ARGV..."
    rest = list(args)
    cwd: str | None = None
    unset: list[str] = []
    while rest and rest[0] != "--":
        if len(rest) < 2 or rest[0] not in ("--cwd", "--unset"):
            print(usage, file=sys.stderr)
            return 2
        if rest[0] == "--cwd":
            cwd = rest[1]
        else:
            unset.append(rest[1])
        rest = rest[2:]
    if len(rest) < 2:
        print(usage, file=sys.stderr)
        return 2
    argv = rest[1:]
    for name in unset:
        os.environ.pop(name, None)
    try:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        if cwd is not None:
            os.chdir(cwd)
        os.execvp(argv[0], argv)
    except OSError as exc:
        where = cwd or os.getcwd()
        print(f"keeper tty: cannot run {argv[0]!r} in {where!r}: {exc}", file=sys.stderr)
        return 127
    return 127  # not reached: execvp does not return


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``keep`` or ``tty`` (see the module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["keep"]:
        return _keep(args[1:])
    if args[:1] == ["tty"]:
        return _tty(args[1:])
    print("usage: keeper {keep --name NAME [--init [--unit]] | tty [--cwd DIR] -- ARGV...}",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
