"""The vocabulary of the ``stats`` table: key names, how each aggregates, label hygiene.

The series themselves are described in :mod:`hive_actors.stats.actor`. This module is pure: it
names keys, says whether a key is an *event* key (one row per happening, aggregated by **sum**,
so totals survive downsampling) or a *gauge* key (a sample, aggregated by **max**: charts and
stall detection care about peaks), validates the keys a query names, and folds free-form names
(tools, models) into label values that stay low-cardinality and safe in a key.
"""

from __future__ import annotations

import math
import re
from typing import Literal

__all__ = [
    "DURATION_BUCKETS",
    "EVENT_KEYS",
    "GAUGE_KEYS",
    "GROWING_GAUGES",
    "HIVE_AGENT",
    "MESSAGE_KINDS",
    "OUTCOMES",
    "TOKEN_TYPES",
    "Aggregation",
    "aggregation",
    "bucket_key",
    "bucket_label",
    "clean_label",
    "fold_tool",
    "is_known_key",
]

HIVE_AGENT = "_hive"
"""The ``agent`` column of hive-wide rows (approval queue, questions). Never a valid agent name
(names start with a letter), so it cannot collide with one."""

OUTCOMES = ("ok", "compact-retry", "failure", "timeout", "cancelled")
"""How a turn ended, as the stats and metrics count it (see :func:`series.outcome_of`)."""

MESSAGE_KINDS = ("peer", "operator", "manager", "system")
"""Message kinds: ``received.<kind>`` counts by the sender's kind (the message's own),
``sent.<kind>`` by the recipient's (:func:`~.series.recipient_kind`)."""

TOKEN_TYPES = ("input", "output", "cache_read", "cache_creation")
"""Token counts a turn reports (``TurnEnd.tokens``)."""

DURATION_BUCKETS: tuple[float, ...] = (
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, math.inf,
)
"""Upper bounds (seconds) of the turn-duration histogram. Stored rows name them, so changing
them splits the history: add bounds at the end only, never move one."""

# Per-turn keys with a fixed name.
TURNS = "turns"
TURN_DURATION = "turn.duration_s"
TURN_TOOL_CALLS = "turn.tool_calls"
TURN_DENIALS = "turn.permission_denials"
RECEIVED = "received"
SENT = "sent"
COST = "cost_usd"

# Sampled gauges.
INBOX_DEPTH = "inbox.depth"
INBOX_DEPTH_MAX = "inbox.depth_max"
INBOX_OLDEST = "inbox.oldest_age_s"
SINCE_LAST_TURN = "since_last_turn_s"
NOTES_BYTES = "notes.bytes"
APPROVALS_PENDING = "approvals.pending"
APPROVALS_OLDEST = "approvals.oldest_age_s"
QUESTIONS_PENDING = "questions.pending"

GAUGE_KEYS = frozenset({
    INBOX_DEPTH, INBOX_DEPTH_MAX, INBOX_OLDEST, SINCE_LAST_TURN, NOTES_BYTES,
    APPROVALS_PENDING, APPROVALS_OLDEST, QUESTIONS_PENDING,
})
"""Keys written by the sampling tick; aggregated by max."""

GROWING_GAUGES = frozenset({INBOX_OLDEST, SINCE_LAST_TURN, APPROVALS_OLDEST})
"""Gauges that grow with the clock alone; written on growth only once per heartbeat."""

EVENT_KEYS = frozenset({
    TURNS, TURN_DURATION, TURN_TOOL_CALLS, TURN_DENIALS, RECEIVED, SENT, COST,
})
"""Fixed-name per-turn keys; aggregated by sum (as are the families below)."""

# Families: "<prefix><suffix>", the suffix from a closed set or a cleaned free-form name.
OUTCOME_PREFIX = "turn.outcome."
BUCKET_PREFIX = "turn.duration_le."
TOOL_PREFIX = "tool."
RECEIVED_PREFIX = "received."
SENT_PREFIX = "sent."
TOKENS_PREFIX = "tokens."
MODEL_PREFIX = "model@"
COST_MODEL_PREFIX = "cost_usd@"

