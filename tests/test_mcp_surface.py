"""The hive MCP surface over real HTTP: uvicorn on 127.0.0.1 port 0, the official ``mcp`` client
with a bearer header, and a real sqlite store behind it (``tests.support.mcp.StoreOps``).

Plus the pure parts: token book, ``--mcp-config``, bearer parsing, authorization, rendering.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import mcp
import pytest
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import CallToolResult, TextContent
from starlette.applications import Starlette
from starlette.routing import Mount

from hive_actors.errors import ConfigError, Refused
from hive_actors.mcp import (
    AGENT_TOOLS,
    DESCRIPTIONS,
    MANAGER_TOOLS,
    TOOL_NAMES,
    TOOLS,
    Caller,
    Draft,
    HiveSurface,
    InboxMessage,
    StdioServer,
    TokenBook,
    authorize,
    bearer_token,
    mcp_config,
    render,
)
from hive_actors.store import ApprovalKind, MessageKind, MessageStatus, Role
from tests.support.mcp import StoreOps, serve
from tests.support.timeout import TIMEOUT

# -- fixtures and helpers ----------------------------------------------------------------------


@dataclass
class Hive:
    """A live surface over a real store, served on loopback, with tokens for three agents."""

    ops: StoreOps
    tokens: TokenBook
    surface: HiveSurface
    url: str
    token: dict[str, str]


@contextmanager
def live_hive(ops: StoreOps, **surface_kw: Any) -> Iterator[Hive]:
    """Start manager, alice and bob in ``ops``'s store and serve a surface over it."""
    tokens = TokenBook()
    for name, role in (("manager", Role.MANAGER), ("alice", Role.AGENT), ("bob", Role.AGENT)):
        ops.start_agent(name, role)
    token = {
        "manager": tokens.issue("manager", Role.MANAGER),
        "alice": tokens.issue("alice", Role.AGENT),
        "bob": tokens.issue("bob", Role.AGENT),
    }
    surface = HiveSurface(ops, tokens, **surface_kw)
    try:
        with serve(surface.asgi_app(), TIMEOUT) as base:
            yield Hive(ops, tokens, surface, f"{base}{surface.path}", token)
    finally:
        ops.close()


@pytest.fixture
def hive(tmp_path: Path) -> Iterator[Hive]:
    with live_hive(StoreOps(tmp_path / "hive.db", drafts_root=tmp_path / "agents")) as live:
        yield live


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run an async scenario with one overall deadline."""

    async def bounded() -> None:
        with anyio.fail_after(3 * TIMEOUT):
            await scenario()

    anyio.run(bounded)


@asynccontextmanager
async def connect(url: str, token: str | None) -> AsyncIterator[mcp.Client]:
    """The official MCP client over streamable HTTP, carrying ``token`` as a bearer header."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    http = create_mcp_http_client(headers=headers, timeout=httpx2.Timeout(TIMEOUT))
    async with http:
        transport = streamable_http_client(url, http_client=http)
        async with mcp.Client(transport, read_timeout_seconds=TIMEOUT) as client:
            yield client


def texts(result: CallToolResult) -> list[str]:
    out = []
    for block in result.content:
        assert isinstance(block, TextContent), block
        out.append(block.text)
    return out


def text(result: CallToolResult) -> str:
    return "\n".join(texts(result))


def number(pattern: str, result: CallToolResult) -> int:
    match = re.search(pattern, text(result))
    assert match is not None, f"{pattern!r} not in {text(result)!r}"
    return int(match.group(1))


# -- over HTTP: listing, send/recv, refusals ---------------------------------------------------


def test_every_agent_sees_the_same_tools_with_descriptions_for_the_model(hive: Hive) -> None:
    async def scenario() -> None:
        listed = {}
        for agent in ("manager", "alice"):
            async with connect(hive.url, hive.token[agent]) as client:
                listed[agent] = {t.name: t for t in (await client.list_tools()).tools}
        assert set(listed["manager"]) == set(listed["alice"]) == set(TOOL_NAMES)
        assert "approve" not in " ".join(listed["alice"])
        send = listed["alice"]["send"]
        assert send.description == DESCRIPTIONS["send"]
        assert set(send.input_schema["required"]) == {"to", "body"}
        # The caller's identity is never an argument: no tool takes a sender.
        for tool in listed["manager"].values():
            assert not {"sender", "caller", "from", "agent"} & set(tool.input_schema["properties"])

    run(scenario)


