"""The model credentials the agents' claude CLI uses, as Claude Code users hold them.

``[credentials] kind`` chooses one:

- ``api_key``: an Anthropic API key, handed to the CLI as ``ANTHROPIC_API_KEY``;
- ``oauth_token``: a subscription token from ``claude setup-token``, handed to the CLI as
  ``CLAUDE_CODE_OAUTH_TOKEN``;
- ``bedrock``: Amazon Bedrock (``CLAUDE_CODE_USE_BEDROCK=1`` plus the AWS settings:
  ``AWS_REGION``, ``AWS_PROFILE`` or ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``…);
- ``vertex``: Google Vertex AI (``CLAUDE_CODE_USE_VERTEX=1`` plus ``CLOUD_ML_REGION``,
  ``ANTHROPIC_VERTEX_PROJECT_ID``, ``GOOGLE_APPLICATION_CREDENTIALS``…).

Where the hive reads them (``[credentials] file`` or ``env``; see :class:`~hive_actors.config.
CredentialsConfig`) is read once, when the hive starts: a missing or empty one is a start-up
error naming the file or the variable and the kind — never the value. The values are handed to
the CLI only in each turn's own environment (:func:`hive_actors.harness.claude.build_env`):
not to the hive's other children (the container's keeper, the agent's terminal shell), not in
an argv, not in a log line, an error message or a ``repr`` (:class:`Secret`).
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from hive_actors.errors import ConfigError

if TYPE_CHECKING:
    from hive_actors.config import HiveConfig

__all__ = [
    "DEFAULT_BASE_URL",
    "KINDS",
    "Credentials",
    "Secret",
    "given_api_key",
    "load_credentials",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.anthropic.com"
"""The CLI's own API endpoint: ``ANTHROPIC_BASE_URL`` when ``[model] base_url`` is empty."""

KINDS = ("api_key", "oauth_token", "bedrock", "vertex")

_SECRET_VAR = {"api_key": "ANTHROPIC_API_KEY", "oauth_token": "CLAUDE_CODE_OAUTH_TOKEN"}
"""The variable the CLI reads each single-secret kind from."""
_SWITCH = {"bedrock": "CLAUDE_CODE_USE_BEDROCK", "vertex": "CLAUDE_CODE_USE_VERTEX"}
"""The switch that turns each cloud provider on in the CLI."""
_PROVIDER_VARS = {
    "bedrock": re.compile(
        r"AWS_[A-Z0-9_]+|ANTHROPIC_BEDROCK_[A-Z0-9_]+|CLAUDE_CODE_SKIP_BEDROCK_AUTH"
        r"|ANTHROPIC_(DEFAULT_[A-Z0-9_]+_MODEL|MODEL|SMALL_FAST_MODEL)"
    ),
    "vertex": re.compile(
        r"CLOUD_ML_REGION|VERTEX_REGION_[A-Z0-9_]+|ANTHROPIC_VERTEX_[A-Z0-9_]+"
        r"|GOOGLE_[A-Z0-9_]+|CLAUDE_CODE_SKIP_VERTEX_AUTH"
        r"|ANTHROPIC_(DEFAULT_[A-Z0-9_]+_MODEL|MODEL|SMALL_FAST_MODEL)"
    ),
}
"""The variables a cloud provider's settings may set (nothing of the agent's own environment:
``HOME``, ``PATH``, ``CLAUDE_CONFIG_DIR``… stay the hive's)."""
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_SECRET_BYTES = 64 * 1024


