"""The loopback model server: pure decisions (directives, script policy, wire codec) and the
real HTTP server on 127.0.0.1 port 0, driven by a real HTTP client (httpx)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hive_actors.modelserver import (
    PROMPT_TOO_LONG_MESSAGE,
    DirectiveError,
    ModelServer,
    Reply,
    TextBlock,
    ToolUseBlock,
    parse_script,
    script_policy,
    text_reply,
)
from hive_actors.modelserver.conversation import is_compaction_request, newest_prompt
from hive_actors.modelserver.wire import (
    SSEDecoder,
    Usage,
    assemble_message,
    encode_sse,
    reply_events,
    reply_message,
)

TIMEOUT = 10.0
REMINDER = {
    "type": "text",
    "text": "<system-reminder>\nToday's date is 2026-11-25.\n</system-reminder>",
}
COMPACTION_PROMPT = (
    "CRITICAL: Respond with TEXT ONLY. ... Your task is to create a detailed summary of the "
    "conversation so far ... an <analysis> block followed by a <summary> block."
)


def user(*texts: str, extra: list[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    blocks: list[Mapping[str, Any]] = [REMINDER]
    blocks += [{"type": "text", "text": t} for t in texts]
    return {"role": "user", "content": blocks + (extra or [])}


def request(
    *messages: Mapping[str, Any], tools: tuple[str, ...] = ("Bash", "Read")
) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "stream": True,
        "tools": [{"name": t, "input_schema": {"type": "object"}} for t in tools],
        "messages": [{"role": "system", "content": "side note"}, *messages],
    }


def assistant_from(reply: Reply) -> dict[str, Any]:
    return reply_message(reply, model="m", message_id="msg_x", usage=Usage(1, 1))


def tool_result(use_id: str, text: str, *, is_error: bool = False) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": use_id, "content": text, "is_error": is_error},
            REMINDER,
        ],
    }


# -- directives --------------------------------------------------------------------------------


def test_parse_script_reads_every_directive_and_keeps_the_text() -> None:
    script = parse_script(
        'Please look.\n@tool Bash {"command": "ls"}\n  @tool mcp__hive__send {"to": "bob"}\n'
        "@sleep 1.5\n@sleep 0.5\n@say all good\n@alice is not a directive\n> @tool Quoted {}"
    )
    assert [(t.name, dict(t.args)) for t in script.tools] == [
        ("Bash", {"command": "ls"}),
        ("mcp__hive__send", {"to": "bob"}),
    ]
    assert script.sleep_s == 2.0 and script.say == "all good"
    assert script.text == "Please look.\n@alice is not a directive\n> @tool Quoted {}"
    assert not script.too_long and script.error is None
    assert parse_script("@too-long").too_long
    assert parse_script("@error overloaded").error == "overloaded"
    assert parse_script("@tool Read").tools[0].args == {}


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("@tool Bash {oops}", "not JSON"),
        ("@tool Bash [1]", "must be a JSON object"),
        ("@tool", "needs a tool name"),
        ("@sleep soon", "takes seconds"),
        ("@sleep -1", ">= 0"),
        ("@sleep nan", "finite"),
        ("@error teapot", "'overloaded' or 'api'"),
    ],
)
def test_malformed_directives_are_refused_with_the_fix(line: str, fragment: str) -> None:
    with pytest.raises(DirectiveError, match=fragment):
        parse_script(line)


# -- reading the request -----------------------------------------------------------------------


def test_newest_prompt_skips_meta_blocks_system_entries_and_tool_results() -> None:
    body = request(
        user("first"),
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
        user(
            "second",
            extra=[{"type": "text", "text": "<local-command-stdout>x</local-command-stdout>"}],
        ),
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}],
        },
        tool_result("t1", "@tool Bash {}"),
    )
    prompt = newest_prompt(body)
    assert prompt is not None and prompt.text == "second" and prompt.message_index == 3
    assert newest_prompt({"messages": "nonsense"}) is None


def test_compaction_request_is_recognized_as_string_or_block() -> None:
    assert is_compaction_request(
        request(user("hi"), {"role": "user", "content": COMPACTION_PROMPT})
    )
    assert is_compaction_request(request(user("hi", COMPACTION_PROMPT)))
    assert not is_compaction_request(request(user("summarize the conversation please")))


# -- the script policy -------------------------------------------------------------------------


def test_default_answer_is_text_that_ends_the_turn() -> None:
    reply = script_policy(request(user("hello there")))
    assert reply.kind == "default" and reply.stop_reason == "end_turn"
    assert isinstance(reply.content[0], TextBlock) and "hello there" in reply.content[0].text


def test_tools_are_asked_one_per_round_trip_then_a_final_text_quotes_results() -> None:
    prompt = user('@tool Bash {"command": "echo a"}\n@tool Read {"file_path": "/x"}\n@say finished')
    first = script_policy(request(prompt))
    assert first.kind == "tool_use" and first.stop_reason == "tool_use"
    (use1,) = first.content
    assert (
        isinstance(use1, ToolUseBlock)
        and use1.name == "Bash"
        and use1.input == {"command": "echo a"}
    )
    reminded = "a\n<system-reminder>\nnote\n</system-reminder>"
    history = [prompt, assistant_from(first), tool_result(use1.id, reminded)]
    # A side request in between changes nothing: the decision reads the conversation.
    assert script_policy(request(*history)) == script_policy(request(*history))
    second = script_policy(request(*history))
    (use2,) = second.content
    assert isinstance(use2, ToolUseBlock) and use2.name == "Read" and use2.id != use1.id
    history += [assistant_from(second), tool_result(use2.id, "denied", is_error=True)]
    final = script_policy(request(*history))
    assert final.kind == "final" and final.stop_reason == "end_turn"
    text = final.content[0]
    assert isinstance(text, TextBlock)
    assert text.text.splitlines() == ["finished", "Bash (ok): a", "Read (error): denied"]


def test_a_tool_not_offered_is_answered_in_text() -> None:
    reply = script_policy(request(user("@tool mcp__hive__send {}"), tools=("Bash",)))
    assert reply.kind == "tool-not-offered"
    assert isinstance(reply.content[0], TextBlock) and "mcp__hive__send" in reply.content[0].text


def test_errors_and_sleep() -> None:
    overloaded = script_policy(request(user("@error overloaded")))
    assert overloaded.error is not None and (overloaded.error.status, overloaded.error.type) == (
        529,
        "overloaded_error",
    )
    api = script_policy(request(user("@error api")))
    assert api.error is not None and api.error.status == 400
    assert script_policy(request(user("@sleep 2\nhi"))).delay_s == 2.0
    bad = script_policy(request(user("@sleep x")))
    assert bad.kind == "directive-error" and bad.error is None


def test_too_long_until_a_compaction_summary_absorbs_the_prompt() -> None:
    history = [user("earlier"), {"role": "assistant", "content": [{"type": "text", "text": "ok"}]}]
    prompt = user("@too-long\nbig work")
    reply = script_policy(request(*history, prompt))
    assert reply.error is not None and reply.error.message == PROMPT_TOO_LONG_MESSAGE
    assert reply.error.type == "invalid_request_error" and reply.error.status == 400
    # A compaction that did not see the prompt (auto-compaction) does not absorb it...
    partial = script_policy(request(*history, {"role": "user", "content": COMPACTION_PROMPT}))
    assert partial.kind == "summary"
    summary_text = partial.content[0]
    assert isinstance(summary_text, TextBlock) and "<summary>" in summary_text.text
    after_partial = request(user("Summary:\n" + summary_text.text), prompt)
    assert script_policy(after_partial).kind == "too-long"
    # ...one that summarized it (the prompt shares the compaction request's message) does.
    full = script_policy(request(*history, user("@too-long\nbig work", COMPACTION_PROMPT)))
    full_text = full.content[0]
    assert isinstance(full_text, TextBlock) and "absorbed-prompt:" in full_text.text
    assert "\n@too-long" not in full_text.text  # quoted, never a live directive
    retried = request(
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "This session is being continued ... " + full_text.text}
            ],
        },
        prompt,
    )
    assert script_policy(retried).kind == "default"
    # A different too-long prompt is still too long.
    assert (
        script_policy(request(*retried["messages"][1:-1], user("@too-long\nother"))).kind
        == "too-long"
    )


# -- the demo model: plain words ------------------------------------------------------------------

DEMO = "claude-sonnet-demo"
HIVE_TOOLS = ("Read", "Write", "mcp__hive__send", "mcp__hive__ask_operator", "mcp__hive__recv")


def hive_system(name: str, manager: bool) -> list[dict[str, Any]]:
    """The hive's part of an agent's system prompt, as ``hive_actors.agent.prompt`` words it."""
    role = "manager" if manager else "an agent"
    return [{"type": "text", "text": "You are Claude Code."}, {"type": "text", "text": (
        f"You are {name}, the {role} of a hive of Claude Code agents. You talk to the other "
        f"agents only through the hive's MCP tools.\n\nYour persistent directory is /h/{name}: "
        f"keep durable knowledge in /h/{name}/notes.md (it survives restarts)."
    )}]


def turn(name: str, *messages: tuple[str, str, str]) -> str:
    """A hive turn's prompt: ``(sender, kind, body)`` per message."""
    parts = [f"{len(messages)} new message(s) for {name}:"]
    parts += [f"--- message {i} from {sender} ({kind})\n{body}"
              for i, (sender, kind, body) in enumerate(messages, 1)]
    return "\n\n".join(parts)


