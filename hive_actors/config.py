"""The hive's configuration (``hive.toml``), validated when it is read.

Every section and key has a default, so an empty file is a valid (local, loopback-only) hive.
A bad value is refused with the file, the key, the bad value and what is allowed::

    Error: hive.toml: [web] port = 70000 is out of range: use 0..65535 (0 picks a free port)

Sections: ``[hive]`` (state directory, container backend), ``[store]``, ``[web]``, ``[model]``
(where the agents' claude CLI sends its requests), ``[credentials]`` (the API key, subscription
token or cloud provider the CLI uses: :mod:`hive_actors.credentials`), ``[supervision]``
(agent restart limits and backoff), ``[watcher]`` (the D-Bus crash watcher), ``[nspawn]`` (the nspawn backend),
``[nixos]`` (the nixos backend), ``[process]`` (the process backend).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hive_actors.containers.nixconf import check_private_users as check_nixos_users
from hive_actors.containers.nspawnconf import (
    check_mode,
    check_network,
    check_private_users,
    loopback_endpoint,
)
from hive_actors.containers.registry import backend_kind
from hive_actors.credentials import KINDS
from hive_actors.errors import ConfigError

if TYPE_CHECKING:
    from hive_actors.store.prune import RetentionLimits

__all__ = [
    "CredentialsConfig",
    "HiveConfig",
    "ModelConfig",
    "NixosConfig",
    "NspawnConfig",
    "StoreConfig",
    "SupervisionConfig",
    "WatcherConfig",
    "WebConfig",
    "load_config",
]


@dataclass(frozen=True)
class StoreConfig:
    path: str = ""
    """The sqlite file; empty: ``<state_dir>/hive.db``."""
    busy_timeout_ms: int = 5000
    """How long a write waits for another connection's lock before it is an error."""
    max_body_bytes: int = 64 * 1024
    """The largest message body the bus accepts, in UTF-8 bytes."""
    retention_days: float = 30.0
    """Events, delivered and stale messages, decided approvals and answered questions older
    than this many days are pruned (0: kept whatever their age). Open mail, pending
    approvals and unanswered questions are never pruned."""
    max_events: int = 1_000_000
    """The events log keeps at most the newest this many events (0: no cap)."""
    max_messages: int = 200_000
    """Closed messages older than the newest this many are pruned (0: no cap)."""
    prune_batch: int = 500
    """Rows deleted per pruning step (each step is its own short transaction)."""
    prune_interval: float = 60.0
    """Seconds between pruning runs."""

    def retention(self) -> RetentionLimits:
        """The pruning limits these keys set (validated: ConfigError)."""
        from hive_actors.store.prune import RetentionLimits

        return RetentionLimits(
            retention_days=self.retention_days,
            max_events=self.max_events,
            max_messages=self.max_messages,
            prune_batch=self.prune_batch,
            prune_interval=self.prune_interval,
        )


_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


@dataclass(frozen=True)
class WebConfig:
    host: str = "127.0.0.1"
    """Where the dashboard listens (loopback by default; the operator token is required on
    every bind)."""
    port: int = 8000
    """The dashboard's port (0 picks a free one)."""
    agent_port_base: int = 8100
    """Agents' pages get ports hashed into [base, base + span)."""
    agent_port_span: int = 900
    metrics_port: int = 0
    """A separate port for ``/metrics`` (0: only on the dashboard's port)."""
    allowed_hosts: str = ""
    """Host names the dashboard and agent pages answer to besides loopback ones, comma-separated
    (e.g. the public name a TLS reverse proxy passes on as ``Host``). Empty: loopback names on a
    loopback bind, any name on another bind."""
    token_file: str = ""
    """The operator token's file (relative to the state dir; empty: ``operator-token`` there).
    Generated 0600 on first start; ``hive token`` prints it."""
    metrics_token_file: str = ""
    """A file holding the bearer token ``GET /metrics`` requires (generated 0600 on first use;
    Prometheus sends it with ``authorization: credentials_file:``). Empty: on a non-loopback
    bind ``/metrics`` requires the operator token; on a loopback bind no token."""
    max_body_bytes: int = 1024 * 1024
    """The largest HTTP request body accepted."""
    root: str = ""
    """The folder of the operator's pages; empty: the copy inside the installed package
    (``hive_actors/webroot``), else the checkout's ``web/``."""
    action_timeout: float = 30.0
    """Deadline of one API request's work (an actor call, a read), in seconds."""

    def host_names(self) -> frozenset[str] | None:
        """``allowed_hosts`` as lower-case names (None when empty); ConfigError for a value
        that is not a host name."""
        names = [n.strip().lower().rstrip(".") for n in self.allowed_hosts.split(",")]
        names = [n for n in names if n]
        for name in names:
            if not _HOST_NAME.fullmatch(name):
                raise ConfigError(
                    f"[web] allowed_hosts: {name!r} is not a host name; list names like "
                    '"hive.example.org, hive.lan" (no scheme, port or path)'
                )
        return frozenset(names) or None


