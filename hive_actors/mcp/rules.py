"""Who may call which hive tool: pure decisions, no HTTP, no threads, no clock.

Every call is attributed to the caller its bearer token names, never to an argument. A
sub-agent sees the same tool list as the manager (the CLI lists what the server offers), but
the manager tools refuse it with a message that tells the model what to do instead. There is
no approve tool at all: approving is the operator's, in the dashboard. Which tools exist and
which are the manager's is read from the one table, :data:`.tools.TOOLS`.
"""

from __future__ import annotations

from hive_actors.errors import Refused

from .tokens import Caller
from .tools import AGENT_TOOLS, MANAGER_TOOLS, TOOL_NAMES

__all__ = [
    "AGENT_TOOLS",
    "MANAGER_TOOLS",
    "TOOL_NAMES",
    "authorize",
]


def authorize(caller: Caller | None, tool: str, *, token_present: bool) -> Caller:
    """Return the caller allowed to call ``tool``, or raise :class:`Refused` saying why.

    ``caller`` is what the token book made of the request's token (None: no token, or an
    unknown or revoked one); ``token_present`` tells those two apart for the message.
    """
    if tool not in TOOL_NAMES:
        raise Refused(f"the hive has no tool {tool!r}: its tools are {', '.join(TOOL_NAMES)}")
    if caller is None:
        if not token_present:
            raise Refused(
                f"{tool} refused: the call carries no hive token. The hive knows an agent only "
                "by the 'Authorization: Bearer' header of its --mcp-config; the host writes it "
                "for each turn"
            )
        raise Refused(
            f"{tool} refused: the call's hive token is unknown, revoked or expired (a token "
            "lasts one turn of its agent); the hive's tools answer only within the turn the "
            "host issued the token for"
        )
    if tool in MANAGER_TOOLS and not caller.is_manager:
        raise Refused(f"{tool} is for the manager; ask the manager to do it")
    return caller
