"""The ``hive`` command: ``main(argv) -> int``, tested in-process.

Usage errors print ``Error: …`` and a hint on stderr and exit 2, as does a demo backend this
host cannot run (one line naming what to install or enable); a hive that stops on its own
(its root supervisor gave up) exits 1 with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn, TextIO, cast

from hive_actors import __version__
from hive_actors.config import HiveConfig, load_config
from hive_actors.containers.registry import BACKENDS
from hive_actors.errors import HiveError

__all__ = ["main"]

log = logging.getLogger(__name__)


class UsageError(Exception):
    """The command line could not be understood."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is raised for ``main`` to report, not printed and exited."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (in '{self.prog}')")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hive",
        description="Run a hive of Claude Code agents as supervised actors.",
        epilog="Run 'hive demo' for a self-contained demo hive on this machine.",
    )
    parser.add_argument("--version", action="version", version=f"hive_actors {__version__}")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="how much to log on stderr (default: info)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    demo = sub.add_parser(
        "demo",
        help="run the demo hive on this machine until Ctrl-C",
        description="Start the hive's supervision tree, print its shape, run until Ctrl-C.",
    )
    demo.add_argument(
        "--state-dir",
        default=None,
        help="where the demo keeps its files (default: ${XDG_DATA_HOME:-~/.local/share}/"
        "hive_actors/demo); a rerun continues the demo there",
    )
    demo.add_argument(
        "--fresh",
        action="store_true",
        help="delete the demo's files first and start over (only a demo's state dir)",
    )
    demo.add_argument(
        "--port", type=int, default=8000, help="the dashboard's port (default: 8000; 0: any free)"
    )
    demo.add_argument(
        "--check",
        action="store_true",
        help="run the scripted exchange to its end, report it, then stop (a smoke test)",
    )
    demo.add_argument(
        "--backend",
        default="process",
        choices=list(BACKENDS),
        help="where the agents run: process (default: process groups on this host) or nspawn "
        "(an unprivileged systemd-nspawn container each; root, systemd-container); nixos "
        "needs a NixOS host and 'hive serve'",
    )
    serve = sub.add_parser(
        "serve",
        help="run the hive described by a configuration file until stopped",
        description="Run the hive of hive.toml (real API key, chosen backend) until Ctrl-C.",
    )
    serve.add_argument("--config", required=True, help="the hive's configuration (hive.toml)")
    tree = sub.add_parser(
        "tree",
        help="print the supervision tree and exit (starts nothing, touches no file)",
        description="Print the hive's supervision tree as 'hive serve' runs it: every child "
        "with its restart type and timeouts, every supervisor with its strategy and limits. "
        "Nothing starts; the state dir is not touched (safe beside a running hive).",
    )
    tree.add_argument("--config", default=None,
                      help="the hive's configuration (hive.toml; default: the defaults)")
    tree.add_argument("--state-dir", default=None,
                      help="where the hive keeps its files (overrides the configuration's)")
    token = sub.add_parser(
        "token",
        help="print the operator token of a hive (for the login form and for scripts)",
        description="Print the operator token the hive keeps in its 0600 token file: paste it "
        "into the dashboard's /login form, or send it as 'Authorization: Bearer <token>'. "
        "Reads the file only (the hive creates it at its first start).",
    )
    where = token.add_mutually_exclusive_group()
    where.add_argument("--config", default=None, help="the hive's configuration (hive.toml)")
    where.add_argument("--state-dir", default=None,
                       help="the hive's state dir (default: the configuration's)")
    init = sub.add_parser(
        "init",
        help="create a real hive's manager (run once, before 'hive serve')",
        description="Make the hive of hive.toml ready for 'hive serve': create its state dir "
        "and register its manager with its config repository (the model and the system prompt "
        "given here; change them later as any agent's config). 'hive serve' never creates a "
        "manager: run this once first. A missing hive.toml is written with the defaults and a "
        "[credentials] section to fill in. Idempotent: run again, it says the manager exists "
        "and changes nothing. It refuses to run while the hive runs (the hive's lock). It also "
        "checks the [credentials] 'hive serve' will read (an API key, a 'claude setup-token' "
        "token, Bedrock or Vertex settings), without printing them.",
    )
    init.add_argument("--config", required=True,
                      help="the hive's configuration (hive.toml; written if missing)")
    init.add_argument("--manager", default="boss",
                      help="the manager's name (default: boss; refused if the hive has another)")
    init.add_argument("--model", default=None,
                      help="the manager's model (default: [model] default of the configuration)")
    prompt = init.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default=None,
                        help="the manager's system prompt, appended to the hive's own")
    prompt.add_argument("--prompt-file", default=None,
                        help="a UTF-8 file holding the manager's system prompt")
    return parser


def _print_token(config: HiveConfig, out: TextIO) -> int:
    """Print the operator token of the hive ``config`` describes (never creates one)."""
    from hive_actors.httpd.security import operator_token_file, read_operator_token

    print(read_operator_token(operator_token_file(config.state_dir, config.web.token_file)).value,
          file=out)
    out.flush()
    return 0


