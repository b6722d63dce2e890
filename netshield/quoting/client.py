"""`PlatformSocket`: the sidecar's `Quoter` for the host's platform service (`netshield.quoting.
server`). It sends only the report data; the platform decides what it measures.

Guarantees: every failure is a `NetshieldError` with a reason -- `PLATFORM_UNAVAILABLE` when the
socket does not answer (missing, refused, timed out, or not the platform API), the platform's own
reason (e.g. `WORKLOAD_NOT_MEASURABLE`) when it refuses -- never a raw aiohttp error.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

import aiohttp

from netshield.attestation.quote import decode_quote
from netshield.errors import NetshieldError, QuoteError
from netshield.httpjson import known_reason
from netshield.reasons import Reason

QUOTE_TIMEOUT = 10.0


class PlatformSocket:
    """Quotes from the platform service listening on the unix socket `path`."""

    def __init__(self, path: Path, *, timeout: float = QUOTE_TIMEOUT) -> None:
        self.path = path
        self._timeout = timeout
        self._platform_id: str | None = None
        self.last_measurement: str | None = None

    @property
    def platform_id(self) -> str | None:
        return self._platform_id

    @property
    def where(self) -> str:
        return f"platform socket {self.path}"

    async def quote(self, report_data: str) -> bytes:
        answer = await self._post({"report_data": report_data})
        try:
            data = base64.b64decode(str(answer["quote"]), validate=True)
            body = decode_quote(data).body
        except (KeyError, TypeError, binascii.Error, QuoteError) as err:
            raise self._unavailable(f"answered something that is not a quote ({err})") from None
        self._platform_id = body.platform_id
        self.last_measurement = body.measurement
        return data

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        try:
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.UnixConnector(path=str(self.path)), timeout=timeout
                ) as session,
                session.post("http://platform/v1/quote", json=body) as resp,
            ):
                answer = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as err:
            raise self._unavailable(f"does not answer ({type(err).__name__}: {err})") from None
        if not isinstance(answer, dict):
            raise self._unavailable("answered something that is not the platform API")
        if status != 200:
            found = answer.get("error")
            error: dict[str, Any] = found if isinstance(found, dict) else {}
            code = str(error.get("reason", ""))
            raise NetshieldError(
                f"platform refused: {code or status}: {error.get('message', '')}",
                reason=known_reason(code) or Reason.WORKLOAD_NOT_MEASURABLE,
                hint=str(error.get("hint") or "") or None,
            )
        return answer

    def _unavailable(self, what: str) -> NetshieldError:
        return NetshieldError(
            f"the platform service at {self.path} {what}", reason=Reason.PLATFORM_UNAVAILABLE
        )

    def __repr__(self) -> str:
        return f"PlatformSocket({str(self.path)!r})"
