"""The house JSON error shape for netshield's HTTP APIs (the CAS API, the sidecar admin API).

Every failure becomes `{"error": {"reason", "message", "hint"}}` with the HTTP status of its
reason code. A NetshieldError carries its own reason; aiohttp's HTTP errors map to request
reasons; anything unexpected is logged once under an incident id and answered without internals.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from netshield.errors import NetshieldError
from netshield.reasons import Reason

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HTTP_REASONS = {
    400: Reason.REQUEST_MALFORMED,
    404: Reason.NOT_FOUND,
    405: Reason.METHOD_NOT_ALLOWED,
    413: Reason.BODY_TOO_LARGE,
    415: Reason.UNSUPPORTED_MEDIA_TYPE,
}


def known_reason(code: Reason | str) -> Reason | None:
    """The Reason for `code`, or None for a code this version does not know."""
    try:
        return Reason(code)
    except ValueError:
        return None


def error_body(reason: Reason | str, message: str, hint: str | None = None) -> dict[str, Any]:
    known = known_reason(reason)
    if hint is None:
        hint = known.info.hint if known else ""
    code = reason.value if isinstance(reason, Reason) else str(reason)
    return {"error": {"reason": code, "message": message, "hint": hint}}


def error_response(
    reason: Reason | str, message: str, *, status: int | None = None, hint: str | None = None
) -> web.Response:
    """The error shape; the status defaults to the reason code's HTTP status (500 if unknown)."""
    known = known_reason(reason)
    if status is None:
        status = known.info.http_status if known else 500
    return web.json_response(error_body(reason, message, hint), status=status)


def errors_middleware(component: str, log: logging.Logger) -> Middleware:
    """A middleware mapping every failure to the error shape; `component` names whose log to read."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except NetshieldError as err:
            return error_response(err.reason, err.message, hint=err.hint)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            reason = HTTP_REASONS.get(exc.status, Reason.REQUEST_MALFORMED)
            return error_response(reason, f"{request.method} {request.path}: {exc.reason}")
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception:
            incident = uuid.uuid4().hex[:12]
            log.exception(
                "%s: internal error serving %s %s (incident %s)",
                component,
                request.method,
                request.path,
                incident,
            )
            return error_response(
                "INTERNAL",
                f"internal error (incident {incident})",
                hint=f"the {component} log has the details under this incident id",
            )

    return middleware
