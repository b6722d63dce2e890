"""A client for the CAS API, used by sidecar agents, the operator CLI and the demo.

Refusals come back as `CasRefused` carrying the CAS's reason code, message and hint; transport
failures as `CasUnreachable` naming the URL. Both are NetshieldErrors, so the CLI prints them as
one line.

A client may know several CAS replicas (several URLs on one database): a request that cannot
reach one, or that one answers "busy" or "state unavailable" (HTTP 503), goes to the next, and
the client stays with the replica that answered until it fails. A refusal (the CAS decided) is
never retried elsewhere. A name that resolves to several addresses (a Kubernetes Service) is
one URL: the connector tries its addresses in turn.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp

from netshield.errors import NetshieldError
from netshield.reasons import Reason, reason


class CasRefused(NetshieldError):
    """The CAS answered with an error body."""

    def __init__(self, status: int, code: str, message: str, hint: str):
        self.status = status
        self.code = code
        super().__init__(
            f"CAS refused: {code}: {message}",
            reason=reason(code) or Reason.REQUEST_MALFORMED,
            hint=hint,
        )


class CasUnreachable(NetshieldError):
    """The CAS could not be reached or spoke something else than its API."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a successful attestation returns (the private key stays with the caller)."""

    chain_pem: bytes
    trust_bundle_pem: bytes
    spiffe_id: str
    serial: str
    not_after: str
    policy_version: int
    epoch: int
    policy: dict[str, Any]
    checkpoint: object = None  # the signed checkpoint of the attestation's audit entry (JSON)


FAILOVER_STATUS = 503  # BUSY, STATE_UNAVAILABLE: another replica may answer


class CasClient:
    """Async client; use as `async with CasClient(url_or_urls, ssl_context=...) as cas:`."""

    def __init__(
        self, base_url: str | Sequence[str], *, ssl_context: ssl.SSLContext, timeout: float = 10.0
    ) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ValueError("a CAS client needs at least one URL")
        self.base_urls = tuple(u.rstrip("/") for u in urls)
        self._current = 0
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> CasClient:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout, connector=aiohttp.TCPConnector(ssl=self._ssl)
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def base_url(self) -> str:
        """The replica the client talks to now."""
        return self.base_urls[self._current]

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One request, at the current replica or, if it is away or busy, at the next ones."""
        failures: list[NetshieldError] = []
        for _ in self.base_urls:
            try:
                return await self._request_one(
                    method, path, body=body, params=params, timeout=timeout
                )
            except CasUnreachable as err:
                failures.append(err)
            except CasRefused as err:
                if err.status != FAILOVER_STATUS or len(self.base_urls) == 1:
                    raise
                failures.append(err)
            self._current = (self._current + 1) % len(self.base_urls)
        if len(failures) == 1 or all(isinstance(f, CasRefused) for f in failures):
            raise failures[-1]
        raise CasUnreachable(
            "no CAS replica answered: " + "; ".join(str(f) for f in failures),
            hint="check the URLs and that `netshield cas serve` runs on at least one of them",
        )

    async def _request_one(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        if self._session is None:
            raise RuntimeError("CasClient used outside `async with`")
        url = self.base_url + path
        kwargs: dict[str, Any] = {"params": params}
        if body is not None:
            kwargs["json"] = body
        if timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
        try:
            async with self._session.request(method, url, **kwargs) as resp:
                raw = await resp.read()
                ctype = resp.content_type
                status = resp.status
        except aiohttp.ClientConnectorCertificateError as err:
            raise CasUnreachable(
                f"CAS at {self.base_url}: its certificate is not trusted ({err.certificate_error})",
                hint="check --ca: it must be the trust domain's mesh CA",
            ) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise CasUnreachable(
                f"CAS at {self.base_url} unreachable: {err or type(err).__name__}",
                hint="check the URL and that `netshield cas serve` is running",
            ) from None
        if ctype == "application/json":
            try:
                data = json.loads(raw)
            except ValueError:
                raise CasUnreachable(f"CAS at {self.base_url} sent invalid JSON") from None
        else:
            data = raw
        if status >= 400:
            err_body = data.get("error", {}) if isinstance(data, dict) else {}
            raise CasRefused(
                status,
                str(err_body.get("reason", f"HTTP_{status}")),
                str(err_body.get("message", "")),
                str(err_body.get("hint", "")),
            )
        return data

    # --- public API --------------------------------------------------------------------------
    async def nonce(self) -> bytes:
        data = await self._request("POST", "/v1/nonce", body={})
        return bytes.fromhex(data["nonce"])

    async def attest(
        self, *, service: str, nonce: bytes, quote: bytes, csr_pem: bytes
    ) -> Credentials:
        data = await self._request(
            "POST",
            "/v1/attest",
            body={
                "service": service,
                "nonce": nonce.hex(),
                "quote": base64.b64encode(quote).decode(),
                "csr": csr_pem.decode(),
            },
        )
        return Credentials(
            chain_pem=data["certificate_chain"].encode(),
            trust_bundle_pem=data["trust_bundle"].encode(),
            spiffe_id=data["spiffe_id"],
            serial=data["serial"],
            not_after=data["not_after"],
            policy_version=int(data["policy_version"]),
            epoch=int(data["epoch"]),
            policy=data["policy"],
            checkpoint=data.get("checkpoint"),
        )

    async def trust_bundle(self) -> bytes:
        data = await self._request("GET", "/v1/trust-bundle")
        return bytes(data)

    async def feed(self, since: int, *, wait: int = 0, seen: int | None = None) -> dict[str, Any]:
        """Events after ``since`` (waiting up to ``wait`` s for one), the signed checkpoint of the
        head and, with ``seen``, the CAS's checkpoint of that audit entry."""
        params = {"since": str(since), "wait": str(wait)}
        if seen is not None:
            params["seen"] = str(seen)
        result: dict[str, Any] = await self._request(
            "GET", "/v1/feed", params=params, timeout=wait + 10.0
        )
        return result

    async def ready(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", "/readyz")
        return result

    # --- admin API (needs the operator certificate in the SSL context) ------------------------
    async def revoke(self, kind: str, target: str, note: str = "") -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            "POST", "/v1/admin/revoke", body={"kind": kind, "target": target, "note": note}
        )
        return result

    async def policy(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", "/v1/admin/policy")
        return result

    async def apply_policy(self, text: str, previous: str | None) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            "POST", "/v1/admin/policy", body={"policy": text, "previous": previous}
        )
        return result

    async def audit(self, since: int = 0, limit: int = 1000) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            "GET", "/v1/admin/audit", params={"since": str(since), "limit": str(limit)}
        )
        return result

    async def issued(self, service: str | None = None) -> dict[str, Any]:
        params = {"service": service} if service else None
        result: dict[str, Any] = await self._request("GET", "/v1/admin/issued", params=params)
        return result