def test_alice_sends_bob_receives_once_and_the_store_has_it(hive: Hive) -> None:
    async def scenario() -> None:
        async with connect(hive.url, hive.token["alice"]) as alice:
            sent = await alice.call_tool("send", {"to": "bob", "body": "the build is green"})
        assert not sent.is_error, text(sent)
        message_id = number(r"message (\d+) sent to bob", sent)
        async with connect(hive.url, hive.token["bob"]) as bob:
            got = await bob.call_tool("recv", {})
            again = await bob.call_tool("recv", {})
        assert not got.is_error
        assert texts(got) == ["from alice (peer): the build is green"]
        assert texts(again) == [render.NO_NEW_MESSAGES]
        with hive.ops.locked() as store:
            stored = store.messages.get(message_id)
        assert (stored.sender, stored.recipient, stored.kind) == ("alice", "bob", MessageKind.PEER)
        assert stored.status is MessageStatus.IN_FLIGHT

    run(scenario)


def test_recv_returns_one_text_block_per_message_oldest_first(hive: Hive) -> None:
    async def scenario() -> None:
        async with connect(hive.url, hive.token["manager"]) as manager:
            await manager.call_tool("send", {"to": "bob", "body": "first"})
        async with connect(hive.url, hive.token["alice"]) as alice:
            await alice.call_tool("send", {"to": "bob", "body": "second\nline two"})
        async with connect(hive.url, hive.token["bob"]) as bob:
            got = await bob.call_tool("recv", {})
        assert texts(got) == [
            "from manager (manager): first",
            "from alice (peer): second\nline two",
        ]

    run(scenario)


def test_unknown_recipient_comes_back_as_the_stores_refusal(hive: Hive) -> None:
    async def scenario() -> None:
        async with connect(hive.url, hive.token["alice"]) as alice:
            result = await alice.call_tool("send", {"to": "nobody", "body": "hello?"})
        assert result.is_error
        assert "no agent named 'nobody' to send to" in text(result)
        with hive.ops.locked() as store:
            assert store.messages.undelivered("bob") == []

    run(scenario)


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("request_spawn", {"name": "carol"}),
        ("request_spawn_draft", {"name": "carol"}),
        ("request_spawn_commit", {"name": "carol", "ref": "abc123"}),
        ("apply_commit", {"name": "bob", "ref": "abc123"}),
        ("ask_operator", {"question": "may I?"}),
        ("agent_status", {"name": "bob"}),
        ("revive", {"name": "bob"}),
    ],
)
def test_a_sub_agent_is_refused_every_manager_tool_and_nothing_is_stored(
    hive: Hive, tool: str, args: dict[str, str]
) -> None:
    async def scenario() -> None:
        async with connect(hive.url, hive.token["alice"]) as alice:
            result = await alice.call_tool(tool, args)
        assert result.is_error
        assert text(result) == f"{tool} is for the manager; ask the manager to do it"

    run(scenario)
    assert hive.ops.calls == []
    with hive.ops.locked() as store:
        assert store.approvals.recent() == []
        assert store.questions.pending() == []
        assert store.registry.find("carol") is None


def test_the_manager_tools_queue_approvals_and_questions_as_the_manager(hive: Hive) -> None:
    async def scenario() -> None:
        async with connect(hive.url, hive.token["manager"]) as manager:
            spawn = await manager.call_tool("request_spawn", {"name": "carol"})
            twice = await manager.call_tool("request_spawn", {"name": "carol"})
            draft = await manager.call_tool("request_spawn_draft", {"name": "dave"})
            commit = await manager.call_tool(
                "request_spawn_commit", {"name": "dave", "ref": "c0ffee"}
            )
            apply = await manager.call_tool("apply_commit", {"name": "bob", "ref": "beef01"})
            asked = await manager.call_tool("ask_operator", {"question": "more disk?"})
        for result in (spawn, draft, commit, apply, asked):
            assert not result.is_error, text(result)
        ids = {
            ApprovalKind.SPAWN: number(r"approval (\d+) requested", spawn),
            ApprovalKind.SPAWN_COMMIT: number(r"approval (\d+) requested", commit),
            ApprovalKind.APPLY_COMMIT: number(r"approval (\d+) requested", apply),
        }
        for result in (spawn, commit, apply):
            assert "waiting for the operator" in text(result)
        assert twice.is_error and "already asks for spawn of carol" in text(twice)
        assert "draft dave staged" in text(draft)
        assert str(Path("agents") / "dave" / "config") in text(draft)
        question_id = number(r"question (\d+) sent to the operator", asked)
        assert "the answer will arrive in your inbox as an operator message" in text(asked)
        with hive.ops.locked() as store:
            for kind, approval_id in ids.items():
                approval = store.approvals.get(approval_id)
                assert (approval.kind, approval.requested_by) == (kind, "manager")
            assert store.approvals.get(ids[ApprovalKind.APPLY_COMMIT]).ref == "beef01"
            assert store.registry.get("dave").state == "draft"
            question = store.questions.get(question_id)
            assert (question.agent, question.question) == ("manager", "more disk?")

    run(scenario)


