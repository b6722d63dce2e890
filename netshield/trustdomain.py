"""The on-disk layout of a trust domain made by `netshield init DIR`, and how to create it.

    DIR/policy.yaml               starter policy (edit, then `netshield config check`)
    DIR/vendor/vendor-root.pem    simulated CPU-vendor attestation root (public)
    DIR/vendor/vendor-root.key    its key (0600): only `netshield platform init` uses it
    DIR/cas/mesh-ca.pem           the mesh CA: the trust bundle every sidecar gets
    DIR/cas/mesh-ca.key           its key (0600): only the CAS uses it (`cas serve --state DIR/cas`)
    DIR/cas/vendor-roots/*.pem    the vendor roots the CAS trusts for platform certificates
    DIR/admin/admin.pem, admin.key (0600), ca.pem   the operator's client credential for the admin API

Only public material lives outside the three key files, and each key exists once, where the
party that needs it looks for it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from netshield.errors import NetshieldError, UsageError
from netshield.identity import SpiffeId, name_problem, trust_domain_problem
from netshield.pki.ca import CertificateAuthority, create_root_ca, issue_certificate, load_ca
from netshield.pki.keys import generate_key, load_certificates, write_private_key
from netshield.policy import starter_policy

ADMIN_LIFETIME = timedelta(days=365)


@dataclass(frozen=True, slots=True)
class Layout:
    root: Path

    @property
    def policy(self) -> Path:
        return self.root / "policy.yaml"

    @property
    def vendor_dir(self) -> Path:
        return self.root / "vendor"

    @property
    def cas_state(self) -> Path:
        return self.root / "cas"

    @property
    def admin_dir(self) -> Path:
        return self.root / "admin"

    @property
    def platforms_dir(self) -> Path:
        return self.root / "platforms"


@dataclass(frozen=True, slots=True)
class CasMaterial:
    """What `cas serve` loads from its state directory."""

    ca: CertificateAuthority
    vendor_roots: list[x509.Certificate]


@dataclass(frozen=True, slots=True)
class AdminCredential:
    """The operator's client certificate chain, key and the CA that verifies the CAS."""

    chain_pem: bytes
    key_path: Path
    ca_pem: bytes


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o644)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def create_trust_domain(
    root: Path, *, trust_domain: str, admin_name: str, now: datetime
) -> list[Path]:
    """Create a new trust domain under `root`; refuses to touch an existing one."""
    problem = trust_domain_problem(trust_domain) or name_problem(admin_name)
    if problem:
        raise UsageError(f"--trust-domain/--admin-name: {problem}")
    layout = Layout(root)
    if layout.policy.exists() or layout.cas_state.exists():
        raise UsageError(f"{root} already holds a trust domain; choose an empty directory")
    root.mkdir(parents=True, exist_ok=True)
    for d in (
        layout.vendor_dir,
        layout.cas_state,
        layout.cas_state / "vendor-roots",
        layout.admin_dir,
    ):
        d.mkdir(parents=True, exist_ok=True)
    layout.cas_state.chmod(0o700)
    layout.admin_dir.chmod(0o700)

    vendor = create_root_ca(f"netshield simulated vendor root ({trust_domain})", now=now)
    mesh = create_root_ca(f"netshield mesh CA ({trust_domain})", now=now)
    admin_key = generate_key()
    admin_cert = issue_certificate(
        mesh,
        public_key=admin_key.public_key(),
        spiffe_id=SpiffeId.for_admin(trust_domain, admin_name),
        now=now,
        lifetime=ADMIN_LIFETIME,
        server_auth=False,
        client_auth=True,
    )
    made: list[Path] = []

    def pub(path: Path, data: bytes) -> None:
        _write_public(path, data)
        made.append(path)

    def key(path: Path, k: object) -> None:
        write_private_key(path, k)  # type: ignore[arg-type]
        made.append(path)

    pub(layout.vendor_dir / "vendor-root.pem", _pem(vendor.cert))
    key(layout.vendor_dir / "vendor-root.key", vendor.key)
    pub(layout.cas_state / "mesh-ca.pem", _pem(mesh.cert))
    key(layout.cas_state / "mesh-ca.key", mesh.key)
    pub(layout.cas_state / "vendor-roots" / "vendor-root.pem", _pem(vendor.cert))
    pub(layout.admin_dir / "admin.pem", _pem(admin_cert) + _pem(mesh.cert))
    key(layout.admin_dir / "admin.key", admin_key)
    pub(layout.admin_dir / "ca.pem", _pem(mesh.cert))
    pub(layout.policy, starter_policy(trust_domain).encode())
    return made


def load_cas_material(state_dir: Path) -> CasMaterial:
    ca = load_ca(state_dir / "mesh-ca.pem", state_dir / "mesh-ca.key")
    roots_dir = state_dir / "vendor-roots"
    roots: list[x509.Certificate] = []
    if roots_dir.is_dir():
        for path in sorted(roots_dir.glob("*.pem")):
            try:
                roots.extend(load_certificates(path.read_bytes()))
            except (OSError, ValueError) as err:
                raise NetshieldError(f"{path}: not a PEM certificate file ({err})") from None
    if not roots:
        raise NetshieldError(
            f"{roots_dir}: no vendor root certificates; the CAS could not verify any platform "
            "(copy the vendor root made by `netshield init` there)"
        )
    return CasMaterial(ca=ca, vendor_roots=roots)


def load_admin(admin_dir: Path) -> AdminCredential:
    chain, key, ca = admin_dir / "admin.pem", admin_dir / "admin.key", admin_dir / "ca.pem"
    for path in (chain, key, ca):
        if not path.is_file():
            raise UsageError(
                f"{path}: missing; --admin must name the admin/ directory made by `netshield init`"
            )
    return AdminCredential(chain_pem=chain.read_bytes(), key_path=key, ca_pem=ca.read_bytes())


def copy_vendor_root(src: Path, state_dir: Path) -> Path:
    dest = state_dir / "vendor-roots" / src.name
    shutil.copyfile(src, dest)
    return dest
