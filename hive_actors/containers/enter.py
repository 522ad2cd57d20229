"""Run a program inside a running nspawn container, as its root, with signals forwarded.

``python -I -S enter.py --leader PID [--cwd DIR] [--tty] -- ARGV...``

Started by :class:`~hive_actors.containers.nspawn.NspawnBackend` (``exec`` and ``pty_shell``)
by its file path, not as a module: it imports nothing but the standard library, and ``-I``
keeps the hive's ``PYTHON*`` variables out, so its environment is exactly the program's.

1. Opens the namespaces of ``PID`` (the container's PID 1 as the host sees it) — user, cgroup,
   ipc, uts, net, pid, mount — and joins them (``setns`` through libc: Python 3.11 has no
   ``os.setns``), the user namespace first, so it holds the container root's capabilities for
   the rest; then becomes uid/gid 0 *of the container* (an unprivileged uid on the host).
2. Forks: the child is in the container's pid namespace (a ``setns`` to a pid namespace applies
   to children). It leads a process group of its own (with ``--tty``: the terminal's foreground
   group), dies with this process (``PR_SET_PDEATHSIG``), gets default signal dispositions,
   changes to ``DIR`` and execs ``ARGV`` (looked up on the environment's PATH).
3. Stays outside as the program's stand-in for the caller: SIGINT, SIGTERM, SIGHUP and SIGQUIT
   it receives go to the child's process group (``nsenter`` forwards none); when the child ends,
   what is left of its group is killed and this process ends the same way (its exit status,
   or the same signal), so ``Popen.returncode`` reads as the program's own.

Exit 125 when the container cannot be entered, 127 when the program cannot be run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

_NAMESPACES = (
    # (name under /proc/PID/ns, CLONE_NEW* flag); the user namespace first.
    ("user", 0x10000000),
    ("cgroup", 0x02000000),
    ("ipc", 0x08000000),
    ("uts", 0x04000000),
    ("net", 0x40000000),
    ("pid", 0x20000000),
    ("mnt", 0x00020000),
)
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
# Python ignores these itself; a program must start with them at their default.
_RESET = (*_FORWARDED, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTTOU, signal.SIGCHLD)
_PR_SET_PDEATHSIG = 1
_USAGE = "usage: enter.py --leader PID [--cwd DIR] [--tty] -- ARGV..."


def _fail(code: int, message: str) -> int:
    os.write(2, f"enter: {message}\n".encode(errors="replace"))
    return code


def _join(leader: int) -> None:
    """Join ``leader``'s namespaces and become the container's root (OSError on failure)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fds: list[tuple[str, int, int]] = []
    try:
        # Every descriptor is opened first: once in its mount namespace, /proc is the
        # container's.
        for name, flag in _NAMESPACES:
            target = f"/proc/{leader}/ns/{name}"
            if not os.path.exists(f"/proc/self/ns/{name}"):
                continue  # a kernel without this namespace type
            if os.stat(target).st_ino == os.stat(f"/proc/self/ns/{name}").st_ino:
                continue  # shared with the host (the network, by default): nothing to join
            fds.append((name, os.open(target, os.O_RDONLY | os.O_CLOEXEC), flag))
        for name, fd, flag in fds:
            if libc.setns(fd, flag) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({name}) of pid {leader}: {os.strerror(err)}")
    finally:
        for _, fd, _ in fds:
            os.close(fd)
    try:
        os.setgroups([])
    except OSError:
        pass  # setgroups denied in this user namespace: keep the (unmapped) groups
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def _child(argv: list[str], cwd: str | None, tty: bool) -> None:
    """In the forked child: never returns."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != 0:
            # The parent is outside this pid namespace (getppid says 0) unless it died
            # already and the container's init adopted us.
            os._exit(137)
        os.setpgid(0, 0)
        if tty:
            signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # tcsetpgrp from the background
            os.tcsetpgrp(0, os.getpgrp())
        for sig in _RESET:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        if cwd is not None:
            os.chdir(cwd)
        os.execvpe(argv[0], argv, os.environ)
    except OSError as exc:
        _fail(127, f"cannot run {argv[0]!r} in {cwd or '/'!r} inside the container: {exc}")
        os._exit(127)
    os._exit(127)  # not reached


def main(args: list[str]) -> int:
    """Entry point (see the module docstring)."""
    leader: int | None = None
    cwd: str | None = None
    tty = False
    rest = list(args)
    while rest and rest[0] != "--":
        if rest[0] == "--tty":
            tty, rest = True, rest[1:]
        elif rest[0] in ("--leader", "--cwd") and len(rest) >= 2:
            if rest[0] == "--leader":
                if not rest[1].isdigit():
                    return _fail(2, _USAGE)
                leader = int(rest[1])
            else:
                cwd = rest[1]
            rest = rest[2:]
        else:
            return _fail(2, _USAGE)
    argv = rest[1:]
    if leader is None or not argv:
        return _fail(2, _USAGE)
    try:
        _join(leader)
    except OSError as exc:
        return _fail(125, f"cannot enter the container of pid {leader}: {exc}")
    # Blocked across the fork: a signal that arrives meanwhile waits for the handler.
    signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
    pid = os.fork()
    if pid == 0:
        _child(argv, cwd, tty)

    def forward(sig: int, _frame: object) -> None:
        try:
            os.killpg(pid, sig)
        except OSError:
            try:
                os.kill(pid, sig)
            except OSError:
                pass  # it ended meanwhile

    for sig in _FORWARDED:
        signal.signal(sig, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
    _, status = os.waitpid(pid, 0)
    try:
        os.killpg(pid, signal.SIGKILL)  # what the program left in its group goes with it
    except OSError:
        pass
    if tty:
        try:  # give the terminal back before this process ends
            signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            os.tcsetpgrp(0, os.getpgrp())
        except OSError:
            pass
    if os.WIFSIGNALED(status):
        killed = os.WTERMSIG(status)
        signal.signal(killed, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {killed})
        os.kill(os.getpid(), killed)
        return 128 + killed  # a signal that does not end a process (SIGCHLD…): say so
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