_STARTER_TOML = """\
# A hive: `hive init --config {path}` (done), then `hive serve --config {path}`.
[hive]
state_dir = {state_dir}
backend = "process"

[web]
host = "127.0.0.1"
port = 8000

[model]
default = "sonnet"

[credentials]
# One of: "api_key" (ANTHROPIC_API_KEY), "oauth_token" (a token from `claude setup-token`),
# "bedrock", "vertex". Read when the hive starts, from a 0600 file or a variable of its
# environment; handed to the agents' CLI in each turn's environment only.
kind = "api_key"
# file = "/etc/hive/anthropic-key"
env = "ANTHROPIC_API_KEY"
"""

DEFAULT_MANAGER_PROMPT = (
    "You work for the operator of this hive: answer their messages, and for larger work ask "
    "them for agents to spawn, direct those agents and report back."
)


def _init(args: argparse.Namespace, out: TextIO) -> int:
    """``hive init``: the configuration (a starter one if missing), the state dir, the manager."""
    import json

    from hive_actors.agent.configs import ConfigDesk
    from hive_actors.credentials import load_credentials
    from hive_actors.errors import ConfigError, StoreError
    from hive_actors.hive import Hive

    path = Path(args.config)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        state_dir = json.dumps(str((path.parent / "hive-state").resolve()))
        path.write_text(_STARTER_TOML.format(path=args.config, state_dir=state_dir),
                        encoding="utf-8")
        print(f"config       wrote {path} (the defaults; fill in [credentials])", file=out)
    config = load_config(path)
    if args.prompt_file is not None:
        try:
            prompt: str | None = Path(args.prompt_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--prompt-file '{args.prompt_file}': cannot read it as UTF-8 "
                              f"text: {getattr(exc, 'strerror', None) or exc}") from None
    else:
        prompt = args.prompt
    if prompt is not None and not prompt.strip():
        raise ConfigError("the manager's system prompt is empty: leave --prompt/--prompt-file "
                          "out for the default one")
    desk = ConfigDesk(Hive(config))
    try:
        done = desk.init_manager(args.manager, model=args.model,
                                 system_prompt=prompt if prompt is not None
                                 else DEFAULT_MANAGER_PROMPT)
    except StoreError as exc:
        raise StoreError(f"{exc}; 'hive init' does not run beside a running hive: stop it "
                         "first") from None
    state = Path(config.state_dir).resolve()
    if done.created:
        print(f"manager      {done.name} created (model {done.model}; its config repository "
              f"in {state}/agents/{done.name}/config)", file=out)
    else:
        print(f"manager      {done.name} exists (model {done.model}): nothing changed", file=out)
        if args.model is not None or prompt is not None:
            print("             --model/--prompt are for a new manager; change this one's "
                  "config from the dashboard (a config commit)", file=out)
    try:
        creds = load_credentials(config)
    except ConfigError as exc:
        print(f"credentials  NOT READY: {exc}", file=out)
        print("             'hive serve' refuses to start until they are", file=out)
    else:
        print(f"credentials  {creds.describe()}", file=out)
    print(f"next         hive serve --config {args.config}   then open the 'log in' link it "
          f"prints and write to {done.name}", file=out)
    out.flush()
    return 0


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None,
         err: TextIO | None = None, stop: threading.Event | None = None) -> int:
    """Run the ``hive`` command; returns the process exit status.

    ``stop`` lets an embedding caller (or a test) end a running hive as Ctrl-C would.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    parser = _parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except UsageError as exc:
        print(f"Error: {exc}", file=err)
        print("Hint: run 'hive --help' to see the commands and their options.", file=err)
        return 2
    except SystemExit as exc:  # --help and --version print and exit 0
        return int(exc.code or 0)
    if args.command is None:
        print("Error: no command given", file=err)
        print("Hint: run 'hive demo' to start the demo hive, or 'hive --help'.", file=err)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.log_level != "debug":
        _quiet_expected_tracebacks()
    try:
        if args.command == "tree":
            overrides = {} if args.state_dir is None else {"state_dir": args.state_dir}
            return _run_tree(load_config(args.config, **overrides), out)
        if args.command == "token":
            overrides = {} if args.state_dir is None else {"state_dir": args.state_dir}
            return _print_token(load_config(args.config, **overrides), out)
        if args.command == "init":
            return _init(args, out)
        from hive_actors.preflight import PreflightError

        if args.command == "serve":
            config = load_config(args.config)
            try:
                _preflight_serve(config)
            except PreflightError as exc:
                print(f"Error: {exc}", file=err)
                return 2
            return _serve(config, out, err, stop)
        from hive_actors.demo import DemoOptions, DemoRefused, check_backend, run_demo

        try:
            check_backend(args.backend)  # before anything starts
        except DemoRefused as exc:
            print(f"Error: {exc}", file=err)
            return 2
        stop = stop or threading.Event()
        opts = DemoOptions(None if args.state_dir is None else Path(args.state_dir),
                           port=args.port, check=args.check, backend=args.backend,
                           fresh=args.fresh)
        # The web server's bind error names hive.toml's key: the demo's is --port.
        phrases = {"set [web] port in hive.toml": "pass another --port (0 picks a free one)"}
        demo_err = cast(TextIO, _Rephrased(err, phrases))
        if args.log_level != "debug":
            _quiet_expected_tracebacks(phrases)
        try:
            if args.check:
                return run_demo(opts, out, demo_err, stop)
            with _stop_on_signals(stop):
                return run_demo(opts, out, demo_err, stop)
        except (PreflightError, DemoRefused) as exc:
            print(f"Error: {exc}", file=err)
            return 2
        except HiveError as exc:
            print(f"Error: {exc}", file=demo_err)
            return 1
    except HiveError as exc:
        print(f"Error: {exc}", file=err)
        return 1


def _preflight_serve(config: HiveConfig) -> None:
    """What ``hive serve`` needs (:mod:`hive_actors.preflight`), named by hive.toml's keys."""
    from hive_actors.preflight import check_credentials, preflight, serve_knobs

    preflight(config, serve_knobs(config.source))
    check_credentials(config)


