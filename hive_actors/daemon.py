"""The whole hive, assembled: every service of the tree wired to the others.

The tree itself is defined in :mod:`hive_actors.tree`; the daemon is what starts each child of
it (a :class:`~hive_actors.tree.TreeStarts`).

::

    hive        root supervisor (rest_for_one)
    ├── store      StoreActor        sqlite file, hive lock, start-up recovery
    ├── bus        BusActor          inboxes, group commit, model override
    ├── approvals  ApprovalQueueActor approvals and operator questions
    ├── stats      StatsActor        telemetry rows, retention (and the /metrics collectors)
    ├── agents     AgentsSupervisor  one AgentActor per agent (backoff, give-up)
    ├── watcher    CrashWatcherActor container exits from the backend, and container@*.service
    │                                on D-Bus when [hive] backend = "nixos" or [watcher]
    │                                bus_address is set → crash messages to the AgentActors
    └── gateway    GatewayActor      dashboard, JSON API, websocket, /hive/mcp

``hive serve --config hive.toml`` and ``hive demo`` both run this; they differ in configuration
(the demo: the process backend, the loopback model server, a seeded hive).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pykka import ActorRef

from hive_actors.actor import default_clock
from hive_actors.agent.configs import ConfigDesk
from hive_actors.agent.ops import ActorHiveOps
from hive_actors.agent.runtime import AgentRuntime
from hive_actors.agent.supervisor import AgentsSupervisor
from hive_actors.agent.turnbook import TurnBook
from hive_actors.config import HiveConfig
from hive_actors.containers import registry
from hive_actors.containers.base import ContainerBackend, ContainerSpec
from hive_actors.credentials import DEFAULT_BASE_URL, Credentials, given_api_key, load_credentials
from hive_actors.errors import ConfigError
from hive_actors.fdlimit import raise_nofile_limit
from hive_actors.gateway.actor import Endpoints, GatewayActor
from hive_actors.gateway.app import GatewayContext, default_web_root
from hive_actors.harness import ClaudeBinary, find_claude
from hive_actors.hive import Hive
from hive_actors.httpd.security import (
    is_loopback,
    load_or_create_token,
    operator_token_file,
    policy_for_bind,
)
from hive_actors.mcp.surface import HiveSurface, mcp_allowed_hosts
from hive_actors.mcp.tokens import TokenBook, mcp_config
from hive_actors.stats.service import HiveTelemetry
from hive_actors.supervisors.spec import ChildSpec, RestartLimit, SupervisorFlags
from hive_actors.tree import TreeSpec, hive_tree, reads_dbus, watched_units, watcher_address
from hive_actors.watcher import SystemdWatch
from hive_actors.watcher.actor import CrashWatcherActor, WatchFactory
from hive_actors.watcher.intents import WatchedBackend

__all__ = ["Daemon", "make_backend", "reads_dbus", "stall_check_interval"]

log = logging.getLogger(__name__)


def _fingerprint(path: Path) -> tuple[int, int, int] | None:
    """What tells a replaced or removed file: inode, size, modification time (None: gone)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def make_backend(config: HiveConfig) -> ContainerBackend:
    """The container backend ``[hive] backend`` names (:data:`~hive_actors.containers.registry.
    BACKENDS`)."""
    kind = registry.backend_kind(config.backend, source=config.source)
    options: dict[str, Any] = {}
    if kind.section:
        options = dataclasses.asdict(getattr(config, kind.section))
        if kind.sees_only_bound_paths and config.model.claude_path:
            options["ro_paths"] = [config.model.claude_path]  # a CLI outside the prefix
    return kind.make(config.state_dir, options)


def stall_check_interval(heartbeat_timeout: float) -> float:
    """How often an AgentActor looks for a silent harness: a fifth of the heartbeat timeout
    (a stall is seen at most 20 % late), between 50 ms and 30 s."""
    return min(30.0, max(0.05, heartbeat_timeout / 5))