_NAME = r"[A-Za-z0-9_.:/-]{1,100}"
_NAME_RE = re.compile(_NAME)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:/-]")


def bucket_label(bound: float) -> str:
    """The text of a histogram bound, as in a key and in Prometheus' ``le`` label."""
    if math.isinf(bound):
        return "+Inf"
    return repr(float(bound))


_BUCKET_LABELS = tuple(bucket_label(b) for b in DURATION_BUCKETS)

_FAMILIES: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        re.escape(OUTCOME_PREFIX) + "(?:" + "|".join(re.escape(o) for o in OUTCOMES) + ")",
        re.escape(BUCKET_PREFIX) + "(?:" + "|".join(re.escape(b) for b in _BUCKET_LABELS) + ")",
        re.escape(TOOL_PREFIX) + _NAME,
        re.escape(RECEIVED_PREFIX) + "(?:" + "|".join(MESSAGE_KINDS) + ")",
        re.escape(SENT_PREFIX) + "(?:" + "|".join(MESSAGE_KINDS) + ")",
        re.escape(TOKENS_PREFIX) + "(?:" + "|".join(TOKEN_TYPES) + ")(?:@" + _NAME + ")?",
        re.escape(MODEL_PREFIX) + _NAME,
        re.escape(COST_MODEL_PREFIX) + _NAME,
    )
)

Aggregation = Literal["sum", "max"]


def aggregation(key: str) -> Aggregation:
    """How rows of ``key`` merge when they are downsampled (or share a timestamp)."""
    return "max" if key in GAUGE_KEYS else "sum"


def is_known_key(key: str) -> bool:
    """Whether ``key`` is a series this module defines (whether or not it has rows yet)."""
    if key in GAUGE_KEYS or key in EVENT_KEYS:
        return True
    return any(p.fullmatch(key) for p in _FAMILIES)


def clean_label(name: object, fallback: str = "unknown") -> str:
    """A free-form name (tool, model) made safe for a key: unsafe characters become ``_``,
    at most 100 characters; empty or None gives ``fallback``."""
    text = "" if name is None else str(name)
    cleaned = _UNSAFE.sub("_", text)[:100]
    return cleaned if cleaned and _NAME_RE.fullmatch(cleaned) else fallback


def bucket_key(duration_s: float) -> str:
    """The ``turn.duration_le.<bound>`` key of the smallest bound holding ``duration_s``."""
    for bound, label in zip(DURATION_BUCKETS, _BUCKET_LABELS, strict=False):
        if duration_s <= bound:
            return BUCKET_PREFIX + label
    return BUCKET_PREFIX + "+Inf"  # NaN compares false with every bound


# Claude Code's own tools keep their name as a metric label; anything else is folded so that a
# misbehaving model inventing tool names cannot blow up the label space.
CORE_TOOLS = frozenset({
    "Agent", "Bash", "BashOutput", "Edit", "ExitPlanMode", "Glob", "Grep", "KillShell", "LS",
    "MultiEdit", "NotebookEdit", "NotebookRead", "Read", "SlashCommand", "Task", "TodoRead",
    "TodoWrite", "WebFetch", "WebSearch", "Write",
})


def fold_tool(tool: str) -> str:
    """The metric label of a tool: core tools and the hive's own MCP tools by name, another MCP
    server's tools as ``mcp__<server>``, anything else ``other``."""
    if tool in CORE_TOOLS:
        return tool
    if tool.startswith("mcp__"):
        parts = tool.split("__")
        if len(parts) >= 3 and parts[1]:
            if parts[1] == "hive" and parts[2]:
                return clean_label(tool, "other")
            return clean_label(f"mcp__{parts[1]}", "other")
    return "other"
