"""Why a connection was allowed or denied, in sentences: `netshield explain` and `check-access`.

`explain_record` turns a connection record (and, when known, the current policy with its
version) into an `Explanation`: a verdict, sentences that name the policy clause or config key
that decided, and what would have to change — e.g. "add `frontend` to
`services.orders.allowed_callers`, policy version 7". Every reason code the data plane writes
has its own explainer (`EXPLAINERS`); a code this version does not know still gets its hint.

`check_access` is the dry run behind `netshield cas check-access CALLER CALLEE`: it runs the
sidecars' own decision functions (`netshield.authz`: the caller's outbound check and the callee's
inbound check) on the slices `netshield.policyslice.slice_for` cuts from the policy, and explains the
outcome with the same `explain_record`, so both commands say the same thing.

Pure: values in, values out; time is passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from netshield.authz import ConnDecision, authorize_inbound, may_call_decision
from netshield.identity import SpiffeId
from netshield.logs.parties import Parties, expected_service, host_of, parties, service_of
from netshield.logs.table import human_bytes, human_duration
from netshield.pki.ca import CLOCK_SKEW
from netshield.pki.certext import AttestationClaims
from netshield.policy import Policy, may_call
from netshield.policyslice import slice_for
from netshield.reasons import REASONS, Reason, reason
from netshield.record import ConnectionRecord, rfc3339
from netshield.schema import did_you_mean
from netshield.tls.peer import PeerInfo

RevocationCheck = Callable[[PeerInfo], Reason | None]


@dataclass(frozen=True)
class PolicyView:
    """The policy an explanation is checked against, and where it came from."""

    policy: Policy
    version: int | None  # None: a local file that no CAS has numbered
    source: str  # e.g. "the CAS at https://cas:8443" or "policy file policy.yaml"

    @property
    def label(self) -> str:
        """ "policy version 7" or "the policy file x.yaml"."""
        return f"policy version {self.version}" if self.version is not None else self.source


@dataclass(frozen=True)
class Explanation:
    verdict: str  # "allowed", "denied" or "allowed (audit mode)"
    sentences: tuple[str, ...]
    clause: str | None = None  # the policy clause or config key that decided
    change: str | None = None  # what would have to change for the other outcome
    where: str = "policy"  # what `clause` is a key of: "policy" or "sidecar config"

    def lines(self) -> list[str]:
        out = list(self.sentences)
        if self.clause:
            out.append(f"Decided by: `{self.clause}` in the {self.where}.")
        if self.change:
            out.append(f"To change it: {self.change}.")
        return out


@dataclass
class _Ctx:
    record: ConnectionRecord
    view: PolicyView | None
    ends: Parties
    sentences: list[str] = field(default_factory=list)
    clause: str | None = None
    change: str | None = None
    where: str = "policy"

    def config(self, key: str) -> None:
        """The deciding key is in the sidecar's (or the in-process shield's) config, not the
        policy."""
        where = "shield config" if self.record.proxy == "in-process" else "sidecar config"
        self.clause, self.where = key, where

    @property
    def decided_under(self) -> str:
        v = self.record.policy_version
        if v is not None:
            return f"policy version {v}"
        return self.view.label if self.view is not None else "the policy the sidecar held"

    @property
    def current(self) -> str:
        """How to name the version a change has to go into."""
        if self.view is not None:
            return self.view.label
        return self.decided_under

    @property
    def local(self) -> str:
        return service_of(self.record.local_identity) or "this sidecar"

    @property
    def peer(self) -> str:
        r = self.record
        return (
            service_of(r.peer_identity)
            or r.peer_identity
            or (r.src if r.direction == "inbound" else r.dst)
        )

    def say(self, text: str) -> None:
        self.sentences.append(text)


Explainer = Callable[[_Ctx], None]


# --- authorization ------------------------------------------------------------------------------


def _is_service(name: str) -> bool:
    return name not in ("?", "") and "/" not in name and ":" not in name and "." not in name


def _allowed_callers(ctx: _Ctx) -> None:
    """OK and PEER_NOT_AUTHORIZED: the callee's allowed_callers decided."""
    r, caller, callee = ctx.record, ctx.ends.caller, ctx.ends.callee
    clause = f"services.{callee}.allowed_callers"
    ctx.clause = clause
    if r.decision == "allow" and r.reason == Reason.OK:
        ctx.say(f"Allowed: `{caller}` is in `{clause}` ({ctx.decided_under}).")
        _current_allows(ctx, expect=True)
        if ctx.change is None:
            ctx.change = (
                f"remove `{caller}` from `{clause}`, {ctx.current}, to refuse new connections "
                f"(`netshield cas revoke --service {caller}` cuts it off at once)"
            )
        return
    if not _is_service(caller):
        ctx.say(
            f"Denied: the caller `{caller}` is not a service identity of this trust domain "
            "(spiffe://<trust-domain>/svc/<name>), so no policy can allow it."
        )
        ctx.change = "call through a sidecar that attested as a service in the policy"
        return
    if r.mode == "audit":
        ctx.say(
            f"Allowed only because `services.{callee}.authorization` is `audit`: `{caller}` "
            f"is not in `{clause}` ({ctx.decided_under}), so under `enforce` it would be denied."
        )
    else:
        ctx.say(f"Denied: `{caller}` is not in `{clause}` ({ctx.decided_under}).")
    _current_allows(ctx, expect=False)
    if ctx.change is None:
        ctx.change = f"add `{caller}` to `{clause}`, {ctx.current}"
        if r.mode == "audit":
            ctx.change += (
                f" (or set `services.{callee}.authorization: enforce` to refuse such calls)"
            )


