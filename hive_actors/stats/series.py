"""Pure series logic: a finished turn → rows, a sampling tick → rows, messages sent per turn.

Nothing here touches a thread, a socket, a file or a clock: time comes in as arguments, so the
tests drive it with plain numbers. The actor (:mod:`hive_actors.stats.actor`) does the I/O.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import keys as k

__all__ = [
    "AgentSample",
    "GaugeFilter",
    "HiveSample",
    "Row",
    "SentMessage",
    "TurnSpan",
    "WindowMax",
    "count_sent",
    "outcome_of",
    "recipient_kind",
    "sample_rows",
    "turn_rows",
]


class Row(NamedTuple):
    """One row of the ``stats`` table."""

    agent: str
    ts: float
    """Wall-clock seconds."""
    key: str
    value: float


def outcome_of(end: Any, error: str | None) -> str:
    """The counted outcome of a turn (one of :data:`keys.OUTCOMES`).

    No TurnEnd (the worker failed before the CLI), an error the actor added (a required MCP
    server down), or the CLI's own ``error`` all count as ``failure``; ``timeout``,
    ``cancelled`` and ``compact-retry`` are kept apart because each means something different
    to an operator (stuck, stopped, context pressure).
    """
    if end is None or error is not None:
        return "failure"
    outcome = str(getattr(end, "outcome", "error"))
    if outcome in ("ok", "compact-retry", "timeout", "cancelled"):
        return outcome
    return "failure"


def turn_rows(
    agent: str,
    started: float,
    ended: float,
    end: Any,
    received: Mapping[str, int] | None,
    error: str | None,
    sent: Mapping[str, int],
) -> list[Row]:
    """The rows of one finished turn, all stamped ``ended``.

    ``end`` is a :class:`hive_actors.harness.TurnEnd` or None; ``received`` counts the messages
    the turn consumed by kind; ``sent`` the messages the agent sent during it, by kind.
    """
    ts = float(ended)
    rows: list[Row] = [Row(agent, ts, k.TURNS, 1.0)]
    rows.append(Row(agent, ts, k.OUTCOME_PREFIX + outcome_of(end, error), 1.0))
    duration = float(getattr(end, "duration_s", 0.0) or 0.0) if end is not None else 0.0
    if end is None or not duration > 0.0 or math.isinf(duration):
        duration = max(0.0, float(ended) - float(started))
    rows.append(Row(agent, ts, k.TURN_DURATION, duration))
    rows.append(Row(agent, ts, k.bucket_key(duration), 1.0))

    tools: Mapping[str, int] = getattr(end, "tool_calls", None) or {}
    rows.append(Row(agent, ts, k.TURN_TOOL_CALLS, float(sum(tools.values()))))
    per_tool: Counter[str] = Counter()
    for tool, count in tools.items():
        per_tool[k.clean_label(tool, "unknown")] += int(count)
    rows.extend(
        Row(agent, ts, k.TOOL_PREFIX + tool, float(n)) for tool, n in sorted(per_tool.items())
    )
    denials = getattr(end, "permission_denials", ()) or ()
    rows.append(Row(agent, ts, k.TURN_DENIALS, float(len(denials))))

    got = {kind: int((received or {}).get(kind, 0)) for kind in k.MESSAGE_KINDS}
    rows.append(Row(agent, ts, k.RECEIVED, float(sum(got.values()))))
    rows.extend(
        Row(agent, ts, k.RECEIVED_PREFIX + kind, float(got[kind])) for kind in k.MESSAGE_KINDS
    )
    out = {kind: int(sent.get(kind, 0)) for kind in k.MESSAGE_KINDS}
    rows.append(Row(agent, ts, k.SENT, float(sum(out.values()))))
    rows.extend(Row(agent, ts, k.SENT_PREFIX + kind, float(out[kind])) for kind in k.MESSAGE_KINDS)

    if end is not None:
        # A row per answering model (keyed, not a label column: the table has no label column),
        # and tokens/cost twice: summed for the charts, per model for the metrics' labels.
        model = k.clean_label(getattr(end, "model", None), "unknown")
        rows.append(Row(agent, ts, k.MODEL_PREFIX + model, 1.0))
        tokens = getattr(end, "tokens", None)
        for kind in k.TOKEN_TYPES:
            value = float(getattr(tokens, kind, 0) or 0)
            rows.append(Row(agent, ts, f"{k.TOKENS_PREFIX}{kind}", value))
            rows.append(Row(agent, ts, f"{k.TOKENS_PREFIX}{kind}@{model}", value))
        cost = float(getattr(end, "cost_usd", 0.0) or 0.0)
        rows.append(Row(agent, ts, k.COST, cost))
        rows.append(Row(agent, ts, k.COST_MODEL_PREFIX + model, cost))
    return rows


# -- messages sent during a turn -----------------------------------------------------------------


class TurnSpan(NamedTuple):
    """A turn's agent and wall-clock span."""

    agent: str
    started: float
    ended: float


class SentMessage(NamedTuple):
    """What the count needs of a message: who sent it, its recipient's kind
    (:func:`recipient_kind`), when it was committed."""

    sender: str
    kind: str
    created: float


OPERATOR = "operator"
"""The recipient name of what goes to the operator (the gateway's sender name too)."""


