"""The operator's HTTP API against a whole running hive: real CLI agents, a real server on
127.0.0.1, a real HTTP client. Every bad input is a clear 4xx that changes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml
from starlette.routing import Mount, Route, WebSocketRoute
from websockets.exceptions import InvalidStatus

from hive_actors.config import HiveConfig, WebConfig
from hive_actors.daemon import Daemon
from hive_actors.gateway.app import build_agent_app, build_dashboard_app
from hive_actors.gateway.endpoints import OperatorApi
from hive_actors.gateway.ops import OperatorOps
from hive_actors.gateway.pty import PtyEndpoint
from hive_actors.gateway.reads import HiveReader
from hive_actors.httpd.fanout import Fanout
from hive_actors.protocol import AskOperator, RequestApproval
from hive_actors.store import AgentState, ApprovalKind, MessageKind, Role
from tests.support.gateway import (
    Hive,
    agent_port,
    gateway_hive,
    http,
    served_pages,
    state_of,
    wait_state,
)
from tests.support.web import ws_connect

OPENAPI = Path(__file__).resolve().parents[1] / "docs" / "openapi.yaml"


def turn_ended(hive: Hive, name: str, after: int = 0) -> Any:
    return hive.wait_for(lambda e: e.kind == "turn.ended" and e.agent == name, after=after)


# -- reads --------------------------------------------------------------------------------------


def test_state_shows_each_agent_with_its_model_turns_restarts_and_inbox(tmp_path: Path) -> None:
    with gateway_hive(tmp_path, {"boss": Role.MANAGER, "alice": Role.AGENT}) as hive:
        with hive.api() as api:
            before = api.get("/api/state").json()
            assert before["counts"] == {
                "agents": 2, "approvals": 0, "questions": 0, "drafts": 0, "kept_state": 0}
            alice = next(a for a in before["agents"] if a["name"] == "alice")
            assert (alice["state"], alice["turns"], alice["restarts"]) == ("idle", 0, 0)
            assert alice["last_turn"] is None

            sent = api.post("/api/message", data={"agent": "alice", "text": "hello"})
            assert sent.status_code == 200, sent.text
            ended = turn_ended(hive, "alice")
            wait_state(hive, "alice", AgentState.IDLE, after=ended.id)
            # The turn's messages are acknowledged after it ended.
            hive.wait_for(lambda e: e.kind == "message.delivered" and e.agent == "alice")

            state = api.get("/api/state").json()
            alice = next(a for a in state["agents"] if a["name"] == "alice")
            assert alice["turns"] == 1
            assert alice["last_turn"]["outcome"] == "ok"
            assert alice["model_in_use"] == "claude-sonnet-test"
            assert alice["inbox_depth"] == 0
            assert state["last_event_id"] == hive.last_event_id()

            # The log, paged: consecutive ids, bounded pages, an empty page at the head.
            first = api.get("/api/events", params={"since": 0, "limit": 5}).json()
            assert [e["id"] for e in first["events"]] == [1, 2, 3, 4, 5] and first["more"]
            rest = api.get("/api/events", params={"since": 5, "limit": 1000}).json()
            ids = [e["id"] for e in rest["events"]]
            assert ids == list(range(6, state["last_event_id"] + 1))
            ended_row = next(e for e in rest["events"] if e["id"] == ended.id)
            assert ended_row["view"]["agent"]["name"] == "alice"
            head = api.get("/api/events", params={"since": state["last_event_id"]}).json()
            assert head == {"events": [], "last_id": None, "more": False}

        # The agent's own page: its row, its events only.
        with hive.api(agent_port(hive, 'alice')) as page:
            own = page.get("/api/state").json()
            assert own["agent"]["turns"] == 1 and own["agent"]["name"] == "alice"
            events = page.get("/api/events", params={"since": 0, "limit": 1000}).json()["events"]
            assert events and {e["agent"] for e in events} == {"alice"}


def test_model_override_on_the_dashboard_and_on_the_agent_port(tmp_path: Path) -> None:
    with gateway_hive(tmp_path, {"alice": Role.AGENT}) as hive, hive.api() as api, hive.api(
        agent_port(hive, "alice")
    ) as page:
        set_ = api.post("/api/model", data={"agent": "alice", "model": "claude-opus-test"})
        assert set_.status_code == 200, set_.text
        assert set_.json()["agent"]["model"] == "claude-opus-test"
        assert set_.json()["agent"]["model_in_use"] == "claude-opus-test"

        # The next turn runs with it.
        mark = hive.last_event_id()
        assert page.post("/api/message", data={"text": "go"}).status_code == 200
        started = hive.wait_for(
            lambda e: e.kind == "turn.started" and e.agent == "alice", after=mark)
        assert started.payload["model"] == "claude-opus-test"

        persisted = page.post("/api/model", data={"model": "claude-haiku-test", "persist": "1"})
        assert persisted.status_code == 200, persisted.text
        row = persisted.json()["agent"]
        assert (row["model"], row["model_persisted"]) == ("claude-haiku-test", True)
        model_file = hive.daemon.hive.agent_paths("alice").state / "model"
        assert model_file.read_text().strip() == "claude-haiku-test"

        cleared = page.post("/api/model", data={"model": ""})
        assert cleared.status_code == 200 and cleared.json()["agent"]["model"] is None

        # Refused, and nothing changed.
        for data, status, words in [
            ({"agent": "nobody", "model": "x"}, 404, "no agent named 'nobody'"),
            ({"model": "x"}, 400, "missing form field(s): agent"),
            ({"agent": "alice", "model": "two words"}, 400, "is invalid"),
            ({"agent": "alice", "model": "x", "persist": "maybe"}, 400, "yes/no"),
            ({"agent": "Not A Name", "model": "x"}, 400, "Not A Name"),
        ]:
            refused = api.post("/api/model", data=data)
            assert refused.status_code == status, (data, refused.text)
            assert words in refused.json()["error"], refused.json()
        assert state_of(hive, "alice")["model"] is None


def test_approvals_are_listed_with_diffs_and_decided_once(tmp_path: Path) -> None:
    with gateway_hive(tmp_path, {"boss": Role.MANAGER}) as hive:
        desk = hive.daemon.desk
        carol = hive.ask("approvals", RequestApproval(
            ApprovalKind.SPAWN, "carol", "boss", diff=desk.spawn_diff("carol")))
        dave = hive.ask("approvals", RequestApproval(
            ApprovalKind.SPAWN, "dave", "boss", diff=desk.spawn_diff("dave")))
        with hive.api() as api:
            listed = api.get("/api/approvals").json()["approvals"]
            assert [a["id"] for a in listed] == [carol.id, dave.id]
            assert "+++ b/agent.toml" in listed[0]["diff"]
            assert api.get("/api/state").json()["counts"]["approvals"] == 2

            denied = api.post(f"/api/approvals/{dave.id}/deny", data={"note": "not now"})
            assert denied.status_code == 200, denied.text
            assert (denied.json()["approval"]["status"], denied.json()["approval"]["note"]) == (
                "denied", "not now")
            approved = api.post(f"/api/approvals/{carol.id}/approve")
            assert approved.status_code == 200, approved.text
            assert approved.json()["approval"]["decided_by"] == "operator"

            # carol was registered by the decision and started by the supervisor.
            wait_state(hive, "carol", AgentState.IDLE)
            assert "carol" in served_pages(hive)

            again = api.post(f"/api/approvals/{carol.id}/deny")
            assert again.status_code == 409 and "already approved" in again.json()["error"]
            assert api.post("/api/approvals/999/approve").status_code == 404
            bad = api.post("/api/approvals/abc/approve")
            assert bad.status_code == 400 and "not an id" in bad.json()["error"]
            assert api.get("/api/approvals").json()["approvals"] == []
            recent = api.get("/api/approvals", params={"recent": "1"}).json()["approvals"]
            assert [a["status"] for a in recent] == ["denied", "approved"]
            assert "dave" not in {a["name"] for a in api.get("/api/state").json()["agents"]}


def test_a_question_is_answered_once_into_the_askers_inbox(tmp_path: Path) -> None:
    with gateway_hive(tmp_path, {"boss": Role.MANAGER}) as hive:
        question = hive.ask("approvals", AskOperator("boss", "docs or tests?"))
        with hive.api() as api:
            listed = api.get("/api/questions").json()["questions"]
            assert [(q["id"], q["question"]) for q in listed] == [(question.id, "docs or tests?")]

            empty = api.post(f"/api/questions/{question.id}/answer", data={"text": ""})
            assert empty.status_code == 400 and "empty" in empty.json()["error"]
            huge = api.post(f"/api/questions/{question.id}/answer", data={"text": "é" * 40_000})
            assert huge.status_code == 413 and "max_body_bytes" in huge.json()["error"]

            answered = api.post(f"/api/questions/{question.id}/answer", data={"text": "docs"})
            assert answered.status_code == 200, answered.text
            message_id = answered.json()["message_id"]
            with hive.daemon.hive.open_store() as store:
                message = store.messages.get(message_id)
            assert (message.recipient, message.kind, message.sender) == (
                "boss", MessageKind.OPERATOR, "operator")
            assert "docs" in message.body

            again = api.post(f"/api/questions/{question.id}/answer", data={"text": "tests"})
            assert again.status_code == 409, again.text
            assert api.post("/api/questions/77/answer", data={"text": "x"}).status_code == 404
            assert api.get("/api/questions").json()["questions"] == []


def test_operator_messages_land_in_the_inbox(tmp_path: Path) -> None:
    with gateway_hive(tmp_path, {"alice": Role.AGENT}) as hive:
        port = agent_port(hive, "alice")
        with hive.api() as api, hive.api(port) as page:
            first = api.post("/api/message", data={"agent": "alice", "text": "from the dashboard"})
            second = page.post("/api/message", data={"text": "from the agent page"})
            assert first.status_code == second.status_code == 200, (first.text, second.text)
            with hive.daemon.hive.open_store() as store:
                bodies = [store.messages.get(r.json()["id"]) for r in (first, second)]
            assert [(m.sender, m.kind, m.body) for m in bodies] == [
                ("operator", MessageKind.OPERATOR, "from the dashboard"),
                ("operator", MessageKind.OPERATOR, "from the agent page"),
            ]
            unknown = api.post("/api/message", data={"agent": "bob", "text": "hi"})
            assert unknown.status_code == 404 and "bob" in unknown.json()["error"]
            big = page.post("/api/message", data={"text": "x" * 70_000})
            assert big.status_code == 413 and "65536" in big.json()["error"]


def test_spawn_stop_revive_destroy_and_purge(tmp_path: Path) -> None:
    with gateway_hive(tmp_path, {"boss": Role.MANAGER}) as hive, hive.api() as api:
        spawned = api.post("/api/spawn", data={"name": "carol"})
        assert spawned.status_code == 201, spawned.text
        approval = spawned.json()["approval"]
        assert (approval["kind"], approval["status"], approval["requested_by"]) == (
            "spawn", "approved", "operator")
        wait_state(hive, "carol", AgentState.IDLE)
        port = agent_port(hive, "carol")
        assert (hive.daemon.hive.agent_paths("carol").state / "web-port").read_text().strip() == (
            str(port))

        assert api.post("/api/spawn", data={"name": "carol"}).status_code == 409
        bad = api.post("/api/spawn", data={"name": "Carol Two"})
        assert bad.status_code == 400 and "Carol Two" in bad.json()["error"]

        stopped = api.post("/api/agents/carol/stop")
        assert stopped.status_code == 200 and stopped.json()["agent"]["state"] == "stopped"
        revived = api.post("/api/agents/carol/revive")
        assert revived.status_code == 200, revived.text
        wait_state(hive, "carol", AgentState.IDLE, after=0)

        destroyed = api.post("/api/agents/carol/destroy", data={"keep_state": "1"})
        assert destroyed.status_code == 200, destroyed.text
        row = destroyed.json()["agent"]
        assert (row["state"], row["kept_state"]) == ("destroyed", True)
        assert api.get("/api/state").json()["counts"]["kept_state"] == 1
        assert "carol" not in served_pages(hive)

        # Revived from K3PT ST4T3: its page comes back on its persisted port.
        assert api.post("/api/agents/carol/revive").status_code == 200
        wait_state(hive, "carol", AgentState.IDLE)
        assert served_pages(hive)["carol"] == port

        assert api.post("/api/agents/carol/destroy", data={"keep_state": "1"}).status_code == 200
        premature = api.post("/api/agents/boss/purge")
        assert premature.status_code == 409 and "K3PT ST4T3" in premature.json()["error"]
        purged = api.post("/api/agents/carol/purge")
        assert purged.status_code == 200, purged.text
        assert purged.json()["agent"]["kept_state"] is False
        assert not hive.daemon.hive.agent_paths("carol").root.exists()
        assert api.get("/api/state").json()["counts"]["kept_state"] == 0
        assert api.post("/api/agents/carol/purge").status_code == 409
        hive.wait_for(lambda e: e.kind == "agent.destroyed" and e.payload.get("purged") is True)
        with hive.daemon.hive.open_store() as store:
            assert not store.registry.get("carol").kept_state  # the registry knows it too
        gone = api.post("/api/agents/carol/revive")
        assert gone.status_code == 409 and "purged" in gone.json()["error"], gone.text

        assert api.post("/api/agents/nobody/stop").status_code == 404
        assert api.post("/api/agents/nobody/purge").status_code == 404


# -- bad input ------------------------------------------------------------------------------------


FORM = {"content-type": "application/x-www-form-urlencoded"}

BAD_REQUESTS: list[tuple[str, str, bytes, dict[str, str], int, str]] = [
    ("POST", "/api/model", b"agent=alice&model", FORM, 400, "malformed form body"),
    ("POST", "/api/model", b'{"agent": "alice", "model": "x"}',
     {"content-type": "application/json"}, 415, "application/x-www-form-urlencoded"),
    ("POST", "/api/model", b"agent=alice&agent=bob&model=x", FORM, 400, "given twice"),
    ("POST", "/api/model", b"agent=alice&model=x&colour=red", FORM, 400, "unknown form field"),
    ("POST", "/api/model", b"agent=alice&model=%ff", FORM, 400, "UTF-8"),
    ("POST", "/api/model", b"agent=alice&model=" + b"x" * (2 * 1024 * 1024), FORM, 413,
     "max_body_bytes"),
    ("POST", "/api/model", b"agent=alice&model=x", {**FORM, "origin": "http://evil.example"}, 403,
     "cross-origin"),
    ("GET", "/api/model", b"", {}, 405, "not allowed"),
    ("GET", "/api/nothing-here", b"", {}, 404, "no such endpoint"),
    ("GET", "/api/events?since=abc", b"", {}, 400, "not an event id"),
    ("GET", "/api/events?limit=100000", b"", {}, 400, "page with since"),
    ("GET", "/api/events?from=3", b"", {}, 400, "unknown query parameter"),
    ("POST", "/api/agents/alice/stop", b"now=1", FORM, 400, "unknown form field"),
    ("POST", "/api/agents/Bad%20Name/stop", b"", {}, 400, "Bad Name"),
    ("POST", "/api/spawn", b"", {}, 400, "missing form field"),
]


def test_bad_input_is_refused_and_changes_nothing(tmp_path: Path, subtests: Any) -> None:
    with gateway_hive(tmp_path, {"alice": Role.AGENT}) as hive, hive.api() as api:
        for method, path, body, headers, status, words in BAD_REQUESTS:
            with subtests.test(msg=f"{method} {path[:40]} -> {status}"):
                mark = hive.last_event_id()
                response = api.request(method, path, content=body, headers=headers)
                assert response.status_code == status, response.text
                assert response.headers["content-type"] == "application/json"
                assert words in response.json()["error"], response.json()
                # Nothing changed, and the gateway serves the next request as before.
                assert hive.last_event_id() == mark
                row = state_of(hive, "alice")
                assert (row["model"], row["state"]) == (None, "idle")
        good = api.post("/api/model", data={"agent": "alice", "model": "claude-x"})
        assert good.status_code == 200, good.text


def test_the_token_guards_the_api_the_websockets_and_the_terminal(tmp_path: Path) -> None:
    with gateway_hive(tmp_path, {"alice": Role.AGENT}) as hive:
        token = hive.daemon.token
        assert token is not None
        port = agent_port(hive, "alice")
        with http(hive.base) as anonymous:
            refused = anonymous.post("/api/model", data={"agent": "alice", "model": "x"})
            assert refused.status_code == 401 and "token" in refused.json()["error"]
            assert anonymous.get("/api/state").status_code == 401
            wrong = anonymous.get("/api/state", headers={"authorization": "Bearer " + "x" * 43})
            assert wrong.status_code == 401 and "wrong operator token" in wrong.json()["error"]
            # /login sets the cookie; the cookie then opens the API.
            login = anonymous.get("/login", params={"token": token.value})
            assert login.status_code == 303 and "hive_token=" in login.headers["set-cookie"]
            assert anonymous.get("/api/state").status_code == 200
        with http(hive.base, headers={"authorization": f"Bearer {token.value}"}) as api:
            assert api.post("/api/model", data={"agent": "alice", "model": "x"}).status_code == 200

        async def handshake(path: str, site: int, headers: dict[str, str] | None = None) -> int:
            try:
                async with ws_connect(site, path, additional_headers=headers or {}):
                    return 101
            except InvalidStatus as exc:
                return exc.response.status_code

        bearer = {"authorization": f"Bearer {token.value}"}
        assert asyncio.run(handshake("/ws", hive.port)) == 401
        assert asyncio.run(handshake("/ws", port)) == 401
        assert asyncio.run(handshake("/ws/pty", port)) == 401
        assert asyncio.run(handshake("/ws", hive.port, bearer)) == 101
        assert asyncio.run(handshake("/ws", port, bearer)) == 101


# -- the API is documented ----------------------------------------------------------------------


def _served(app: Any) -> set[tuple[str, str]]:
    """(path, method) of every route an app serves; websocket routes as method ``websocket``."""
    out: set[tuple[str, str]] = set()
    for route in app.app.routes:  # under the security middleware
        if isinstance(route, Route):
            out |= {(route.path, m.lower()) for m in (route.methods or ()) if m != "HEAD"}
        elif isinstance(route, WebSocketRoute):
            out.add((route.path, "websocket"))
        elif isinstance(route, Mount) and route.path == "/hive":
            out |= {("/hive/mcp", m) for m in ("get", "post", "delete")}
    return out


def _documented(spec: dict[str, Any], site: str) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for path, item in spec["paths"].items():
        sites = item.get("x-hive-sites", [])
        assert sites and set(sites) <= {"dashboard", "agent"}, f"{path}: x-hive-sites {sites}"
        if site not in sites:
            continue
        for method in item:
            if method in ("get", "post", "put", "delete", "patch"):
                out.add((path, method))
        if "x-websocket" in item:
            out.add((path, "websocket"))
    return out


def test_every_served_route_is_documented_and_every_documented_route_served(
    tmp_path: Path,
) -> None:
    spec = yaml.safe_load(OPENAPI.read_text())
    assert spec["openapi"].startswith("3.")
    daemon = Daemon(
        HiveConfig(state_dir=str(tmp_path / "hive"), web=WebConfig(port=0)), api_key="unused"
    )
    try:
        ctx = daemon.gateway_context()
        reader = HiveReader(daemon.hive.open_store, lambda n: tmp_path)
        api = OperatorApi(reader, OperatorOps(daemon.hive, spawn_diff=str), 5.0, 1024)
        fanout = Fanout(reader.snapshot, reader.events_since)
        dashboard = build_dashboard_app(ctx, api, fanout)
        agent = build_agent_app(
            ctx, api, "alice", fanout,
            PtyEndpoint("alice", lambda: (0, 0), host="127.0.0.1", policy=ctx.policy),
        )
        assert _served(dashboard) == _documented(spec, "dashboard")
        assert _served(agent) == _documented(spec, "agent")
        for path, item in spec["paths"].items():
            for method, operation in item.items():
                if method in ("get", "post"):
                    assert operation.get("summary") and operation.get("responses"), (path, method)
        reader.close()
    finally:
        daemon.close()