@dataclass(frozen=True)
class ModelConfig:
    base_url: str = ""
    """ANTHROPIC_BASE_URL for the agents' CLI; empty: the CLI's default."""
    api_key_env: str = "ANTHROPIC_API_KEY"
    """The environment variable holding the API key handed to the CLI."""
    default: str = "sonnet"
    """The model an agent uses unless its config or the operator says otherwise."""
    claude_path: str = ""
    """The claude CLI; empty: the one bundled with claude-agent-sdk."""


@dataclass(frozen=True)
class CredentialsConfig:
    """What the agents' claude CLI authenticates with, read when the hive starts (a missing or
    empty one is a start-up error naming the file or variable) and handed to the CLI only in
    each turn's environment (:mod:`hive_actors.credentials`)."""

    kind: str = "api_key"
    """``api_key`` (``ANTHROPIC_API_KEY``), ``oauth_token`` (a subscription token from ``claude
    setup-token``: ``CLAUDE_CODE_OAUTH_TOKEN``), ``bedrock`` (Amazon Bedrock) or ``vertex``
    (Google Vertex AI)."""
    file: str = ""
    """api_key, oauth_token: a file holding the secret alone (0600; a warning when group or
    others may read it). bedrock, vertex: an environment file of ``NAME=VALUE`` lines (the
    provider's settings: ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``…; ``CLOUD_ML_REGION``,
    ``ANTHROPIC_VERTEX_PROJECT_ID``…)."""
    env: str = ""
    """api_key, oauth_token (when ``file`` is empty): the hive's environment variable holding
    the secret; empty: ``[model] api_key_env`` for an API key, ``CLAUDE_CODE_OAUTH_TOKEN`` for a
    token. bedrock, vertex: names of the hive's environment variables to hand on,
    comma-separated (``"AWS_REGION, AWS_PROFILE, AWS_CONFIG_FILE"``)."""


@dataclass(frozen=True)
class SupervisionConfig:
    agent_restarts: int = 5
    """An agent crashing more than this many times …"""
    agent_period: float = 60.0
    """… within this many seconds is given up until the operator acts."""
    agent_max_consecutive_failures: int = 10
    """An agent that fails (to start, or crashes) this many times in a row — never up for
    ``stable_after`` seconds between them — is given up too, whatever the timing: the window
    above never fills once the backoff has grown past ``agent_period``."""
    backoff_min: float = 1.0
    backoff_max: float = 60.0
    backoff_factor: float = 2.0
    backoff_jitter: float = 0.2
    stable_after: float = 120.0
    """Seconds up after which an agent's backoff starts over."""
    turn_deadline: float = 1800.0
    """A turn running longer is interrupted and counted as a timeout (and a stall)."""
    heartbeat_timeout: float = 300.0
    """No heartbeat from a busy agent's harness for this long is a stall."""
    revive_needs_approval: bool = False
    """The manager's ``revive`` of a given-up agent goes through the approval queue (the
    operator decides in the dashboard) instead of being carried out at once."""