class _Rephrased(io.TextIOBase):
    """A text stream that rewrites phrases before passing the text on (the demo's flags for
    the configuration keys a shared error names)."""

    def __init__(self, inner: TextIO, phrases: dict[str, str]) -> None:
        super().__init__()
        self._inner = inner
        self._phrases = phrases

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        text = s
        for old, new in self._phrases.items():
            text = text.replace(old, new)
        self._inner.write(text)
        return len(s)

    def flush(self) -> None:
        self._inner.flush()


class _NoExpectedTracebacks(logging.Formatter):
    """Log an expected error (a :class:`HiveError`: its message names the fix) as its one line,
    without the traceback; anything else keeps its traceback. ``phrases`` are rewritten (the
    demo's flags for the configuration keys a shared error names)."""

    def __init__(self, fmt: str | None, phrases: dict[str, str] | None = None) -> None:
        super().__init__(fmt)
        self.phrases = phrases or {}

    def format(self, record: logging.LogRecord) -> str:
        info = record.exc_info
        if info and isinstance(info[1], HiveError):
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None,
                                            "exc_text": None})
        text = super().format(record)
        for old, new in self.phrases.items():
            text = text.replace(old, new)
        return text


def _quiet_expected_tracebacks(phrases: dict[str, str] | None = None) -> None:
    """On the stderr handler ``logging.basicConfig`` made (no other: a test's own stay)."""
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        if type(handler) is not logging.StreamHandler or formatter is None:
            continue
        if isinstance(formatter, _NoExpectedTracebacks):
            formatter.phrases = phrases or formatter.phrases
        else:
            handler.setFormatter(_NoExpectedTracebacks(formatter._fmt, phrases))


def _run_tree(config: HiveConfig, out: TextIO) -> int:
    """Print the hive's supervision tree as the daemon defines it for ``config``.

    Nothing starts and no file is opened or created: the tree is built with starts that are
    never called (:class:`hive_actors.tree.DescribeOnly`), so it works beside a running hive.
    """
    from hive_actors.tree import DescribeOnly, hive_tree

    print(hive_tree(config, DescribeOnly()).describe("hive"), file=out)
    out.flush()
    return 0


def _serve(config: HiveConfig, out: TextIO, err: TextIO, stop: threading.Event | None) -> int:
    """Run the configured hive until ``stop`` (or SIGINT/SIGTERM)."""
    from hive_actors.daemon import Daemon
    from hive_actors.supervisors.root import run_until_stopped, start_root

    daemon = Daemon(config)
    stop = stop or threading.Event()
    # From before the tree starts: a signal during the start-up ends the hive the same way
    # (once it is up), and no process the hive starts inherits an ignored SIGINT.
    with _stop_on_signals(stop):
        try:
            children, flags = daemon.tree()
            root = start_root(children, flags, name="hive", ready_timeout=600.0)
            base = daemon.endpoints.base_url()
            print(f"dashboard {base}/  (state in {daemon.hive.state_dir.resolve()})", file=out)
            if getattr(daemon.backend, "isolated", True) is False:
                print(f"warning: {getattr(daemon.backend, 'isolation', '')}: agents can "
                      "read each other's "
                      "files (development only)", file=out)
            print(f"log in    {daemon.login_url()}  (opens one browser session, once; "
                  f"`hive token --config {config.source}` prints the operator token for the "
                  "login form and for scripts)", file=out)
            out.flush()
            return run_until_stopped(root, stop, err)
        finally:
            daemon.close()


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT (Ctrl-C) and SIGTERM set ``stop`` — the same orderly stop for both, whatever
    the hive inherited (a SIGINT ignored by a script or a CI runner included); the previous
    handlers are back on exit. Only the main thread can take signals: elsewhere, a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signums = (signal.SIGINT, signal.SIGTERM)

    def on_signal(signum: int, frame: object) -> None:
        if not stop.is_set():
            log.info("%s: stopping the hive", signal.Signals(signum).name)
        stop.set()

    before = {signum: signal.signal(signum, on_signal) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