def recipient_kind(kind: str, recipient: str, recipient_role: object) -> str:
    """Who a sent message went to, one of :data:`keys.MESSAGE_KINDS`.

    ``system``: a notice or crash report (the message's own kind says so); ``operator``: to the
    operator; ``manager``: to an agent whose role is manager; ``peer``: to any other agent.
    Not the message's kind: that says who *sent* it (what the recipient's ``received.<kind>``
    counts), so a manager's message to an agent is ``peer`` here and an agent's report to the
    manager is ``manager``.
    """
    if kind == "system":
        return "system"
    if recipient == OPERATOR:
        return "operator"
    if str(recipient_role or "") == "manager":
        return "manager"
    return "peer"


def count_sent(
    turns: Sequence[TurnSpan], messages: Iterable[SentMessage]
) -> list[Counter[str]]:
    """For each turn, the messages its agent sent within ``[started, ended]``, by the kind of
    their recipient (:func:`recipient_kind`, already applied to ``messages``). A message inside
    two overlapping spans of the same agent (which a well-behaved agent never has) counts for
    both.
    """
    result: list[Counter[str]] = [Counter() for _ in turns]
    by_agent: dict[str, list[int]] = {}
    for index, span in enumerate(turns):
        by_agent.setdefault(span.agent, []).append(index)
    if not by_agent:
        return result
    for message in messages:
        for index in by_agent.get(message.sender, ()):
            span = turns[index]
            if span.started <= message.created <= span.ended:
                result[index][message.kind] += 1
    return result


# -- sampling ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentSample:
    """What one sampling tick read about one agent."""

    agent: str
    inbox_depth: int
    inbox_oldest_age: float
    since_last_turn: float | None
    """Seconds since its last turn ended (or since it was registered); None: unknown."""
    notes_bytes: int | None
    """Size of its ``notes.md``; None when it has none."""


@dataclass(frozen=True)
class HiveSample:
    """What one sampling tick read about the hive as a whole."""

    approvals_pending: int
    approvals_oldest_age: float
    questions_pending: int


class WindowMax:
    """The largest inbox depth each agent had over a trailing window of samples.

    Pure: the caller passes the sample time. Old samples fall out as newer ones arrive; an
    agent not sampled any more is forgotten by :meth:`retain`.
    """

    def __init__(self, window: float) -> None:
        self.window = window
        self._samples: dict[str, deque[tuple[float, float]]] = {}

    def add(self, agent: str, now: float, value: float) -> float:
        """Record a sample; return the max over ``(now - window, now]``."""
        samples = self._samples.setdefault(agent, deque())
        samples.append((now, value))
        while samples and samples[0][0] <= now - self.window:
            samples.popleft()
        return max(v for _, v in samples)

    def retain(self, agents: Iterable[str]) -> None:
        """Forget every agent not in ``agents``."""
        keep = set(agents)
        for agent in [a for a in self._samples if a not in keep]:
            del self._samples[agent]


class GaugeFilter:
    """Drops a gauge sample equal to the last one written for its series, unless ``heartbeat``
    seconds passed since then: an idle hive does not fill the table with zeros.

    Ages that grow by themselves (:data:`keys.GROWING_GAUGES`: time since the last turn, age
    of the oldest message) are written when they *grow* only once per heartbeat too, and at
    once when they fall (a turn ended, the inbox was read): a 200-agent hive would otherwise
    write a row per agent per tick just for the clock moving. Charts read a missing point as
    "unchanged" (a stepped line with gaps spanned).
    """

    def __init__(self, heartbeat: float) -> None:
        self.heartbeat = heartbeat
        self._last: dict[tuple[str, str], tuple[float, float]] = {}

    def keep(self, row: Row) -> bool:
        """Whether ``row`` should be written (and, if so, remember it as the last one)."""
        series = (row.agent, row.key)
        last = self._last.get(series)
        if last is not None and row.ts - last[0] < self.heartbeat:
            if row.value == last[1] or (row.key in k.GROWING_GAUGES and row.value > last[1]):
                return False
        self._last[series] = (row.ts, row.value)
        return True

    def forget(self) -> None:
        """Write every series on the next tick (after a failed write, say)."""
        self._last.clear()


def sample_rows(
    now: float,
    agents: Sequence[AgentSample],
    hive: HiveSample | None,
    window: WindowMax,
    gauges: GaugeFilter,
) -> list[Row]:
    """The gauge rows of one sampling tick, filtered by ``gauges``."""
    rows: list[Row] = []
    for sample in agents:
        depth = float(sample.inbox_depth)
        rows.append(Row(sample.agent, now, k.INBOX_DEPTH, depth))
        rows.append(Row(sample.agent, now, k.INBOX_DEPTH_MAX, window.add(sample.agent, now, depth)))
        rows.append(Row(sample.agent, now, k.INBOX_OLDEST, round(sample.inbox_oldest_age, 3)))
        if sample.since_last_turn is not None:
            rows.append(Row(sample.agent, now, k.SINCE_LAST_TURN, round(sample.since_last_turn, 3)))
        if sample.notes_bytes is not None:
            rows.append(Row(sample.agent, now, k.NOTES_BYTES, float(sample.notes_bytes)))
    window.retain(s.agent for s in agents)
    if hive is not None:
        rows.append(Row(k.HIVE_AGENT, now, k.APPROVALS_PENDING, float(hive.approvals_pending)))
        rows.append(
            Row(k.HIVE_AGENT, now, k.APPROVALS_OLDEST, round(hive.approvals_oldest_age, 3))
        )
        rows.append(Row(k.HIVE_AGENT, now, k.QUESTIONS_PENDING, float(hive.questions_pending)))
    return [row for row in rows if gauges.keep(row)]

