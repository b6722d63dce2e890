"""Signed audit checkpoints (netshield.pki.checkpoint): what verifies and what is refused.

The signature is checked independently with openssl, and so is the signer certificate's
purpose: it verifies under the mesh CA, but not as a TLS client or server certificate."""

from __future__ import annotations

import contextlib
import json
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netshield.identity import SpiffeId
from netshield.pki.ca import CertificateAuthority, create_root_ca, issue_certificate
from netshield.pki.checkpoint import (
    RENEW_BEFORE,
    Checkpoint,
    CheckpointError,
    CheckpointSigner,
    SignedCheckpoint,
    verify_checkpoint,
)
from netshield.pki.keys import certs_pem, generate_key
from netshield.reasons import Reason

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
TD = "example.org"


def ts(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


CP = Checkpoint("0b7c5a3e-0000-4000-8000-000000000001", 12, "ab" * 32, 3, ts(NOW))


@pytest.fixture(scope="module")
def mesh() -> CertificateAuthority:
    return create_root_ca(f"netshield mesh CA ({TD})", now=NOW - timedelta(days=1))


@pytest.fixture(scope="module")
def signer(mesh: CertificateAuthority) -> CheckpointSigner:
    return CheckpointSigner(mesh, TD)


def test_a_checkpoint_the_cas_signed_verifies_after_a_json_round_trip(
    signer: CheckpointSigner, mesh: CertificateAuthority
) -> None:
    signed = signer.sign(CP)
    again = SignedCheckpoint.from_json(json.loads(json.dumps(signed.to_json())))
    assert verify_checkpoint(again, [mesh.cert], trust_domain=TD) == CP
    stored = SignedCheckpoint.from_body(signed.body_text(), signed.signer_pem())
    assert signer.verify(stored) == CP
    assert "PRIVATE" not in json.dumps(signed.to_json()) and "key" not in repr(signer).lower()


@pytest.mark.parametrize(
    "edit",
    [
        {"seq": 13},
        {"head": "cd" * 32},
        {"policy_version": 2},
        {"state_id": "another-state"},
        {"ts": ts(NOW + timedelta(seconds=1))},
    ],
    ids=lambda e: next(iter(e)),
)
def test_an_edited_checkpoint_does_not_verify(
    signer: CheckpointSigner, mesh: CertificateAuthority, edit: dict[str, object]
) -> None:
    signed = signer.sign(CP)
    forged = SignedCheckpoint(replace(CP, **edit), signed.signature, signed.signer)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="signature does not verify") as info:
        verify_checkpoint(forged, [mesh.cert], trust_domain=TD)
    assert info.value.reason is Reason.CHECKPOINT_INVALID


def test_a_signer_from_another_ca_or_trust_domain_is_refused(
    signer: CheckpointSigner, mesh: CertificateAuthority
) -> None:
    other = create_root_ca(f"netshield mesh CA ({TD})", now=NOW - timedelta(days=1))  # same name
    foreign = CheckpointSigner(other, TD).sign(CP)
    with pytest.raises(CheckpointError, match="not issued by the mesh CA"):
        verify_checkpoint(foreign, [mesh.cert], trust_domain=TD)
    stranger = create_root_ca("a stranger's CA", now=NOW - timedelta(days=1))
    with pytest.raises(CheckpointError, match="no CA of the trust bundle issued"):
        verify_checkpoint(CheckpointSigner(stranger, TD).sign(CP), [mesh.cert])
    elsewhere = CheckpointSigner(mesh, "elsewhere.org").sign(CP)
    with pytest.raises(CheckpointError, match=r"not spiffe://example\.org/cas"):
        verify_checkpoint(elsewhere, [mesh.cert], trust_domain=TD)
    assert verify_checkpoint(elsewhere, [mesh.cert]) == CP  # the twin: no domain asked for


