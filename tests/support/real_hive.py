"""A whole hive whose CrashWatcherActor reads a real systemd (booted in a container, see
:mod:`tests.support.booted`) over that systemd's own system bus.

The agents run in the process backend (keeper processes, the real claude CLI, the loopback
model); :class:`UnitBackend` ties each agent's ``container@<agent>.service`` in the booted
systemd to its container the way ``nixos-container`` does: starting the container is
``systemctl start container@<agent>.service`` (a new run, a new ``InvocationID``), stopping it
``systemctl stop``. The unit is what the test kills, stops and crash-loops; the watcher hears of
it only from systemd's signals.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from hive_actors.config import WatcherConfig
from hive_actors.containers.process import ProcessBackend
from hive_actors.daemon import Daemon
from hive_actors.modelserver import ModelServer
from hive_actors.store import EventKind, Role
from tests.support.booted import BootedSystemd
from tests.support.crash import CrashHive, unit
from tests.support.hive import EventWatch, hive_config, start_tree
from tests.support.timeout import TIMEOUT

__all__ = ["Reloader", "UnitBackend", "real_hive"]


class UnitBackend:
    """The process backend, with each agent's unit in the booted systemd following its
    container."""

    def __init__(self, inner: ProcessBackend, systemd: BootedSystemd) -> None:
        self.inner = inner
        self.systemd = systemd
        self._lock = threading.Lock()

    def start(self, name: str) -> None:
        self.inner.start(name)
        with self._lock:
            self.systemd.systemctl("start", unit(name))  # returns once the start job is done

    def stop(self, name: str, *, grace: Any = None) -> Any:
        with self._lock:
            if self.systemd.show(unit(name), "ActiveState")["ActiveState"] == "active":
                self.systemd.systemctl("stop", unit(name))
        return self.inner.stop(name, grace=grace)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Reloader:
    """What :meth:`tests.support.crash.Follower.barrier` needs of a systemd: a
    ``daemon-reload``, whose ``Reloading(false)`` follows every signal sent before it."""

    def __init__(self, systemd: BootedSystemd) -> None:
        self.systemd = systemd

    def emit_reloading(self) -> None:
        self.systemd.systemctl("daemon-reload")


@contextlib.contextmanager
def real_hive(
    tmp_path: Path, systemd: BootedSystemd, agents: dict[str, Role], **supervision: Any
) -> Iterator[CrashHive]:
    """A hive with ``agents`` whose watcher reads ``systemd``'s bus; yields once every agent
    is idle and a probe follows the watcher (``hive.fake`` is a :class:`Reloader`)."""
    supervision = {"backoff_min": 0.05, "backoff_max": 1.0, "backoff_jitter": 0.0,
                   **supervision}
    model = ModelServer()
    model.start()
    with contextlib.ExitStack() as stack:
        stack.callback(model.stop)
        config = replace(hive_config(tmp_path, model.url, **supervision),
                         watcher=WatcherConfig(bus_address=systemd.address))
        backend = UnitBackend(ProcessBackend(config.state_dir), systemd)
        daemon = Daemon(config, backend=backend, api_key="loopback-test-key")
        stack.callback(daemon.close)
        root = start_tree(daemon, agents)
        stack.callback(root.stop, block=True, timeout=TIMEOUT * 6)
        hive = CrashHive(daemon, root, model, EventWatch(daemon.hive.open_store, daemon.hive.bell),
                         Reloader(systemd), backend)  # type: ignore[arg-type]
        for name in agents:
            hive.after(EventKind.AGENT_STATE, name, where=lambda e: e.payload.get("to") == "idle")
        hive.follow()
        yield hive
