"""The CAS HTTP API (aiohttp): request parsing, limits, admin authentication and error mapping.

Every refusal is JSON `{"error": {"reason", "message", "hint"}}` with the HTTP status of its
reason code; nothing the client sends can produce a traceback or a 500 other than a bug, which is
logged with a request id and answered without internals. Admin endpoints require a client
certificate from the mesh CA whose SPIFFE id is an operator (`spiffe://<td>/admin/<name>`).

| method | path | who | what |
|---|---|---|---|
| POST | /v1/nonce | anyone (rate-limited per address) | a single-use nonce |
| POST | /v1/attest | anyone (rate-limited per address) | quote + CSR -> certificate chain, trust bundle, policy slice |
| GET | /v1/trust-bundle | anyone | the mesh CA certificate(s), PEM |
| GET | /v1/feed?since=N&wait=S&seen=M | anyone | events after N (long-poll), signed checkpoints |
| GET | /v1/feed/stream?since=N | anyone | the same as server-sent events |
| GET | /healthz, /readyz | anyone | liveness, readiness |
| POST | /v1/admin/revoke | operator | revoke an instance (serial), a service or a platform |
| GET/POST | /v1/admin/policy | operator | read / apply a policy version (names its predecessor) |
| GET | /v1/admin/audit?since=N&limit=M | operator | audit entries, head, its checkpoint, checks |
| GET | /v1/admin/issued?service=S | operator | issued certificates |
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from netshield.cas.ratelimit import SourceRateLimit
from netshield.cas.service import AttestRequest, CasService, Issued, RevocationKind
from netshield.errors import NetshieldError
from netshield.httpjson import error_response, errors_middleware
from netshield.identity import SpiffeId
from netshield.reasons import Reason
from netshield.serving import GUARD_KEY, REQUEST_SECONDS, FirstRequestGuard, mark_served

log = logging.getLogger("netshield.cas.api")

MAX_BODY = 64 * 1024
MAX_CONCURRENT_ATTESTATIONS = 64
FEED_MAX_WAIT = 60.0

Clock = Callable[[], datetime]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SERVICE_KEY = web.AppKey("service", CasService)
RATE_KEY = web.AppKey("rate_limit", SourceRateLimit)
CLOCK_KEY: web.AppKey[Clock] = web.AppKey("clock")
ATTEST_SLOTS_KEY = web.AppKey("attest_slots", asyncio.Semaphore)


async def read_json(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise NetshieldError(
            f"content type {request.content_type!r} is not application/json",
            reason=Reason.UNSUPPORTED_MEDIA_TYPE,
        )
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise NetshieldError(
            f"body of {request.content_length} bytes exceeds {MAX_BODY}",
            reason=Reason.BODY_TOO_LARGE,
        )
    seconds = request.app[GUARD_KEY].seconds  # a body arrives within the request deadline too
    try:
        async with asyncio.timeout(seconds):
            raw = await request.read()
    except TimeoutError:
        raise NetshieldError(
            f"the request body did not arrive within {seconds:g} s",
            reason=Reason.REQUEST_TOO_SLOW,
        ) from None
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NetshieldError(f"body is not JSON: {err}", reason=Reason.REQUEST_MALFORMED) from None
    except RecursionError:
        raise NetshieldError(
            "body is JSON nested too deeply", reason=Reason.REQUEST_MALFORMED
        ) from None
    if not isinstance(body, dict):
        raise NetshieldError("body must be a JSON object", reason=Reason.REQUEST_MALFORMED)
    return body


def peer_identity(request: web.Request) -> SpiffeId | None:
    """The verified client certificate's SPIFFE id, if the client presented one."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    if not isinstance(ssl_object, ssl.SSLObject):
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    sans = cert.get("subjectAltName", ())
    uris = [
        pair[1] for pair in sans if isinstance(pair, tuple) and len(pair) == 2 and pair[0] == "URI"
    ]
    if len(uris) != 1:
        return None
    try:
        return SpiffeId.parse(str(uris[0]))
    except ValueError:
        return None


def require_admin(request: web.Request) -> str:
    service = request.app[SERVICE_KEY]
    ident = peer_identity(request)
    if ident is None or ident.admin is None or ident.trust_domain != service.policy.trust_domain:
        raise NetshieldError(
            "this endpoint needs the operator client certificate"
            + (f" (presented {ident})" if ident else " (none presented)"),
            reason=Reason.ADMIN_CERT_REQUIRED,
        )
    return str(ident)