def _current_allows(ctx: _Ctx, *, expect: bool) -> None:
    """Compare with the current policy, when we have it."""
    view, caller, callee = ctx.view, ctx.ends.caller, ctx.ends.callee
    if view is None:
        ctx.say(
            "(Checked against the record only: give --policy FILE or --cas/--admin to compare "
            "with the current policy.)"
        )
        return
    policy = view.policy
    target = policy.services.get(callee)
    if target is None:
        hint = did_you_mean(callee, list(policy.services)) or ""
        ctx.say(f"`{callee}` is not a service in {view.label}{f' ({hint})' if hint else ''}.")
        ctx.change = f"add a service `{callee}` under `services`, {view.label}"
        return
    if caller not in policy.services:
        hint = did_you_mean(caller, list(policy.services)) or ""
        ctx.say(
            f"`{caller}` is not a service in {view.label}{f' ({hint})' if hint else ''}: "
            "it cannot attest, so it holds no certificate."
        )
        if not expect:
            ctx.change = (
                f"add a service `{caller}` under `services` (with its measurements) and add "
                f"`{caller}` to `services.{callee}.allowed_callers`, {view.label}"
            )
        return
    if not target.enabled:
        ctx.say(f"`services.{callee}.enabled` is false in {view.label}.")
    allows = may_call(policy, caller, callee)
    if allows and not expect:
        ctx.say(
            f"{view.label.capitalize()} does list `{caller}` in `services.{callee}.allowed_callers`: "
            f"`{ctx.local}`'s sidecar applies it once it re-attests (at its next certificate "
            "renewal, or restart it)."
        )
        ctx.change = "nothing in the policy; wait for the sidecar's next renewal or restart it"
    elif not allows and expect:
        ctx.say(
            f"{view.label.capitalize()} no longer allows it: new connections are refused once "
            f"`{ctx.local}`'s sidecar re-attests."
        )
        ctx.change = f"add `{caller}` back to `services.{callee}.allowed_callers`, {view.label}"


def _identity_mismatch(ctx: _Ctx) -> None:
    r = ctx.record
    expected = expected_service(r) or ctx.ends.callee
    ctx.say(
        f"Denied: `{ctx.local}` dialled {r.dst} expecting `{expected}`, but the server there "
        f"presented `{r.peer_identity or 'another identity'}`: a misrouted or impersonating "
        "endpoint."
    )
    ctx.clause = f"services.{expected}.addresses"
    claimed = ""
    if ctx.view is not None:
        svc = ctx.view.policy.services.get(expected)
        if svc is not None:
            listed = ", ".join(svc.addresses) or "no address"
            ctx.say(f"{ctx.view.label.capitalize()} registers {listed} for `{expected}`.")
        owners = [n for n, s in ctx.view.policy.services.items() if r.dst in s.addresses]
        claimed = f" ({r.dst} is registered for `{owners[0]}`)" if owners else ""
    ctx.change = (
        f"point `services.{expected}.addresses`, {ctx.current}, (or the outbound listener's "
        f"`address` in `{ctx.local}`'s sidecar config) at `{expected}`'s sidecar{claimed}"
    )


