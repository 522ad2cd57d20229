"""The loopback model server: the only "model" of the hive's tests and demo.

It speaks the Anthropic Messages API as far as the ``claude`` CLI 2.1.331 uses it, and answers
as a policy decides; the default policy follows directives in the newest user prompt (see
:mod:`hive_actors.modelserver.directives`); a demo model (``claude-sonnet-demo``) also acts on a
hive turn of the operator's plain words (:mod:`hive_actors.modelserver.plain`)::

    with ModelServer() as server:
        env["ANTHROPIC_BASE_URL"] = server.url
        ...  # run claude -p "@tool Bash {\\"command\\": \\"echo hi\\"}"
        server.wait_for(lambda r: r.kind == "final", timeout=30)
"""

from __future__ import annotations

from hive_actors.modelserver.directives import DirectiveError, Script, ToolDirective, parse_script
from hive_actors.modelserver.replies import (
    ApiError,
    Policy,
    Reply,
    TextBlock,
    ToolUseBlock,
    api_error,
    text_reply,
    tool_use_reply,
)
from hive_actors.modelserver.script import PROMPT_TOO_LONG_MESSAGE, script_policy
from hive_actors.modelserver.server import ModelServer, RequestRecord

__all__ = [
    "PROMPT_TOO_LONG_MESSAGE",
    "ApiError",
    "DirectiveError",
    "ModelServer",
    "Policy",
    "Reply",
    "RequestRecord",
    "Script",
    "TextBlock",
    "ToolDirective",
    "ToolUseBlock",
    "api_error",
    "parse_script",
    "script_policy",
    "text_reply",
    "tool_use_reply",
]
