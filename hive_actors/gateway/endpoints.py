"""The operator's JSON API: the dashboard's routes and an agent page's routes.

Documented route by route in ``docs/openapi.yaml`` (a test keeps the two in step). Reads come
from the :class:`~.reads.HiveReader`, decisions go through :class:`~.ops.OperatorOps`; both run
in worker threads with a deadline (:func:`~.api.blocking`). Every POST takes a form
(``application/x-www-form-urlencoded``, see :mod:`.forms`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hive_actors.store.names import validate_name

from .api import blocking, form, guarded
from .forms import BadInput, Field, parse_bool, parse_id, parse_model
from .ops import OperatorOps
from .reads import HiveReader
from .servers import agent_servers
from .views import approval_view, question_view

__all__ = ["DEFAULT_EVENTS_PAGE", "MAX_EVENTS_PAGE", "OperatorApi"]

DEFAULT_EVENTS_PAGE = 200
MAX_EVENTS_PAGE = 1000

_NOTE = Field(max_length=2000)
_NO_FIELDS: dict[str, Field] = {}


@dataclass(frozen=True)
class OperatorApi:
    """Builds the API routes over one reader and one set of operator operations."""

    reader: HiveReader
    ops: OperatorOps
    timeout: float
    """Deadline of one request's blocking work, in seconds."""
    max_text_bytes: int
    """Largest message or answer, in UTF-8 bytes (the store's ``[store] max_body_bytes``)."""

    # -- helpers ---------------------------------------------------------------------------

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await blocking(self.timeout, fn, *args)

    def _text_field(self) -> Field:
        return Field(
            required=True, allow_empty=False, max_length=self.max_text_bytes, too_long_status=413
        )

    def _check_text(self, what: str, text: str) -> str:
        size = len(text.encode("utf-8"))
        if size > self.max_text_bytes:
            raise BadInput(
                413,
                f"the {what} is {size} bytes, over the hive's limit of {self.max_text_bytes} "
                "bytes ([store] max_body_bytes); send less, or put it in a file and send its path",
            )
        return text

    async def _agent_row(self, name: str) -> dict[str, Any]:
        state = await self._run(self.reader.agent_state, name)
        row: dict[str, Any] = state["agent"]
        return row

    @staticmethod
    def _name(request: Request) -> str:
        name = str(request.path_params["name"])
        validate_name(name)
        return name

    @staticmethod
    def _events_query(request: Request) -> tuple[int, int]:
        query = request.query_params
        unknown = sorted(set(query) - {"since", "limit"})
        if unknown:
            raise BadInput(400, f"unknown query parameter(s) {unknown}; use since and limit")
        since_raw = query.get("since", "0")
        if not since_raw.isascii() or not since_raw.isdigit() or len(since_raw) > 18:
            raise BadInput(400, f"since={since_raw[:40]!r} is not an event id; use 0 or more")
        limit_raw = query.get("limit", str(DEFAULT_EVENTS_PAGE))
        limit = parse_id("limit", limit_raw)
        if limit > MAX_EVENTS_PAGE:
            raise BadInput(400, f"limit={limit} is over {MAX_EVENTS_PAGE}; page with since")
        return int(since_raw), limit

    async def _events(self, request: Request, agent: str | None) -> Response:
        """A page of the log after ``since``; when the events right after ``since`` were
        pruned (``[store] retention_days``, ``max_events``), the page says so and carries
        the state now instead of leaving a silent gap: ``pruned: true``, ``oldest_id`` (the
        oldest event kept) and ``snapshot`` (``GET /api/state``'s answer, whose
        ``last_event_id`` is where to resume from)."""
        since, limit = self._events_query(request)
        page, oldest = await self._run(self.reader.events_after, since, limit, agent)
        body = self._events_page(page, limit)
        if since and oldest > since + 1:
            read = self.reader.state if agent is None else self.reader.agent_state
            args = () if agent is None else (agent,)
            body.update(pruned=True, oldest_id=oldest, snapshot=await self._run(read, *args))
        return JSONResponse(body)

    @staticmethod
    def _events_page(events: list[Any], limit: int) -> dict[str, Any]:
        return {
            "events": [
                {"id": e.id, "ts": e.ts, "kind": e.kind, "agent": e.agent,
                 "payload": dict(e.payload), "view": dict(e.view)}
                for e in events
            ],
            "last_id": events[-1].id if events else None,
            "more": len(events) == limit,
        }

    async def _model(self, name: str, values: dict[str, str]) -> Response:
        model = parse_model(values.get("model", ""))
        persist = parse_bool("persist", values.get("persist"))
        await self._run(self.ops.set_model, name, model, persist)
        return JSONResponse({"agent": await self._agent_row(name)})

    async def _message(self, name: str, text: str) -> Response:
        message_id = await self._run(self.ops.message, name, self._check_text("message", text))
        return JSONResponse({"id": message_id, "agent": name})

    # -- the dashboard ---------------------------------------------------------------------

    def dashboard_routes(self) -> list[Route]:
        """Every ``/api/`` route of the dashboard."""

        @guarded
        async def state(request: Request) -> Response:
            return JSONResponse(await self._run(self.reader.state))

        @guarded
        async def events(request: Request) -> Response:
            return await self._events(request, None)

        @guarded
        async def approvals(request: Request) -> Response:
            unknown = sorted(set(request.query_params) - {"recent"})
            if unknown:
                raise BadInput(400, f"unknown query parameter(s) {unknown}; use recent=1")
            recent = parse_bool("recent", request.query_params.get("recent"))
            return JSONResponse({"approvals": await self._run(self.reader.approvals, recent)})

        async def decide(request: Request, approve: bool) -> Response:
            approval_id = parse_id("approval id", request.path_params["id"])
            values = await form(request, {"note": _NOTE})
            note = values.get("note") or None
            decided = await self._run(self.ops.decide, approval_id, approve, note)
            return JSONResponse({"approval": approval_view(decided)})

        @guarded
        async def approve(request: Request) -> Response:
            return await decide(request, True)

        @guarded
        async def deny(request: Request) -> Response:
            return await decide(request, False)

        @guarded
        async def questions(request: Request) -> Response:
            return JSONResponse({"questions": await self._run(self.reader.questions)})

        @guarded
        async def answer(request: Request) -> Response:
            question_id = parse_id("question id", request.path_params["id"])
            values = await form(request, {"text": self._text_field()})
            text = self._check_text("answer", values["text"])
            answered = await self._run(self.ops.answer, question_id, text)
            return JSONResponse(
                {"question": question_view(answered.question), "message_id": answered.message_id}
            )

        @guarded
        async def message(request: Request) -> Response:
            values = await form(
                request, {"agent": Field(required=True, allow_empty=False), "text": self._text_field()}
            )
            validate_name(values["agent"])
            return await self._message(values["agent"], values["text"])

        @guarded
        async def model(request: Request) -> Response:
            values = await form(
                request,
                {"agent": Field(required=True, allow_empty=False), "model": Field(required=True),
                 "persist": Field(max_length=5)},
            )
            validate_name(values["agent"])
            return await self._model(values["agent"], values)

        @guarded
        async def spawn(request: Request) -> Response:
            values = await form(request, {"name": Field(required=True, allow_empty=False)})
            name = values["name"].strip()
            approval = await self._run(self.ops.spawn, name)
            return JSONResponse({"approval": approval_view(approval), "agent": name}, status_code=201)

        async def settled(request: Request, fn: Any, doing: str) -> Response:
            name = self._name(request)
            await form(request, _NO_FIELDS)
            done = await self._run(fn, name)
            row = await self._agent_row(name)
            if done:
                return JSONResponse({"agent": row, "done": True})
            return JSONResponse(
                {"agent": row, "done": False,
                 "note": f"{name} is still {doing}; its state follows on the live events"},
                status_code=202,
            )

        @guarded
        async def stop(request: Request) -> Response:
            return await settled(request, self.ops.stop, "stopping")

        @guarded
        async def revive(request: Request) -> Response:
            return await settled(request, self.ops.revive, "starting")

        @guarded
        async def destroy(request: Request) -> Response:
            name = self._name(request)
            values = await form(request, {"keep_state": Field(max_length=5)})
            keep = parse_bool("keep_state", values.get("keep_state", "1"))
            await self._run(self.ops.destroy, name, keep)
            return JSONResponse({"agent": await self._agent_row(name)})

        @guarded
        async def purge(request: Request) -> Response:
            name = self._name(request)
            await form(request, _NO_FIELDS)
            state_dir = self.reader.state_dir_of(name)
            await self._run(self.ops.purge, name, state_dir.is_dir)
            return JSONResponse({"agent": await self._agent_row(name)})

        return [
            Route("/api/state", state, methods=["GET"]),
            Route("/api/events", events, methods=["GET"]),
            Route("/api/approvals", approvals, methods=["GET"]),
            Route("/api/approvals/{id}/approve", approve, methods=["POST"]),
            Route("/api/approvals/{id}/deny", deny, methods=["POST"]),
            Route("/api/questions", questions, methods=["GET"]),
            Route("/api/questions/{id}/answer", answer, methods=["POST"]),
            Route("/api/message", message, methods=["POST"]),
            Route("/api/model", model, methods=["POST"]),
            Route("/api/spawn", spawn, methods=["POST"]),
            Route("/api/agents/{name}/stop", stop, methods=["POST"]),
            Route("/api/agents/{name}/revive", revive, methods=["POST"]),
            Route("/api/agents/{name}/destroy", destroy, methods=["POST"]),
            Route("/api/agents/{name}/purge", purge, methods=["POST"]),
        ]

    # -- one agent's page ------------------------------------------------------------------

    def agent_routes(self, name: str) -> list[Route]:
        """The ``/api/`` routes of ``name``'s page (the agent is implied by the port)."""

        @guarded
        async def state(request: Request) -> Response:
            return JSONResponse(await self._run(self.reader.agent_state, name))

        @guarded
        async def events(request: Request) -> Response:
            return await self._events(request, name)

        @guarded
        async def model(request: Request) -> Response:
            values = await form(
                request, {"model": Field(required=True), "persist": Field(max_length=5)}
            )
            return await self._model(name, values)

        @guarded
        async def message(request: Request) -> Response:
            values = await form(request, {"text": self._text_field()})
            return await self._message(name, values["text"])

        @guarded
        async def servers(request: Request) -> Response:
            return JSONResponse(await self._run(self._servers, name))

        return [
            Route("/api/state", state, methods=["GET"]),
            Route("/api/events", events, methods=["GET"]),
            Route("/api/model", model, methods=["POST"]),
            Route("/api/message", message, methods=["POST"]),
            Route("/api/servers", servers, methods=["GET"]),
        ]

    def _servers(self, name: str) -> dict[str, Any]:
        """The agent's extra MCP servers and how they fared (:mod:`.servers`)."""
        applied = self.reader.state_dir_of(name).parent / "config" / "applied" / "agent.toml"
        with self.reader.pool.connection() as store:
            return agent_servers(store, name, applied)