def _destination_unknown(ctx: _Ctx) -> None:
    svc = expected_service(ctx.record) or ctx.ends.callee
    ctx.say(f"Denied: `{ctx.local}`'s sidecar knows no address for `{svc}`.")
    ctx.clause = f"services.{svc}.addresses"
    ctx.change = (
        f"add `{svc}`'s sidecar address to `services.{svc}.addresses`, {ctx.current} (or set "
        f"`address` on the outbound listener for `{svc}` in the sidecar config)"
    )


def _not_in_mesh(ctx: _Ctx) -> None:
    r = ctx.record
    dest = r.original_dst or r.dst
    if r.proxy == "in-process":
        ctx.say(
            f"Denied: {dest} is not a mesh service, and no `outbound.destinations` rule of the "
            "in-process shield passes it: the program's connection was refused at `connect`."
        )
        ctx.config("outbound.destinations")
        ctx.change = (
            f"list {dest} under `outbound.destinations` with `mode: unprotected` (plaintext), "
            f"register it under `native_services`, or {ctx.current}"
        )
        return
    ctx.say(
        f"Denied: {dest} is not a mesh service, and transparent capture is strict: traffic "
        "leaves the host only as mutual TLS to a sidecar."
    )
    ctx.clause = "native_services"
    ctx.change = (
        f"register {dest} under `native_services` (reached through the WAF route), "
        f"{ctx.current}, or run the capture in permissive mode"
    )


# --- certificates ---------------------------------------------------------------------------


def _cert_missing(ctx: _Ctx) -> None:
    ctx.say(
        f"Denied: {ctx.record.src} sent no client certificate, so it is not a sidecar: mesh "
        "traffic must come through the caller's sidecar (its outbound listener)."
    )
    ctx.change = "send the traffic through the calling service's sidecar"


def _cert_untrusted(ctx: _Ctx) -> None:
    td = ctx.view.policy.trust_domain if ctx.view else None
    ctx.say(
        f"Denied: the peer's certificate ({ctx.record.peer_identity or 'no SPIFFE id'}) does "
        f"not chain to this trust domain's mesh CA{f' ({td})' if td else ''}: {ctx.record.detail}."
    )
    ctx.clause = "trust_domain"
    ctx.change = "the peer must attest at this trust domain's CAS and use the certificate it issues"


def _cert_expired(ctx: _Ctx) -> None:
    if ctx.record.decision == "allow":
        ctx.say(
            f"It was closed when `{ctx.peer}`'s certificate expired while the connection was "
            "open: a connection never outlives the certificate it was allowed on. New "
            "connections use the peer's renewed certificate."
        )
    else:
        resumed = " (on a resumed TLS session)" if ctx.record.resumed else ""
        ctx.say(
            f"Denied: `{ctx.peer}`'s certificate had expired{resumed}: its sidecar failed to "
            "renew (is its CAS reachable? `netshield status --admin ADDR` on that sidecar shows "
            "the last error)."
        )
    ctx.clause = "certificates.lifetime"
    ctx.change = f"fix `{ctx.peer}`'s renewal (CAS reachability, attestation errors)"


def _revoked(ctx: _Ctx) -> None:
    r = ctx.record
    serial = f" (serial {r.peer_serial})" if r.peer_serial else ""
    if r.decision == "allow":
        ctx.say(
            f"It was closed when `{ctx.peer}`{serial} was revoked at the CAS while it was open."
        )
    else:
        ctx.say(
            f"Denied: `{ctx.peer}`{serial} is revoked at the CAS (its instance, service or "
            "platform)."
        )
    ctx.clause = None  # the CAS's revocations (or platforms.revoked), not a policy key
    ctx.change = (
        "revocations are permanent in the CAS state: `netshield cas audit` shows who revoked "
        "what and why; redeploy the fixed service under a new name or attest on another platform"
    )


def _stale(ctx: _Ctx) -> None:
    r = ctx.record
    epoch = f"epoch {r.peer_epoch}" if r.peer_epoch is not None else "no epoch"
    minimum = ""
    if ctx.view is not None:
        minimum = f" ({ctx.view.policy.certificates.min_epoch} in {ctx.view.label})"
    opened = "It was closed when" if r.decision == "allow" else "Denied:"
    ctx.say(
        f"{opened} `{ctx.peer}`'s certificate carries {epoch}, below "
        f"`certificates.min_epoch`{minimum}: it was issued before the epoch was raised."
    )
    ctx.clause = "certificates.min_epoch"
    ctx.change = (
        f"`{ctx.peer}` re-attests (at its next renewal, or restart its sidecar), or lower "
        f"`certificates.min_epoch`, {ctx.current}"
    )