@dataclass(frozen=True)
class WatcherConfig:
    bus_address: str = ""
    """The D-Bus to watch ``container@*.service`` on; empty: the system bus."""
    rescan_interval: float = 300.0
    """The slow safety-net rescan, in seconds."""


@dataclass(frozen=True)
class NspawnConfig:
    private_users: str = "pick"
    """``systemd-nspawn --private-users=``: ``pick`` (an unprivileged host range per container)
    or ``BASE[:SIZE]``; ``no``, ``identity`` or a range from 0 (the host's root) are refused
    unless ``unsafe_agents_run_as_host_root`` is true."""
    unsafe_agents_run_as_host_root: bool = False
    """The explicit override that lets ``private_users`` run agents as the host's root."""
    start_timeout: float = 30.0
    """Seconds a container has to come up (its leader's ready line) before its start fails."""
    mode: str = "auto"
    """``unit``: each container is a transient ``hive-agent@<name>.service`` asked of systemd
    over D-Bus (its crashes read by the crash watcher); ``child``: the hive's child process;
    ``auto``: ``unit`` when systemd is PID 1 (``/run/systemd/system`` exists), else ``child``."""
    bus_address: str = ""
    """Unit mode: the D-Bus address of the systemd to ask (empty: the system bus). The crash
    watcher reads the units there too unless ``[watcher] bus_address`` says otherwise."""
    network: str = "host"
    """``host``: the containers share the host's network. ``private``: each its own network
    namespace with only its loopback, where the hive relays exactly the hive's MCP endpoint
    and the model API (both must be loopback URLs: ``[model] base_url`` and ``[web] host``);
    child mode only for now."""


@dataclass(frozen=True)
class NixosConfig:
    private_users: str = "pick"
    """The containers' ``PRIVATE_USERS`` (``systemd-nspawn --private-users=``): ``pick`` (an
    unprivileged host range per container) or ``BASE[:SIZE]``; ``no``, ``identity`` or a range
    from 0 (the host's root) are refused unless ``unsafe_agents_run_as_host_root`` is true."""
    unsafe_agents_run_as_host_root: bool = False
    """The explicit override that lets ``private_users`` run agents as the host's root."""


@dataclass(frozen=True)
class ProcessConfig:
    isolate: str = "auto"
    """Each agent under a uid of its own (the hive must run as root): ``on``; ``off`` (agents
    run as the hive's user: development only); ``auto``: on when the hive runs as root and its
    Python prefix (with the bundled claude CLI) is reachable by an unprivileged uid, else off
    with a warning at start."""
    uid_base: int = 200000
    """Agents get uids ``uid_base + 1``, ``+ 2``… (recorded per agent, stable across restarts);
    ``uid_base`` itself is the group that may search the state dir."""


@dataclass(frozen=True)
class HiveConfig:
    state_dir: str = "./hive-state"
    """Root of the hive's files: the db, each agent's directories."""
    backend: str = "process"
    """Container backend: ``process`` (this host), ``nspawn`` (an unprivileged
    systemd-nspawn container per agent) or ``nixos`` (nixos-container)."""
    source: str = "<defaults>"
    """Where this configuration was read from (for error messages)."""
    store: StoreConfig = field(default_factory=StoreConfig)
    web: WebConfig = field(default_factory=WebConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    credentials: CredentialsConfig = field(default_factory=CredentialsConfig)
    supervision: SupervisionConfig = field(default_factory=SupervisionConfig)
    watcher: WatcherConfig = field(default_factory=WatcherConfig)
    nspawn: NspawnConfig = field(default_factory=NspawnConfig)
    nixos: NixosConfig = field(default_factory=NixosConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)

    @property
    def db_path(self) -> Path:
        return Path(self.store.path) if self.store.path else Path(self.state_dir) / "hive.db"


_SECTIONS: dict[str, type[Any]] = {
    "store": StoreConfig,
    "web": WebConfig,
    "model": ModelConfig,
    "credentials": CredentialsConfig,
    "supervision": SupervisionConfig,
    "watcher": WatcherConfig,
    "nspawn": NspawnConfig,
    "nixos": NixosConfig,
    "process": ProcessConfig,
}
_TOP = {"state_dir": str, "backend": str}


def _check_type(src: str, where: str, key: str, value: Any, want: Any) -> Any:
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
    if not ok:
        name = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}
        raise ConfigError(
            f"{src}: [{where}] {key} = {value!r} must be {name.get(want, want.__name__)}"
        )
    return value


