"""``hive demo``: the whole hive on this machine, self-contained.

A manager (``boss``) and two agents (``alice``, ``bob``) run on the process backend (or, with
``--backend nspawn``, each in an unprivileged ``systemd-nspawn`` container) with the real
``claude`` CLI, against the project's loopback model server, which is scripted by what the agents
are told (see :mod:`hive_actors.modelserver`): the operator's first message asks the manager to
get alice and bob talking, to request a new agent (``carol``) and to ask the operator a question.
The spawn request and the question wait for the operator on the dashboard.

Nothing leaves loopback: the CLI runs with ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`` and
``ANTHROPIC_BASE_URL`` pointing at the loopback model server.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from hive_actors.config import HiveConfig, ModelConfig, WebConfig
from hive_actors.containers.registry import backend_kind
from hive_actors.daemon import Daemon
from hive_actors.errors import ConfigError, HiveError
from hive_actors.modelserver import ModelServer
from hive_actors.protocol import Send
from hive_actors.store import EventKind, MessageKind, Role
from hive_actors.supervisors.root import describe_tree, run_until_stopped, start_root

__all__ = ["DEMO_AGENTS", "DEMO_BACKENDS", "DemoRefused", "check_backend", "kickoff_message",
           "run_demo"]

DEMO_AGENTS = {"boss": Role.MANAGER, "alice": Role.AGENT, "bob": Role.AGENT}
DEMO_KEY = "loopback-demo-key"
DEMO_BACKENDS = ("process", "nspawn")
"""The backends the demo runs its agents on: those that run on any Linux host it may be on."""


class DemoRefused(HiveError):
    """This host cannot run the demo on the chosen backend (the message names the fix)."""


def check_backend(backend: str) -> None:
    """Refuse, before anything starts, a backend the demo cannot run on this host: one line
    naming what to install or enable (:class:`DemoRefused`)."""
    backend_kind(backend, source="hive demo --backend")
    if backend not in DEMO_BACKENDS:
        raise DemoRefused(
            f"hive demo --backend {backend}: its containers need a NixOS host (nixos-container); "
            f"the demo runs on {' or '.join(DEMO_BACKENDS)} (hive demo --backend nspawn), and "
            f"'hive serve' with [hive] backend = \"{backend}\" runs a hive on NixOS"
        )
    if backend == "nspawn":
        from hive_actors.containers.nspawn import preflight

        try:
            preflight()
        except ConfigError as exc:
            raise DemoRefused(
                f"hive demo --backend nspawn cannot run here: {exc}; or run the demo without "
                "containers (hive demo --backend process)"
            ) from None


def _tool(tool_name: str, **args: object) -> str:
    return f"@tool {tool_name} {json.dumps(args)}"


def kickoff_message() -> str:
    """The operator's first message to the manager: a script the loopback model follows."""
    bob_to_alice = _tool("mcp__hive__send", to="alice", body="Hi alice, bob here. Got it.")
    alice_to_bob = _tool(
        "mcp__hive__send", to="bob", body=f"Hello bob, alice here.\n{bob_to_alice}"
    )
    return "\n".join([
        "Welcome to the demo hive. Please get alice and bob talking, ask for a docs agent, and",
        "check with me before it starts.",
        _tool("mcp__hive__send", to="alice", body=f"Say hello to bob.\n{alice_to_bob}"),
        _tool("mcp__hive__request_spawn", name="carol"),
        _tool("mcp__hive__ask_operator", question="Should carol start with the docs or the tests?"),
    ])


@dataclass(frozen=True)
class DemoOptions:
    state_dir: Path
    port: int = 8000
    check: bool = False
    backend: str = "process"
    """Where the agents run: ``process`` or ``nspawn`` (:data:`DEMO_BACKENDS`)."""
    """Run the scripted exchange to its end, print what happened, and stop (a smoke test)."""


def _config(opts: DemoOptions, model_url: str) -> HiveConfig:
    return HiveConfig(
        state_dir=str(opts.state_dir),
        backend=opts.backend,
        source="<demo>",
        web=WebConfig(port=opts.port),
        model=ModelConfig(base_url=model_url, default="claude-sonnet-demo"),
    )


