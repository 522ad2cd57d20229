"""The top of a tree: start it, show its shape, and turn its end into a process exit status.

The root supervisor has no parent to escalate to. When it gives up (or fails to start), the
process that runs it reports why in one clear line and exits non-zero; the CLI does that with
:func:`run_until_stopped`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Sequence, TextIO

from pykka import ActorRef

from hive_actors import heap, lifecycle
from hive_actors.clock import Clock
from hive_actors.errors import StartFailure
from hive_actors.messages import Crashed, ExitReason, Normal
from hive_actors.supervisors.messages import ChildInfo, WhichChildren
from hive_actors.supervisors.spec import ChildSpec, SupervisorFlags
from hive_actors.supervisors.supervisor import Supervisor

__all__ = ["describe_tree", "exit_message", "run_until_stopped", "start_root"]

log = logging.getLogger(__name__)


def start_root(
    children: Sequence[ChildSpec],
    flags: SupervisorFlags,
    *,
    name: str = "hive",
    ready_timeout: float = 60.0,
    clock: Clock | None = None,
    factory: Callable[..., ActorRef[Any]] | None = None,
) -> ActorRef[Any]:
    """Start the root supervisor and wait until every child is ready.

    Raises :class:`StartFailure` with the reason (the child that failed and why) otherwise.
    """
    start = factory or Supervisor.start
    ref = start(children, flags, name=name, clock=clock)
    if lifecycle.wait_ready(ref, ready_timeout):
        return ref
    reason = lifecycle.exit_reason(ref)
    if reason is None:
        ref.stop(block=True, timeout=ready_timeout)
        raise StartFailure(f"{name} did not become ready within {ready_timeout:g} s")
    raise StartFailure(exit_message(name, reason))


def exit_message(name: str, reason: ExitReason) -> str:
    """One line an operator can act on, for the root's end."""
    if isinstance(reason, Crashed):
        return f"{name} stopped: {reason.message} ({reason.error_type})"
    return f"{name} stopped: {reason}"


def describe_tree(ref: ActorRef[Any], timeout: float = 5.0, *, name: str | None = None) -> str:
    """The tree under ``ref`` as indented lines: ``id  state  (strategy / restart type)``."""
    lines: list[str] = []

    def walk(sup: ActorRef[Any], label: str, depth: int) -> None:
        flags = sup.proxy().flags.get(timeout=timeout)
        lines.append(f"{'    ' * depth}{label}  [supervisor {flags.strategy.value}, "
                     f"at most {flags.intensity} restarts in {flags.period:g} s]")
        children: list[ChildInfo] = sup.ask(WhichChildren(), timeout=timeout)  # type: ignore[assignment]
        for child in children:
            if child.is_supervisor and child.ref is not None:
                walk(child.ref, child.id, depth + 1)
            else:
                lines.append(f"{'    ' * (depth + 1)}{child.id}  {child.state}  ({child.restart})")

    walk(ref, name or "hive", 0)
    return "\n".join(lines)


def run_until_stopped(ref: ActorRef[Any], stop: threading.Event, err: TextIO, name: str = "hive") -> int:
    """Wait until ``stop`` is set (then stop the tree cleanly: 0) or the root ends on its own
    (then say why on ``err``: 1). The tree is up: its start-up heap is settled first
    (:func:`hive_actors.heap.settle`)."""
    frozen = heap.settle()
    log.info("%s: %d start-up objects moved out of the collector's full scans", name, frozen)
    done = threading.Event()

    def watch_exit() -> None:
        lifecycle.wait_exit(ref, None)
        done.set()
        stop.set()

    threading.Thread(target=watch_exit, name=f"{name}-exit", daemon=True).start()
    stop.wait()
    if done.is_set():
        reason = lifecycle.exit_reason(ref) or Normal()
        if isinstance(reason, Normal):
            return 0
        print(f"Error: {exit_message(name, reason)}", file=err)
        return 1
    ref.stop(block=True, timeout=120)
    return 0
