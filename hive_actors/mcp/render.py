"""What the model reads: tool descriptions (from the :mod:`.tools` table), the server's
instructions and the text of every tool result. Pure.

A tool result is the model's only view of what happened, so each one names the id it can
refer to later and what happens next (who reads the message, who decides the approval).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from hive_actors.agent.notices import render_message_body

from .ops import AgentStatus, Draft, InboxMessage, Revival

if TYPE_CHECKING:
    from .tools import Tool

__all__ = [
    "MANAGER_ONLY",
    "NO_NEW_MESSAGES",
    "agent_status",
    "approval_queued",
    "description",
    "draft_staged",
    "failed",
    "inbox",
    "instructions",
    "message_line",
    "question_asked",
    "revived",
    "sent",
    "timed_out",
]

NO_NEW_MESSAGES = "no new messages"

MANAGER_ONLY = "Only the hive's manager may call this; any other agent is refused. "
"""The sentence a manager-only tool's description starts with."""


def description(tool: Tool) -> str:
    """A tool's description as the model reads it (a manager-only tool says so first)."""
    return (MANAGER_ONLY if tool.manager_only else "") + tool.description


def instructions(tools: Sequence[Tool]) -> str:
    """The server's instructions: what the hive's tools are for and who may call which."""
    everyone = _enumerate([t.name for t in tools if not t.manager_only])
    manager = _enumerate([t.name for t in tools if t.manager_only])
    return (
        "The hive's message bus and the manager's requests to the operator. You are always "
        f"identified by your own credentials; {everyone} are for every agent, {manager} for "
        "the manager only."
    )


def _enumerate(names: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} and {names[-1]}"


def sent(message_id: int, to: str) -> str:
    """``send``'s result: the id and what happens next."""
    return f"message {message_id} sent to {to}\nIt is stored; {to} reads it in its next turn."


def message_line(message: InboxMessage) -> str:
    """One received message as the model reads it (a supervision notice as readable text)."""
    return f"from {message.sender} ({message.kind}): {render_message_body(message.body)}"


def inbox(messages: Sequence[InboxMessage]) -> list[str]:
    """``recv``'s result: one text block per message, or the one line ``no new messages``."""
    if not messages:
        return [NO_NEW_MESSAGES]
    return [message_line(m) for m in messages]


def approval_queued(approval_id: int, what: str) -> str:
    """The result of a tool that queued an approval (``what``: e.g. ``spawn of carol``)."""
    return (
        f"approval {approval_id} requested ({what}): waiting for the operator\n"
        "The decision arrives in your inbox as a system message."
    )


def draft_staged(draft: Draft) -> str:
    """``request_spawn_draft``'s result: where the draft is and the next step."""
    lines = [f"draft {draft.name} staged (no container yet)"]
    if draft.config_path:
        lines.append(f"config repository: {draft.config_path}")
    if draft.state_path:
        lines.append(f"state directory: {draft.state_path}")
    lines.append(
        "Edit and commit its config, then call request_spawn_commit with its name and the "
        "commit ref to ask the operator to start it."
    )
    return "\n".join(lines)


def question_asked(question_id: int) -> str:
    """``ask_operator``'s result."""
    return (
        f"question {question_id} sent to the operator\n"
        "the answer will arrive in your inbox as an operator message"
    )


def agent_status(status: AgentStatus) -> str:
    """``agent_status``'s result: one fact a line, then the log tail."""
    lines = [
        f"agent {status.name} ({status.role}, generation {status.generation}): {status.state}",
        f"restarts: {status.restarts}" + (f" ({status.limits})" if status.limits else ""),
        f"last crash: {status.last_crash or 'none recorded'}",
    ]
    if status.last_notice:
        lines.append(f"last notice: {status.last_notice}")
    if status.log_tail:
        lines.append(f"log tail ({len(status.log_tail)} lines, oldest first):")
        lines.extend(f"  {line}" for line in status.log_tail)
    else:
        lines.append("log tail: (no turn log)")
    return "\n".join(lines)


def revived(revival: Revival) -> str:
    """``revive``'s result: up, starting, or waiting for the operator."""
    if revival.approval_id is not None:
        return approval_queued(revival.approval_id, f"revive of {revival.name}")
    if revival.up:
        return f"{revival.name} revived: it is up again, its failures forgotten"
    return (f"{revival.name} revived: it is starting (not up yet); check agent_status in a "
            "while")


def timed_out(tool: str, deadline_s: float) -> str:
    """The error when the hive did not answer in time (it may still have done it)."""
    return (
        f"{tool}: the hive did not answer within {deadline_s:g}s; it may still have done it. "
        "Check (recv, or ask the manager) before trying again, so nothing is done twice"
    )


def failed(tool: str) -> str:
    """The error for a hive failure the model cannot fix (the details are in the hive's log)."""
    return (
        f"{tool} failed inside the hive (an internal error; the operator finds it in the hive's "
        "log). Try again later, or report it to the manager"
    )
