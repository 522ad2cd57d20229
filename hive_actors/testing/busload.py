"""A hive in a child process that senders drive over a Unix socket, for the kill -9 test.

::

    python -m hive_actors.testing.busload --state-dir D --socket S

starts the real tree (store, bus, approvals, agents) of ``Hive(load_config(state_dir=D))`` on
the real sqlite file, then serves JSON lines on the Unix socket ``S``: one request per line, one
answer per line, in order. Every request becomes ONE ask to the BusActor or the
ApprovalQueueActor, and is answered only after that ask returned — so an answer means the hive
acknowledged (committed) it, and a connection that drops before its answer means the sender
was never told it succeeded. The driver adds nothing else: no retry, no store access of its own.

When the socket listens it prints one line on stdout and nothing after it::

    {"ready": true, "pid": 4242, "released": 3}

(``released``: the in-flight messages the start-up recovery put back in their inboxes.)
SIGTERM or SIGINT stops the tree cleanly; the kill -9 test sends SIGKILL instead.

Requests (``op`` plus the fields of the hive message; answers ``{"ok": true, "result": …}`` or
``{"ok": false, "error": "<HiveError class>", "message": …}``):

============================  ========================  ===============================
op                            fields                    result
============================  ========================  ===============================
``send``                      sender recipient body     the message id
                              [kind]
``claim``                     agent generation turn_id  the claimed message ids
                              [limit]
``ack``                       turn_id                   how many were delivered
``request_approval``          kind agent requested_by   ``{"id", "status"}``
                              [diff] [ref]
``decide``                    approval_id approve by    ``{"id", "status"}``
                              [note]
``ask``                       agent question            the question id
``answer``                    question_id text by       ``{"question", "message_id"}``
============================  ========================  ===============================

:class:`BusloadClient` is the sender's end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import socketserver
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from hive_actors import errors, heap
from hive_actors.config import load_config
from hive_actors.errors import HiveError, Refused
from hive_actors.hive import Hive
from hive_actors.protocol import (
    Ack,
    AnswerQuestion,
    AskOperator,
    Claim,
    Decide,
    RequestApproval,
    Send,
)
from hive_actors.services.directory import ServiceDown
from hive_actors.store import Answer, Approval, ApprovalKind, Message, MessageKind, Question
from hive_actors.supervisors.messages import ChildInfo, WhichChildren
from hive_actors.supervisors.root import run_until_stopped, start_root

__all__ = [
    "BusloadClient",
    "HiveGone",
    "decode_answer",
    "encode_answer",
    "encode_error",
    "main",
    "parse_request",
]

log = logging.getLogger(__name__)

# -- the wire: pure functions, no sockets ------------------------------------------------------

_Builder = Callable[[Mapping[str, Any]], Any]


def _send(r: Mapping[str, Any]) -> Send:
    return Send(str(r["sender"]), str(r["recipient"]), str(r["body"]),
                MessageKind(r.get("kind", "peer")))


def _claim(r: Mapping[str, Any]) -> Claim:
    limit = r.get("limit")
    return Claim(str(r["agent"]), int(r["generation"]), str(r["turn_id"]),
                 None if limit is None else int(limit))


def _request_approval(r: Mapping[str, Any]) -> RequestApproval:
    ref = r.get("ref")
    return RequestApproval(ApprovalKind(r["kind"]), str(r["agent"]), str(r["requested_by"]),
                           str(r.get("diff", "")), None if ref is None else str(ref))


def _decide(r: Mapping[str, Any]) -> Decide:
    note = r.get("note")
    return Decide(int(r["approval_id"]), bool(r["approve"]), str(r["by"]),
                  None if note is None else str(note))


# op -> (the service that answers it, how to build its message from the request)
_OPS: dict[str, tuple[str, _Builder]] = {
    "send": ("bus", _send),
    "claim": ("bus", _claim),
    "ack": ("bus", lambda r: Ack(str(r["turn_id"]))),
    "request_approval": ("approvals", _request_approval),
    "decide": ("approvals", _decide),
    "ask": ("approvals", lambda r: AskOperator(str(r["agent"]), str(r["question"]))),
    "answer": (
        "approvals",
        lambda r: AnswerQuestion(int(r["question_id"]), str(r["text"]), str(r["by"])),
    ),
}


def parse_request(line: bytes | str) -> tuple[str, Any]:
    """One request line -> (service name, the hive message to ask it).

    Raises :class:`Refused` for a line that is not a JSON object, an unknown op, or a missing
    or malformed field, naming what was wrong.
    """
    try:
        request = json.loads(line)
    except ValueError as exc:
        raise Refused(f"busload: a request must be one JSON object per line, got {line!r}") from exc
    if not isinstance(request, dict):
        raise Refused(f"busload: a request must be a JSON object, got {request!r}")
    op = request.get("op")
    if op not in _OPS:
        raise Refused(f"busload: unknown op {op!r}; use one of {', '.join(sorted(_OPS))}")
    service, build = _OPS[op]
    try:
        return service, build(request)
    except KeyError as exc:
        raise Refused(f"busload: op {op!r} needs the field {exc.args[0]!r}: {request!r}") from exc
    except (TypeError, ValueError) as exc:
        raise Refused(f"busload: op {op!r} has a malformed field ({exc}): {request!r}") from exc


def _result(value: Any) -> Any:
    """A hive answer as JSON: ids for rows, the row's outcome where the caller needs it."""
    if isinstance(value, Approval):
        return {"id": value.id, "status": str(value.status)}
    if isinstance(value, Question):
        return value.id
    if isinstance(value, Answer):
        return {"question": value.question.id, "message_id": value.message_id}
    if isinstance(value, list) and all(isinstance(m, Message) for m in value):
        return [m.id for m in value]
    return value


