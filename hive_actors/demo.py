"""``hive demo``: the whole hive on this machine, self-contained.

A manager (``boss``) and two agents (``alice``, ``bob``) run on the process backend (or, with
``--backend nspawn``, each in an unprivileged ``systemd-nspawn`` container) with the real
``claude`` CLI, against the project's loopback model server, which is scripted by what the agents
are told (see :mod:`hive_actors.modelserver`): the operator's first message asks the manager to
get alice and bob talking, to request a new agent (``carol``) and to ask the operator a question.
The spawn request and the question wait for the operator on the dashboard.

The demo's files live in a per-user data directory (:func:`default_state_dir`), marked as a
demo's (:data:`DEMO_MARKER`). A rerun there continues the scripted exchange when it has not
played out (kicking it off again unless it is still under way), or restarts it when it has;
``--fresh`` deletes the demo's state first (and nothing that is not a demo's state).

Nothing leaves loopback: the CLI runs with ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`` and
``ANTHROPIC_BASE_URL`` pointing at the loopback model server.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

from hive_actors.config import HiveConfig, ModelConfig, WebConfig
from hive_actors.containers.registry import backend_kind
from hive_actors.daemon import Daemon
from hive_actors.errors import ConfigError, HiveError
from hive_actors.modelserver import ModelServer
from hive_actors.preflight import demo_knobs, preflight
from hive_actors.protocol import Send
from hive_actors.store import ApprovalKind, ApprovalStatus, EventKind, MessageKind, Role, Store
from hive_actors.supervisors.root import describe_tree, run_until_stopped, start_root

__all__ = ["DEMO_AGENTS", "DEMO_BACKENDS", "DEMO_MARKER", "DemoRefused", "check_backend",
           "default_state_dir", "kickoff_message", "run_demo"]

DEMO_AGENTS = {"boss": Role.MANAGER, "alice": Role.AGENT, "bob": Role.AGENT}
DEMO_KEY = "loopback-demo-key"
DEMO_BACKENDS = ("process", "nspawn")
"""The backends the demo runs its agents on: those that run on any Linux host it may be on."""
DEMO_MARKER = ".hive-demo"
"""The file that marks a state dir as a demo's (the one kind ``--fresh`` deletes)."""
_DEMO_FILES = frozenset({DEMO_MARKER, "agents", "operator-token", "hive.db", "hive.db-wal",
                         "hive.db-shm", "hive.db-journal", "hive.db.lock"})
"""What a demo's state dir holds at its top (anything else: not only a demo's)."""
MILESTONES = ("alice -> bob", "bob -> alice", "spawn of carol requested",
              "question to the operator")
"""What the scripted exchange shows, in the events, once it played out."""


