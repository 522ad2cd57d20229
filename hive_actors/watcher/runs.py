"""Which agent epoch a unit's run belongs to, pure: no bus, no threads, no clock.

systemd names each run of a unit with an ``InvocationID``; the hive names each life of an agent
with an epoch. The crash watcher ties the two together the first time it sees a run alive:
that run belongs to the epoch that is current *then* (an AgentActor announces its
epoch before it starts its container, so a run that starts afterwards is the new one's).
A crash of an older run therefore carries the older epoch, and the AgentActor of a newer
epoch ignores it.

Two more rules:

- An epoch that comes up in a container that already runs adopts its live run (starting
  a running container is a no-op: the new AgentActor works in it). Otherwise a run the
  watcher still believes alive keeps its epoch (its end was missed, and a new run is
  on its way).
- A run first seen already dead (it lived and died while the watcher was away) is given the
  epoch current when its crash is seen: nothing better is known, and it is the one the
  AgentActor that never heard of the crash is running.

The book is the :class:`~hive_actors.watcher.actor.CrashWatcherActor`'s private state, read and
changed in its thread only (no lock). An AgentActor tells the watcher its epoch
(:class:`~hive_actors.watcher.messages.AgentUp`, applied with :meth:`RunBook.agent_up`) *before*
it starts its container, and the D-Bus reader tells the same mailbox what systemd says: the
mailbox's FIFO order puts every signal of a run that starts after an announcement behind the
announcement. A new watcher (after a restart of its own) starts a new book from the registry's
epochs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

__all__ = ["RunBook"]


class RunBook:
    """Per agent: its current epoch, its live run, and the epochs of its last
    ``keep`` runs."""

    def __init__(self, keep: int = 32) -> None:
        if keep < 1:
            raise ValueError(f"run book: keep must be >= 1, got {keep}")
        self._keep = keep
        self._current: dict[str, int] = {}
        self._announced: set[str] = set()
        self._live: dict[str, str] = {}
        self._runs: dict[str, OrderedDict[str, int]] = {}

    @property
    def agents(self) -> frozenset[str]:
        """Every agent with a known epoch."""
        return frozenset(self._current)

    def announced(self, agent: str) -> bool:
        """Whether an AgentActor of ``agent`` announced an epoch in this book's life."""
        return agent in self._announced

    def load(self, epochs: Mapping[str, int]) -> None:
        """Take the registry's view (agent → current epoch); agents not in it stay, and
        an epoch announced meanwhile is not moved back (epochs only grow)."""
        for agent, epoch in epochs.items():
            if epoch > self._current.get(agent, -1):
                self._current[agent] = epoch

    def agent_up(self, agent: str, epoch: int, *, adopts: bool = False) -> str | None:
        """``agent`` spawned ``epoch``: runs first seen from now on are its, and so is the
        run alive now when the epoch ``adopts`` the running container (returned, as it
        was tied anew)."""
        self._current[agent] = epoch
        self._announced.add(agent)
        live = self._live.get(agent)
        if adopts and live is not None and self._bound(agent, live) != epoch:
            self._tie(agent, live, epoch)
            return live
        return None

    def current(self, agent: str) -> int | None:
        """The agent's current epoch, None when it is unknown."""
        return self._current.get(agent)

    def live(self, agent: str) -> str | None:
        """The run of ``agent``'s unit last seen alive (and not seen ending since)."""
        return self._live.get(agent)

    def bound(self, agent: str, invocation_id: str) -> int | None:
        """The epoch a run is tied to, None when it is not tied."""
        return self._bound(agent, invocation_id)

    def live_runs(self) -> dict[str, tuple[str, int]]:
        """agent → (its live run, the epoch it is tied to), for the tied live runs."""
        found = {}
        for agent, live in self._live.items():
            epoch = self._bound(agent, live)
            if epoch is not None:
                found[agent] = (live, epoch)
        return found

    def run_alive(self, agent: str, invocation_id: str) -> int | None:
        """A run was seen alive: it is the live one, tied to the current epoch unless it
        is tied already. Returns the epoch when it was tied just now, else None (tied
        before, or the agent's epoch or the run's id is unknown)."""
        if not invocation_id:
            return None
        self._live[agent] = invocation_id
        epoch = self._current.get(agent)
        if epoch is None or self._bound(agent, invocation_id) is not None:
            return None
        self._tie(agent, invocation_id, epoch)
        return epoch

    def run_ended(self, agent: str, invocation_id: str) -> None:
        """A run was seen dead: it is no longer the live one."""
        self._run_ended(agent, invocation_id)

    def crashed(self, agent: str, invocation_id: str) -> int | None:
        """The epoch a crashed run belongs to: the one it is tied to, else the current
        one (and the run is tied to it now). None when the agent's epoch is unknown."""
        self._run_ended(agent, invocation_id)
        known = self._bound(agent, invocation_id) if invocation_id else None
        if known is not None:
            return known
        epoch = self._current.get(agent)
        if epoch is not None and invocation_id:
            self._tie(agent, invocation_id, epoch)
        return epoch

    # -- helpers --------------------------------------------------------------------------

    def _bound(self, agent: str, invocation_id: str) -> int | None:
        runs = self._runs.get(agent)
        return runs.get(invocation_id) if runs is not None else None

    def _run_ended(self, agent: str, invocation_id: str) -> None:
        if self._live.get(agent) == invocation_id:
            del self._live[agent]

    def _tie(self, agent: str, invocation_id: str, epoch: int) -> None:
        runs = self._runs.setdefault(agent, OrderedDict())
        runs[invocation_id] = epoch
        runs.move_to_end(invocation_id)
        while len(runs) > self._keep:
            runs.popitem(last=False)