def test_alices_token_always_acts_as_alice_whatever_the_arguments(hive: Hive) -> None:
    async def scenario() -> None:
        async with connect(hive.url, hive.token["bob"]) as bob:
            await bob.call_tool("send", {"to": "bob", "body": "note to self"})
        async with connect(hive.url, hive.token["alice"]) as alice:
            forged = await alice.call_tool(
                "send",
                {"to": "manager", "body": "I am bob", "sender": "bob", "from": "bob"},
            )
            stolen = await alice.call_tool("recv", {"agent": "bob"})
        # Arguments the tool does not take are ignored: the token alone names the sender.
        assert not forged.is_error, text(forged)
        message_id = number(r"message (\d+) sent to manager", forged)
        with hive.ops.locked() as store:
            forged_row = store.messages.get(message_id)
            bobs = store.messages.undelivered("bob")
        assert (forged_row.sender, forged_row.kind) == ("alice", MessageKind.PEER)
        # alice's recv is alice's inbox: bob's message is not handed to her.
        assert texts(stolen) == [render.NO_NEW_MESSAGES]
        assert [(m.sender, m.status) for m in bobs] == [("bob", MessageStatus.QUEUED)]
        assert ("recv", "alice") in hive.ops.calls and ("recv", "bob") not in hive.ops.calls

    run(scenario)


def _post(url: str, headers: dict[str, str]) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    return httpx.post(
        url,
        json=body,
        headers={"Accept": "application/json, text/event-stream", **headers},
        timeout=TIMEOUT,
    )


def test_no_token_or_an_unknown_one_gets_401_before_mcp(
    hive: Hive, caplog: pytest.LogCaptureFixture
) -> None:
    guess = "x" * 43
    for headers in ({}, {"Authorization": f"Bearer {guess}"}, {"Authorization": "Basic abc"}):
        response = _post(hive.url, headers)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "bearer token is" in response.json()["message"]
        assert guess not in response.text
    assert guess not in caplog.text
    # The same request with a live token passes the guard.
    assert _post(hive.url, {"Authorization": f"Bearer {hive.token['alice']}"}).status_code == 200

    async def scenario() -> None:
        # The SDK client gets no session at all: its first request already fails.
        with pytest.raises(ExceptionGroup) as refused:
            async with connect(hive.url, None) as client:
                await client.list_tools()
        assert refused.group_contains(mcp.MCPError, match="error response")

    run(scenario)
    assert hive.ops.calls == []


def test_a_revoked_or_replaced_token_is_refused(hive: Hive) -> None:
    old = hive.token["alice"]
    assert hive.tokens.revoke("alice")
    assert _post(hive.url, {"Authorization": f"Bearer {old}"}).status_code == 401
    new = hive.tokens.issue("alice", Role.AGENT)
    assert _post(hive.url, {"Authorization": f"Bearer {old}"}).status_code == 401
    newer = hive.tokens.issue("alice", Role.AGENT)  # a respawn: the previous token goes
    assert _post(hive.url, {"Authorization": f"Bearer {new}"}).status_code == 401

    async def scenario() -> None:
        async with connect(hive.url, newer) as alice:
            result = await alice.call_tool("send", {"to": "bob", "body": "back"})
        assert not result.is_error, text(result)

    run(scenario)
    assert hive.ops.calls == [("send", "alice")]


def test_a_foreign_host_or_origin_is_refused(hive: Hive) -> None:
    """DNS-rebinding protection: a page on another site cannot drive the endpoint."""
    auth = {"Authorization": f"Bearer {hive.token['alice']}"}
    assert _post(hive.url, {**auth, "Host": "evil.example"}).status_code == 421
    assert _post(hive.url, {**auth, "Origin": "http://evil.example"}).status_code == 403
    assert hive.ops.calls == []