def default_state_dir() -> Path:
    """The demo's state dir: ``${XDG_DATA_HOME:-~/.local/share}/hive_actors/demo``."""
    data = os.environ.get("XDG_DATA_HOME") or ""
    base = Path(data) if os.path.isabs(data) else Path.home() / ".local" / "share"
    return base / "hive_actors" / "demo"


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
    state_dir: Path | None = None
    """The demo's files (None: :func:`default_state_dir`)."""
    port: int = 8000
    check: bool = False
    """Run the scripted exchange to its end, print what happened, and stop (a smoke test)."""
    backend: str = "process"
    """Where the agents run: ``process`` or ``nspawn`` (:data:`DEMO_BACKENDS`)."""
    fresh: bool = False
    """Delete the demo's state first (refused for a directory that is not a demo's)."""


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

    :class:`DemoRefused` (before anything starts) when this host cannot run ``opts.backend``;
    :class:`~hive_actors.preflight.PreflightError` (before anything is written) when something
    it needs is missing."""
    check_backend(opts.backend)
    state_dir = Path(os.path.abspath(os.path.expanduser(opts.state_dir or default_state_dir())))
    opts = replace(opts, state_dir=state_dir)
    preflight(_config(opts, "http://127.0.0.1:1"), demo_knobs())
    if opts.fresh:
        _wipe(state_dir)
    _mark(state_dir)
    os.environ.setdefault("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
    with ModelServer() as model:
        daemon = Daemon(_config(opts, model.url), api_key=DEMO_KEY)
        try:
            _seed(daemon)
            children, flags = daemon.tree()
            root = start_root(children, flags, ready_timeout=300.0)
            base = daemon.endpoints.base_url()
            print(describe_tree(root, name="hive"), file=out)
            mark, how = _continue_or_kickoff(daemon)
            _where(out, daemon, base, model.url, opts, how)
            if opts.check:
                ok = _await_script(daemon, out, timeout=120.0, mark=mark)
                _containers(daemon, out)
                stop.set()
                code = run_until_stopped(root, stop, err)
                return code if ok else 1
            print("The hive is running; press Ctrl-C to stop it.", file=out)
            out.flush()
            return run_until_stopped(root, stop, err)
        finally:
            daemon.close()


def _is_demo_dir(state_dir: Path) -> tuple[bool, str]:
    """Whether ``state_dir`` holds a demo's state only (and if not, why not)."""
    names = {p.name for p in state_dir.iterdir()}
    other = sorted(names - _DEMO_FILES)
    if other:
        return False, f"it holds files a demo does not make ({', '.join(other[:3])})"
    if DEMO_MARKER in names:
        return True, ""
    # A demo's state from before the marker: the demo's db and agents, nothing else.
    agents = state_dir / "agents"
    known = {*DEMO_AGENTS, "carol"}
    if "hive.db" in names and (not agents.is_dir() or
                               {p.name for p in agents.iterdir()} <= known):
        return True, ""
    return False, f"it has no {DEMO_MARKER} file"


def _wipe(state_dir: Path) -> None:
    """Delete the demo's state dir for ``--fresh``; refuse any other directory."""
    if not state_dir.exists():
        return
    if not state_dir.is_dir():
        raise DemoRefused(f"hive demo --fresh: '{state_dir}' is not a directory; pass the "
                          "demo's --state-dir")
    if not any(state_dir.iterdir()):
        return
    ok, why = _is_demo_dir(state_dir)
    if not ok:
        raise DemoRefused(
            f"hive demo --fresh deletes only a demo's state dir, and '{state_dir}' is not one "
            f"({why}); pass the demo's --state-dir, or delete it yourself"
        )
    shutil.rmtree(state_dir)


def _mark(state_dir: Path) -> None:
    """Mark a new (or empty) state dir as the demo's: ``--fresh`` may delete it later."""
    if state_dir.exists() and any(state_dir.iterdir()):
        return
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (state_dir / DEMO_MARKER).write_text(
        "The state of a 'hive demo' (hive demo --fresh deletes this directory).\n"
    )


def _seed(daemon: Daemon) -> bool:
    """Register the demo agents on a fresh state dir; False if the hive already existed."""
    with daemon.hive.open_store() as store:
        if store.registry.agents():
            return False
        for name, role in DEMO_AGENTS.items():
            store.registry.register(name, role=role)
    return True


def _all_events(store: Store, after: int = 0) -> list[object]:
    events: list[object] = []
    while True:
        page = store.events.events_since(after, 10_000)
        if not page:
            return events
        events.extend(page)
        after = page[-1].id


def _last_kickoff(store: Store) -> tuple[int, int | None]:
    """The event id of the latest kickoff's ``message.sent`` and the kickoff's message id
    (0, None: never kicked off)."""
    script = kickoff_message()
    mark, message = 0, None
    for event in _all_events(store):
        payload = getattr(event, "payload", {})
        if not (getattr(event, "kind", "") == EventKind.MESSAGE_SENT
                and getattr(event, "agent", "") == "boss"
                and payload.get("from") == "operator"):
            continue
        try:
            if store.messages.get(int(payload.get("id", 0))).body != script:
                continue
        except HiveError:
            continue
        mark, message = getattr(event, "id", 0), int(payload["id"])
    return mark, message


def _seen(store: Store, mark: int) -> set[str]:
    """The milestones of the scripted exchange in the events after ``mark``. A spawn of carol
    asked for in an earlier round (still pending, or approved) is not asked for again: it
    counts once the manager went past it (to its question)."""
    seen = {label for event in _all_events(store, mark) for label, match in _MATCHES.items()
            if match(event)}
    if ("question to the operator" in seen and "spawn of carol requested" not in seen
            and _carol_requested(store)):
        seen.add("spawn of carol requested")
    return seen