def _minted(what: str, clause: str) -> Explainer:
    """A peer certificate that the CAS would not issue under the policy."""

    def explain(ctx: _Ctx) -> None:
        ctx.say(
            f"Denied: `{ctx.peer}`'s certificate chains to the mesh CA but {what}: the CAS "
            f"issues no such certificate ({ctx.record.detail})."
        )
        ctx.clause = clause
        ctx.change = (
            "find out who holds the mesh CA key (it belongs only to the CAS) and rotate it; if "
            f"the policy just changed, `{ctx.peer}` re-attests within seconds"
        )

    return explain


# --- the sidecar itself ---------------------------------------------------------------------


def _handshake_failed(ctx: _Ctx) -> None:
    ctx.say(f"Denied during the TLS handshake: {ctx.record.detail}.")
    ctx.config("inbound.tls_min_version")
    ctx.change = (
        'the peer must speak TLS 1.3 (or 1.2 where `inbound.tls_min_version: "1.2"`) and '
        "present a mesh certificate"
    )


def _sidecar_limit(key: str, text: str, change: str) -> Explainer:
    def explain(ctx: _Ctx) -> None:
        ctx.say(text.format(ctx=ctx, r=ctx.record) + f" ({ctx.record.detail}).")
        if key:
            ctx.config(key)
        ctx.change = change.format(ctx=ctx, r=ctx.record)

    return explain


_no_credentials = _sidecar_limit(
    "",
    "Denied: `{ctx.local}`'s sidecar held no valid certificate, so it failed closed",
    "check `netshield status` on that sidecar (CAS reachable? last error?); it accepts "
    "connections again once it has attested",
)
_caller_not_local = _sidecar_limit(
    "outbound[].allowed_uids",
    "Denied: {r.src} is not a local caller allowed on this outbound listener",
    "connect from loopback, or from a uid listed in the unix listener's `allowed_uids`",
)
_connection_limit = _sidecar_limit(
    "limits.max_connections",
    "Denied: the sidecar was at its connection limit",
    "raise `limits.max_connections` in the sidecar config, or add capacity",
)
_handshake_timeout = _sidecar_limit(
    "limits.handshake_timeout",
    "Denied: the peer did not finish the TLS handshake in time",
    "check the peer (it may not be a sidecar) or raise `limits.handshake_timeout`; under a "
    "flood of pending handshakes the deadline shrinks to `limits.handshake_timeout_min`",
)
_handshake_shed = _sidecar_limit(
    "limits.max_handshakes",
    "Denied: `limits.max_handshakes` handshakes were pending and this one was the oldest, so it "
    "was dropped to make room for a new one (authenticated connections were not affected)",
    "nothing, if this is a flood of idle or slow connections; if real callers are shed, raise "
    "`limits.max_handshakes` in the sidecar config",
)
_source_handshake_limit = _sidecar_limit(
    "limits.max_handshakes_per_source",
    "Denied: {r.src}'s host already had its share of pending handshakes, so the connection was "
    "reset before any TLS work",
    "nothing, if this host floods the port; if many real callers share its address (NAT), raise "
    "`limits.max_handshakes_per_source` in the sidecar config",
)
_peer_at_capacity = _sidecar_limit(
    "",
    "Denied: the destination's sidecar refused the connection because it was at its "
    "`limits.max_connections`",
    "retry later, raise `limits.max_connections` in the destination sidecar's config, or add "
    "capacity there",
)

_tunnel_limit = _sidecar_limit(
    "tunnels.max_streams",
    "Denied: every tunnel to the destination's sidecar was full and no more may be opened",
    "raise `tunnels.max_streams` or `tunnels.max_per_peer` in the sidecar config, or set "
    "`tunnel: false` on that outbound so each connection gets its own TLS session",
)
_stream_refused = _sidecar_limit(
    "",
    "Denied: the destination's sidecar refused the tunnel stream",
    "read the destination sidecar's records for the same time: its own deny record says why",
)


