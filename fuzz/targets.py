"""Fuzz targets: each takes untrusted bytes and must end in a refusal netshield expects, never in
another exception; an oracle checks what must hold of what it accepted.

- `quote`: the quote codec. `decode_quote` raises only QuoteError; a quote it accepts encodes
  back to the same bytes (canonical form) and decodes again to the same value.
- `attest`: the CAS attestation endpoint's body handling, as the endpoint runs it on a real
  (temporary) CAS: JSON, then `AttestRequest.from_json`, then `CasService.attest` (evidence,
  CSR, appraisal, store, audit). Only NetshieldError may come out; the input never yields a
  certificate (it holds no genuine quote over a fresh nonce).
- `waf_http`: the WAF route's HTTP/1.1 parsing (`RequestParser`) and the compact rule engine.
  Only ParseError may come out; the requests do not depend on how the bytes were split (the
  first two bytes choose a split point); a parsed request re-serialised (`to_bytes`, what the
  route forwards) parses back to the same request.

`TARGETS` maps names to zero-argument factories (a target may need set-up, like the CAS).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

Target = Callable[[bytes], None]


def quote_target() -> Target:
    from netshield.attestation.quote import decode_quote, encode_quote
    from netshield.errors import QuoteError

    def run(data: bytes) -> None:
        try:
            quote = decode_quote(data)
        except QuoteError:
            return
        again = decode_quote(encode_quote(quote))
        assert again == quote, "a decoded quote does not survive encode + decode"

    return run


def attest_target() -> Target:
    from netshield.cas.server import CasOptions, build_service
    from netshield.cas.service import AttestRequest, Issued
    from netshield.errors import NetshieldError
    from netshield.netaddr import HostPort
    from netshield.trustdomain import Layout, create_trust_domain

    root = Path(tempfile.mkdtemp(prefix="netshield-fuzz-cas-"))
    now = datetime.now(UTC)
    layout = Layout(root / "td")
    create_trust_domain(layout.root, trust_domain="fuzz.test", admin_name="op", now=now)
    layout.policy.write_text(
        "trust_domain: fuzz.test\nservices:\n  orders:\n    measurements: [" + "a" * 64 + "]\n"
    )
    options = CasOptions(
        policy_file=layout.policy,
        state_dir=layout.cas_state,
        listen=HostPort("127.0.0.1", 0),
        counter_file=root / "cas.counter",
    )
    service = build_service(options, now)

    def run(data: bytes) -> None:
        try:
            body = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            return  # the endpoint answers REQUEST_MALFORMED
        if not isinstance(body, dict):
            return
        try:
            outcome = service.attest(AttestRequest.from_json(body), datetime.now(UTC))
        except NetshieldError:
            return
        assert not isinstance(outcome, Issued), "a certificate for fuzzed evidence"

    return run


def waf_http_target() -> Target:
    from netshield.waf.compact import inspect
    from netshield.waf.http import ParseError, RequestParser

    def parse(chunks: list[bytes]) -> tuple[list[object], str | None]:
        parser, error = RequestParser(), None
        for chunk in chunks:
            try:
                parser.feed(chunk)
            except ParseError as err:
                error = err.rule_id
                break
        return list(parser.requests), error

    def run(data: bytes) -> None:
        if len(data) < 2:
            return
        split = int.from_bytes(data[:2], "big") % (len(data) - 1) + 1
        payload = data[2:]
        whole = parse([payload])
        pieces = parse([payload[: split - 1], payload[split - 1 :]])
        assert whole == pieces, "the requests depend on how the bytes were split"
        requests, _error = whole
        for request in requests:
            inspect(request)  # type: ignore[arg-type]
            again, err = parse([request.to_bytes()])  # type: ignore[attr-defined]
            assert err is None and len(again) == 1, "a forwarded request does not parse back"
            assert again[0].to_bytes() == request.to_bytes(), "forwarding changed the request"  # type: ignore[attr-defined]

    return run


TARGETS: dict[str, Callable[[], Target]] = {
    "quote": quote_target,
    "attest": attest_target,
    "waf_http": waf_http_target,
}
