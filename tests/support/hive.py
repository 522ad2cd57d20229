"""A whole hive for end-to-end tests: real tree, process backend, real claude CLI, loopback model."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pykka

from hive_actors.config import HiveConfig, ModelConfig, SupervisionConfig, WebConfig
from hive_actors.daemon import Daemon
from hive_actors.modelserver import ModelServer
from hive_actors.services.bell import Bell
from hive_actors.store import AgentState, Event, MessageKind, Role, Store
from hive_actors.supervisors.root import start_root
from tests.support.timeout import TIMEOUT


class EventWatch:
    """Follows the hive's events table (woken by its bell) and waits for a matching event."""

    def __init__(self, open_store: Any, bell: Bell) -> None:
        self._open = open_store
        self._bell = bell
        self._seen = 0
        self.events: list[Event] = []

    def wait_for(self, predicate: Any, timeout: float = TIMEOUT * 3, after: int = 0) -> Event:
        """The first event after id ``after`` (seen already, or still to come) that matches."""
        for event in self.events:
            if event.id > after and predicate(event):
                return event
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            rings = -1
            while True:
                with self._open() as store:
                    new = store.events.events_since(self._seen, 10_000)
                for event in new:
                    self._seen = event.id
                    self.events.append(event)
                    if event.id > after and predicate(event):
                        return event
                if deadline.is_set():
                    kinds = [(e.kind, e.agent) for e in self.events[-15:]]
                    raise AssertionError(f"no matching event within {timeout} s; last: {kinds}")
                rings = self._bell.wait(rings if rings >= 0 else self._bell.rings, 0.5)
        finally:
            timer.cancel()


def hive_config(tmp_path: Path, base_url: str, **supervision: Any) -> HiveConfig:
    return HiveConfig(
        state_dir=str(tmp_path / "hive"),
        backend="process",
        web=WebConfig(port=0),
        model=ModelConfig(base_url=base_url, default="claude-sonnet-test"),
        supervision=replace(SupervisionConfig(), **{"turn_deadline": 60.0, **supervision}),
    )


def start_tree(daemon: Daemon, agents: dict[str, Role]) -> pykka.ActorRef[Any]:
    """Register ``agents`` (pending) in ``daemon``'s hive and start its supervision tree."""
    with daemon.hive.open_store() as store:
        for name, role in agents.items():
            store.registry.register(name, role=role)
    children, flags = daemon.tree()
    return start_root(children, flags, ready_timeout=TIMEOUT * 6)


@contextmanager
def running_hive(
    tmp_path: Path, agents: dict[str, Role], server: ModelServer | None = None, **supervision: Any
) -> Iterator[tuple[Daemon, pykka.ActorRef[Any], ModelServer, EventWatch]]:
    """Start a hive with ``agents`` registered (pending) and yield (daemon, root, model, events)."""
    own = server is None
    model = server or ModelServer()
    if own:
        model.start()
    daemon = Daemon(hive_config(tmp_path, model.url, **supervision), api_key="loopback-test-key")
    root = start_tree(daemon, agents)
    try:
        yield daemon, root, model, EventWatch(daemon.hive.open_store, daemon.hive.bell)
    finally:
        root.stop(block=True, timeout=TIMEOUT * 6)
        daemon.close()
        if own:
            model.stop()


def send(daemon: Daemon, to: str, body: str, sender: str = "operator",
         kind: MessageKind = MessageKind.OPERATOR) -> int:
    from hive_actors.protocol import Send

    return int(daemon.hive.directory.get("bus").ask(Send(sender, to, body, kind), timeout=TIMEOUT))


def store_of(daemon: Daemon) -> Store:
    return daemon.hive.open_store()


def states(daemon: Daemon) -> dict[str, AgentState]:
    with daemon.hive.open_store() as store:
        return {a.name: a.state for a in store.registry.agents()}


__all__ = [
    "EventWatch",
    "agent_whose_server_is_gone",
    "hive_config",
    "running_hive",
    "send",
    "start_tree",
    "states",
    "store_of",
]


def agent_whose_server_is_gone(daemon: Daemon, tmp_path: Path, name: str) -> Path:
    """Register ``name`` with an applied config whose extra MCP server's command was removed
    since (an injected fault: every start of the agent fails); returns that command's path."""
    from hive_actors.agentconfig.repo import ConfigRepo

    paths = daemon.hive.agent_paths(name).create()
    server = tmp_path / f"{name}-tools"
    server.write_text("#!/bin/sh\nexit 0\n")
    server.chmod(0o755)
    ConfigRepo(paths).init(f'[mcp.tools]\ncommand = "{server}"\n', "operator <op@hive>")
    server.unlink()
    with daemon.hive.open_store() as store:
        store.registry.register(name, role=Role.AGENT)
    return server


@contextmanager
def hive_on(
    tmp_path: Path, agents: dict[str, Role], *, backend: str = "process",
    before: Callable[[Daemon], None] = lambda daemon: None,
) -> Iterator[tuple[Daemon, EventWatch]]:
    """A whole hive with ``agents`` on ``backend`` (backoff 0.05 s, no jitter) against its own
    loopback model; ``before`` sees the daemon before its tree starts."""
    model = ModelServer()
    model.start()
    config = replace(hive_config(tmp_path, model.url, backoff_min=0.05, backoff_jitter=0.0),
                     backend=backend)
    daemon = Daemon(config, api_key="loopback-test-key")
    root = None
    try:
        before(daemon)
        root = start_tree(daemon, agents)
        yield daemon, EventWatch(daemon.hive.open_store, daemon.hive.bell)
    finally:
        if root is not None:
            root.stop(block=True, timeout=TIMEOUT * 6)
        daemon.close()
        model.stop()


def commit_agent_toml(repo_dir: Path, text: str, message: str) -> str:
    """Write ``agent.toml`` in a ``config/proposed`` checkout and commit it as the manager
    would (git with no user config); the new commit."""
    import subprocess

    (repo_dir / "agent.toml").write_text(text)
    env = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_AUTHOR_NAME": "boss",
           "GIT_AUTHOR_EMAIL": "boss@hive", "GIT_COMMITTER_NAME": "boss",
           "GIT_COMMITTER_EMAIL": "boss@hive", "PATH": "/usr/bin:/bin"}
    subprocess.run(["git", "commit", "-qam", message], cwd=repo_dir, env=env, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir, env=env, check=True,
                          capture_output=True, text=True).stdout.strip()
