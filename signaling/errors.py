"""The one error shape of every HTTP answer: `{"error": {"code", "message"}}`.

Handlers raise `ApiError` (or let aiohttp raise its HTTPExceptions: unknown
route, wrong method, body too large); `error_middleware` turns both into the
shape, keeps the headers that matter (`Allow`, `WWW-Authenticate`) and makes
sure no exception escapes a handler as aiohttp's plain-text 500."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.typedefs import Handler

from vilokanam.logs import log_event

log = logging.getLogger(__name__)

# Codes for errors aiohttp raises itself; everything else has its own code.
_CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    500: "internal_error",
    502: "bad_gateway",
    503: "unavailable",
}
# Headers of an aiohttp HTTPException worth keeping (405 must say Allow).
_KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")
# A store that does not answer is a temporary condition, not a bug.
_UNAVAILABLE = (ConnectionRefusedError, TimeoutError, asyncpg.PostgresConnectionError,
                asyncpg.InterfaceError, aioredis.ConnectionError, aioredis.TimeoutError)


class ApiError(Exception):
    """An error a client should see: HTTP status, stable code, readable message."""

    def __init__(self, status: int, code: str, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_response(status: int, code: str, message: str,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}},
                             status=status, headers=headers)


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def not_found(code: str, message: str) -> ApiError:
    return ApiError(404, code, message)


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


async def parse_json_body(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object. Numbers with a fraction become
    Decimal (money is never a float); NaN/Infinity are not JSON and refused.
    A body over the app's client_max_size raises 413 from `request.read()`."""
    raw = await request.read()
    try:
        body = json.loads(raw, parse_float=Decimal, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("bad_json", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("bad_json", "the request body must be a JSON object")
    return body


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    headers = {k: exc.headers[k] for k in _KEPT_HEADERS if k in exc.headers}
    code = _CODE_BY_STATUS.get(exc.status, "http_error")
    message = exc.reason
    if exc.status == 404:
        message = "no such resource"
    elif exc.status == 413:
        message = exc.text or exc.reason  # aiohttp says the limit and the size
    return error_response(exc.status, code, message, headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects and the like are answers, not errors
            raise
        return _from_http_exception(exc)
    except _UNAVAILABLE as exc:
        log_event(log, "http.store_unavailable", logging.WARNING, path=request.path,
                  error=type(exc).__name__)
        return error_response(503, "unavailable", "a backing store is not answering; retry",
                              {"Retry-After": "1"})
    except Exception:
        log.exception("http.unhandled", extra={"fields": {"path": request.path,
                                                          "method": request.method}})
        return error_response(500, "internal_error", "internal server error")