def encode_answer(value: Any) -> bytes:
    """The answer line for a hive answer ``value``."""
    return json.dumps({"ok": True, "result": _result(value)}).encode() + b"\n"


def encode_error(exc: BaseException) -> bytes:
    """The answer line for an error: its class (a HiveError's, else "HiveError") and text."""
    name = type(exc).__name__ if isinstance(exc, HiveError) else "HiveError"
    text = str(exc) if isinstance(exc, HiveError) else f"{type(exc).__name__}: {exc}"
    return json.dumps({"ok": False, "error": name, "message": text}).encode() + b"\n"


_ERRORS: dict[str, type[HiveError]] = {
    cls.__name__: cls
    for cls in (*(getattr(errors, n) for n in errors.__all__), ServiceDown)
}


def decode_answer(line: bytes) -> Any:
    """An answer line -> its result; an error answer is raised as its HiveError class."""
    answer = json.loads(line)
    if answer.get("ok"):
        return answer.get("result")
    cls = _ERRORS.get(str(answer.get("error")), HiveError)
    raise cls(str(answer.get("message")))


# -- the hive side -----------------------------------------------------------------------------


class _Handler(socketserver.StreamRequestHandler):
    """One sender's connection: answer each line after its ask returned."""

    server: _Server

    def handle(self) -> None:
        for line in self.rfile:
            try:
                service, message = parse_request(line)
                ref = self.server.hive.directory.wait(service, self.server.ask_timeout)
                answer = encode_answer(ref.ask(message, timeout=self.server.ask_timeout))
            except Exception as exc:  # every failure goes back to the sender, never dropped
                answer = encode_error(exc)
            try:
                self.wfile.write(answer)
                self.wfile.flush()
            except OSError:
                return  # the sender hung up; its next connection starts afresh


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    # socketserver's default backlog is 5: a crowd of senders reconnecting after a restart
    # overflows it in one pause of the accepting thread, and a Unix socket's connect then
    # fails at once (EAGAIN) instead of waiting.
    request_queue_size = 128

    def __init__(self, path: str, hive: Hive, ask_timeout: float) -> None:
        self.hive = hive
        self.ask_timeout = ask_timeout
        super().__init__(path, _Handler)