def _int_param(
    request: web.Request, name: str, default: int, *, low: int = 0, high: int = 2**62
) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise NetshieldError(
            f"query parameter {name}={raw!r} is not an integer", reason=Reason.REQUEST_MALFORMED
        ) from None
    if not low <= value <= high:
        raise NetshieldError(
            f"query parameter {name}={value} out of range {low}..{high}",
            reason=Reason.REQUEST_MALFORMED,
        )
    return value


def rate_limited(request: web.Request) -> web.Response | None:
    """The 429 answer when the caller's address is over its rate, else None (a token taken)."""
    limit = request.app[RATE_KEY]
    source = request.remote or "unknown"
    wait = limit.acquire(source, time.monotonic())
    if wait is None:
        return None
    if limit.refused % 1000 == 1:
        log.warning(
            "rate limit: %s asks for nonces or attestations faster than %g/s (%d refused so far)",
            source,
            limit.rate,
            limit.refused,
        )
    response = error_response(
        Reason.RATE_LIMITED,
        f"{source} is over its rate of {limit.rate:g} requests/s (burst {limit.burst})",
    )
    response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return response


# --- public endpoints --------------------------------------------------------------------------
async def handle_nonce(request: web.Request) -> web.Response:
    if (refused := rate_limited(request)) is not None:
        return refused
    service, now = request.app[SERVICE_KEY], request.app[CLOCK_KEY]()
    nonce, expires = service.new_nonce(now)  # no I/O: a nonce is self-certifying
    return web.json_response({"nonce": nonce.hex(), "expires_at": expires.isoformat()})


async def handle_attest(request: web.Request) -> web.Response:
    app = request.app
    if (refused := rate_limited(request)) is not None:
        return refused
    body = await read_json(request)
    attest = AttestRequest.from_json(body)
    slots = app[ATTEST_SLOTS_KEY]
    if slots.locked():
        raise NetshieldError("too many attestations in progress", reason=Reason.BUSY)
    async with slots:
        result = await asyncio.to_thread(app[SERVICE_KEY].attest, attest, app[CLOCK_KEY]())
    if isinstance(result, Issued):
        return web.json_response(result.to_json())
    d = result.decision
    return error_response(d.reason, d.detail)


async def handle_trust_bundle(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[SERVICE_KEY].trust_bundle_pem(), content_type="application/x-pem-file"
    )