_udp_not_protected = _sidecar_limit(
    "outbound.destinations",
    "Refused: the program sent a UDP datagram to {r.dst}, a mesh destination; mesh traffic is "
    "mutual TLS over TCP, so the in-process shield sends no UDP there",
    "send it over TCP (the mesh protects that), or to an address outside the mesh",
)
_listen_refused = _sidecar_limit(
    "inbound.ports",
    "Refused: the program tried to listen on a port the in-process shield's inbound rules refuse",
    "list the port under `inbound.ports` with mode protected (mesh mTLS) or unprotected",
)
_shield_not_inherited = _sidecar_limit(
    "",
    "Refused: a process forked from the shielded one opened a socket; threads do not survive "
    "fork, so it has no shield of its own",
    "use multiprocessing's spawn start method with each worker under `netshield run`, or keep "
    "networking in the parent process",
)
_extension_sockets = _sidecar_limit(
    "c_extensions",
    "Denied: a socket of the program was opened past Python's socket module (a C extension or "
    "ctypes), where the in-process shield cannot protect it",
    "use a pure-Python client for that service, run the program beside a sidecar with "
    "transparent capture, or set `c_extensions: allow` to accept the plaintext",
)


def _upstream(code: str) -> Explainer:
    def explain(ctx: _Ctx) -> None:
        r = ctx.record
        what = (
            "refused or reset the connection"
            if code == Reason.UPSTREAM_UNREACHABLE
            else ("did not accept the connection within `limits.connect_timeout`")
        )
        authorized = "Authorized, but the" if r.decision == "allow" else "The"
        ctx.say(f"{authorized} upstream {r.dst} {what}: {r.detail}.")
        if r.direction == "inbound":
            ctx.config("inbound.upstream")
            ctx.change = f"start `{ctx.local}` on {r.dst} or fix `inbound.upstream`"
        else:
            ctx.clause = f"services.{ctx.ends.callee}.addresses"
            ctx.change = f"check that `{ctx.ends.callee}`'s sidecar runs at {r.dst}"

    return explain


def _closed(text: str, key: str | None = None, change: str | None = None) -> Explainer:
    """A close reason of an allowed connection: a sentence, and a config key only if none was
    named yet (the authorization clause comes first)."""

    def explain(ctx: _Ctx) -> None:
        ctx.say(text.format(ctx=ctx, r=ctx.record))
        if key and ctx.clause is None:
            ctx.config(key)
        if change and ctx.change is None:
            ctx.change = change

    return explain


def _drained(ctx: _Ctx) -> None:
    if ctx.record.decision == "deny":
        ctx.say(
            "Refused: the sidecar was shutting down (SIGTERM) and takes no new connections "
            f"({ctx.record.detail})."
        )
        ctx.change = "nothing: retry once the sidecar (or its replacement) is up"
    else:
        ctx.say(
            "The sidecar was shutting down (SIGTERM) and closed it after `limits.drain_timeout`."
        )


def _waf_where(ctx: _Ctx) -> str:
    listener = ctx.record.listener
    if listener.startswith("ingress:"):
        return f"ingress[service: {listener.split(':', 1)[1]}].waf"
    return f"waf.routes.{ctx.ends.callee} (or waf) in the sidecar config"


def _waf(ctx: _Ctx) -> None:
    waf = ctx.record.waf
    rules = ", ".join(waf.rule_ids) if waf and waf.rule_ids else "unknown rules"
    ctx.say(f"Denied by the web application firewall (rules {rules}): {ctx.record.detail}.")
    blocked = [r for r in waf.requests if r.action == "block"] if waf else []
    for request in blocked[:3]:
        where = ", ".join(f"{rule} in {var}" for rule, var in request.matched if var) or "-"
        ctx.say(
            f"Request {request.request_id} ({request.method} {request.path}) scored "
            f"{request.anomaly_score}: {where}."
        )
    ctx.clause = _waf_where(ctx)
    ctx.change = (
        "fix the request, or if it is a false positive add an exclusion for that rule and "
        "variable (waf.exclusions: [{rule: ID, target: VARIABLE}]) or raise the threshold"
    )


def _http_refused(ctx: _Ctx) -> None:
    waf = ctx.record.waf
    rules = ", ".join(waf.rule_ids) if waf and waf.rule_ids else "a protocol rule"
    ctx.say(
        f"Refused before inspection by the WAF route's HTTP/1.1 checks ({rules}): "
        f"{ctx.record.detail}. Nothing of that request reached the service."
    )
    ctx.clause = _waf_where(ctx)
    ctx.change = (
        "fix the client (smuggling-shaped or malformed requests are never forwarded), or "
        "raise waf.max_head / waf.max_body if the request was only too large"
    )