def _store_recovery_released(root: Any, timeout: float) -> int:
    """How many messages the store child's start-up recovery released."""
    children: list[ChildInfo] = root.ask(WhichChildren(), timeout=timeout)
    for child in children:
        if child.id == "store" and child.ref is not None:
            recovery = child.ref.proxy().recovery.get(timeout=timeout)
            return int(recovery.released)
    raise ServiceDown("busload: the hive has no running store child to report its recovery")


def serve(state_dir: Path, socket_path: Path, *, timeout: float = 30.0) -> int:
    """Run the hive on ``state_dir`` and serve ``socket_path`` until SIGTERM/SIGINT."""
    hive = Hive(load_config(None, state_dir=str(state_dir)))
    children, flags = hive.tree()
    root = start_root(children, flags, ready_timeout=timeout)
    stop = threading.Event()
    server: _Server | None = None
    try:
        for service in ("bus", "approvals"):
            hive.directory.wait(service, timeout)
        released = _store_recovery_released(root, timeout)
        heap.settle()  # before the senders come: run_until_stopped's is then quick
        # A SIGKILLed predecessor leaves its socket file behind; bind would fail on it.
        socket_path.unlink(missing_ok=True)
        server = _Server(str(socket_path), hive, timeout)
        threading.Thread(target=server.serve_forever, name="busload-serve", daemon=True).start()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        print(json.dumps({"ready": True, "pid": os.getpid(), "released": released}), flush=True)
        return run_until_stopped(root, stop, sys.stderr, name="busload")
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
            socket_path.unlink(missing_ok=True)
        root.stop(block=True, timeout=timeout)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hive_actors.testing.busload --state-dir D --socket S``."""
    parser = argparse.ArgumentParser(
        prog="python -m hive_actors.testing.busload",
        description="Run the hive's tree on D and serve JSON-line requests on the socket S.",
    )
    parser.add_argument("--state-dir", required=True, type=Path, help="the hive's state dir")
    parser.add_argument("--socket", required=True, type=Path, help="the Unix socket to serve")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="start-up and per-ask deadline in seconds (default 30)")
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return serve(args.state_dir, args.socket, timeout=args.timeout)
    except HiveError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1


# -- the sender side ---------------------------------------------------------------------------


class HiveGone(ConnectionError):
    """The connection to the hive dropped before it answered: the request is NOT acknowledged
    (it may or may not have been committed)."""


class BusloadClient:
    """One sender's connection to a busload hive: :meth:`call` one request at a time.

    Not thread-safe: give each sender thread its own client.
    """

    def __init__(self, path: str | Path, timeout: float) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # A hive that stops answering must not hang the sender past the deadline.
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(path))
        except OSError as exc:
            self._sock.close()
            raise HiveGone(f"busload: cannot connect to {path}: {exc}") from exc
        self._file = self._sock.makefile("rb")

    def call(self, op: str, **fields: Any) -> Any:
        """Ask the hive; return its result once acknowledged.

        Raises the hive's error (Refused, NotFound, Conflict, …) for an answered refusal, and
        :class:`HiveGone` when the connection dropped before the answer.
        """
        line = json.dumps({"op": op, **fields}).encode() + b"\n"
        try:
            self._sock.sendall(line)
            answer = self._file.readline()
        except TimeoutError:
            raise  # a hive that hangs is a failure of its own, not a drop
        except OSError as exc:
            raise HiveGone(f"busload: {op} lost: {exc}") from exc
        if not answer.endswith(b"\n"):
            raise HiveGone(f"busload: {op} lost: the hive closed the connection")
        return decode_answer(answer)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._file.close()
        self._sock.close()

    def __enter__(self) -> BusloadClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
