"""Test support: helpers, classes and constants the test modules import (no tests here, and no
fixtures: those live in ``tests/conftest.py`` and reach a test by parameter injection only).

* :mod:`tests.support.timeout` — ``TIMEOUT``, the suite's one (scaled) timeout unit.
* :mod:`tests.support.probe` — ``Probe`` / ``ProbeHandle``, an actor whose mail the test reads.
* :mod:`tests.support.hive` — a whole hive in this process (real tree, process backend, real
  claude CLI, loopback model), ``EventWatch`` and hive helpers.
* :mod:`tests.support.daemon` — the whole daemon as a subprocess (``hive serve``) and a
  recording model server.
* :mod:`tests.support.crash` — a hive whose crash watcher watches the stand-in systemd.
* :mod:`tests.support.dbus` — a report collector and predicates for watcher tests on a real
  dbus-daemon.
* :mod:`tests.support.gateway` — a hive whose agent pages get a port range of their own, and
  clients for it.
* :mod:`tests.support.pages` — headless Chromium through Playwright, and screenshots.
* :mod:`tests.support.mcp` — ``StoreOps`` (a HiveOps over a real store) and ``serve`` (uvicorn
  in a thread).
* :mod:`tests.support.resources` — turns driven through a running hive, and the process's
  resources sampled (shared with ``benchmarks/soak.py``).
* :mod:`tests.support.stats` — telemetry helpers: a settable wall clock, TurnEnd builders, a
  scrape parser, a rig with a stats actor under a real supervisor.
* :mod:`tests.support.store` — store helpers: a settable clock, a file snapshot, refusals.
* :mod:`tests.support.web` — a real sqlite event log, a running web server, HTTP and websocket
  clients, free ports.
"""