def run_demo(opts: DemoOptions, out: TextIO, err: TextIO, stop: threading.Event) -> int:
    """Run the demo hive until ``stop`` (Ctrl-C); with ``check``, until the script played out.

    :class:`DemoRefused` (before anything starts) when this host cannot run ``opts.backend``."""
    check_backend(opts.backend)
    os.environ.setdefault("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
    with ModelServer() as model:
        daemon = Daemon(_config(opts, model.url), api_key=DEMO_KEY)
        try:
            fresh = _seed(daemon)
            children, flags = daemon.tree()
            root = start_root(children, flags, ready_timeout=300.0)
            base = daemon.endpoints.base_url()
            print(describe_tree(root, name="hive"), file=out)
            if fresh:
                _kickoff(daemon)
            _where(out, daemon, base, model.url, opts)
            if opts.check:
                ok = _await_script(daemon, out, timeout=120.0)
                _containers(daemon, out)
                stop.set()
                code = run_until_stopped(root, stop, err)
                return code if ok else 1
            print("The hive is running; press Ctrl-C to stop it.", file=out)
            out.flush()
            return run_until_stopped(root, stop, err)
        finally:
            daemon.close()


def _seed(daemon: Daemon) -> bool:
    """Register the demo agents on a fresh state dir; False if the hive already existed."""
    with daemon.hive.open_store() as store:
        if store.registry.agents():
            return False
        for name, role in DEMO_AGENTS.items():
            store.registry.register(name, role=role)
    return True


def _kickoff(daemon: Daemon) -> None:
    bus = daemon.hive.directory.get("bus")
    bus.ask(Send("operator", "boss", kickoff_message(), MessageKind.OPERATOR), timeout=30)


def _where(out: TextIO, daemon: Daemon, base: str, model_url: str, opts: DemoOptions) -> None:
    print("", file=out)
    print(f"dashboard      {base}/", file=out)
    print(f"log in         {daemon.login_url()}  (opens one browser session, once)", file=out)
    print(f"agents' state  {daemon.hive.state_dir.resolve()}/agents/<name>/", file=out)
    print(f"model server   {model_url} (loopback, scripted)", file=out)
    print(f"containers     {opts.backend}: {backend_kind(opts.backend).summary}", file=out)
    print(f"hive API       {base}/api/state  (with 'Authorization: Bearer <token>'; "
          f"`hive token --state-dir {daemon.hive.state_dir.resolve()}` prints it)", file=out)
    print("The manager has asked for a new agent and asked you a question: approve and answer "
          "them on the dashboard.", file=out)
    out.flush()


def _await_script(daemon: Daemon, out: TextIO, timeout: float) -> bool:
    """Follow the events until the scripted exchange happened (or ``timeout``)."""
    wanted: dict[str, Callable[[object], bool]] = {
        "alice -> bob": lambda e: _sent(e, "alice", "bob"),
        "bob -> alice": lambda e: _sent(e, "bob", "alice"),
        "spawn of carol requested": lambda e: getattr(e, "kind", "") == EventKind.APPROVAL_REQUESTED,
        "question to the operator": lambda e: getattr(e, "kind", "") == EventKind.QUESTION_ASKED,
    }
    seen: set[str] = set()
    last = 0
    rings = daemon.hive.bell.rings
    deadline = threading.Event()
    timer = threading.Timer(timeout, deadline.set)
    timer.start()
    try:
        while len(seen) < len(wanted) and not deadline.is_set():
            with daemon.hive.open_store() as store:
                events = store.events.events_since(last, 10_000)
            for event in events:
                last = event.id
                for label, match in wanted.items():
                    if label not in seen and match(event):
                        seen.add(label)
                        print(f"  seen: {label}", file=out)
            rings = daemon.hive.bell.wait(rings, 1.0)
    finally:
        timer.cancel()
    missing = [label for label in wanted if label not in seen]
    if missing:
        print(f"demo check: not seen within {timeout:g} s: {', '.join(missing)}", file=out)
        return False
    print("demo check: the scripted exchange played out", file=out)
    return True


def _containers(daemon: Daemon, out: TextIO) -> None:
    """Each demo agent's container as the host sees it: its leader and that leader's uid."""
    assert daemon.backend is not None
    for name in DEMO_AGENTS:
        pid = daemon.backend.status(name).pid
        uid = "?"
        try:
            status = Path(f"/proc/{pid}/status").read_text() if pid else ""
        except OSError:
            status = ""
        for line in status.splitlines():
            if line.startswith("Uid:"):
                uid = line.split()[1]
        print(f"  container of {name}: leader pid {pid}, host uid {uid}", file=out)
    out.flush()


def _sent(event: object, sender: str, recipient: str) -> bool:
    return (
        getattr(event, "kind", "") == EventKind.MESSAGE_SENT
        and getattr(event, "agent", "") == recipient
        and getattr(event, "payload", {}).get("from") == sender
    )
