"""The hive's MCP tools, declared once: name, description, handler and who may call it.

:data:`TOOLS` is the one table. The rules (:mod:`.rules`: who may call what), the descriptions
the model reads (:func:`.render.description`) and the server (:class:`.surface.HiveSurface`
registers one MCP tool per entry) all read it, so a new tool is one :class:`Tool` entry here
and one :class:`~.ops.HiveOps` method for its handler to call (the type checker finds a handler
that calls an operation the protocol lacks; ``tests/test_mcp_surface.py`` checks that every
entry is served, described and ruled, and nothing else).

A handler is an ``async`` function whose first parameter is the :class:`HiveCall` the surface
hands it (the call already authenticated and authorized); its other parameters are the tool's
arguments, annotated for the input schema the model sees. It returns the text blocks of the
result (:mod:`.render`). Pure: no HTTP, no threads; the surface runs the hive call in a worker
thread under the call deadline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Concatenate, ParamSpec, Protocol, TypeVar

from pydantic import Field

from . import render
from .ops import HiveOps

__all__ = [
    "AGENT_TOOLS",
    "DESCRIPTIONS",
    "MANAGER_TOOLS",
    "TOOLS",
    "TOOL_NAMES",
    "HiveCall",
    "Tool",
    "ToolHandler",
]

_P = ParamSpec("_P")
_T = TypeVar("_T")

AgentName = Annotated[
    str, Field(description="An agent's name: 1-11 lower-case letters, digits or '-'.")
]
ConfigRef = Annotated[
    str, Field(description="A commit of the agent's config repository (a hash or a ref).")
]
Recipient = Annotated[str, Field(description="The recipient agent's name.")]
MessageBody = Annotated[str, Field(description="The message text.")]
Question = Annotated[str, Field(description="The question, self-contained.")]


class HiveCall(Protocol):
    """What a handler is handed: the hive's operations, called on behalf of the caller."""

    @property
    def ops(self) -> HiveOps:
        """The hive's operations (pass a method to the call, never call it directly)."""
        ...

    async def __call__(
        self, fn: Callable[Concatenate[str, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """``fn(caller, *args)`` in a worker thread under the call deadline; its result."""
        ...


ToolHandler = Callable[..., Awaitable[str | Sequence[str]]]
"""``async def handler(hive: HiveCall, <the tool's arguments>) -> str | Sequence[str]``."""


@dataclass(frozen=True, slots=True)
class Tool:
    """One tool of the hive MCP server."""

    name: str
    """The tool's name, as the model calls it."""
    description: str
    """What it does, written for the model (the manager-only sentence is added by
    :func:`.render.description` from :attr:`manager_only`)."""
    handler: ToolHandler
    """Runs it: ``(hive, **arguments) -> text blocks``; its parameters after ``hive`` are the
    tool's input schema."""
    manager_only: bool
    """Only the manager may call it; any other agent is refused before the hive is asked."""


# -- handlers: one hive operation each, its result rendered for the model ---------------------


async def _send(hive: HiveCall, to: Recipient, body: MessageBody) -> str:
    return render.sent(await hive(hive.ops.send, to, body), to)


async def _recv(hive: HiveCall) -> Sequence[str]:
    return render.inbox(await hive(hive.ops.recv))


async def _request_spawn(hive: HiveCall, name: AgentName) -> str:
    return render.approval_queued(await hive(hive.ops.request_spawn, name), f"spawn of {name}")


async def _request_spawn_draft(hive: HiveCall, name: AgentName) -> str:
    return render.draft_staged(await hive(hive.ops.request_spawn_draft, name))


async def _request_spawn_commit(hive: HiveCall, name: AgentName, ref: ConfigRef) -> str:
    approval = await hive(hive.ops.request_spawn_commit, name, ref)
    return render.approval_queued(approval, f"spawn of draft {name} @ {ref}")


async def _apply_commit(hive: HiveCall, name: AgentName, ref: ConfigRef) -> str:
    approval = await hive(hive.ops.apply_commit, name, ref)
    return render.approval_queued(approval, f"config {ref} for {name}")


async def _ask_operator(hive: HiveCall, question: Question) -> str:
    return render.question_asked(await hive(hive.ops.ask_operator, question))


async def _agent_status(hive: HiveCall, name: AgentName) -> str:
    return render.agent_status(await hive(hive.ops.agent_status, name))


async def _revive(hive: HiveCall, name: AgentName) -> str:
    return render.revived(await hive(hive.ops.revive, name))


# -- the table ---------------------------------------------------------------------------------

TOOLS: tuple[Tool, ...] = (
    Tool(
        name="send",
        description=(
            "Send a message to another agent of the hive, by its name (e.g. 'manager', "
            "'alice'). You are always the sender. The message is stored durably before this "
            "returns and the recipient reads it in its next turn. Returns the message id. Use "
            "it to hand over work, answer a question, or report progress. An unknown or "
            "destroyed recipient is refused with the reason."
        ),
        handler=_send,
        manager_only=False,
    ),
    Tool(
        name="recv",
        description=(
            "Fetch the messages that arrived for you and that you have not seen yet (those "
            "that started your turn are already in your prompt). Returns one line per message, "
            "'from <sender> (<kind>): <body>', oldest first, or 'no new messages'. Kinds: peer "
            "(another agent), manager, operator (the human running the hive), system (the hive "
            "itself: approvals decided, crashes, restarts)."
        ),
        handler=_recv,
        manager_only=False,
    ),
    Tool(
        name="request_spawn",
        description=(
            "Ask the operator to approve creating a new agent called <name> with the default "
            "config and an empty state directory. Names: 1-11 lower-case letters, digits or "
            "'-', starting with a letter. Returns the approval id; the operator decides in the "
            "dashboard and the outcome arrives in your inbox as a system message. To prepare "
            "the agent's config first, use request_spawn_draft instead."
        ),
        handler=_request_spawn,
        manager_only=True,
    ),
    Tool(
        name="request_spawn_draft",
        description=(
            "Stage a new agent <name> without starting it: the host creates its config "
            "repository and state directory (no container, no approval needed yet). Edit and "
            "commit its config, add initial notes, then call request_spawn_commit(name, ref) "
            "to ask the operator to start it. Returns where the draft's files are."
        ),
        handler=_request_spawn_draft,
        manager_only=True,
    ),
    Tool(
        name="request_spawn_commit",
        description=(
            "Ask the operator to approve starting draft agent <name> from config commit <ref> "
            "(a commit of its config repository). The operator reviews the diff in the "
            "dashboard. Returns the approval id; the outcome arrives in your inbox as a system "
            "message."
        ),
        handler=_request_spawn_commit,
        manager_only=True,
    ),
    Tool(
        name="apply_commit",
        description=(
            "Ask the operator to approve applying config commit <ref> to the existing agent "
            "<name>; once approved, the host applies it and restarts that agent. Returns the "
            "approval id; the outcome arrives in your inbox as a system message."
        ),
        handler=_apply_commit,
        manager_only=True,
    ),
    Tool(
        name="ask_operator",
        description=(
            "Ask the human operator a question (a decision, a missing fact, a permission). "
            "Returns the question id at once; the answer arrives later in your inbox as an "
            "operator message. Do not wait for it in this turn."
        ),
        handler=_ask_operator,
        manager_only=True,
    ),
    Tool(
        name="agent_status",
        description=(
            "Look at agent <name>: its state (idle, busy, backoff, given_up, stopped…), "
            "generation, how many restarts the hive decided for it and its restart limits, its "
            "last crash, the latest supervision notice about it, and the tail of its turn log. "
            "Use it when a system message says an agent crashed, stalled or was given up, "
            "before deciding what to do (revive it, change its config, or ask the operator)."
        ),
        handler=_agent_status,
        manager_only=True,
    ),
    Tool(
        name="revive",
        description=(
            "Start agent <name> again after the hive gave it up (or it was stopped or left "
            "crashed); its failures are forgotten. Fix what made it crash first (check "
            "agent_status), or it will be given up again. Returns whether it is up or "
            "starting; if the operator decides revivals ([supervision] revive_needs_approval), "
            "it returns the approval id instead and the decision arrives in your inbox as a "
            "system message. The manager itself cannot be revived this way."
        ),
        handler=_revive,
        manager_only=True,
    ),
)
"""Every tool of the hive MCP server, in the order they are listed."""

TOOL_NAMES: tuple[str, ...] = tuple(tool.name for tool in TOOLS)
"""Every tool's name, in the order they are listed."""

AGENT_TOOLS: tuple[str, ...] = tuple(tool.name for tool in TOOLS if not tool.manager_only)
"""Tools every agent may call."""

MANAGER_TOOLS: tuple[str, ...] = tuple(tool.name for tool in TOOLS if tool.manager_only)
"""Tools only the manager may call."""

DESCRIPTIONS: Mapping[str, str] = {tool.name: render.description(tool) for tool in TOOLS}
"""Each tool's description as the model reads it."""

if len(set(TOOL_NAMES)) != len(TOOLS):  # pragma: no cover - a table edit gone wrong
    raise AssertionError(f"hive MCP tool names are not unique: {TOOL_NAMES}")
