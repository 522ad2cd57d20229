"""Test tools that speak the real protocols, for tests and benchmarks. Among them:

- :class:`~hive_actors.testing.dbus_daemon.DbusDaemon`: a private ``dbus-daemon`` that can be
  killed and restarted on the same address.
- :class:`~hive_actors.testing.systemd_standin.StandinSystemd`: a stand-in systemd on that bus
  (there is no systemd as PID 1 where the tests run).

Import the submodules directly; this package imports nothing so that using one tool does not pull
in the others' dependencies.
"""

from __future__ import annotations

__all__: list[str] = []
