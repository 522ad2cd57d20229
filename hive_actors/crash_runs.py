"""Which agent generation a unit's run belongs to, pure: no bus, no threads, no clock.

systemd names each run of a unit with an ``InvocationID``; the hive names each life of an agent
with a generation. The crash watcher ties the two together the first time it sees a run alive:
that run belongs to the generation that is current *then* (an AgentActor announces its
generation before it starts its container, so a run that starts afterwards is the new one's).
A crash of an older run therefore carries the older generation, and the AgentActor of a newer
generation ignores it.

Two more rules:

- A generation that comes up in a container that already runs adopts its live run (starting
  a running container is a no-op: the new AgentActor works in it). Otherwise a run the
  watcher still believes alive keeps its generation (its end was missed, and a new run is
  on its way).
- A run first seen already dead (it lived and died while the watcher was away) is given the
  generation current when its crash is seen: nothing better is known, and it is the one the
  AgentActor that never heard of the crash is running.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

__all__ = ["RunBook"]


class RunBook:
    """Per agent: its current generation, its live run, and the generations of its last
    ``keep`` runs."""

    def __init__(self, keep: int = 32) -> None:
        if keep < 1:
            raise ValueError(f"run book: keep must be >= 1, got {keep}")
        self._keep = keep
        self._current: dict[str, int] = {}
        self._live: dict[str, str] = {}
        self._runs: dict[str, OrderedDict[str, int]] = {}

    @property
    def agents(self) -> frozenset[str]:
        """Every agent with a known generation."""
        return frozenset(self._current)

    def load(self, generations: Mapping[str, int]) -> None:
        """Take the registry's view (agent → current generation); agents not in it stay."""
        self._current.update(generations)

    def agent_up(self, agent: str, generation: int, *, adopts: bool = False) -> str | None:
        """``agent`` spawned ``generation``: runs first seen from now on are its, and so is the
        run alive now when the generation ``adopts`` the running container (returned, as it
        was tied anew)."""
        self._current[agent] = generation
        live = self._live.get(agent)
        if adopts and live is not None and self.bound(agent, live) != generation:
            self._tie(agent, live, generation)
            return live
        return None

    def current(self, agent: str) -> int | None:
        """The agent's current generation, None when it is unknown."""
        return self._current.get(agent)

    def live(self, agent: str) -> str | None:
        """The run of ``agent``'s unit last seen alive (and not seen ending since)."""
        return self._live.get(agent)

    def bound(self, agent: str, invocation_id: str) -> int | None:
        """The generation a run is tied to, None when it is not tied."""
        runs = self._runs.get(agent)
        return runs.get(invocation_id) if runs is not None else None

    def run_alive(self, agent: str, invocation_id: str) -> int | None:
        """A run was seen alive: it is the live one, tied to the current generation unless it
        is tied already. Returns the generation when it was tied just now, else None (tied
        before, or the agent's generation or the run's id is unknown)."""
        if not invocation_id:
            return None
        self._live[agent] = invocation_id
        generation = self._current.get(agent)
        if generation is None or self.bound(agent, invocation_id) is not None:
            return None
        self._tie(agent, invocation_id, generation)
        return generation

    def run_ended(self, agent: str, invocation_id: str) -> None:
        """A run was seen dead: it is no longer the live one."""
        if self._live.get(agent) == invocation_id:
            del self._live[agent]

    def crashed(self, agent: str, invocation_id: str) -> int | None:
        """The generation a crashed run belongs to: the one it is tied to, else the current
        one (and the run is tied to it now). None when the agent's generation is unknown."""
        self.run_ended(agent, invocation_id)
        known = self.bound(agent, invocation_id) if invocation_id else None
        if known is not None:
            return known
        generation = self._current.get(agent)
        if generation is not None and invocation_id:
            self._tie(agent, invocation_id, generation)
        return generation

    def _tie(self, agent: str, invocation_id: str, generation: int) -> None:
        runs = self._runs.setdefault(agent, OrderedDict())
        runs[invocation_id] = generation
        runs.move_to_end(invocation_id)
        while len(runs) > self._keep:
            runs.popitem(last=False)
