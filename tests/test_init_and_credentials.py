"""A real hive from scratch: ``hive init`` creates the manager, ``hive serve`` runs it, and the
credentials (an API key, a ``claude setup-token`` token, Bedrock or Vertex settings) reach the
CLI in each turn's environment only — not an argv, a log line, the keeper or the agent's
terminal shell — and a missing or empty one is a start-up error naming it.

The real claude CLI runs against the loopback model server, which records each request's
``x-api-key``/``authorization`` headers; Bedrock and Vertex would call AWS/GCP, so for them the
rendered turn environment (``build_env``) and the start-up checks are what is tested.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Self

import httpx
import pytest

from hive_actors.cli import main
from hive_actors.config import load_config
from hive_actors.credentials import Secret, load_credentials
from hive_actors.daemon import Daemon
from hive_actors.errors import ConfigError
from hive_actors.harness.claude import TurnRequest, build_argv, build_env
from hive_actors.modelserver import ModelServer
from hive_actors.store import AgentState, Role
from tests.support.daemon import wait_until
from tests.support.streams import Watched
from tests.support.timeout import TIMEOUT

API_KEY = "sk-ant-api03-hive-test-" + uuid.uuid4().hex
OAUTH_TOKEN = "sk-ant-oat01-hive-test-" + uuid.uuid4().hex
MODEL = "claude-manager-test"
REPO = Path(__file__).resolve().parents[1]


class HeaderModel(ModelServer):
    """The loopback model server, keeping each request's credential headers."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[dict[str, str]] = []

    def _record(self, handler: Any, body: Mapping[str, Any], **kw: Any) -> None:
        self.headers.append({k.lower(): v for k, v in handler.headers.items()
                             if k.lower() in ("x-api-key", "authorization")})
        super()._record(handler, body, **kw)


def run(*argv: str, stop: threading.Event | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err, stop=stop)
    return code, out.getvalue(), err.getvalue()


def write_config(tmp_path: Path, model_url: str, credentials: str) -> Path:
    cfg = tmp_path / "hive.toml"
    cfg.write_text(f'[hive]\nstate_dir = "{tmp_path / "state"}"\n'
                   f'[web]\nport = 0\n'
                   f'[model]\nbase_url = "{model_url}"\ndefault = "claude-default-test"\n'
                   f"[credentials]\n{credentials}\n")
    return cfg


def secret_file(tmp_path: Path, value: str, mode: int = 0o600) -> Path:
    path = tmp_path / "secret"
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