def demo_request(name: str, manager: bool, *messages: Mapping[str, Any],
                 model: str = DEMO) -> dict[str, Any]:
    body = request(*messages, tools=HIVE_TOOLS)
    return {**body, "model": model, "system": hive_system(name, manager)}


def play(name: str, manager: bool, history: list[Mapping[str, Any]],
         results: list[tuple[str, bool]], model: str = DEMO) -> tuple[list[ToolUseBlock], str]:
    """Play a turn through: each tool call answered by the next of ``results``; the calls and
    the final text."""
    calls: list[ToolUseBlock] = []
    history = list(history)
    for _ in range(10):
        reply = script_policy(demo_request(name, manager, *history, model=model))
        block = reply.content[0]
        if isinstance(block, TextBlock):
            assert reply.stop_reason == "end_turn"
            return calls, block.text
        assert isinstance(block, ToolUseBlock) and reply.stop_reason == "tool_use"
        # The same request, asked again (a retry, a side request), gets the same answer.
        assert script_policy(demo_request(name, manager, *history, model=model)) == reply
        calls.append(block)
        text, is_error = results[len(calls) - 1]
        history += [assistant_from(reply), tool_result(block.id, text, is_error=is_error)]
    raise AssertionError(f"no final text after {calls}")


def test_the_demo_manager_passes_the_operators_words_on_and_answers() -> None:
    prompt = user(turn("boss", ("operator", "operator", "alice, please write the docs")))
    calls, final = play("boss", True, [prompt], [("message 7 queued for alice", False)])
    assert [(c.name, c.input["to"]) for c in calls] == [("mcp__hive__send", "alice")]
    assert calls[0].input["body"].startswith("alice, please write the docs\n")
    assert "alice" in final and "please write the docs" in final


