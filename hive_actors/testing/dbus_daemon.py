"""A private ``dbus-daemon`` for tests and benchmarks: start, kill, restart on the same address.

The daemon listens on a unix socket in its own directory and lets anyone own any name and send
anything (a test bus, not a system bus). :attr:`DbusDaemon.address` has no ``guid=``, so a client
that reconnects after :meth:`DbusDaemon.restart` reaches the new daemon (a guid in the address
would make sd-bus refuse a server with another one).

    with DbusDaemon() as daemon:
        watch = SystemdWatch(daemon.address, ...)
        daemon.kill()       # the bus vanishes under every client, like a crashed dbus-daemon
        daemon.start()      # same socket path, a fresh daemon
"""

from __future__ import annotations

import logging
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from hive_actors.errors import StartFailure

__all__ = ["DbusDaemon"]

log = logging.getLogger(__name__)

_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""


class DbusDaemon:
    """A ``dbus-daemon --nofork`` on ``unix:path=<directory>/bus.sock``.

    ``directory`` defaults to a fresh temporary directory, removed by :meth:`close`.
    """

    def __init__(
        self, directory: str | os.PathLike[str] | None = None, *, executable: str = "dbus-daemon"
    ) -> None:
        found = shutil.which(executable)
        if found is None:
            raise StartFailure(
                f"dbus-daemon: {executable!r} is not on PATH; install the 'dbus' package "
                "(apt-get install dbus)"
            )
        self._executable = found
        self._own_directory = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="hive-dbus-") if directory is None
                              else directory)
        self.socket_path = self.directory / "bus.sock"
        self.config_path = self.directory / "bus.conf"
        self.log_path = self.directory / "dbus-daemon.log"
        self.config_path.write_text(_CONFIG.format(socket=self.socket_path))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The D-Bus address clients connect to; the same across restarts."""
        return f"unix:path={self.socket_path}"

    @property
    def pid(self) -> int | None:
        """The running daemon's pid, None when stopped."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the daemon process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> str:
        """Start the daemon and wait until it prints its address (it listens from then on);
        returns :attr:`address`. StartFailure when it does not come up within ``timeout``."""
        if self.running:
            return self.address
        self._reap()
        with open(self.log_path, "ab") as log_file:
            process = subprocess.Popen(
                [
                    self._executable,
                    f"--config-file={self.config_path}",
                    "--nofork",
                    "--nopidfile",
                    "--print-address",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log_file,
            )
        assert process.stdout is not None
        try:
            line = self._read_line(process, timeout)
        except BaseException:
            process.kill()
            process.wait(timeout)
            raise
        finally:
            # It prints its address once; nothing more comes on this pipe.
            process.stdout.close()
        self._process = process
        log.debug("dbus-daemon %d listening at %s", process.pid, line)
        return self.address

    def _read_line(self, process: subprocess.Popen[bytes], timeout: float) -> str:
        assert process.stdout is not None
        deadline = time.monotonic() + timeout
        data = b""
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while b"\n" not in data:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    raise StartFailure(
                        f"dbus-daemon did not print its address within {timeout:g} s; "
                        f"see {self.log_path}"
                    )
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    code = process.wait(timeout)
                    raise StartFailure(
                        f"dbus-daemon exited with status {code} before listening; "
                        f"see {self.log_path}"
                    )
                data += chunk
        return data.decode(errors="replace").strip()

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the daemon, as if it crashed: every client loses the bus at once."""
        self._signal(signal.SIGKILL, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the daemon and wait; SIGKILL when it has not exited within ``timeout``."""
        if self._process is None:
            return
        try:
            self._signal(signal.SIGTERM, timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL, timeout)

    def restart(self, timeout: float = 10.0) -> str:
        """Stop (SIGKILL) and start again on the same address."""
        self.kill(timeout)
        return self.start(timeout)

    def _signal(self, signum: int, timeout: float) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signum)
        process.wait(timeout)
        self._process = None

    def _reap(self) -> None:
        if self._process is not None:
            self._process.wait(10.0)
            self._process = None

    def close(self) -> None:
        """Stop the daemon and remove the directory this object created."""
        self.stop()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> DbusDaemon:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
