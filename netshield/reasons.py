"""Reason codes: the stable, upper-case strings that name why something was allowed or refused.

Scripts, dashboards and operators key on these strings, so a code never changes meaning and is
never renamed. Every code carries a one-line hint (what an operator can do about it) and the HTTP
status the CAS answers with when it refuses a request for that reason. The README's table is
generated from `REASONS` (tests keep the two in sync).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Stage(enum.StrEnum):
    """Where in the system a reason code arises."""

    REQUEST = "request"
    ATTESTATION = "attestation"
    ADMIN = "admin"
    STATE = "state"
    DATA_PLANE = "data-plane"


@dataclass(frozen=True, slots=True)
class ReasonInfo:
    code: str
    stage: Stage
    http_status: int
    hint: str


class Reason(enum.StrEnum):
    """Stable reason codes. The enum value is the code itself."""

    OK = "OK"
    # --- requests to the CAS API ---
    REQUEST_MALFORMED = "REQUEST_MALFORMED"
    BODY_TOO_LARGE = "BODY_TOO_LARGE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    BUSY = "BUSY"
    RATE_LIMITED = "RATE_LIMITED"
    REQUEST_TOO_SLOW = "REQUEST_TOO_SLOW"
    # --- attestation, in the order the CAS checks them (DESIGN §3.4) ---
    PLATFORM_UNAVAILABLE = "PLATFORM_UNAVAILABLE"
    WORKLOAD_NOT_MEASURABLE = "WORKLOAD_NOT_MEASURABLE"
    QUOTE_MALFORMED = "QUOTE_MALFORMED"
    QUOTE_FORMAT_UNSUPPORTED = "QUOTE_FORMAT_UNSUPPORTED"
    PLATFORM_CERT_UNTRUSTED = "PLATFORM_CERT_UNTRUSTED"
    PLATFORM_CLAIM_NOT_CERTIFIED = "PLATFORM_CLAIM_NOT_CERTIFIED"
    PLATFORM_CERT_REVOKED = "PLATFORM_CERT_REVOKED"
    QE_REPORT_INVALID = "QE_REPORT_INVALID"
    QUOTE_SIGNATURE_INVALID = "QUOTE_SIGNATURE_INVALID"
    COLLATERAL_MISSING = "COLLATERAL_MISSING"
    COLLATERAL_INVALID = "COLLATERAL_INVALID"
    COLLATERAL_EXPIRED = "COLLATERAL_EXPIRED"
    QE_IDENTITY_MISMATCH = "QE_IDENTITY_MISMATCH"
    TDX_MODULE_MISMATCH = "TDX_MODULE_MISMATCH"
    PLATFORM_REVOKED = "PLATFORM_REVOKED"
    TCB_OUT_OF_DATE = "TCB_OUT_OF_DATE"
    TCB_STATUS_NOT_ACCEPTED = "TCB_STATUS_NOT_ACCEPTED"
    TCB_REVOKED = "TCB_REVOKED"
    DEBUG_NOT_ALLOWED = "DEBUG_NOT_ALLOWED"
    NONCE_UNKNOWN = "NONCE_UNKNOWN"
    NONCE_REUSED = "NONCE_REUSED"
    NONCE_EXPIRED = "NONCE_EXPIRED"
    REPORT_DATA_MISMATCH = "REPORT_DATA_MISMATCH"
    CSR_MALFORMED = "CSR_MALFORMED"
    SERVICE_UNKNOWN = "SERVICE_UNKNOWN"
    SERVICE_DISABLED = "SERVICE_DISABLED"
    SERVICE_REVOKED = "SERVICE_REVOKED"
    EVIDENCE_TYPE_NOT_ACCEPTED = "EVIDENCE_TYPE_NOT_ACCEPTED"
    MEASUREMENT_NOT_ALLOWED = "MEASUREMENT_NOT_ALLOWED"
    SIGNER_NOT_ALLOWED = "SIGNER_NOT_ALLOWED"
    PRODUCT_NOT_ALLOWED = "PRODUCT_NOT_ALLOWED"
    SVN_TOO_LOW = "SVN_TOO_LOW"
    # --- operator (admin) API ---
    ADMIN_CERT_REQUIRED = "ADMIN_CERT_REQUIRED"
    POLICY_INVALID = "POLICY_INVALID"
    POLICY_PREDECESSOR_MISMATCH = "POLICY_PREDECESSOR_MISMATCH"
    REVOCATION_TARGET_UNKNOWN = "REVOCATION_TARGET_UNKNOWN"
    # --- CAS state ---
    STATE_ROLLED_BACK = "STATE_ROLLED_BACK"
    STATE_UNAVAILABLE = "STATE_UNAVAILABLE"
    AUDIT_CHAIN_BROKEN = "AUDIT_CHAIN_BROKEN"
    CAS_ROLLED_BACK = "CAS_ROLLED_BACK"
    CHECKPOINT_INVALID = "CHECKPOINT_INVALID"
    # --- data plane: why a connection was allowed, refused or closed ---
    PEER_NOT_AUTHORIZED = "PEER_NOT_AUTHORIZED"
    PEER_IDENTITY_MISMATCH = "PEER_IDENTITY_MISMATCH"
    PEER_CERT_MISSING = "PEER_CERT_MISSING"
    PEER_CERT_UNTRUSTED = "PEER_CERT_UNTRUSTED"
    PEER_CERT_EXPIRED = "PEER_CERT_EXPIRED"
    PEER_REVOKED = "PEER_REVOKED"
    POLICY_STALE = "POLICY_STALE"
    PEER_EPOCH_UNKNOWN = "PEER_EPOCH_UNKNOWN"
    PEER_CERT_LIFETIME_EXCEEDED = "PEER_CERT_LIFETIME_EXCEEDED"
    PEER_MEASUREMENT_NOT_ALLOWED = "PEER_MEASUREMENT_NOT_ALLOWED"
    TLS_HANDSHAKE_FAILED = "TLS_HANDSHAKE_FAILED"
    HANDSHAKE_TIMEOUT = "HANDSHAKE_TIMEOUT"
    HANDSHAKE_SHED = "HANDSHAKE_SHED"
    SOURCE_HANDSHAKE_LIMIT = "SOURCE_HANDSHAKE_LIMIT"
    NO_CREDENTIALS = "NO_CREDENTIALS"
    CALLER_NOT_LOCAL = "CALLER_NOT_LOCAL"
    CONNECTION_LIMIT = "CONNECTION_LIMIT"
    PEER_AT_CAPACITY = "PEER_AT_CAPACITY"
    DESTINATION_UNKNOWN = "DESTINATION_UNKNOWN"
    DESTINATION_NOT_IN_MESH = "DESTINATION_NOT_IN_MESH"
    UPSTREAM_UNREACHABLE = "UPSTREAM_UNREACHABLE"
    CONNECT_TIMEOUT = "CONNECT_TIMEOUT"
    WAF_BLOCKED = "WAF_BLOCKED"
    UDP_NOT_PROTECTED = "UDP_NOT_PROTECTED"
    LISTEN_REFUSED = "LISTEN_REFUSED"
    SHIELD_NOT_INHERITED = "SHIELD_NOT_INHERITED"
    HTTP_REFUSED = "HTTP_REFUSED"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    EXTENSION_SOCKETS = "EXTENSION_SOCKETS"
    TUNNEL_LIMIT = "TUNNEL_LIMIT"
    STREAM_REFUSED = "STREAM_REFUSED"
    # --- close reasons of connections that were allowed ---
    CLOSED = "CLOSED"
    IDLE_TIMEOUT = "IDLE_TIMEOUT"
    PEER_RESET = "PEER_RESET"
    UPSTREAM_RESET = "UPSTREAM_RESET"
    TLS_STREAM_ERROR = "TLS_STREAM_ERROR"
    DRAINED = "DRAINED"
    CREDENTIALS_EXPIRED = "CREDENTIALS_EXPIRED"
    TUNNEL_PROTOCOL_ERROR = "TUNNEL_PROTOCOL_ERROR"
    TUNNEL_LIFETIME = "TUNNEL_LIFETIME"

    @property
    def info(self) -> ReasonInfo:
        return REASONS[self]


def _r(code: Reason, stage: Stage, status: int, hint: str) -> tuple[Reason, ReasonInfo]:
    return code, ReasonInfo(code.value, stage, status, hint)


REASONS: dict[Reason, ReasonInfo] = dict(
    [
        _r(Reason.OK, Stage.REQUEST, 200, "Nothing to do."),
        _r(
            Reason.REQUEST_MALFORMED,
            Stage.REQUEST,
            400,
            "The request body is not the JSON object this endpoint expects; check the client version.",
        ),
        _r(
            Reason.BODY_TOO_LARGE,
            Stage.REQUEST,
            413,
            "The request body exceeds the CAS limit; quotes and CSRs are a few kilobytes.",
        ),
        _r(
            Reason.UNSUPPORTED_MEDIA_TYPE,
            Stage.REQUEST,
            415,
            "Send the body as application/json (policy uploads: application/yaml).",
        ),
        _r(
            Reason.NOT_FOUND,
            Stage.REQUEST,
            404,
            "No such endpoint; see the README's CAS API table.",
        ),
        _r(Reason.METHOD_NOT_ALLOWED, Stage.REQUEST, 405, "Wrong HTTP method for this endpoint."),
        _r(
            Reason.BUSY,
            Stage.REQUEST,
            503,
            "The CAS is at its limit of concurrent attestations; retry with backoff.",
        ),
        _r(
            Reason.RATE_LIMITED,
            Stage.REQUEST,
            429,
            "This address asked for nonces or attestations faster than --rate-per-source allows; "
            "retry after the Retry-After seconds (many sidecars behind one NAT address: raise it).",
        ),
        _r(
            Reason.REQUEST_TOO_SLOW,
            Stage.REQUEST,
            408,
            "The client did not send its request within the CAS's request timeout (a slow or "
            "stalled client); check the network between it and the CAS.",
        ),
        _r(
            Reason.PLATFORM_UNAVAILABLE,
            Stage.ATTESTATION,
            503,
            "The host's platform service does not answer on its socket; start `netshield platform "
            "serve` on this host and mount its socket directory into the sidecar.",
        ),
        _r(
            Reason.WORKLOAD_NOT_MEASURABLE,
            Stage.ATTESTATION,
            403,
            "The platform service found no workload rule for the caller or could not measure it; "
            "its log names the caller's pid and uid and what to change.",
        ),
        _r(
            Reason.QUOTE_MALFORMED,
            Stage.ATTESTATION,
            400,
            "The quote could not be decoded; the platform software and the CAS disagree on the format.",
        ),
        _r(
            Reason.QUOTE_FORMAT_UNSUPPORTED,
            Stage.ATTESTATION,
            400,
            "The quote's format version is not one this CAS verifies; upgrade the CAS or the platform.",
        ),
        _r(
            Reason.PLATFORM_CERT_UNTRUSTED,
            Stage.ATTESTATION,
            403,
            "The platform certificate does not chain to a trusted vendor root; re-provision the platform "
            "with `netshield platform init` from this trust domain's vendor root.",
        ),
        _r(
            Reason.PLATFORM_CLAIM_NOT_CERTIFIED,
            Stage.ATTESTATION,
            403,
            "The quote claims a platform id, TCB level or debug mode its vendor certificate does not "
            "certify; re-provision the platform with `netshield platform init` (and --debug only "
            "where debug is meant).",
        ),
        _r(
            Reason.PLATFORM_CERT_REVOKED,
            Stage.ATTESTATION,
            403,
            "A certificate of the platform's chain (an Intel PCK certificate or its CA) is on the "
            "vendor's revocation list in the collateral directory: the platform may not attest.",
        ),
        _r(
            Reason.QE_REPORT_INVALID,
            Stage.ATTESTATION,
            403,
            "The DCAP quote's quoting-enclave report is not signed by the PCK key or does not bind "
            "the attestation key: the quote was assembled from parts of different platforms.",
        ),
        _r(
            Reason.QUOTE_SIGNATURE_INVALID,
            Stage.ATTESTATION,
            403,
            "The quote's signature does not verify with the platform key: it was altered or forged.",
        ),
        _r(
            Reason.COLLATERAL_MISSING,
            Stage.ATTESTATION,
            403,
            "The CAS lacks vendor collateral for this platform (an SEV-SNP VCEK/VLEK or ARK/ASK, "
            "an Intel TCB Info for its FMSPC, a QE Identity): fetch it into the --collateral "
            "directory (`netshield evidence verify FILE --collateral DIR` names what is missing).",
        ),
        _r(
            Reason.COLLATERAL_INVALID,
            Stage.ATTESTATION,
            403,
            "A collateral file (TCB Info, QE Identity) is not signed by a vendor certificate that "
            "chains to the pinned root: re-fetch it together with its issuer chain.",
        ),
        _r(
            Reason.COLLATERAL_EXPIRED,
            Stage.ATTESTATION,
            403,
            "The collateral (TCB Info, QE Identity or a revocation list) is outside its validity "
            "window: fetch current collateral from the vendor into the --collateral directory.",
        ),
        _r(
            Reason.QE_IDENTITY_MISMATCH,
            Stage.ATTESTATION,
            403,
            "The quoting enclave is not the one Intel's QE Identity names (signer, product, "
            "attributes): the quote did not come from Intel's quoting enclave.",
        ),
        _r(
            Reason.TDX_MODULE_MISMATCH,
            Stage.ATTESTATION,
            403,
            "The TDX module (MRSIGNERSEAM, SEAM attributes) is not one Intel's TCB Info names.",
        ),
        _r(
            Reason.PLATFORM_REVOKED,
            Stage.ATTESTATION,
            403,
            "The platform is revoked (policy platforms.revoked or `netshield cas revoke --platform`); "
            "run the workload on another platform.",
        ),
        _r(
            Reason.TCB_OUT_OF_DATE,
            Stage.ATTESTATION,
            403,
            "The platform's TCB is below the policy minimum (platforms.min_tcb; for SEV-SNP "
            "min_tcb under platforms.sev-snp or the service's evidence.sev-snp), or an Intel TCB "
            "status of OutOfDate the policy does not accept: update the platform firmware.",
        ),
        _r(
            Reason.TCB_STATUS_NOT_ACCEPTED,
            Stage.ATTESTATION,
            403,
            "Intel's collateral gives the platform a TCB status (e.g. SWHardeningNeeded, "
            "ConfigurationNeeded) that accepted_tcb_statuses does not list: fix the platform, or "
            "tolerate the status in the policy after reading its advisories.",
        ),
        _r(
            Reason.TCB_REVOKED,
            Stage.ATTESTATION,
            403,
            "Intel's collateral lists the platform's TCB as Revoked; no policy can accept it.",
        ),
        _r(
            Reason.DEBUG_NOT_ALLOWED,
            Stage.ATTESTATION,
            403,
            "The workload runs in debug mode, which the policy does not allow for this service.",
        ),
        _r(
            Reason.NONCE_UNKNOWN,
            Stage.ATTESTATION,
            403,
            "The quote names a nonce this CAS never issued; fetch a fresh nonce and attest again.",
        ),
        _r(
            Reason.NONCE_REUSED,
            Stage.ATTESTATION,
            403,
            "The nonce was already used: a replayed quote. Fetch a fresh nonce for every attestation.",
        ),
        _r(
            Reason.NONCE_EXPIRED,
            Stage.ATTESTATION,
            403,
            "The nonce expired before the quote arrived; attest promptly after fetching the nonce.",
        ),
        _r(
            Reason.REPORT_DATA_MISMATCH,
            Stage.ATTESTATION,
            403,
            "The quote's report_data does not bind this CSR's key and nonce; the CSR was swapped.",
        ),
        _r(
            Reason.CSR_MALFORMED,
            Stage.ATTESTATION,
            400,
            "The CSR is not a valid PEM PKCS#10 request with a self-signature over an ECDSA P-256 key.",
        ),
        _r(
            Reason.SERVICE_UNKNOWN,
            Stage.ATTESTATION,
            403,
            "The service is not in the policy; add it under services or fix the sidecar's service name.",
        ),
        _r(
            Reason.SERVICE_DISABLED,
            Stage.ATTESTATION,
            403,
            "The service is disabled in the policy (services.<name>.enabled: false).",
        ),
        _r(
            Reason.SERVICE_REVOKED,
            Stage.ATTESTATION,
            403,
            "The service was revoked with `netshield cas revoke --service`; revocations are permanent "
            "in this CAS state, so redeploy the fixed service under a new name.",
        ),
        _r(
            Reason.EVIDENCE_TYPE_NOT_ACCEPTED,
            Stage.ATTESTATION,
            403,
            "The service does not accept this kind of evidence (simulated, sev-snp, sgx, tdx): "
            "add reference values for it under services.<name>.evidence, or run the service on "
            "the platform the policy names.",
        ),
        _r(
            Reason.MEASUREMENT_NOT_ALLOWED,
            Stage.ATTESTATION,
            403,
            "The workload's measurement is not in services.<name>.measurements: the code changed. "
            "Run `netshield measure` on the approved build and add its measurement to the policy.",
        ),
        _r(
            Reason.SIGNER_NOT_ALLOWED,
            Stage.ATTESTATION,
            403,
            "The workload's signer does not match services.<name>.signer.",
        ),
        _r(
            Reason.PRODUCT_NOT_ALLOWED,
            Stage.ATTESTATION,
            403,
            "The workload's product id does not match services.<name>.product_id.",
        ),
        _r(
            Reason.SVN_TOO_LOW,
            Stage.ATTESTATION,
            403,
            "The workload's security version is below services.<name>.min_svn; deploy the patched build.",
        ),
        _r(
            Reason.ADMIN_CERT_REQUIRED,
            Stage.ADMIN,
            403,
            "Admin endpoints need the operator client certificate made by `netshield init` (--admin-cert).",
        ),
        _r(
            Reason.POLICY_INVALID,
            Stage.ADMIN,
            422,
            "The policy does not validate; run `netshield config check FILE` for every problem.",
        ),
        _r(
            Reason.POLICY_PREDECESSOR_MISMATCH,
            Stage.ADMIN,
            409,
            "The update must name the current policy's hash (--previous); see `netshield cas policy show`.",
        ),
        _r(
            Reason.REVOCATION_TARGET_UNKNOWN,
            Stage.ADMIN,
            404,
            "No issued certificate, service or platform by that name; check `netshield cas audit`.",
        ),
        _r(
            Reason.STATE_ROLLED_BACK,
            Stage.STATE,
            500,
            "The CAS state is older than its monotonic counter: the database was rolled back. "
            "Restore the newest state; never start the CAS on an old copy.",
        ),
        _r(
            Reason.STATE_UNAVAILABLE,
            Stage.STATE,
            503,
            "The CAS state cannot be used (locked by another CAS, unreadable, not a CAS "
            "database, or its PostgreSQL database is unreachable); run one CAS per state "
            "directory, check the path or the database, and retry.",
        ),
        _r(
            Reason.AUDIT_CHAIN_BROKEN,
            Stage.STATE,
            500,
            "The audit log's hash chain is broken: entries were edited, removed or reordered.",
        ),
        _r(
            Reason.CAS_ROLLED_BACK,
            Stage.STATE,
            503,
            "A sidecar saw this CAS at a later signed audit checkpoint (head or policy version) "
            "than it presents now, or another entry at the same place: its state was restored "
            "from an older copy or replaced; restore the newest state, not a snapshot.",
        ),
        _r(
            Reason.CHECKPOINT_INVALID,
            Stage.STATE,
            502,
            "An audit checkpoint is malformed or its signature does not verify against the mesh "
            "CA (no checkpoint signing certificate of this trust domain's CAS): the CAS answer "
            "or the stored checkpoint was forged or edited.",
        ),
        _r(
            Reason.PEER_NOT_AUTHORIZED,
            Stage.DATA_PLANE,
            403,
            "The caller's service is not in services.<callee>.allowed_callers; add it there and apply the policy "
            "if the call is legitimate.",
        ),
        _r(
            Reason.PEER_IDENTITY_MISMATCH,
            Stage.DATA_PLANE,
            403,
            "The server presented a mesh certificate for another service than the destination: a misrouted "
            "or impersonating endpoint. Check the service registry addresses.",
        ),
        _r(
            Reason.PEER_CERT_MISSING,
            Stage.DATA_PLANE,
            403,
            "The peer sent no client certificate; mesh traffic must come from a sidecar.",
        ),
        _r(
            Reason.PEER_CERT_UNTRUSTED,
            Stage.DATA_PLANE,
            403,
            "The peer's certificate does not chain to this trust domain's mesh CA.",
        ),
        _r(
            Reason.PEER_CERT_EXPIRED,
            Stage.DATA_PLANE,
            403,
            "The peer's certificate expired: its sidecar failed to renew (is its CAS reachable?).",
        ),
        _r(
            Reason.PEER_REVOKED,
            Stage.DATA_PLANE,
            403,
            "The peer's instance, service or platform was revoked at the CAS.",
        ),
        _r(
            Reason.POLICY_STALE,
            Stage.DATA_PLANE,
            403,
            "The peer's certificate was minted under an older certificate epoch than the policy's "
            "certificates.min_epoch; the peer must re-attest.",
        ),
        _r(
            Reason.PEER_EPOCH_UNKNOWN,
            Stage.DATA_PLANE,
            403,
            "The peer's certificate claims a certificate epoch above the policy's current one: "
            "the CAS never issues such a certificate, so it was minted elsewhere. Find out who "
            "holds the mesh CA key; if the epoch was just raised, this sidecar learns it from "
            "the CAS feed within seconds.",
        ),
        _r(
            Reason.PEER_CERT_LIFETIME_EXCEEDED,
            Stage.DATA_PLANE,
            403,
            "The peer's certificate lives longer than the policy's certificates.lifetime: the "
            "CAS never issues such a certificate, so it was minted elsewhere (or the lifetime "
            "was just lowered and the peer has not re-attested yet).",
        ),
        _r(
            Reason.PEER_MEASUREMENT_NOT_ALLOWED,
            Stage.DATA_PLANE,
            403,
            "The measurement in the peer's certificate is not one of services.<peer>.measurements "
            "in the policy this sidecar holds: the certificate was minted elsewhere, or the "
            "measurement was removed from the policy.",
        ),
        _r(
            Reason.TLS_HANDSHAKE_FAILED,
            Stage.DATA_PLANE,
            403,
            "The TLS handshake failed (protocol version, cipher or garbage bytes); the detail names OpenSSL's reason.",
        ),
        _r(
            Reason.HANDSHAKE_TIMEOUT,
            Stage.DATA_PLANE,
            408,
            "The peer did not complete the TLS handshake in time: limits.handshake_timeout, "
            "shrinking to limits.handshake_timeout_min while many handshakes are pending.",
        ),
        _r(
            Reason.HANDSHAKE_SHED,
            Stage.DATA_PLANE,
            503,
            "limits.max_handshakes handshakes were pending (a flood of idle or slow connections?): "
            "the oldest was dropped to make room. Authenticated connections are not affected.",
        ),
        _r(
            Reason.SOURCE_HANDSHAKE_LIMIT,
            Stage.DATA_PLANE,
            429,
            "limits.max_handshakes_per_source handshakes from this host were pending: the new "
            "connection was reset before any TLS work. Raise the limit if many callers share one "
            "address (NAT).",
        ),
        _r(
            Reason.NO_CREDENTIALS,
            Stage.DATA_PLANE,
            503,
            "The sidecar holds no valid certificate (not attested yet, or expired while the CAS was unreachable).",
        ),
        _r(
            Reason.CALLER_NOT_LOCAL,
            Stage.DATA_PLANE,
            403,
            "Outbound listeners accept local callers only (loopback, or a unix socket uid in allowed_uids).",
        ),
        _r(
            Reason.CONNECTION_LIMIT,
            Stage.DATA_PLANE,
            503,
            "The sidecar is at limits.max_connections; raise it or add capacity.",
        ),
        _r(
            Reason.PEER_AT_CAPACITY,
            Stage.DATA_PLANE,
            503,
            "The destination's sidecar refused the connection because it is at its "
            "limits.max_connections (it answered with TLS alert user_canceled); retry later or add "
            "capacity there.",
        ),
        _r(
            Reason.DESTINATION_UNKNOWN,
            Stage.DATA_PLANE,
            502,
            "The destination service has no address in the service registry or the sidecar config.",
        ),
        _r(
            Reason.DESTINATION_NOT_IN_MESH,
            Stage.DATA_PLANE,
            403,
            "A transparently captured connection went to an address that is no mesh service "
            "(services.<name>.addresses) and no native service; transparent.mode strict refuses "
            "it. Add the service to the policy, exclude the address from capture "
            "(`netshield iptables install --exclude-cidrs`), or set transparent.mode: permissive.",
        ),
        _r(
            Reason.UPSTREAM_UNREACHABLE,
            Stage.DATA_PLANE,
            502,
            "The upstream (local service or peer sidecar) refused or reset the connection; check that it is running.",
        ),
        _r(
            Reason.CONNECT_TIMEOUT,
            Stage.DATA_PLANE,
            504,
            "The upstream did not accept the connection within limits.connect_timeout.",
        ),
        _r(
            Reason.WAF_BLOCKED,
            Stage.DATA_PLANE,
            403,
            "The web application firewall of a WAF route refused a request: the record's "
            "waf.requests say which request (its request id is in the 403 body), which rules "
            "matched and where (CRS ids: 942xxx SQL injection, 941xxx XSS, 930xxx traversal, "
            "932xxx command injection; NS-9xxxxx: netshield's compact rules). Fix the caller, "
            "or narrow the rule with waf.exclusions if the request is legitimate.",
        ),
        _r(
            Reason.HTTP_REFUSED,
            Stage.DATA_PLANE,
            400,
            "A WAF route refused a request before inspection: malformed or smuggling-shaped "
            "HTTP/1.1 (duplicate or conflicting Content-Length, Transfer-Encoding with "
            "Content-Length, obs-fold, bare LF, a bad Host) or over waf.max_head/max_body; "
            "the record's waf.requests name the NS-9201xx rule. Fix the client.",
        ),
        _r(
            Reason.REQUEST_TIMEOUT,
            Stage.DATA_PLANE,
            408,
            "A caller of a WAF route did not send a whole request within waf.request_timeout; "
            "raise it if clients upload slowly.",
        ),
        _r(
            Reason.UDP_NOT_PROTECTED,
            Stage.DATA_PLANE,
            403,
            "The in-process shield refused a UDP datagram to a mesh destination: mesh traffic is "
            "mutual TLS over TCP and UDP cannot be protected, so it is never sent in plaintext.",
        ),
        _r(
            Reason.LISTEN_REFUSED,
            Stage.DATA_PLANE,
            403,
            "The in-process shield refused a listening socket on a port its inbound rules refuse; "
            "list the port under inbound.ports with mode protected or unprotected.",
        ),
        _r(
            Reason.SHIELD_NOT_INHERITED,
            Stage.DATA_PLANE,
            503,
            "A process forked from a shielded one opened a socket: the child has no shield of its "
            "own (no attested key, no relay), so the shield refuses; use the spawn start method "
            "and run each worker under `netshield run`, or keep networking in the parent.",
        ),
        _r(
            Reason.EXTENSION_SOCKETS,
            Stage.DATA_PLANE,
            403,
            "The in-process shield refused to load a C extension that opens sockets of its own "
            "(libpq, gRPC's C core, libcurl, uvloop, ...), or found and shut down a TCP socket "
            "opened past Python's socket module: it cannot protect them. Use a pure-Python "
            "client, a sidecar, or c_extensions: allow.",
        ),
        _r(
            Reason.TUNNEL_LIMIT,
            Stage.DATA_PLANE,
            503,
            "Every tunnel to the destination sidecar carries tunnels.max_streams streams and "
            "tunnels.max_per_peer tunnels are open; raise either, or turn tunnels off for that "
            "outbound (tunnel: false).",
        ),
        _r(
            Reason.STREAM_REFUSED,
            Stage.DATA_PLANE,
            502,
            "The destination sidecar refused the tunnel stream without a reason netshield "
            "knows (another tunnel peer?); its records say why.",
        ),
        _r(Reason.CLOSED, Stage.DATA_PLANE, 200, "Both sides finished normally."),
        _r(
            Reason.IDLE_TIMEOUT,
            Stage.DATA_PLANE,
            200,
            "No byte moved in either direction for limits.idle_timeout.",
        ),
        _r(
            Reason.PEER_RESET,
            Stage.DATA_PLANE,
            200,
            "The downstream side reset or aborted the connection.",
        ),
        _r(
            Reason.UPSTREAM_RESET,
            Stage.DATA_PLANE,
            200,
            "The upstream side reset or aborted the connection.",
        ),
        _r(
            Reason.TLS_STREAM_ERROR,
            Stage.DATA_PLANE,
            200,
            "A TLS failure after the handshake (a record failed its integrity check, a malformed "
            "record or an unexpected message): the connection was tampered with or corrupted on "
            "the wire; the detail names OpenSSL's reason and the side.",
        ),
        _r(
            Reason.DRAINED,
            Stage.DATA_PLANE,
            200,
            "The sidecar shut down and closed the connection after limits.drain_timeout.",
        ),
        _r(
            Reason.CREDENTIALS_EXPIRED,
            Stage.DATA_PLANE,
            200,
            "The sidecar's own certificate expired while the connection was open; it fails closed.",
        ),
        _r(
            Reason.TUNNEL_PROTOCOL_ERROR,
            Stage.DATA_PLANE,
            200,
            "The tunnel's peer broke the HTTP/2 protocol, so the tunnel and all its streams were "
            "closed; the detail says how. A netshield peer never does: check what answers there.",
        ),
        _r(
            Reason.TUNNEL_LIFETIME,
            Stage.DATA_PLANE,
            200,
            "The tunnel reached tunnels.max_lifetime and drained: its streams finished, new ones "
            "went to a fresh tunnel (a tunnel record's close reason; nothing to do).",
        ),
    ]
)


def reason(code: str) -> Reason | None:
    """Look up a reason by its code; None if the code is unknown (e.g. from a newer peer)."""
    try:
        return Reason(code)
    except ValueError:
        return None


def markdown_table() -> str:
    """The README's reason-code table (regenerate with `python -m netshield.reasons`)."""
    rows = ["| code | where | HTTP | what to do |", "|---|---|---|---|"]
    for r, info in REASONS.items():
        if r is Reason.OK:
            continue
        rows.append(f"| `{info.code}` | {info.stage.value} | {info.http_status} | {info.hint} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