def _request_timeout(ctx: _Ctx) -> None:
    ctx.say(f"The caller did not send a whole request in time: {ctx.record.detail}.")
    ctx.clause = _waf_where(ctx) + ", key request_timeout"
    ctx.change = "raise waf.request_timeout if clients upload slowly; nothing was forwarded"


def _attestation(code: str) -> Explainer:
    """SERVICE_UNKNOWN / DISABLED / REVOKED (from check-access): the caller cannot attest."""

    def explain(ctx: _Ctx) -> None:
        ctx.say(f"Denied: {ctx.record.detail}.")
        caller = ctx.ends.caller
        name = caller if ctx.record.detail.startswith(f"`{caller}`") else ctx.ends.callee
        if code == Reason.SERVICE_UNKNOWN:
            ctx.clause = "services"
            ctx.change = f"add a service `{name}` under `services`, {ctx.current}"
        elif code == Reason.SERVICE_DISABLED:
            ctx.clause = f"services.{name}.enabled"
            ctx.change = f"set `services.{name}.enabled: true`, {ctx.current}"
        else:
            ctx.clause = "revocations (`netshield cas revoke --service`)"
            ctx.change = "revocations are permanent: deploy the fixed service under a new name"

    return explain


EXPLAINERS: dict[str, Explainer] = {
    Reason.OK: _allowed_callers,
    Reason.PEER_NOT_AUTHORIZED: _allowed_callers,
    Reason.PEER_IDENTITY_MISMATCH: _identity_mismatch,
    Reason.PEER_CERT_MISSING: _cert_missing,
    Reason.PEER_CERT_UNTRUSTED: _cert_untrusted,
    Reason.PEER_CERT_EXPIRED: _cert_expired,
    Reason.PEER_REVOKED: _revoked,
    Reason.POLICY_STALE: _stale,
    Reason.PEER_EPOCH_UNKNOWN: _minted(
        "claims a certificate epoch above the current one", "certificates.min_epoch"
    ),
    Reason.PEER_CERT_LIFETIME_EXCEEDED: _minted(
        "lives longer than the policy allows", "certificates.lifetime"
    ),
    Reason.PEER_MEASUREMENT_NOT_ALLOWED: _minted(
        "carries a measurement the policy does not allow for its service",
        "services.<name>.measurements",
    ),
    Reason.TLS_HANDSHAKE_FAILED: _handshake_failed,
    Reason.HANDSHAKE_TIMEOUT: _handshake_timeout,
    Reason.HANDSHAKE_SHED: _handshake_shed,
    Reason.SOURCE_HANDSHAKE_LIMIT: _source_handshake_limit,
    Reason.PEER_AT_CAPACITY: _peer_at_capacity,
    Reason.NO_CREDENTIALS: _no_credentials,
    Reason.CALLER_NOT_LOCAL: _caller_not_local,
    Reason.CONNECTION_LIMIT: _connection_limit,
    Reason.DESTINATION_UNKNOWN: _destination_unknown,
    Reason.UPSTREAM_UNREACHABLE: _upstream(Reason.UPSTREAM_UNREACHABLE),
    Reason.CONNECT_TIMEOUT: _upstream(Reason.CONNECT_TIMEOUT),
    Reason.CLOSED: _closed(
        "Both sides finished normally after {r.bytes_in} bytes in and {r.bytes_out} bytes out.",
    ),
    Reason.IDLE_TIMEOUT: _closed(
        "It was closed because no byte moved in either direction for `limits.idle_timeout`.",
        "limits.idle_timeout",
        "raise `limits.idle_timeout` in the sidecar config if such pauses are normal",
    ),
    Reason.PEER_RESET: _closed("The caller reset or abandoned the connection ({r.detail})."),
    Reason.UPSTREAM_RESET: _closed("The upstream side reset or aborted the connection."),
    Reason.TLS_STREAM_ERROR: _closed(
        "It was closed on a TLS failure after the handshake ({r.detail}): a record was "
        "corrupted or tampered with on the wire.",
        None,
        "look for what sits on the path between the two sidecars (a middlebox rewriting bytes, "
        "faulty hardware, an active attacker)",
    ),
    Reason.DRAINED: _drained,
    Reason.CREDENTIALS_EXPIRED: _closed(
        "It was closed because `{ctx.local}`'s own certificate expired while it was open: the "
        "sidecar fails closed.",
        None,
        "check `netshield status` on that sidecar: is its CAS reachable, what is the last error",
    ),
    Reason.TUNNEL_LIMIT: _tunnel_limit,
    Reason.STREAM_REFUSED: _stream_refused,
    Reason.TUNNEL_PROTOCOL_ERROR: _closed(
        "The tunnel that carried it was closed because its peer broke the HTTP/2 protocol "
        "({r.detail}); every stream on it ended.",
        None,
        "check what answers at the destination's address: a netshield sidecar never does this",
    ),
    Reason.TUNNEL_LIFETIME: _closed(
        "The tunnel reached `tunnels.max_lifetime` and drained: its streams finished and new "
        "ones went to a fresh tunnel.",
        "tunnels.max_lifetime",
        "nothing: tunnels are replaced on purpose",
    ),
    Reason.SERVICE_UNKNOWN: _attestation(Reason.SERVICE_UNKNOWN),
    Reason.SERVICE_DISABLED: _attestation(Reason.SERVICE_DISABLED),
    Reason.SERVICE_REVOKED: _attestation(Reason.SERVICE_REVOKED),
    # codes of the transparent-capture and WAF issues, explained before they exist in `Reason`
    "DESTINATION_NOT_IN_MESH": _not_in_mesh,
    "WAF_BLOCKED": _waf,
    Reason.HTTP_REFUSED: _http_refused,
    Reason.REQUEST_TIMEOUT: _request_timeout,
    Reason.UDP_NOT_PROTECTED: _udp_not_protected,
    Reason.LISTEN_REFUSED: _listen_refused,
    Reason.SHIELD_NOT_INHERITED: _shield_not_inherited,
    Reason.EXTENSION_SOCKETS: _extension_sockets,
}
"""An explainer for every reason and close-reason code the data plane writes."""