def test_the_demo_manager_picks_the_agent_it_talked_with_and_asks_when_it_knows_none() -> None:
    earlier = user(turn("boss", ("operator", "operator", '@tool mcp__hive__send {"to": "bob"}')))
    sent = {"role": "assistant", "content": [
        {"type": "tool_use", "id": "t0", "name": "mcp__hive__send", "input": {"to": "bob"}},
    ]}
    heard = user(turn("boss", ("alice", "peer", "hi boss")))
    said = {"role": "assistant", "content": [{"type": "text", "text": "ok"}]}
    history = [earlier, sent, tool_result("t0", "ok"), heard, said]
    words = turn("boss", ("operator", "operator", "please write the docs"))
    calls, _ = play("boss", True, [*history, user(words)], [("ok", False)])
    assert calls[0].input["to"] == "alice"  # the last one it talked with
    named = turn("boss", ("operator", "operator", "bob should write the docs"))
    calls, _ = play("boss", True, [*history, user(named)], [("ok", False)])
    assert calls[0].input["to"] == "bob"  # the one the words name
    calls, final = play("boss", True, [user(words)], [("question 3 asked", False)])
    assert [c.name for c in calls] == ["mcp__hive__ask_operator"]
    assert "please write the docs" in calls[0].input["question"] and "asked you" in final
    calls, final = play("boss", True, [user(named)], [("no agent named 'x'", True)])
    assert [c.name for c in calls] == ["mcp__hive__ask_operator"]