def _carol_requested(store: Store) -> bool:
    return any(a.agent == "carol" and a.kind == ApprovalKind.SPAWN
               and a.status != ApprovalStatus.DENIED for a in store.approvals.recent(1000))


def _continue_or_kickoff(daemon: Daemon) -> tuple[int, str]:
    """Continue the scripted exchange of an earlier run, or (re)start it; idempotent: no
    second kickoff while the exchange is under way (the kickoff or the agents' messages still
    open). Returns the mark the exchange's events come after, and what happened."""
    with daemon.hive.open_store() as store:
        mark, _ = _last_kickoff(store)
        if mark:
            if len(_seen(store, mark)) == len(MILESTONES):
                how = "replayed"  # it played out in an earlier run: play it again
            elif any(store.messages.undelivered(name) for name in DEMO_AGENTS):
                return mark, "continued"
            else:
                how = "restarted"  # it stopped half-way with nothing left to deliver
        else:
            how = "started"
        mark = store.events.last_event_id()
    bus = daemon.hive.directory.get("bus")
    bus.ask(Send("operator", "boss", kickoff_message(), MessageKind.OPERATOR), timeout=30)
    return mark, how


def _where(out: TextIO, daemon: Daemon, base: str, model_url: str, opts: DemoOptions,
           how: str) -> None:
    print(file=out)
    print(f"state dir      {daemon.hive.state_dir}  (a rerun continues here; "
          "'hive demo --fresh' starts over)", file=out)
    print(f"dashboard      {base}/", file=out)
    print(f"log in         {daemon.login_url()}  (opens one browser session, once)", file=out)
    print(f"agents' state  {daemon.hive.state_dir.resolve()}/agents/<name>/", file=out)
    print(f"model server   {model_url} (loopback, scripted)", file=out)
    print(f"containers     {opts.backend}: {backend_kind(opts.backend).summary}", file=out)
    print(f"hive API       {base}/api/state  (with 'Authorization: Bearer <token>'; "
          f"`hive token --state-dir {daemon.hive.state_dir.resolve()}` prints it)", file=out)
    what = {"started": "The scripted exchange has started",
            "replayed": "The scripted exchange played out in an earlier run; it has started "
                        "again",
            "restarted": "The scripted exchange stopped half-way in an earlier run; it has "
                         "started again",
            "continued": "The scripted exchange of an earlier run goes on"}[how]
    with daemon.hive.open_store() as store:
        asked = (any(a.agent == "carol" and a.kind == ApprovalKind.SPAWN
                     for a in store.approvals.pending())
                 and any(q.agent == "boss" for q in store.questions.pending()))
    if asked:
        print(f"{what}. The manager has asked for a new agent and asked you a question: "
              "approve and answer them on the dashboard.", file=out)
    else:
        print(f"{what}: the manager will ask for a new agent (carol) and ask you a question; "
              "watch the dashboard to approve and answer them.", file=out)
    out.flush()


def _await_script(daemon: Daemon, out: TextIO, timeout: float, mark: int = 0) -> bool:
    """Follow the events after ``mark`` until the scripted exchange happened (or
    ``timeout``)."""
    wanted = _MATCHES
    seen: set[str] = set()
    last = mark
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
                spawn = "spawn of carol requested"
                if ("question to the operator" in seen and spawn not in seen
                        and _carol_requested(store)):
                    # Asked for in an earlier round: the manager's request is refused as a
                    # twin of the one still there, and it went on to its question.
                    seen.add(spawn)
                    print(f"  seen: {spawn} (in an earlier run: still there)", file=out)
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


_MATCHES: dict[str, Callable[[object], bool]] = {
    "alice -> bob": lambda e: _sent(e, "alice", "bob"),
    "bob -> alice": lambda e: _sent(e, "bob", "alice"),
    "spawn of carol requested": lambda e: (
        getattr(e, "kind", "") == EventKind.APPROVAL_REQUESTED
        and getattr(e, "agent", "") == "carol"),
    "question to the operator": lambda e: getattr(e, "kind", "") == EventKind.QUESTION_ASKED,
}