def _fallback(ctx: _Ctx, code: str) -> None:
    known = reason(code)
    hint = REASONS[known].hint if known else "a code this netshield does not know (newer sidecar?)"
    ctx.say(f"{code}: {ctx.record.detail}. {hint}")


def _explainer(code: str) -> Explainer:
    found = EXPLAINERS.get(code)
    if found is not None:
        return found

    def fallback(ctx: _Ctx) -> None:
        _fallback(ctx, code)

    return fallback


def explain_record(record: ConnectionRecord, view: PolicyView | None = None) -> Explanation:
    """Why `record`'s connection was allowed or denied, and what would change it."""
    ctx = _Ctx(record, view, parties(record))
    opened = record.decision == "allow"
    _explainer(record.reason)(ctx)
    if record.count > 1:
        ctx.say(
            f"This record stands for {record.count} connections from {host_of(record.src)} "
            f"denied for this reason between {record.ts} and {record.last_ts or record.ts}: "
            "the sidecar folds a flood's denials into one record per source, reason and "
            "`records.aggregate_denials` interval."
        )
    close = record.close_reason
    if opened and close and close != record.reason:
        _explainer(close)(ctx)
    if opened and close not in (None, Reason.CLOSED):
        moved = f"{human_bytes(record.bytes_in)} in, {human_bytes(record.bytes_out)} out"
        ctx.say(f"Until then {moved} in {human_duration(record.duration_ms)}.")
    current = view.version if view is not None else None
    if current is not None and record.policy_version not in (None, current):
        ctx.say(
            f"(Decided under policy version {record.policy_version}; the CAS is at version "
            f"{current} now.)"
        )
    verdict = (
        "allowed (audit mode)"
        if record.mode == "audit" and opened
        else ("allowed" if opened else "denied")
    )
    return Explanation(verdict, tuple(ctx.sentences), ctx.clause, ctx.change, ctx.where)


def describe(record: ConnectionRecord) -> str:
    """The one-line heading of an explanation."""
    ends = parties(record)
    return (
        f"connection {record.conn_id} ({record.direction}, {ends}) at {record.ts}: "
        f"{'audit' if record.mode == 'audit' else record.decision} {record.reason}"
    )


# --- the dry run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccessCheck:
    """The outcome of a dry run: both sidecars' decisions and the explanation."""

    caller: str
    callee: str
    allowed: bool
    reason: str
    record: ConnectionRecord  # the inbound record the callee's sidecar would write
    explanation: Explanation
    steps: tuple[str, ...]  # what was checked, in order, with each outcome


