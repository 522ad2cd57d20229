"""What every API handler shares: blocking work off the loop with a deadline, errors as JSON.

A handler never blocks the event loop: reads and actor calls run in ``anyio`` worker threads
(:func:`blocking`), bounded by a deadline, after which the request answers 504 and the thread
is left to finish on its own (its own asks are bounded too). Errors are JSON
``{"error": "..."}`` with the status :func:`status_for` picks from the hive's exception tree.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import pykka
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hive_actors.errors import ConfigError, Conflict, HiveError, NotFound, Refused, StoreError
from hive_actors.services.directory import ServiceDown

from .forms import BadInput, Field, parse_form

__all__ = [
    "ApiError",
    "blocking",
    "error_response",
    "form",
    "guarded",
    "http_exception_handler",
    "status_for",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class ApiError(HiveError):
    """A request that failed with a status the handler chose."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def status_for(exc: BaseException) -> int:
    """The HTTP status for an error the hive raised."""
    match exc:
        case BadInput() | ApiError():
            return int(exc.status)
        case NotFound():
            return 404
        case Conflict():
            return 409
        case ConfigError():
            return 400  # a bad value the operator typed: a model name, an agent name
        case Refused():
            return 409  # refused for the state it found (a destroyed agent, …)
        case ServiceDown() | StoreError():
            return 503
        case TimeoutError() | pykka.Timeout():
            return 504
    return 500


def error_response(exc: BaseException) -> JSONResponse:
    """``{"error": message}`` with the status of ``exc``."""
    status = status_for(exc)
    message = str(exc) or type(exc).__name__
    if status == 500:
        log.error("gateway: request failed: %r", exc, exc_info=exc)
        message = f"internal error in the hive ({type(exc).__name__}: {exc}); see the hive's log"
    elif status >= 503:
        log.warning("gateway: %s", message)
    return JSONResponse({"error": message}, status_code=status)


async def blocking(timeout: float, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a worker thread; :class:`TimeoutError` after ``timeout`` s."""
    with anyio.move_on_after(timeout):
        # abandon_on_cancel: past the deadline the request answers; the thread finishes alone
        # (whatever it calls is bounded by its own deadline).
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), abandon_on_cancel=True)
    name = getattr(fn, "__name__", repr(fn))
    raise TimeoutError(
        f"{name} took over {timeout:g} s; the hive is overloaded or a service is stuck — "
        "try again, and look at the hive's log"
    )


def guarded(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """Turn every error a handler raises into its JSON error response."""

    @functools.wraps(handler)
    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except (HiveError, TimeoutError, pykka.Timeout) as exc:
            return error_response(exc)

    return run


async def form(request: Request, fields: Mapping[str, Field]) -> dict[str, str]:
    """The request's form, strictly parsed (the security middleware already bounded its size)."""
    body = await request.body()
    return parse_form(request.headers.get("content-type"), body, fields)


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no such route, wrong method) as JSON like ours."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}; see docs/openapi.yaml"
    elif exc.status_code == 404:
        message = f"no such endpoint: {request.url.path}; see docs/openapi.yaml"
    else:
        message = str(exc.detail)
    return JSONResponse(
        {"error": message}, status_code=exc.status_code, headers=dict(exc.headers or {})
    )