def test_a_mesh_certificate_cannot_sign_a_checkpoint(mesh: CertificateAuthority) -> None:
    """A sidecar's own certificate (or the CAS's TLS certificate) carries no checkpoint
    purpose, even with the CAS's SPIFFE id: its key cannot vouch for an audit head."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = generate_key()
    tls = issue_certificate(
        mesh,
        public_key=key.public_key(),
        spiffe_id=SpiffeId.for_cas(TD),
        now=NOW,
        lifetime=timedelta(days=1),
    )
    signature = key.sign(CP.signed_bytes(), ec.ECDSA(hashes.SHA256()))
    with pytest.raises(CheckpointError, match="not certified for checkpoints"):
        verify_checkpoint(SignedCheckpoint(CP, signature, tls), [mesh.cert], trust_domain=TD)


def test_a_checkpoint_dated_outside_its_signer_is_refused_and_the_signer_renews(
    mesh: CertificateAuthority,
) -> None:
    signer = CheckpointSigner(mesh, TD, lifetime=timedelta(days=3))
    first = signer.sign(CP)
    late = replace(CP, ts=ts(first.signer.not_valid_after_utc + timedelta(seconds=1)))
    backdated = SignedCheckpoint(late, first.signature, first.signer)
    with pytest.raises(CheckpointError, match="outside its signer's validity"):
        verify_checkpoint(backdated, [mesh.cert])
    near_end = replace(CP, ts=ts(first.signer.not_valid_after_utc - RENEW_BEFORE / 2))
    renewed = signer.sign(near_end)
    assert renewed.signer_fingerprint != first.signer_fingerprint
    assert verify_checkpoint(renewed, [mesh.cert]) == near_end


def test_openssl_verifies_the_signature_and_refuses_the_signer_for_tls(
    signer: CheckpointSigner, mesh: CertificateAuthority, tmp_path: Path
) -> None:
    signed = signer.sign(CP)
    (tmp_path / "mesh.pem").write_bytes(mesh.bundle_pem())
    (tmp_path / "signer.pem").write_bytes(certs_pem([signed.signer]))
    (tmp_path / "body").write_bytes(CP.signed_bytes())
    (tmp_path / "sig").write_bytes(signed.signature)

    def openssl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", *args], cwd=tmp_path, capture_output=True, text=True, timeout=30
        )

    pub = openssl("x509", "-in", "signer.pem", "-pubkey", "-noout").stdout
    (tmp_path / "pub.pem").write_text(pub)
    ok = openssl("dgst", "-sha256", "-verify", "pub.pem", "-signature", "sig", "body")
    assert "Verified OK" in ok.stdout, ok.stderr
    (tmp_path / "body").write_bytes(replace(CP, seq=13).signed_bytes())
    bad = openssl("dgst", "-sha256", "-verify", "pub.pem", "-signature", "sig", "body")
    assert bad.returncode != 0 and "Verification failure" in bad.stdout + bad.stderr
    chained = openssl(
        "verify", "-CAfile", "mesh.pem", "-attime", str(int(NOW.timestamp())), "signer.pem"
    )
    assert chained.returncode == 0, chained.stdout + chained.stderr
    for purpose in ("sslserver", "sslclient"):
        refused = openssl(
            "verify", "-CAfile", "mesh.pem", "-purpose", purpose,
            "-attime", str(int(NOW.timestamp())), "signer.pem",
        )  # fmt: skip
        assert refused.returncode != 0, purpose
        assert "unsuitable certificate purpose" in refused.stdout + refused.stderr


@pytest.mark.parametrize(
    "doc",
    [
        None,
        [],
        {"format": "netshield-checkpoint/1"},
        "not json",
    ],
)
def test_malformed_checkpoints_are_one_checkpoint_error(doc: object) -> None:
    with pytest.raises(CheckpointError):
        SignedCheckpoint.from_json(doc)


def test_a_checkpoint_naming_another_signer_is_refused(signer: CheckpointSigner) -> None:
    doc = signer.sign(CP).to_json()
    doc["signer_sha256"] = "00" * 32
    with pytest.raises(CheckpointError, match="names another signer"):
        SignedCheckpoint.from_json(doc)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    base=st.sampled_from(["valid", "empty"]),
    key=st.sampled_from(
        [
            "format",
            "state_id",
            "seq",
            "head",
            "policy_version",
            "ts",
            "signature",
            "signer",
            "signer_sha256",
            "extra",
        ]
    ),
    value=_json,
)
def test_from_json_raises_only_checkpoint_errors(base: str, key: str, value: object) -> None:
    doc: dict[str, object] = {} if base == "empty" else dict(VALID_DOC)
    doc[key] = value
    with contextlib.suppress(CheckpointError):
        SignedCheckpoint.from_json(doc)


VALID_DOC = (
    CheckpointSigner(create_root_ca("property mesh", now=NOW - timedelta(days=1)), TD)
    .sign(CP)
    .to_json()
)