def service_name(text: str, trust_domain: str) -> str:
    """A service name from a name or a SPIFFE id; ValueError for another trust domain."""
    if not text.startswith("spiffe://"):
        return text
    sid = SpiffeId.parse(text)
    if sid.trust_domain != trust_domain:
        raise ValueError(f"{text} is not in the trust domain {trust_domain}")
    if sid.service is None:
        raise ValueError(f"{text} is not a service identity (spiffe://{trust_domain}/svc/NAME)")
    return sid.service


def _attestable(view: PolicyView, name: str, revoked: Callable[[str], bool]) -> ConnDecision | None:
    """Why `name` cannot hold a certificate under the policy, or None."""
    policy = view.policy
    svc = policy.services.get(name)
    if svc is None:
        hint = did_you_mean(name, list(policy.services)) or "see `services`"
        return ConnDecision(
            False,
            Reason.SERVICE_UNKNOWN,
            f"`{name}` is not a service in {view.label} ({hint}), so it cannot attest",
        )
    if not svc.enabled:
        return ConnDecision(
            False,
            Reason.SERVICE_DISABLED,
            f"`{name}` is disabled (`services.{name}.enabled: false`, {view.label}), so it "
            "cannot attest",
        )
    if revoked(name):
        return ConnDecision(
            False, Reason.SERVICE_REVOKED, f"`{name}` is revoked at the CAS, so it cannot attest"
        )
    return None


def check_access(
    view: PolicyView,
    caller: str,
    callee: str,
    *,
    now: datetime,
    check: RevocationCheck | None = None,
    service_revoked: Callable[[str], bool] | None = None,
) -> AccessCheck:
    """Would `caller` reach `callee` now? `check` is the sidecars' revocation check (from the
    CAS feed); `service_revoked` says whether a service is revoked (for attestation)."""
    policy, version = view.policy, view.version if view.version is not None else 0
    td = policy.trust_domain
    caller, callee = service_name(caller, td), service_name(callee, td)
    check = check or (lambda _peer: None)
    revoked = service_revoked or (lambda _name: False)
    steps: list[str] = []
    decision: ConnDecision | None = None
    for who, name in (("caller", caller), ("callee", callee)):
        problem = _attestable(view, name, revoked)
        steps.append(f"{who} `{name}` can attest: {'no, ' + problem.reason if problem else 'yes'}")
        decision = decision or problem
    if decision is None:
        outbound = may_call_decision(slice_for(policy, caller), callee, policy_version=version)
        steps.append(f"`{caller}`'s sidecar (outbound): {_word(outbound)}")
        svc = policy.services[caller]
        peer = PeerInfo(
            spiffe_id=SpiffeId.for_service(td, caller),
            serial=None,
            not_after=now + policy.certificates.lifetime,
            not_before=now - CLOCK_SKEW,
            claims=AttestationClaims(
                measurement=sorted(svc.measurements)[0],
                policy_version=max(version, 1),
                epoch=policy.certificates.min_epoch,
            ),
            tls_version="TLSv1.3",
            cipher="",
            resumed=False,
        )
        inbound = authorize_inbound(
            slice_for(policy, callee), peer, check, policy_version=version, now=now
        )
        steps.append(f"`{callee}`'s sidecar (inbound): {_word(inbound)}")
        decision = outbound if not outbound.allowed else inbound
    record = ConnectionRecord(
        ts=rfc3339(now),
        conn_id="dry-run",
        direction="inbound",
        listener="check-access",
        src=caller,
        dst=callee,
        local_identity=str(SpiffeId.for_service(td, callee)),
        peer_identity=str(SpiffeId.for_service(td, caller)),
        decision=decision.decision,
        reason=decision.reason.value,
        detail=decision.detail,
        mode=decision.mode,
        policy_version=view.version,
    )
    return AccessCheck(
        caller,
        callee,
        decision.allowed,
        decision.reason.value,
        record,
        explain_record(record, view),
        tuple(steps),
    )


def _word(decision: ConnDecision) -> str:
    if decision.allowed and decision.mode == "audit":
        return f"allow (audit mode; would deny: {decision.reason.value})"
    return "allow" if decision.allowed else f"deny {decision.reason.value}"


__all__ = [
    "EXPLAINERS",
    "AccessCheck",
    "Explanation",
    "PolicyView",
    "check_access",
    "describe",
    "explain_record",
    "service_name",
]