def test_allowed_hosts_admits_the_address_containers_use(tmp_path: Path) -> None:
    ops = StoreOps(tmp_path / "hive.db")
    with live_hive(ops, allowed_hosts=("hive.internal:*",)) as hive:
        auth = {"Authorization": f"Bearer {hive.token['alice']}"}
        port = hive.url.split(":")[2].split("/")[0]
        assert _post(hive.url, {**auth, "Host": f"hive.internal:{port}"}).status_code == 200
        assert _post(hive.url, auth).status_code == 421  # 127.0.0.1 is no longer listed


def test_mounted_in_a_parent_app_with_running_in_its_lifespan(tmp_path: Path) -> None:
    """The gateway's way: mount the app, enter ``running()`` in the parent's lifespan."""
    ops = StoreOps(tmp_path / "hive.db")
    ops.start_agent("bob")
    tokens = TokenBook()
    token = tokens.issue("bob", Role.AGENT)
    surface = HiveSurface(ops, tokens)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with surface.running():
            yield

    parent = Starlette(routes=[Mount("/hive", app=surface.asgi_app())], lifespan=lifespan)
    try:
        with serve(parent, TIMEOUT) as base:

            async def scenario() -> None:
                async with connect(f"{base}/hive{surface.path}", token) as bob:
                    sent = await bob.call_tool("send", {"to": "bob", "body": "mounted"})
                    got = await bob.call_tool("recv", {})
                assert not sent.is_error, text(sent)
                assert texts(got) == ["from bob (peer): mounted"]

            run(scenario)
            assert _post(f"{base}/hive{surface.path}", {}).status_code == 401
    finally:
        ops.close()


# -- the tools' own check, hive failures and deadlines -----------------------------------------


def test_without_http_headers_the_tools_refuse_on_their_own(tmp_path: Path) -> None:
    """The tools check the token too (a mount without the guard, a token revoked in between)."""
    ops = StoreOps(tmp_path / "hive.db")
    ops.start_agent("bob")
    surface = HiveSurface(ops, TokenBook())

    async def scenario() -> None:
        async with mcp.Client(surface.server) as client:
            result = await client.call_tool("send", {"to": "bob", "body": "hi"})
        assert result.is_error
        assert "carries no hive token" in text(result)

    try:
        run(scenario)
        assert ops.calls == []
    finally:
        ops.close()