class Secret(str):
    """A credential's value: a ``str`` whose ``repr`` never shows it (so a TurnRequest, the
    runtime or a traceback's locals can be printed without leaking it)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'<secret>'"


@dataclass(frozen=True)
class Credentials:
    """The credentials read at start: what each turn's environment gets."""

    kind: str
    """One of :data:`KINDS`."""
    source: str
    """Where they were read from (``file '/run/secrets/anthropic'``, ``env ANTHROPIC_API_KEY``):
    for messages; never the value."""
    api_key: Secret | None = field(default=None, repr=False)
    """``ANTHROPIC_API_KEY`` (kind ``api_key``)."""
    env: Mapping[str, Secret] = field(default_factory=dict, repr=False)
    """The other variables of a turn's environment (the OAuth token, a provider's settings)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))

    def describe(self) -> str:
        """One line for the operator: the kind and where it comes from (never the value)."""
        names = ", ".join(sorted(self.env)) if self.env else "ANTHROPIC_API_KEY"
        return f"{self.kind} from {self.source} (the agents' CLI gets {names})"


def given_api_key(key: str, *, source: str = "the caller") -> Credentials:
    """An API key handed over in code (the demo's loopback key, tests)."""
    return Credentials("api_key", source, api_key=Secret(key))


def load_credentials(config: HiveConfig, environ: Mapping[str, str] | None = None) -> Credentials:
    """Read the credentials ``config`` names (``[credentials]``; by default the API key from
    ``[model] api_key_env``). ConfigError naming the kind and the file or variable when one is
    missing, empty or unreadable — never the value."""
    environ = os.environ if environ is None else environ
    creds = config.credentials
    kind = creds.kind
    src = f"{config.source}: [credentials] kind = {kind!r}"
    if kind in _SECRET_VAR:
        if creds.file:
            value = _read_secret_file(Path(creds.file).expanduser(), src)
            where = f"file '{creds.file}'"
        else:
            name = creds.env or (config.model.api_key_env if kind == "api_key"
                                 else _SECRET_VAR[kind])
            value = _read_secret_env(name, environ, src, kind)
            where = f"env {name}"
        if kind == "api_key":
            return Credentials(kind, where, api_key=Secret(value))
        return Credentials(kind, where, env={_SECRET_VAR[kind]: Secret(value)})
    return _provider(config, environ, src)


def _fix(kind: str) -> str:
    if kind == "oauth_token":
        return ("run 'claude setup-token' and store the token it prints there "
                "(or set [credentials] file/env)")
    return "store your Anthropic API key there (or set [credentials] file/env)"


def _read_secret_env(name: str, environ: Mapping[str, str], src: str, kind: str) -> str:
    value = environ.get(name)
    if value is None:
        raise ConfigError(f"{src}: the environment variable {name} is not set: {_fix(kind)}")
    value = value.strip()
    if not value:
        raise ConfigError(f"{src}: the environment variable {name} is empty: {_fix(kind)}")
    return value


def _read_secret_file(path: Path, src: str, *, what: str = "credentials file") -> str:
    """The stripped text of ``path`` (a warning when group or others may read it)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{src}: the {what} '{path}' does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{src}: cannot read the {what} '{path}': {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{src}: the {what} '{path}' is not a regular file")
    if st.st_size > _MAX_SECRET_BYTES:
        raise ConfigError(f"{src}: the {what} '{path}' is {st.st_size} bytes, over "
                          f"{_MAX_SECRET_BYTES}: is it the right file?")
    if st.st_mode & 0o077:
        log.warning("%s: the %s '%s' is mode %04o: group or others may read it; "
                    "chmod 600 it", src, what, path, stat.S_IMODE(st.st_mode))
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{src}: cannot read the {what} '{path}': {exc.strerror}") from None
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{src}: the {what} '{path}' is not UTF-8 text") from None
    if not text:
        raise ConfigError(f"{src}: the {what} '{path}' is empty")
    if "\0" in text or (what == "credentials file" and "\n" in text):
        raise ConfigError(f"{src}: the {what} '{path}' holds more than one line: it should "
                          "hold the secret alone")
    return text


def _env_file(path: Path, src: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments, an optional ``export``, quotes stripped)."""
    text = _read_secret_file(path, src, what="environment file")
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not _ENV_NAME.fullmatch(name):
            raise ConfigError(f"{src}: the environment file '{path}' line {number} is not "
                              "NAME=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    return values


def _provider(config: HiveConfig, environ: Mapping[str, str], src: str) -> Credentials:
    """A cloud provider's settings: from the env-file ``file`` and the variables ``env`` names."""
    creds = config.credentials
    kind = creds.kind
    allowed = _PROVIDER_VARS[kind]
    values: dict[str, str] = {}
    sources: list[str] = []
    if creds.file:
        path = Path(creds.file).expanduser()
        values.update(_env_file(path, src))
        sources.append(f"file '{creds.file}'")
    names = [n.strip() for n in creds.env.split(",") if n.strip()]
    for name in names:
        if name not in environ:
            raise ConfigError(f"{src}: the environment variable {name} ([credentials] env) is "
                              "not set")
        values[name] = environ[name].strip()
    if names:
        sources.append(f"env {', '.join(names)}")
    if not sources:
        raise ConfigError(f"{src}: name where the {kind} settings are: [credentials] file (an "
                          "environment file of NAME=VALUE lines) and/or env (the names of "
                          "variables of the hive's environment, comma-separated)")
    where = " and ".join(sources)
    for name, value in values.items():
        if not allowed.fullmatch(name):
            raise ConfigError(f"{src}: {name} (in {where}) is not a {kind} setting of the "
                              f"claude CLI; the agents' own environment stays the hive's")
        if not value:
            raise ConfigError(f"{src}: {name} (in {where}) is empty")
    _check_provider(kind, values, src, where)
    env = {name: Secret(value) for name, value in values.items()}
    env[_SWITCH[kind]] = Secret("1")
    return Credentials(kind, where, env=env)


def _check_provider(kind: str, values: Mapping[str, str], src: str, where: str) -> None:
    """What the CLI cannot run without, said at start instead of at the first turn."""
    def need(*names: str, why: str) -> None:
        if not any(n in values for n in names):
            raise ConfigError(f"{src}: {' or '.join(names)} is missing from {where}: {why}")

    if kind == "bedrock":
        need("AWS_REGION", "AWS_DEFAULT_REGION", why="the Bedrock region the CLI calls")
        if ("AWS_ACCESS_KEY_ID" in values) != ("AWS_SECRET_ACCESS_KEY" in values):
            raise ConfigError(f"{src}: {where} sets one of AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY without the other")
        if "AWS_PROFILE" in values:
            need("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
                 why="AWS_PROFILE is looked up in them, and an agent's HOME is its own (no "
                 "~/.aws)")
    else:
        need("CLOUD_ML_REGION", why="the Vertex AI region the CLI calls")
        need("ANTHROPIC_VERTEX_PROJECT_ID", why="the Google Cloud project the CLI bills")
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "GOOGLE_APPLICATION_CREDENTIALS"):
        if name in values and not Path(values[name]).is_file():
            raise ConfigError(f"{src}: {name} (in {where}) names '{values[name]}', which is not "
                              "a file")
