"""What the model reads: tool descriptions and the text of every tool result. Pure.

A tool result is the model's only view of what happened, so each one names the id it can
refer to later and what happens next (who reads the message, who decides the approval).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hive_actors.agent.notices import render_message_body

from .ops import AgentStatus, Draft, InboxMessage, Revival

__all__ = [
    "DESCRIPTIONS",
    "NO_NEW_MESSAGES",
    "agent_status",
    "approval_queued",
    "draft_staged",
    "failed",
    "inbox",
    "message_line",
    "question_asked",
    "revived",
    "sent",
    "timed_out",
]

NO_NEW_MESSAGES = "no new messages"

_MANAGER_ONLY = "Only the hive's manager may call this; any other agent is refused. "

DESCRIPTIONS: Mapping[str, str] = {
    "send": (
        "Send a message to another agent of the hive, by its name (e.g. 'manager', 'alice'). "
        "You are always the sender. The message is stored durably before this returns and the "
        "recipient reads it in its next turn. Returns the message id. Use it to hand over "
        "work, answer a question, or report progress. An unknown or destroyed recipient is "
        "refused with the reason."
    ),
    "recv": (
        "Fetch the messages that arrived for you and that you have not seen yet (those that "
        "started your turn are already in your prompt). Returns one line per message, "
        "'from <sender> (<kind>): <body>', oldest first, or 'no new messages'. Kinds: peer "
        "(another agent), manager, operator (the human running the hive), system (the hive "
        "itself: approvals decided, crashes, restarts)."
    ),
    "request_spawn": (
        _MANAGER_ONLY + "Ask the operator to approve creating a new agent called <name> with "
        "the default config and an empty state directory. Names: 1-11 lower-case letters, "
        "digits or '-', starting with a letter. Returns the approval id; the operator decides "
        "in the dashboard and the outcome arrives in your inbox as a system message. To "
        "prepare the agent's config first, use request_spawn_draft instead."
    ),
    "request_spawn_draft": (
        _MANAGER_ONLY + "Stage a new agent <name> without starting it: the host creates its "
        "config repository and state directory (no container, no approval needed yet). Edit "
        "and commit its config, add initial notes, then call request_spawn_commit(name, ref) "
        "to ask the operator to start it. Returns where the draft's files are."
    ),
    "request_spawn_commit": (
        _MANAGER_ONLY + "Ask the operator to approve starting draft agent <name> from config "
        "commit <ref> (a commit of its config repository). The operator reviews the diff in "
        "the dashboard. Returns the approval id; the outcome arrives in your inbox as a system "
        "message."
    ),
    "apply_commit": (
        _MANAGER_ONLY + "Ask the operator to approve applying config commit <ref> to the "
        "existing agent <name>; once approved, the host applies it and restarts that agent. "
        "Returns the approval id; the outcome arrives in your inbox as a system message."
    ),
    "ask_operator": (
        _MANAGER_ONLY + "Ask the human operator a question (a decision, a missing fact, a "
        "permission). Returns the question id at once; the answer arrives later in your inbox "
        "as an operator message. Do not wait for it in this turn."
    ),
    "agent_status": (
        _MANAGER_ONLY + "Look at agent <name>: its state (idle, busy, backoff, given_up, "
        "stopped…), generation, how many restarts the hive decided for it and its restart "
        "limits, its last crash, the latest supervision notice about it, and the tail of its "
        "turn log. Use it when a system message says an agent crashed, stalled or was given up, "
        "before deciding what to do (revive it, change its config, or ask the operator)."
    ),
    "revive": (
        _MANAGER_ONLY + "Start agent <name> again after the hive gave it up (or it was stopped "
        "or left crashed); its failures are forgotten. Fix what made it crash first (check "
        "agent_status), or it will be given up again. Returns whether it is up or starting; if "
        "the operator decides revivals ([supervision] revive_needs_approval), it returns the "
        "approval id instead and the decision arrives in your inbox as a system message. The "
        "manager itself cannot be revived this way."
    ),
}
"""Each tool's description, written for the model."""


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
