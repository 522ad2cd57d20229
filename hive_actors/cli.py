"""The ``hive`` command: ``main(argv) -> int``, tested in-process.

Usage errors print ``Error: …`` and a hint on stderr and exit 2, as does a demo backend this
host cannot run (one line naming what to install or enable); a hive that stops on its own
(its root supervisor gave up) exits 1 with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn, TextIO

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
        default="./hive-state",
        help="where the hive keeps its files (default: ./hive-state)",
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
    return parser


def _print_token(config: HiveConfig, out: TextIO) -> int:
    """Print the operator token of the hive ``config`` describes (never creates one)."""
    from hive_actors.httpd.security import operator_token_file, read_operator_token

    print(read_operator_token(operator_token_file(config.state_dir, config.web.token_file)).value,
          file=out)
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
    try:
        if args.command == "tree":
            overrides = {} if args.state_dir is None else {"state_dir": args.state_dir}
            return _run_tree(load_config(args.config, **overrides), out)
        if args.command == "token":
            overrides = {} if args.state_dir is None else {"state_dir": args.state_dir}
            return _print_token(load_config(args.config, **overrides), out)
        if args.command == "serve":
            return _serve(load_config(args.config), out, err, stop)
        from hive_actors.demo import DemoOptions, DemoRefused, check_backend, run_demo

        try:
            check_backend(args.backend)  # before anything starts
        except DemoRefused as exc:
            print(f"Error: {exc}", file=err)
            return 2
        stop = stop or threading.Event()
        opts = DemoOptions(Path(args.state_dir), port=args.port, check=args.check,
                           backend=args.backend)
        if args.check:
            return run_demo(opts, out, err, stop)
        with _stop_on_signals(stop):
            return run_demo(opts, out, err, stop)
    except HiveError as exc:
        print(f"Error: {exc}", file=err)
        return 1


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
