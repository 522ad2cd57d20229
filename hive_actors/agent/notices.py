"""The supervision notice: what the manager is told when an agent crashes, restarts, stalls or
is given up — one structured ``system`` message, its format kept here and nowhere else.

The agents' supervisor writes a notice's :meth:`SupervisionNotice.body` (a JSON object tagged
``"hive_notice": "supervision"``) into the manager's inbox; the turn prompt and ``recv`` show it
with :func:`render_message_body` as readable text, so the model reads sentences and any program
(a test, a dashboard) reads fields with :func:`parse_notice`::

    notice = SupervisionNotice(agent="alice", generation=1, event="restarting", result="exit-code",
                               exit_status=1, signal=None, reason="exit-code 1", restart=2,
                               restarts_allowed=5, period=60.0, next_try_s=4.0,
                               text="alice crashed: exit-code 1; restart 2 of 5 in 60 s; …")
    body = notice.body()
    assert parse_notice(body) == notice
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

__all__ = [
    "NOTICE_TAG",
    "NoticeEvent",
    "SupervisionNotice",
    "notice_text",
    "parse_notice",
    "render_message_body",
]

NOTICE_TAG = "supervision"
"""The value of a notice body's ``hive_notice`` key."""

NoticeEvent = Literal["restarting", "given_up"]
"""What the supervisor did about the agent's end: restart it after a backoff, or give it up."""


@dataclass(frozen=True, slots=True)
class SupervisionNotice:
    """One agent's end and what the supervisor did about it, as the manager is told it."""

    agent: str
    """The agent that ended."""
    generation: int | None
    """Its generation (incarnation) when it ended; None when the registry had no row."""
    event: NoticeEvent
    """``restarting`` (a backoff, then a new start) or ``given_up`` (down until revived)."""
    result: str
    """How it ended: systemd's words (``exit-code``, ``signal``, ``oom-kill``…), ``stalled``, or
    ``failed to start`` / ``error`` when no container crash was seen."""
    exit_status: int | None
    """The main process's exit code, when it exited."""
    signal: int | None
    """The signal that ended it, if one did."""
    reason: str
    """The end in an operator's words: ``exit-code 1``, ``stalled (turn … deadline of 3 s)``."""
    restart: int | None
    """Restarting: this restart's number in the current window (``restart 2 of 5``)."""
    restarts_allowed: int
    """The window's limit ([supervision] agent_restarts)."""
    period: float
    """The window, in seconds ([supervision] agent_period)."""
    next_try_s: float | None
    """Restarting: seconds until the next start; None once given up."""
    text: str
    """The whole notice as one sentence (what the events log keeps as ``notice``)."""
    crashes: int | None = None
    """Given up: the crashes (or failures in a row) that made the supervisor give up."""
    limit_hit: str | None = None
    """Given up: ``window`` (restarts in the period) or ``consecutive`` (failures in a row)."""

    @property
    def given_up(self) -> bool:
        """Whether the agent stays down until it is revived."""
        return self.event == "given_up"

    def body(self) -> str:
        """The message body: one JSON object, the tag first."""
        return json.dumps({"hive_notice": NOTICE_TAG, **asdict(self)}, ensure_ascii=False)

    def render(self) -> str:
        """The notice as the model reads it: a headline, then one line per fact."""
        gen = f" (generation {self.generation})" if self.generation is not None else ""
        what = "stalled" if self.result == "stalled" else "crashed"
        if self.result == "failed to start":
            what = "failed to start"
        lines = [f"supervision notice: agent {self.agent}{gen} {what}"]
        status = []
        if self.exit_status is not None:
            status.append(f"exit status {self.exit_status}")
        if self.signal is not None:
            status.append(f"signal {self.signal}")
        lines.append(f"result: {self.result}" + (f" ({', '.join(status)})" if status else ""))
        lines.append(f"reason: {self.reason}")
        if self.given_up:
            hit = (f"{self.crashes} failures in a row" if self.limit_hit == "consecutive"
                   else f"{self.crashes} crashes in {self.period:g} s")
            lines.append(f"given up after {hit}: it stays down until revived "
                         f"(mcp__hive__agent_status, mcp__hive__revive)")
        else:
            lines.append(f"restart {self.restart} of {self.restarts_allowed} in "
                         f"{self.period:g} s; next try in {_seconds(self.next_try_s or 0.0)} s")
        lines.append(f"notice: {self.text}")
        return "\n".join(lines)


def parse_notice(body: str) -> SupervisionNotice | None:
    """The notice a message body carries, or None for any other body."""
    if not body.startswith("{") or '"hive_notice"' not in body:
        return None
    try:
        raw: Any = json.loads(body)
    except ValueError:
        return None
    if not isinstance(raw, dict) or raw.get("hive_notice") != NOTICE_TAG:
        return None
    names = {f.name for f in fields(SupervisionNotice)}
    try:
        return SupervisionNotice(**{k: v for k, v in raw.items() if k in names})
    except TypeError:
        return None


def notice_text(body: str) -> str:
    """A notice's one-sentence text, or ``body`` itself when it is no notice."""
    notice = parse_notice(body)
    return body if notice is None else notice.text


def render_message_body(body: str) -> str:
    """A message body as the model reads it: a notice rendered, any other body unchanged."""
    notice = parse_notice(body)
    return body if notice is None else notice.render()


def _seconds(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"