@dataclass
class Daemon:
    """One hive's services, built from its configuration."""

    config: HiveConfig
    backend: ContainerBackend | None = None
    claude: ClaudeBinary | None = None
    api_key: str | None = field(default=None, repr=False)
    """The API key handed to the CLI (the demo's loopback key); None: the credentials
    ``[credentials]`` names (by default the key in ``[model] api_key_env``)."""
    credentials: Credentials | None = field(default=None, repr=False)
    """The credentials handed to the CLI in each turn's environment; None: read at start
    (``api_key`` if given, else :func:`~hive_actors.credentials.load_credentials`)."""
    hive: Hive = field(init=False)
    endpoints: Endpoints = field(default_factory=Endpoints)
    tokens: TokenBook = field(default_factory=TokenBook)
    turns: TurnBook = field(default_factory=TurnBook)
    watch_factory: WatchFactory = SystemdWatch
    """Makes the crash watcher's D-Bus watcher (tests inject faults through it)."""

    def __post_init__(self) -> None:
        self._claude_lock = threading.Lock()
        self._claude_checked: tuple[ClaudeBinary, tuple[int, int, int] | None] | None = None
        # Before anything opens descriptors: hundreds of agents need more than the usual 1024.
        self.nofile = raise_nofile_limit()
        self.hive = Hive(self.config)
        if self.backend is None:
            self.backend = make_backend(self.config)
        self.reads_dbus = reads_dbus(self.config)
        # The agents' stops are told to the crash watcher first (the hive's own are no
        # crashes), and the runs their starts began after.
        agent_backend = WatchedBackend(self.backend, self._tell_watcher)
        self.desk = ConfigDesk(self.hive)
        self.telemetry = HiveTelemetry(self.hive)
        model = self.config.model
        # Read now; a missing or empty one fails the agents' start (after the store took the
        # hive's lock, so a second hive on the same files still hears of that first).
        self.credentials_error: ConfigError | None = None
        if self.credentials is None:
            if self.api_key is not None:
                self.credentials = given_api_key(self.api_key)
            else:
                try:
                    self.credentials = load_credentials(self.config)
                except ConfigError as exc:
                    self.credentials_error = exc
        creds = self.credentials
        self.runtime = AgentRuntime(
            hive=self.hive,
            backend=agent_backend,
            tokens=self.tokens,
            claude=self._find_claude,
            base_url=model.base_url or DEFAULT_BASE_URL,
            mcp_url=self.endpoints.mcp_url,
            settings=self.desk.settings,
            container_spec=lambda name, settings: ContainerSpec(),
            render_mcp_config=mcp_config,
            clock=default_clock(),
            prepare=self.desk.prepare,
            api_key=creds.api_key if creds is not None else None,
            credential_env=dict(creds.env) if creds is not None else {},
            turns=self.turns,
            on_turn_end=self.telemetry.on_turn_end,
            heartbeat_timeout=self.config.supervision.heartbeat_timeout,
            tick_interval=stall_check_interval(self.config.supervision.heartbeat_timeout),
        )
        sup = self.config.supervision
        self.ops = ActorHiveOps(
            self.hive.directory, self.turns, self.hive.open_store, self.desk,
            revive_needs_approval=sup.revive_needs_approval,
            limits=(f"given up past {sup.agent_restarts} restarts in {sup.agent_period:g} s, or "
                    f"{sup.agent_max_consecutive_failures} failures in a row"),
        )
        web = self.config.web
        self.policy, self.token = policy_for_bind(
            web.host, self.token_file, max_body=web.max_body_bytes,
            allowed_hosts=web.host_names(),
        )
        # /metrics (counts, no messages): open on a loopback bind unless [web]
        # metrics_token_file is set; then, and on any other bind, the operator token or that
        # file's.
        metrics_tokens: list[str] = []
        if web.metrics_token_file or not is_loopback(web.host):
            metrics_tokens.append(self.token.value)
        if web.metrics_token_file:
            metrics_file = self.hive.state_dir / Path(web.metrics_token_file).expanduser()
            metrics_tokens.append(load_or_create_token(metrics_file).value)
        self.telemetry.metrics_tokens = tuple(metrics_tokens)

    @property
    def token_file(self) -> Path:
        """The operator token's 0600 file ([web] token_file, relative to the state dir)."""
        return operator_token_file(self.hive.state_dir, self.config.web.token_file)

    def login_url(self) -> str:
        """A one-time login URL for the dashboard (minted now, good for one browser session).
        Blocks until the dashboard listens."""
        policy = self.policy
        return f"{self.endpoints.base_url()}{policy.login_path}?code={policy.logins.mint()}"

    def _find_claude(self) -> ClaudeBinary:
        """The CLI the agents run (given, or found and version-checked at each agent start).

        The version check runs the binary (``claude --version``); it is repeated only when the
        file changed, so 200 agents starting do not run it 200 times, while a CLI removed or
        replaced since is still each agent's clear start failure.
        """
        if self.claude is not None:
            return self.claude
        with self._claude_lock:
            cached = self._claude_checked
            if cached is not None and cached[1] is not None and (
                _fingerprint(cached[0].path) == cached[1]
            ):
                return cached[0]
            found = find_claude(self.config.model.claude_path or None)
            self._claude_checked = (found, _fingerprint(found.path))
            return found

    def gateway_context(self) -> GatewayContext:
        """What the gateway serves and drives (a new one per gateway start)."""
        web = self.config.web
        return GatewayContext(
            hive=self.hive,
            surface_factory=lambda: HiveSurface(
                self.ops, self.tokens, allowed_hosts=mcp_allowed_hosts(web.host)
            ),
            policy=self.policy,
            backend=self.backend,
            spawn_diff=self.desk.spawn_diff,
            extra_routes=self.telemetry.routes,
            metrics_server=self.telemetry.serve_metrics,
            web_root=Path(web.root) if web.root else default_web_root(),
            timeout=web.action_timeout,
            board=self.telemetry.web,
        )

    def tree_spec(self) -> TreeSpec:
        """The hive's tree (:func:`hive_actors.tree.hive_tree`), started by this daemon."""
        return hive_tree(self.config, self)

    def tree(self) -> tuple[list[ChildSpec], SupervisorFlags]:
        """The root's children, in start order, and its flags (for ``start_root``)."""
        spec = self.tree_spec()
        return spec.children(), spec.flags

    # -- TreeStarts: what starts each child of the tree ---------------------------------------

    def start_store(self) -> ActorRef[Any]:
        return self.hive.start_store()

    def start_bus(self) -> ActorRef[Any]:
        return self.hive.start_bus()

    def start_approvals(self) -> ActorRef[Any]:
        return self.hive.start_approvals()

    def start_stats(self) -> ActorRef[Any]:
        return self.telemetry.child_spec().start()

    def start_agents(self, flags: SupervisorFlags, limit: RestartLimit) -> ActorRef[Any]:
        if self.credentials_error is not None:
            raise self.credentials_error
        if self.credentials is not None:
            log.info("credentials: %s", self.credentials.describe())
        return AgentsSupervisor.start(self.runtime, flags, limit)

    def start_gateway(self) -> ActorRef[Any]:
        return GatewayActor.start(
            self.gateway_context(),
            self.endpoints,
            host=self.config.web.host,
            port=self.config.web.port,
        )

    def start_watcher(self) -> ActorRef[Any]:
        watch = self.config.watcher
        return CrashWatcherActor.start(
            self.hive,
            backend=self.backend,
            dbus=self.reads_dbus,
            address=watcher_address(self.config),
            unit_prefix=watched_units(self.config),
            rescan_interval=watch.rescan_interval,
            watch_factory=self.watch_factory,
        )

    def _tell_watcher(self, message: object) -> bool:
        """Tell the crash watcher ``message`` (False when none runs right now)."""
        return self.hive.directory.tell(CrashWatcherActor.SERVICE, message)

    def close(self) -> None:
        """Release what the daemon itself owns (after its tree stopped)."""
        self.ops.close()
        self.telemetry.close()
        self.backend.close()