def test_a_demo_agent_reads_its_notes_and_tells_the_manager() -> None:
    prompt = user(turn("alice", ("boss", "manager", "please write the docs\n\n(from the operator)")))
    calls, final = play("alice", False, [prompt],
                        [("     1\tthe docs live in docs/\n     2\tuse short lines", False),
                         ("message 9 queued for boss", False)])
    assert [c.name for c in calls] == ["Read", "mcp__hive__send"]
    assert calls[0].input == {"file_path": "/h/alice/notes.md"}
    assert calls[1].input["to"] == "boss" and "2 lines" in calls[1].input["body"]
    assert "2 lines" in final and "told boss" in final
    # From the operator itself: the notes are read, and there is nobody to send to.
    direct = user(turn("alice", ("operator", "operator", "tidy up")))
    calls, final = play("alice", False, [direct], [("File does not exist.", True)])
    assert [c.name for c in calls] == ["Read"] and "none yet" in final


def test_plain_words_between_agents_or_with_directives_or_off_the_demo_are_answered_as_before(
) -> None:
    def answer(name: str, manager: bool, text: str, model: str = DEMO) -> Reply:
        return script_policy(demo_request(name, manager, user(text), model=model))

    plain = turn("boss", ("operator", "operator", "please write the docs"))
    # Off the demo model: the echo, as ever.
    assert answer("boss", True, plain, model="claude-sonnet-test").kind == "default"
    # An agent's reply to the manager, a peer's message, a system notice: never passed on.
    for sender, kind in (("alice", "peer"), ("hive", "system")):
        assert answer("boss", True, turn("boss", (sender, kind, "done"))).kind == "default"
        assert answer("bob", False, turn("bob", (sender, kind, "hello bob"))).kind == "default"
    # An answer to the manager's question is acknowledged, not passed on.
    answered = turn("boss", ("operator", "operator", "Answer to your question 3 ('Who?'):\nbob"))
    noted = answer("boss", True, answered)
    assert noted.kind == "plain-noted" and noted.stop_reason == "end_turn"
    # A directive anywhere in the prompt: the script, exactly.
    scripted = turn("boss", ("operator", "operator", "please\n@say scripted"))
    reply = answer("boss", True, scripted)
    assert reply.kind == "say" and reply.content == (TextBlock("scripted"),)
    # Not a hive turn: the echo.
    assert answer("boss", True, "hello there").kind == "default"


# -- wire codec --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
blocks = st.one_of(
    st.builds(TextBlock, st.text()),
    st.builds(
        ToolUseBlock,
        id=st.text(alphabet="abcdef0123456789", min_size=1, max_size=10),
        name=st.text(min_size=1, max_size=20),
        input=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    ),
)


@given(
    content=st.lists(blocks, max_size=4),
    model=st.text(min_size=1, max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=6),
)
def test_sse_round_trip_rebuilds_the_message(
    content: list[Any], model: str, cuts: list[int]
) -> None:
    has_tool = any(isinstance(b, ToolUseBlock) for b in content)
    reply = Reply(
        kind="x", content=tuple(content), stop_reason="tool_use" if has_tool else "end_turn"
    )
    usage = Usage(input_tokens=7, output_tokens=3)
    raw = encode_sse(reply_events(reply, model=model, message_id="msg_1", usage=usage))
    decoder = SSEDecoder()
    events = []
    points = sorted({min(c, len(raw)) for c in cuts})
    for start, end in zip([0, *points], [*points, len(raw)], strict=True):
        events += decoder.feed(raw[start:end])
    assert [e.event for e in events][0] == "message_start" and events[-1].event == "message_stop"
    assert all(e.event == e.data["type"] for e in events)
    assert assemble_message(events) == reply_message(
        reply, model=model, message_id="msg_1", usage=usage
    )


def test_sse_decoder_handles_crlf_comments_and_multiline_data() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(
        b': ping\r\nevent: x\r\ndata: {"a":\r\ndata: 1}\r\n\r\ndata: {"type": "y"}\n\n'
    )
    assert [(e.event, dict(e.data)) for e in events] == [("x", {"a": 1}), ("y", {"type": "y"})]
    with pytest.raises(ValueError, match="not JSON"):
        decoder.feed(b"data: nope\n\n")


# -- the HTTP server ---------------------------------------------------------------------------


def post(
    server: ModelServer, body: Mapping[str, Any], path: str = "/v1/messages?beta=true"
) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=TIMEOUT)