@contextlib.contextmanager
def serving(cfg: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """``hive serve --config cfg`` in-process until the block ends: (base URL, auth header)."""
    stop = threading.Event()
    out = Watched("log in    http://")
    codes: list[int] = []
    t = threading.Thread(target=lambda: codes.append(
        main(["serve", "--config", str(cfg)], out=out, err=io.StringIO(), stop=stop)))
    t.start()
    try:
        assert out.seen.wait(TIMEOUT * 6), out.getvalue()
        base = out.getvalue().split("dashboard ")[1].split("/ ")[0]
        code, printed, err = run("token", "--config", str(cfg))
        assert code == 0, err
        yield base, {"authorization": f"Bearer {printed.strip()}"}
    finally:
        stop.set()
        t.join(TIMEOUT * 6)
    assert codes == [0]


def events(base: str, auth: Mapping[str, str]) -> list[dict[str, Any]]:
    return httpx.get(f"{base}/api/events", params={"since": 0, "limit": 1000}, headers=auth,
                     timeout=TIMEOUT).json()["events"]


def wait_event(base: str, auth: Mapping[str, str], kind: str, agent: str,
               timeout: float = TIMEOUT * 9) -> dict[str, Any]:
    found: dict[str, Any] = wait_until(
        lambda: next((e for e in events(base, auth)
                      if e["kind"] == kind and e["agent"] == agent), None),
        timeout, f"a {kind} event of {agent}",
        describe=lambda: str([e["kind"] for e in events(base, auth)]))
    return found


def agent_row(base: str, auth: Mapping[str, str], name: str) -> dict[str, Any]:
    state = httpx.get(f"{base}/api/state", headers=auth, timeout=TIMEOUT).json()
    return next(a for a in state["agents"] if a["name"] == name)


class ArgvScan:
    """Reads every process's argv (and notes the CLI's) until stopped."""

    def __init__(self, *needles: str) -> None:
        self.needles = needles
        self.found: list[str] = []
        self.saw_cli = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    argv = (proc / "cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if "stream-json" in argv and "--model" in argv:
                    self.saw_cli = True
                self.found += [n for n in self.needles if n in argv]
            self._stop.wait(0.02)  # the next sample (ends at once when stopped)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode(errors="replace").partition("=")[::2] for e in raw if e)


def shell_environ(pid: int) -> dict[str, str]:
    """The environment of the terminal's shell ``pid`` once it is the shell (the keeper's
    tty step execs it: until then ``pid`` runs the hive's Python)."""
    def execd() -> dict[str, str] | None:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        return environ_of(pid) if comm in ("bash", "sh", "dash") else None

    env: dict[str, str] = wait_until(execd, TIMEOUT, f"pid {pid} to exec the shell",
                                     interval=0.02)
    return env


def keeper_pids(name: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"hive_actors.containers.keeper" in argv and name.encode() in argv:
            pids.append(int(proc.name))
    return pids


# -- hive init ----------------------------------------------------------------------------------


def test_init_creates_the_manager_once_and_refuses_another(tmp_path: Path) -> None:
    cfg = tmp_path / "conf" / "hive.toml"
    prompt = tmp_path / "prompt.txt"
    prompt.write_text('You run "the shop".\nBe brief.\n')
    code, out, err = run("init", "--config", str(cfg), "--model", MODEL,
                         "--prompt-file", str(prompt))
    assert code == 0, err
    # A missing hive.toml is written (with a [credentials] section to fill in).
    assert f"wrote {cfg}" in out and "[credentials]" in cfg.read_text()
    assert "manager      boss created (model claude-manager-test" in out
    assert "credentials  NOT READY" in out or "credentials  api_key" in out
    assert f"next         hive serve --config {cfg}" in out
    config = load_config(cfg)
    state = Path(config.state_dir)
    applied = (state / "agents" / "boss" / "config" / "applied" / "agent.toml").read_text()
    assert f'model = "{MODEL}"' in applied
    from hive_actors.hive import Hive
    with Hive(config).open_store() as store:
        boss = store.registry.get("boss")
        assert boss.role is Role.MANAGER and boss.state is AgentState.PENDING
    from hive_actors.agent.configs import ConfigDesk
    settings = ConfigDesk(Hive(config)).settings("boss")
    assert settings.model == MODEL and settings.system_prompt == 'You run "the shop".\nBe brief.'
    before = sorted(p.name for p in state.rglob("*"))

    # Again: the manager exists, nothing changes.
    code, out, err = run("init", "--config", str(cfg), "--model", "other-model")
    assert code == 0, err
    assert "manager      boss exists (model claude-manager-test): nothing changed" in out
    assert "--model/--prompt are for a new manager" in out
    assert f'model = "{MODEL}"' in (
        state / "agents" / "boss" / "config" / "applied" / "agent.toml").read_text()
    assert sorted(p.name for p in state.rglob("*")) == before
    # Another manager is refused, clearly.
    code, out, err = run("init", "--config", str(cfg), "--manager", "chief")
    assert code == 1 and out == ""
    assert err.strip() == ("Error: this hive's manager is boss; a hive has one manager: leave "
                           "out --manager (or pass --manager boss)")
    assert not (state / "agents" / "chief").exists()


def test_init_refuses_a_bad_prompt_before_writing_anything(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "http://127.0.0.1:9", 'kind = "api_key"')
    code, _, err = run("init", "--config", str(cfg), "--prompt", "x" * 300_000)
    assert code == 1 and "system_prompt is" in err, err
    assert not (tmp_path / "state" / "agents" / "boss").exists()
    code, _out, err = run("init", "--config", str(cfg), "--prompt", "hi", "--prompt-file", "f")
    assert code == 2 and "not allowed with argument" in err


# -- a real hive from scratch: init, serve, a message ---------------------------------------


def test_init_then_serve_the_manager_answers_and_the_key_stays_in_the_turn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with HeaderModel() as model:
        key_file = secret_file(tmp_path, API_KEY)
        cfg = write_config(tmp_path, model.url, f'kind = "api_key"\nfile = "{key_file}"')
        code, out, err = run("init", "--config", str(cfg), "--model", MODEL,
                             "--prompt", "Answer the operator.")
        assert code == 0, err
        assert f"credentials  api_key from file '{key_file}'" in out and API_KEY not in out
        with serving(cfg) as (base, auth):
            boss = agent_row(base, auth, "boss")
            assert boss["role"] == "manager"
            wait_event(base, auth, "agent.state", "boss")
            # hive init refuses to run beside the running hive (another process: its lock).
            beside = subprocess.run(
                [sys.executable, "-m", "hive_actors", "init", "--config", str(cfg)],
                capture_output=True, text=True, timeout=TIMEOUT * 3, check=False,
                env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL)
            assert beside.returncode == 1
            assert beside.stderr.strip().splitlines()[-1].startswith("Error: store: cannot open")
            assert "another hive holds it" in beside.stderr
            assert "'hive init' does not run beside a running hive" in beside.stderr

            with ArgvScan(API_KEY) as scan:
                sent = httpx.post(f"{base}/api/message", headers=auth, timeout=TIMEOUT,
                                  data={"agent": "boss", "text": "hello, who are you?"})
                assert sent.status_code == 200, sent.text
                started = wait_event(base, auth, "turn.started", "boss")
                ended = wait_event(base, auth, "turn.ended", "boss")
            assert scan.saw_cli and scan.found == []  # the key is in no argv
            assert started["payload"]["model"] == MODEL, started
            assert ended["payload"]["outcome"] == "ok", ended
            wait_until(lambda: agent_row(base, auth, "boss")["state"] == "idle", TIMEOUT * 3,
                       "boss idle", describe=lambda: str(agent_row(base, auth, "boss")))
            # The key reached the model as the CLI sends it, and only through the CLI.
            assert model.headers and all(h.get("x-api-key") == API_KEY for h in model.headers)
            assert all(r.model == MODEL for r in model.requests if r.kind != "count_tokens")
            # The keeper (the container) never had it.
            for pid in keeper_pids("boss"):
                assert API_KEY not in "".join(environ_of(pid).values())
    # Not in a log line, not in the keeper's log.
    assert API_KEY not in caplog.text
    assert "credentials: api_key from file" in caplog.text
    for log_file in (tmp_path / "state").rglob("*.log"):
        assert API_KEY not in log_file.read_text(errors="replace"), log_file


# -- each kind reaches the CLI ---------------------------------------------------------------


@contextlib.contextmanager
def running_daemon(cfg: Path) -> Iterator[Daemon]:
    from hive_actors.supervisors.root import start_root

    daemon = Daemon(load_config(cfg))
    root = None
    try:
        children, flags = daemon.tree()
        root = start_root(children, flags, name="hive", ready_timeout=TIMEOUT * 6)
        yield daemon
    finally:
        if root is not None:
            root.stop(block=True, timeout=TIMEOUT * 6)
        daemon.close()


def test_a_subscription_token_reaches_the_cli_as_a_bearer_and_not_the_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HIVE_TEST_OAUTH", OAUTH_TOKEN)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with HeaderModel() as model:
        cfg = write_config(tmp_path, model.url, 'kind = "oauth_token"\nenv = "HIVE_TEST_OAUTH"')
        assert run("init", "--config", str(cfg), "--model", MODEL)[0] == 0
        with running_daemon(cfg) as daemon:
            assert daemon.runtime.api_key is None
            assert daemon.runtime.agent_env("boss")["CLAUDE_CODE_OAUTH_TOKEN"] == OAUTH_TOKEN
            for text in (repr(daemon), repr(daemon.runtime), repr(daemon.credentials)):
                assert OAUTH_TOKEN not in text
            bus = daemon.hive.directory.get("bus")
            from hive_actors.protocol import Send
            from hive_actors.store import MessageKind
            bus.ask(Send("operator", "boss", "hello", MessageKind.OPERATOR), timeout=TIMEOUT)
            model.wait_for(lambda r: r.kind != "count_tokens" and r.model == MODEL,
                           timeout=TIMEOUT * 6)
            auth = [h for h in model.headers if h]
            assert auth and all(h == {"authorization": f"Bearer {OAUTH_TOKEN}"} for h in auth)
            # The agent's terminal shell and its keeper: the hive's environment, no token.
            pid, master = daemon.backend.pty_shell("boss")
            try:
                shell_env = shell_environ(pid)
                assert "HOME" in shell_env
                assert OAUTH_TOKEN not in "".join(shell_env.values())
                assert "CLAUDE_CODE_OAUTH_TOKEN" not in shell_env
            finally:
                os.close(master)
            keepers = keeper_pids("boss")
            assert keepers
            for kpid in keepers:
                assert OAUTH_TOKEN not in "".join(environ_of(kpid).values())


def test_an_api_key_from_the_terminal_shell_is_absent(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The default: ``[model] api_key_env``; the terminal shell does not see the key."""
    monkeypatch.setenv("HIVE_TEST_KEY", API_KEY)
    with HeaderModel() as model:
        cfg = tmp_path / "hive.toml"
        cfg.write_text(f'[hive]\nstate_dir = "{tmp_path / "state"}"\n[web]\nport = 0\n'
                       f'[model]\nbase_url = "{model.url}"\napi_key_env = "HIVE_TEST_KEY"\n')
        assert run("init", "--config", str(cfg))[0] == 0
        with running_daemon(cfg) as daemon:
            assert daemon.runtime.api_key == API_KEY and isinstance(daemon.runtime.api_key, Secret)
            def idle() -> bool:
                with daemon.hive.open_store() as store:
                    return store.registry.get("boss").state is AgentState.IDLE

            wait_until(idle, TIMEOUT * 6, "boss idle")
            pid, master = daemon.backend.pty_shell("boss")
            try:
                assert API_KEY not in "".join(shell_environ(pid).values())
            finally:
                os.close(master)


# -- the turn environment at the boundary (Bedrock, Vertex) ---------------------------------


def turn_request(env: Mapping[str, str], api_key: str | None = None) -> TurnRequest:
    return TurnRequest(prompt="hi", model=MODEL, session_id=str(uuid.uuid4()),
                       base_url="https://api.anthropic.com", api_key=api_key,
                       env={"CLAUDE_CONFIG_DIR": "/c", "HOME": "/h", **env})


def test_bedrock_settings_from_an_env_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / "bedrock.env"
    env_file.write_text("# Bedrock\nexport AWS_REGION=eu-west-1\n"
                        "AWS_ACCESS_KEY_ID=AKIAHIVETEST\nAWS_SECRET_ACCESS_KEY='sekrit/aws+key'\n")
    env_file.chmod(0o600)
    monkeypatch.setenv("ANTHROPIC_BEDROCK_BASE_URL", "https://bedrock.example")
    cfg = write_config(tmp_path, "http://127.0.0.1:9",
                       f'kind = "bedrock"\nfile = "{env_file}"\nenv = "ANTHROPIC_BEDROCK_BASE_URL"')
    creds = load_credentials(load_config(cfg))
    assert creds.kind == "bedrock" and creds.api_key is None
    assert "sekrit" not in repr(creds) and "sekrit" not in creds.describe()
    daemon = Daemon(load_config(cfg))
    try:
        turn_env = daemon.runtime.agent_env("boss")
        assert daemon.runtime.api_key is None
    finally:
        daemon.close()
    req = turn_request(turn_env)
    env = build_env(req, {"PATH": "/usr/bin", "AWS_PROFILE": "host", "ANTHROPIC_API_KEY": "host"})
    assert env["CLAUDE_CODE_USE_BEDROCK"] == "1"
    assert env["AWS_REGION"] == "eu-west-1" and env["AWS_SECRET_ACCESS_KEY"] == "sekrit/aws+key"
    assert env["ANTHROPIC_BEDROCK_BASE_URL"] == "https://bedrock.example"
    # Nothing of the host's credentials; the provider's endpoint, not the public API's.
    assert "AWS_PROFILE" not in env and "ANTHROPIC_API_KEY" not in env
    assert "ANTHROPIC_BASE_URL" not in env
    assert "sekrit" not in repr(req)
    assert not any("sekrit" in a for a in build_argv(req, "/bin/claude", None))


def test_vertex_settings_from_the_environment(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    adc = tmp_path / "adc.json"
    adc.write_text("{}")
    monkeypatch.setenv("CLOUD_ML_REGION", "us-east5")
    monkeypatch.setenv("ANTHROPIC_VERTEX_PROJECT_ID", "hive-project")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    cfg = write_config(tmp_path, "http://127.0.0.1:9",
                       'kind = "vertex"\n'
                       'env = "CLOUD_ML_REGION, ANTHROPIC_VERTEX_PROJECT_ID, '
                       'GOOGLE_APPLICATION_CREDENTIALS"')
    creds = load_credentials(load_config(cfg))
    env = build_env(turn_request(creds.env), {"PATH": "/usr/bin"})
    assert env["CLAUDE_CODE_USE_VERTEX"] == "1"
    assert (env["CLOUD_ML_REGION"], env["ANTHROPIC_VERTEX_PROJECT_ID"]) == ("us-east5",
                                                                            "hive-project")
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == str(adc)
    assert "ANTHROPIC_BASE_URL" not in env and "ANTHROPIC_API_KEY" not in env


def test_the_api_key_is_in_the_turn_env_only_and_masked_in_repr() -> None:
    req = turn_request({}, api_key=Secret(API_KEY))
    env = build_env(req, {"PATH": "/usr/bin", "ANTHROPIC_API_KEY": "the-hosts"})
    assert env["ANTHROPIC_API_KEY"] == API_KEY
    assert env["ANTHROPIC_BASE_URL"] == "https://api.anthropic.com"
    assert API_KEY not in repr(req)
    assert not any(API_KEY in a for a in build_argv(req, "/bin/claude", None))


# -- start-up errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(("credentials", "env", "message"), [
    ('kind = "api_key"\nfile = "{tmp}/nope"', {},
     "kind = 'api_key': the credentials file '{tmp}/nope' does not exist"),
    ('kind = "api_key"\nfile = "{tmp}/empty"', {},
     "kind = 'api_key': the credentials file '{tmp}/empty' is empty"),
    ('kind = "api_key"\nenv = "HIVE_TEST_UNSET"', {},
     "kind = 'api_key': the environment variable HIVE_TEST_UNSET is not set"),
    ('kind = "api_key"\nenv = "HIVE_TEST_EMPTY"', {"HIVE_TEST_EMPTY": "  "},
     "kind = 'api_key': the environment variable HIVE_TEST_EMPTY is empty"),
    ('kind = "oauth_token"', {},
     ("kind = 'oauth_token': the environment variable CLAUDE_CODE_OAUTH_TOKEN is not set: run "
     "'claude setup-token'")),
    ('kind = "bedrock"\nenv = "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY"',
     {"AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "B"},
     ("AWS_REGION or AWS_DEFAULT_REGION is missing from env AWS_ACCESS_KEY_ID, "
     "AWS_SECRET_ACCESS_KEY")),
    ('kind = "bedrock"\nenv = "AWS_REGION, AWS_PROFILE"', {"AWS_REGION": "x", "AWS_PROFILE": "p"},
     "AWS_CONFIG_FILE or AWS_SHARED_CREDENTIALS_FILE is missing"),
    ('kind = "bedrock"\nenv = "AWS_REGION, HOME"', {"AWS_REGION": "x"},
     "HOME (in env AWS_REGION, HOME) is not a bedrock setting"),
    ('kind = "vertex"\nenv = "CLOUD_ML_REGION"', {"CLOUD_ML_REGION": "r"},
     "ANTHROPIC_VERTEX_PROJECT_ID is missing"),
    ('kind = "vertex"', {}, "name where the vertex settings are"),
])
def test_a_missing_or_empty_credential_names_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, credentials: str, env: dict[str, str],
    message: str,
) -> None:
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "empty").chmod(0o600)
    for name in ("HIVE_TEST_UNSET", "CLAUDE_CODE_OAUTH_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
                 "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "ANTHROPIC_VERTEX_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = write_config(tmp_path, "http://127.0.0.1:9", credentials.format(tmp=tmp_path))
    with pytest.raises(ConfigError) as caught:
        load_credentials(load_config(cfg))
    assert message.format(tmp=tmp_path) in str(caught.value)
    assert str(caught.value).startswith(f"{cfg}: [credentials]")


def test_serve_without_its_credentials_stops_with_one_line_naming_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HIVE_TEST_UNSET", raising=False)
    cfg = write_config(tmp_path, "http://127.0.0.1:9", 'kind = "api_key"\nenv = "HIVE_TEST_UNSET"')
    assert run("init", "--config", str(cfg))[0] == 0
    code, out, err = run("serve", "--config", str(cfg), stop=threading.Event())
    # Checked before anything starts: one line, exit 2, no dashboard.
    assert code == 2 and out == "", (out, err)
    assert len(err.strip().splitlines()) == 1, err
    last = err.strip()
    assert last.startswith("Error: "), err
    assert "[credentials] kind = 'api_key': the environment variable HIVE_TEST_UNSET is not " \
           "set" in last


def test_config_refuses_a_bad_credentials_section(tmp_path: Path) -> None:
    for body, message in [
        ('kind = "password"', "[credentials] kind = 'password' is not one of 'api_key'"),
        ('file = "/x"\nenv = "Y"', "sets both file and env for kind = 'api_key'"),
        ('env = "not a name"', "[credentials] env = 'not a name' is not an environment"),
        ('token = "x"', "[credentials] has no key 'token'"),
    ]:
        cfg = write_config(tmp_path, "http://127.0.0.1:9", body)
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_config(cfg)


def test_a_secret_file_others_may_read_is_warned_about_never_shown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = secret_file(tmp_path, API_KEY, mode=0o644)
    cfg = write_config(tmp_path, "http://127.0.0.1:9", f'file = "{key_file}"')
    with caplog.at_level(logging.WARNING):
        creds = load_credentials(load_config(cfg))
    assert creds.api_key == API_KEY
    assert f"'{key_file}' is mode 0644: group or others may read it; chmod 600 it" in caplog.text
    assert API_KEY not in caplog.text and API_KEY not in repr(creds)