def _section(src: str, name: str, cls: type[Any], raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: [{name}] must be a table of keys, got {raw!r}")
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(
                f"{src}: [{name}] has no key {key!r}; known keys: {', '.join(sorted(known))}"
            )
        want = {"str": str, "int": int, "float": float, "bool": bool}[str(known[key].type)]
        values[key] = _check_type(src, name, key, value, want)
    return cls(**values)


def _validate(cfg: HiveConfig) -> None:
    src = cfg.source
    backend_kind(cfg.backend, source=src)
    for key in ("port", "metrics_port"):
        port = getattr(cfg.web, key)
        if not 0 <= port <= 65535:
            raise ConfigError(
                f"{src}: [web] {key} = {port} is out of range: use 0..65535 (0 picks a free port)"
            )
    try:
        cfg.web.host_names()
    except ConfigError as exc:
        raise ConfigError(f"{src}: {exc}") from None
    base, span = cfg.web.agent_port_base, cfg.web.agent_port_span
    if not (1024 <= base and span >= 1 and base + span <= 65536):
        raise ConfigError(
            f"{src}: [web] agent_port_base = {base}, agent_port_span = {span} must fit in "
            "1024..65535"
        )
    positive = {
        ("store", "busy_timeout_ms"): cfg.store.busy_timeout_ms,
        ("store", "max_body_bytes"): cfg.store.max_body_bytes,
        ("web", "max_body_bytes"): cfg.web.max_body_bytes,
        ("supervision", "agent_period"): cfg.supervision.agent_period,
        ("supervision", "turn_deadline"): cfg.supervision.turn_deadline,
        ("supervision", "heartbeat_timeout"): cfg.supervision.heartbeat_timeout,
        ("supervision", "stable_after"): cfg.supervision.stable_after,
        ("watcher", "rescan_interval"): cfg.watcher.rescan_interval,
        ("nspawn", "start_timeout"): cfg.nspawn.start_timeout,
    }
    for (section, key), value in positive.items():
        if value <= 0:
            raise ConfigError(f"{src}: [{section}] {key} = {value} must be greater than 0")
    check_private_users(
        cfg.nspawn.private_users, cfg.nspawn.unsafe_agents_run_as_host_root, source=src
    )
    check_mode(cfg.nspawn.mode, source=src)
    check_nixos_users(
        cfg.nixos.private_users, cfg.nixos.unsafe_agents_run_as_host_root, source=src
    )
    if cfg.process.isolate not in ("auto", "on", "off"):
        raise ConfigError(
            f'{src}: [process] isolate = {cfg.process.isolate!r} is not one of "auto", "on", '
            '"off"'
        )
    if not 1000 <= cfg.process.uid_base < 2**31 - 2**20:
        raise ConfigError(
            f"{src}: [process] uid_base = {cfg.process.uid_base} must be from 1000 below "
            "2^31 - 2^20 (agents get the uids above it)"
        )
    check_network(cfg.nspawn.network, source=src)
    _check_credentials(cfg)
    if cfg.backend == "nspawn" and cfg.nspawn.network == "private":
        _check_private_network(cfg)
    try:
        cfg.store.retention()
    except ConfigError as exc:
        raise ConfigError(f"{src}: {exc}") from None
    if cfg.supervision.agent_restarts < 0:
        raise ConfigError(
            f"{src}: [supervision] agent_restarts = {cfg.supervision.agent_restarts} must be >= 0"
        )
    if cfg.supervision.agent_max_consecutive_failures < 1:
        raise ConfigError(
            f"{src}: [supervision] agent_max_consecutive_failures = "
            f"{cfg.supervision.agent_max_consecutive_failures} must be >= 1 (the most failures "
            "in a row before an agent is given up)"
        )


def _check_credentials(cfg: HiveConfig) -> None:
    """The shape of ``[credentials]`` (the values themselves are read when the hive starts)."""
    src, creds = cfg.source, cfg.credentials
    if creds.kind not in KINDS:
        raise ConfigError(
            f"{src}: [credentials] kind = {creds.kind!r} is not one of "
            f"{', '.join(repr(k) for k in KINDS)}"
        )
    if creds.kind in ("api_key", "oauth_token"):
        if creds.file and creds.env:
            raise ConfigError(
                f"{src}: [credentials] sets both file and env for kind = {creds.kind!r}: "
                "choose where the secret is read from"
            )
        if creds.env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", creds.env):
            raise ConfigError(
                f"{src}: [credentials] env = {creds.env!r} is not an environment variable name"
            )
    else:
        for name in (n.strip() for n in creds.env.split(",")):
            if name and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ConfigError(
                    f"{src}: [credentials] env: {name!r} is not an environment variable name "
                    "(list names, comma-separated)"
                )


def _check_private_network(cfg: HiveConfig) -> None:
    """A private network reaches only loopback endpoints (relayed from the host), in child
    mode: the model API, the dashboard's MCP endpoint and the mode say so up front."""
    src = cfg.source
    if not cfg.model.base_url:
        raise ConfigError(
            f'{src}: [nspawn] network = "private" needs [model] base_url to be a loopback URL '
            "(http://127.0.0.1:PORT): the CLI's default, the public API, is not reachable from "
            "a private network for now; run a local proxy of the API and point base_url at it, "
            'or use network = "host"'
        )
    loopback_endpoint(cfg.model.base_url, what=f"{src}: [model] base_url")
    host = cfg.web.host
    loopback_endpoint(f"http://[{host}]/" if ":" in host else f"http://{host}/",
                      what=f"{src}: [web] host (where the agents' MCP endpoint is)")
    if cfg.nspawn.mode == "unit":
        raise ConfigError(
            f'{src}: [nspawn] network = "private" runs in child mode only for now: set '
            '[nspawn] mode = "child" (or "auto" on a host without systemd), or network = "host"'
        )


def load_config(path: str | Path | None = None, **overrides: Any) -> HiveConfig:
    """Read ``path`` (None: the defaults), apply ``overrides`` (top-level keys), validate."""
    if path is None:
        overrides = dict(overrides)
        _absolute_state_dir(overrides)
        cfg = HiveConfig(**overrides)
        _validate(cfg)
        return cfg
    src = str(path)
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{src}: no such file; pass --config with an existing hive.toml") from None
    except OSError as exc:
        raise ConfigError(f"{src}: cannot read it: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{src}: not valid TOML: {exc}") from exc
    values: dict[str, Any] = {"source": src}
    for key, value in raw.items():
        if key == "hive":
            if not isinstance(value, dict):
                raise ConfigError(f"{src}: [hive] must be a table of keys")
            for hkey, hval in value.items():
                if hkey not in _TOP:
                    raise ConfigError(
                        f"{src}: [hive] has no key {hkey!r}; known keys: {', '.join(sorted(_TOP))}"
                    )
                values[hkey] = _check_type(src, "hive", hkey, hval, _TOP[hkey])
        elif key in _SECTIONS:
            values[key] = _section(src, key, _SECTIONS[key], value)
        else:
            known = ", ".join(["hive", *_SECTIONS])
            raise ConfigError(f"{src}: unknown section [{key}]; known sections: {known}")
    values.update(overrides)
    values.setdefault("state_dir", HiveConfig.state_dir)
    _absolute_state_dir(values)
    cfg = HiveConfig(**values)
    _validate(cfg)
    return cfg


def _absolute_state_dir(values: dict[str, Any]) -> None:
    """A state dir given relative is taken from the current directory, once, here: the hive,
    its agents and the CLI they run (whose working directory is elsewhere) see it absolute."""
    state_dir = values.get("state_dir")
    if isinstance(state_dir, str) and state_dir:
        values["state_dir"] = os.path.abspath(os.path.expanduser(state_dir))