async def handle_feed(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    since = _int_param(request, "since", 0)
    wait = min(float(_int_param(request, "wait", 0, high=3600)), FEED_MAX_WAIT)
    seen = _int_param(request, "seen", 0) if "seen" in request.query else None
    events, head = service.feed_events(since)
    if not events and wait > 0 and head >= since:  # a caller ahead of this CAS hears it at once
        await service.feed.wait(wait)
        events, head = service.feed_events(since)
    answer = {"events": events, "next": head, "policy": _policy_head(service)}
    return web.json_response(answer | service.checkpoints(seen))


async def handle_feed_stream(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE_KEY]
    since = _int_param(request, "since", 0)
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    await resp.write(b": netshield feed\n\n")
    while not service.feed.closed:
        events, head = service.feed_events(since)
        for event in events:
            data = json.dumps(event, separators=(",", ":"))
            await resp.write(
                f"id: {event['seq']}\nevent: {event['type']}\ndata: {data}\n\n".encode()
            )
        since = head
        await service.feed.wait(15.0)
        if not events and not service.feed.closed:
            await resp.write(b": keep-alive\n\n")
    return resp


def _policy_head(service: CasService) -> dict[str, Any]:
    stored = service.stored_policy
    return {
        "version": stored.version,
        "hash": stored.hash,
        "min_epoch": service.policy.certificates.min_epoch,
    }


async def handle_healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def handle_readyz(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    return web.json_response(
        {
            "status": "ready",
            "trust_domain": service.policy.trust_domain,
            "policy": _policy_head(service),
        }
    )


# --- admin endpoints ---------------------------------------------------------------------------
def parse_revoke(body: dict[str, Any]) -> tuple[RevocationKind, str, str]:
    """``{kind, target, note}`` of a revoke request; NetshieldError(REQUEST_MALFORMED) else."""
    kind, target, note = body.get("kind"), body.get("target"), body.get("note", "")
    if kind not in ("instance", "service", "platform") or not isinstance(target, str) or not target:
        raise NetshieldError(
            "revoke needs kind (instance|service|platform) and a target string",
            reason=Reason.REQUEST_MALFORMED,
        )
    if not isinstance(note, str):
        raise NetshieldError("note must be a string", reason=Reason.REQUEST_MALFORMED)
    for name, text in (("target", target), ("note", note)):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise NetshieldError(
                f"{name} is not text (a lone surrogate)", reason=Reason.REQUEST_MALFORMED
            ) from None
    rk: RevocationKind = kind
    return rk, target, note


async def handle_revoke(request: web.Request) -> web.Response:
    actor = require_admin(request)
    rk, target, note = parse_revoke(await read_json(request))
    service = request.app[SERVICE_KEY]
    revocation = await asyncio.to_thread(
        service.revoke, rk, target, actor=actor, note=note, now=request.app[CLOCK_KEY]()
    )
    await service.feed.notify()
    return web.json_response({"revocation": _jsonable(asdict(revocation))})


async def handle_policy_get(request: web.Request) -> web.Response:
    require_admin(request)
    stored = request.app[SERVICE_KEY].stored_policy
    return web.json_response(
        {
            "version": stored.version,
            "hash": stored.hash,
            "text": stored.text,
            "applied_at": stored.applied_at,
        }
    )


async def handle_policy_apply(request: web.Request) -> web.Response:
    actor = require_admin(request)
    body = await read_json(request)
    text, previous = body.get("policy"), body.get("previous")
    if not isinstance(text, str) or not (previous is None or isinstance(previous, str)):
        raise NetshieldError(
            "apply needs {policy: YAML text, previous: hash of the current policy}",
            reason=Reason.REQUEST_MALFORMED,
        )
    service = request.app[SERVICE_KEY]
    stored = await asyncio.to_thread(
        service.apply_policy, text, previous=previous, actor=actor, now=request.app[CLOCK_KEY]()
    )
    await service.feed.notify()
    return web.json_response({"version": stored.version, "hash": stored.hash})


async def handle_audit(request: web.Request) -> web.Response:
    require_admin(request)
    store = request.app[SERVICE_KEY].store
    since = _int_param(request, "since", 0)
    limit = _int_param(request, "limit", 1000, low=1, high=100_000)
    entries, head, problems = await asyncio.to_thread(store.audit_snapshot, since, limit)
    signed = await asyncio.to_thread(store.checkpoint, head.seq)
    return web.json_response(
        {
            "entries": [_jsonable(asdict(e)) for e in entries],
            "head": {"seq": head.seq, "hash": head.head},
            "checkpoint": None if signed is None else signed.to_json(),
            "problems": problems,
        }
    )


async def handle_issued(request: web.Request) -> web.Response:
    require_admin(request)
    store = request.app[SERVICE_KEY].store
    service_name = request.query.get("service")
    issued = await asyncio.to_thread(store.list_issued, service_name)
    return web.json_response({"issued": [_jsonable(asdict(i)) for i in issued]})


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, frozenset | set):
        return sorted(_jsonable(v) for v in value)
    return value


def utc_now() -> datetime:
    return datetime.now(UTC)


def make_app(
    service: CasService,
    *,
    clock: Clock = utc_now,
    max_attestations: int = MAX_CONCURRENT_ATTESTATIONS,
    rate_limit: SourceRateLimit | None = None,
    request_timeout: float = REQUEST_SECONDS,
) -> web.Application:
    app = web.Application(
        client_max_size=MAX_BODY, middlewares=[errors_middleware("CAS", log), mark_served]
    )
    app[SERVICE_KEY] = service
    app[CLOCK_KEY] = clock
    app[ATTEST_SLOTS_KEY] = asyncio.Semaphore(max_attestations)
    app[RATE_KEY] = rate_limit if rate_limit is not None else SourceRateLimit()
    app[GUARD_KEY] = FirstRequestGuard(request_timeout)
    app.router.add_post("/v1/nonce", handle_nonce)
    app.router.add_post("/v1/attest", handle_attest)
    app.router.add_get("/v1/trust-bundle", handle_trust_bundle)
    app.router.add_get("/v1/feed", handle_feed)
    app.router.add_get("/v1/feed/stream", handle_feed_stream)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    app.router.add_post("/v1/admin/revoke", handle_revoke)
    app.router.add_get("/v1/admin/policy", handle_policy_get)
    app.router.add_post("/v1/admin/policy", handle_policy_apply)
    app.router.add_get("/v1/admin/audit", handle_audit)
    app.router.add_get("/v1/admin/issued", handle_issued)
    return app