def test_streaming_answer_is_valid_sse_and_is_logged(server: ModelServer) -> None:
    response = post(server, request(user('@tool Bash {"command": "ls"}')))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    message = assemble_message(SSEDecoder().feed(response.content))
    assert message["stop_reason"] == "tool_use" and message["model"] == "claude-sonnet-4-5"
    assert message["content"][0]["input"] == {"command": "ls"}
    assert message["usage"]["input_tokens"] > 0
    record = server.wait_for_request(1, TIMEOUT)
    assert (record.kind, record.model, record.stream, record.status) == (
        "tool_use",
        "claude-sonnet-4-5",
        True,
        200,
    )
    assert record.tools == ("Bash", "Read") and record.prompt == '@tool Bash {"command": "ls"}'


def test_non_streaming_and_side_routes(server: ModelServer) -> None:
    body = dict(request(user("hi")), stream=False, model="claude-haiku-4-5")
    message = post(server, body).json()
    assert message["type"] == "message" and message["content"][0]["type"] == "text"
    assert message["model"] == "claude-haiku-4-5"
    assert post(server, body, "/v1/messages/count_tokens").json()["input_tokens"] > 0
    assert httpx.head(server.url + "/", timeout=TIMEOUT).status_code == 200
    missing = httpx.get(server.url + "/v2/nothing", timeout=TIMEOUT)
    assert missing.status_code == 404 and missing.json()["type"] == "error"
    broken = httpx.post(server.url + "/v1/messages", content=b"{nope", timeout=TIMEOUT)
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"
    assert [r.kind for r in server.requests] == ["default", "count_tokens"]


def test_error_replies_use_the_api_error_shape(server: ModelServer) -> None:
    overloaded = post(server, request(user("@error overloaded")))
    assert overloaded.status_code == 529
    assert overloaded.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    too_long = post(server, request(user("@too-long")))
    assert (
        too_long.status_code == 400
        and too_long.json()["error"]["message"] == PROMPT_TOO_LONG_MESSAGE
    )


def test_a_custom_policy_is_used_and_a_failing_one_answers_500(server: ModelServer) -> None:
    server.policy = lambda body: text_reply(f"custom for {body['model']}", kind="custom")
    assert (
        "custom for claude-sonnet-4-5" in post(server, dict(request(user("x")), stream=False)).text
    )

    def broken(body: Mapping[str, Any]) -> Reply:
        raise RuntimeError("boom")

    server.policy = broken
    response = post(server, request(user("x")))
    assert response.status_code == 500 and "boom" in response.json()["error"]["message"]
    assert server.requests[-1].kind == "policy-error"


def test_wait_for_times_out_with_what_was_served(server: ModelServer) -> None:
    post(server, request(user("hi")))
    with pytest.raises(TimeoutError, match="default"):
        server.wait_for(lambda r: r.kind == "never", timeout=0.2)


def test_stop_cuts_a_scripted_delay_short_and_joins_threads() -> None:
    decided = threading.Event()

    def policy(body: Mapping[str, Any]) -> Reply:
        reply = script_policy(body)
        decided.set()  # the handler goes on into the reply's delay
        return reply

    before = set(threading.enumerate())
    server = ModelServer(script=policy).start()
    failures: list[BaseException] = []

    def slow_client() -> None:
        try:
            post(server, request(user("@sleep 60")))
        except httpx.HTTPError as exc:  # the server hangs up: that is the expected end
            failures.append(exc)

    client = threading.Thread(target=slow_client)
    client.start()
    assert decided.wait(TIMEOUT)
    started = time.monotonic()
    server.stop()
    client.join(TIMEOUT)
    assert not client.is_alive()
    assert time.monotonic() - started < 5.0
    assert failures and server.requests[0].kind == "default:abandoned"
    assert [t for t in threading.enumerate() if t not in before and t is not client] == []


def test_port_can_be_reused_right_after_stop() -> None:
    with ModelServer() as first:
        port = first.port
        post(first, request(user("hi")))  # leaves a connection to close on stop
    with ModelServer(port=port) as second:
        assert second.port == port
        assert post(second, request(user("hi"))).status_code == 200


def test_port_and_url_need_a_started_server() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = ModelServer().url


def test_record_session_header(server: ModelServer) -> None:
    httpx.post(
        server.url + "/v1/messages",
        json=request(user("hi")),
        headers={"X-Claude-Code-Session-Id": "abc"},
        timeout=TIMEOUT,
    )
    assert server.wait_for_request(1, TIMEOUT).session_id == "abc"
    assert json.loads(json.dumps(server.requests[0].extra)) == {}
