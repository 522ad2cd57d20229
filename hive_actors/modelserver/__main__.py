"""Run the loopback model server in the foreground: ``python -m hive_actors.modelserver``.

Prints the ``ANTHROPIC_BASE_URL`` to use and serves until interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from hive_actors.modelserver.server import ModelServer


def main(argv: list[str] | None = None) -> int:
    """Serve the directive-script model on 127.0.0.1 until SIGINT/SIGTERM; returns 0."""
    parser = argparse.ArgumentParser(prog="python -m hive_actors.modelserver", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    with ModelServer(port=args.port) as server:
        print(f"ANTHROPIC_BASE_URL={server.url}", flush=True)
        done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