class FaultyOps(StoreOps):
    """StoreOps with injected faults: ``send`` to ``crash`` raises a bug, to ``slow`` blocks."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()

    def send(self, caller: str, to: str, body: str) -> int:
        if to == "crash":
            raise RuntimeError("secret internal detail 7f3a")
        if to == "slow":
            self.entered.set()
            try:
                assert self.release.wait(TIMEOUT), "the test never released the slow call"
                return super().send(caller, "bob", body)
            finally:
                self.finished.set()
        return super().send(caller, to, body)


def test_a_hive_bug_is_a_generic_tool_error_and_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with live_hive(FaultyOps(tmp_path / "hive.db")) as hive:

        async def scenario() -> None:
            async with connect(hive.url, hive.token["alice"]) as alice:
                result = await alice.call_tool("send", {"to": "crash", "body": "x"})
                after = await alice.call_tool("send", {"to": "bob", "body": "still up"})
            assert result.is_error
            assert text(result) == render.failed("send")
            assert "7f3a" not in text(result)
            assert not after.is_error

        with caplog.at_level(logging.ERROR, logger="hive_actors.mcp"):
            run(scenario)
        records = [r for r in caplog.records if r.name == "hive_actors.mcp.surface"]
        assert any(
            r.exc_info and "secret internal detail 7f3a" in str(r.exc_info[1]) for r in records
        )
        assert all(t not in caplog.text for t in hive.token.values())


def test_a_slow_hive_times_out_without_stalling_other_calls(tmp_path: Path) -> None:
    ops = FaultyOps(tmp_path / "hive.db")
    deadline = TIMEOUT / 5
    with live_hive(ops, call_timeout_s=deadline) as hive:

        async def scenario() -> None:
            results: dict[str, CallToolResult] = {}

            async def slow_send() -> None:
                async with connect(hive.url, hive.token["alice"]) as alice:
                    results["slow"] = await alice.call_tool("send", {"to": "slow", "body": "x"})

            async with anyio.create_task_group() as tg:
                tg.start_soon(slow_send)
                entered = await anyio.to_thread.run_sync(ops.entered.wait, TIMEOUT)
                assert entered, "the slow send never reached the hive"
                # The hive is stuck in alice's call; bob is served meanwhile.
                async with connect(hive.url, hive.token["bob"]) as bob:
                    results["recv"] = await bob.call_tool("recv", {})
                assert "slow" not in results
            assert texts(results["recv"]) == [render.NO_NEW_MESSAGES]
            assert results["slow"].is_error
            assert text(results["slow"]) == render.timed_out("send", deadline)

        try:
            run(scenario)
        finally:
            ops.release.set()
            assert ops.finished.wait(TIMEOUT)
        # The abandoned call finished in the background: "outcome unknown" was the truth.
        with ops.locked() as store:
            assert [m.sender for m in store.messages.undelivered("bob")] == ["alice"]


# -- pure parts: tokens, config, authorization, rendering --------------------------------------


def test_tokens_are_per_spawn_secret_and_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    book = TokenBook()
    with caplog.at_level(logging.DEBUG):
        first = book.issue("alice", Role.AGENT)
        second = book.issue("alice", "agent")
        boss = book.issue("manager", Role.MANAGER)
        assert len(first) >= 43 and first != second
        assert book.who(first) is None
        assert book.who(second) == Caller("alice", Role.AGENT)
        boss_caller = book.who(boss)
        assert boss_caller == Caller("manager", Role.MANAGER) and boss_caller.is_manager
        assert book.who(None) is None and book.who("") is None
        assert book.who(second + "x") is None
        assert book.revoke("alice") and not book.revoke("alice")
        assert book.who(second) is None and len(book) == 1
    for token in (first, second, boss):
        assert token not in caplog.text
        assert token not in repr(book) and token not in repr(boss_caller)


def test_token_book_is_thread_safe() -> None:
    book = TokenBook()
    names = [f"a{i}" for i in range(8)]
    issued: dict[str, list[str]] = {n: [] for n in names}
    barrier = threading.Barrier(len(names))

    def churn(name: str) -> None:
        barrier.wait(TIMEOUT)
        for _ in range(50):
            issued[name].append(book.issue(name, Role.AGENT))

    threads = [threading.Thread(target=churn, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive()
    for name in names:
        assert book.who(issued[name][-1]) == Caller(name, Role.AGENT)
        assert all(book.who(old) is None for old in issued[name][:-1])


def test_issue_refuses_bad_names_and_roles() -> None:
    book = TokenBook()
    with pytest.raises(ConfigError, match="agent name 'Bad_Name' is invalid"):
        book.issue("Bad_Name", Role.AGENT)
    with pytest.raises(ConfigError, match="role 'boss' is unknown"):
        book.issue("alice", "boss")
    assert len(book) == 0


def test_mcp_config_carries_the_token_only_in_the_hive_headers() -> None:
    config = mcp_config(
        "alice",
        "tok-123",
        "http://127.0.0.1:8000/mcp",
        {
            "git": {"command": "mcp-git", "args": ["--repo", "/state"], "env": {"A": "1"}},
            "web": StdioServer(command="mcp-web"),
        },
    )
    assert config == {
        "mcpServers": {
            "hive": {
                "type": "http",
                "url": "http://127.0.0.1:8000/mcp",
                "headers": {"Authorization": "Bearer tok-123"},
            },
            "git": {"command": "mcp-git", "args": ["--repo", "/state"], "env": {"A": "1"}},
            "web": {"command": "mcp-web", "args": []},
        }
    }
    assert json.dumps(config).count("tok-123") == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "127.0.0.1:8000/mcp"}, "must be an http"),
        ({"token": ""}, "needs its hive token"),
        ({"extra": {"hive": {"command": "x"}}}, "cannot be named 'hive'"),
        ({"extra": {"bad name": {"command": "x"}}}, "name 'bad name' is invalid"),
        ({"extra": {"x": {"command": ""}}}, "command must be a non-empty string"),
        ({"extra": {"x": {"command": "c", "args": "a b"}}}, "args must be a list"),
        ({"extra": {"x": {"command": "c", "args": [1]}}}, "args must all be strings"),
        ({"extra": {"x": {"command": "c", "env": {"A": 1}}}}, "env values must be strings"),
        ({"extra": {"x": {"command": "c", "cwd": "/"}}}, "unknown key"),
    ],
)
def test_mcp_config_refuses_what_the_cli_could_not_use(
    kwargs: dict[str, Any], message: str
) -> None:
    token = kwargs.get("token", "tok-secret")
    url = kwargs.get("url", "http://127.0.0.1:8000/mcp")
    with pytest.raises(ConfigError, match=message) as raised:
        mcp_config("alice", token, url, kwargs.get("extra"))
    assert "tok-secret" not in str(raised.value)


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc.DEF-_~") == "abc.DEF-_~"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token(None) is None
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer") is None
    assert bearer_token("Bearer a b") is None


def test_authorize_names_the_reason() -> None:
    alice, boss = Caller("alice", Role.AGENT), Caller("manager", Role.MANAGER)
    assert authorize(alice, "send", token_present=True) is alice
    for tool in MANAGER_TOOLS:
        assert authorize(boss, tool, token_present=True) is boss
        with pytest.raises(Refused, match=f"^{tool} is for the manager; ask the manager"):
            authorize(alice, tool, token_present=True)
    with pytest.raises(Refused, match="carries no hive token"):
        authorize(None, "recv", token_present=False)
    with pytest.raises(Refused, match="unknown, revoked or expired"):
        authorize(None, "recv", token_present=True)
    with pytest.raises(Refused, match="no tool 'approve'"):
        authorize(boss, "approve", token_present=True)


def test_rendering() -> None:
    assert render.inbox([]) == ["no new messages"]
    assert render.inbox([InboxMessage(3, "hive", "system", "approval 1 was approved")]) == [
        "from hive (system): approval 1 was approved"
    ]
    assert render.sent(9, "bob").startswith("message 9 sent to bob")
    assert "approval 4 requested (spawn of carol): waiting for the operator" in (
        render.approval_queued(4, "spawn of carol")
    )
    assert render.question_asked(2).endswith(
        "the answer will arrive in your inbox as an operator message"
    )
    assert render.draft_staged(Draft("dave")).startswith("draft dave staged")
    assert set(DESCRIPTIONS) == set(TOOL_NAMES)


def test_every_table_entry_is_served_described_and_ruled_and_nothing_else() -> None:
    """The one tool table is what the server lists (with the handler's arguments as the
    input schema), what the descriptions say and what the rules allow: nothing more or less."""
    surface = HiveSurface(object(), TokenBook())  # type: ignore[arg-type]  # never called

    async def listed() -> dict[str, Any]:
        async with mcp.Client(surface.server) as client:
            return {t.name: t for t in (await client.list_tools()).tools}

    served = anyio.run(listed)
    names = [tool.name for tool in TOOLS]
    assert list(served) == names == list(TOOL_NAMES) == list(DESCRIPTIONS)
    assert len(set(names)) == len(names)
    assert set(AGENT_TOOLS) | set(MANAGER_TOOLS) == set(names)
    assert not set(AGENT_TOOLS) & set(MANAGER_TOOLS)
    alice, boss = Caller("alice", Role.AGENT), Caller("manager", Role.MANAGER)
    for tool in TOOLS:
        listing = served[tool.name]
        assert listing.description == DESCRIPTIONS[tool.name] == render.description(tool)
        assert listing.description.endswith(tool.description)
        assert listing.description.startswith(render.MANAGER_ONLY) == tool.manager_only
        arguments = list(inspect.signature(tool.handler).parameters)[1:]
        assert list(listing.input_schema["properties"]) == arguments, tool.name
        assert set(listing.input_schema.get("required", ())) == set(arguments), tool.name
        assert (tool.name in MANAGER_TOOLS) == tool.manager_only
        assert authorize(boss, tool.name, token_present=True) is boss
        if tool.manager_only:
            with pytest.raises(Refused, match="is for the manager"):
                authorize(alice, tool.name, token_present=True)
        else:
            assert authorize(alice, tool.name, token_present=True) is alice
    with pytest.raises(Refused, match="the hive has no tool 'approve'"):
        authorize(boss, "approve", token_present=True)
    manager_tools = [tool.name for tool in TOOLS if tool.manager_only]
    assert surface.server.instructions is not None
    assert f"{', '.join(manager_tools[:-1])} and {manager_tools[-1]} for the manager only" in (
        surface.server.instructions
    )


def test_surface_refuses_bad_settings(tmp_path: Path) -> None:
    ops = StoreOps(tmp_path / "hive.db")
    try:
        with pytest.raises(ConfigError, match="call_timeout_s"):
            HiveSurface(ops, TokenBook(), call_timeout_s=0)
        with pytest.raises(ConfigError, match="max_concurrent_calls"):
            HiveSurface(ops, TokenBook(), max_concurrent_calls=0)
        with pytest.raises(ConfigError, match="path"):
            HiveSurface(ops, TokenBook(), path="mcp")
    finally:
        ops.close()
