#!/bin/sh
# One-shot set-up for the compose demo (runs as root in the `setup` service, the stand-in for the
# operator's machine): a fresh throwaway trust domain, made in this container's own file system,
# then each piece copied onto the one volume where it is used, owned by the uid that uses it:
#
#   cas-keys          mesh CA key + cert, vendor roots   -> cas (uid 10001), read-only
#   platform-key      platform p-current (TCB 7)         -> platform (root), read-only
#   platform-old-key  platform p-old-firmware (TCB 3)    -> platform-old (root), read-only
#   operator          the admin credential               -> story, the operator (uid 10002)
#   public            policy.yaml, mesh-ca.pem           -> everyone who needs them
#   <app>-witness     empty: that sidecar's witness file -> the one sidecar (uid 10001)
#
# The vendor root key signs the two platform certificates here and is deleted: no running
# container ever holds it. Every `docker-compose up` starts anew.
set -eu
V=/volumes
TD=compose.netshield.local
W=$(mktemp -d)
WITNESSES="orders-witness frontend-witness intruder-witness"
for v in cas-keys cas-state cas-counter platform-key platform-old-key operator public records attacker $WITNESSES; do
  find "$V/$v" -mindepth 1 -delete
done
netshield init "$W/td" --trust-domain "$TD" >/dev/null
netshield platform init --vendor "$W/td/vendor" --out "$V/platform-key" --id p-current --tcb 7 >/dev/null
netshield platform init --vendor "$W/td/vendor" --out "$V/platform-old-key" --id p-old-firmware --tcb 3 >/dev/null
rm -rf "$W/td/vendor"          # the vendor's signing key: used, then gone
m() { netshield measure "/apps/$1" --cmd 'python3 app.py'; }
cat > "$V/public/policy.yaml" <<POLICY
# the compose demo's policy (made by deploy/compose/setup.sh)
trust_domain: $TD
certificates: {lifetime: 10m, min_epoch: 1}
platforms: {min_tcb: 5, allow_debug: false}
services:
  orders:
    measurements: ["$(m orders)"]
    allowed_callers: [frontend]
    addresses: ["orders:8080"]   # the service registry: callers dial this, as always
  frontend:
    measurements: ["$(m frontend)"]
  intruder:
    measurements: ["$(m intruder)"]
native_services:
  legacy:
    address: "legacy:8080"
    waf: true
POLICY
netshield config check "$V/public/policy.yaml"
cp "$W/td/cas/mesh-ca.pem" "$V/public/mesh-ca.pem"
cp -R "$W/td/cas/." "$V/cas-keys/"
cp -R "$W/td/admin/." "$V/operator/"
rm -rf "$W"
# platform keys: the platform services run as root; nobody else mounts these volumes
chown -R root:root "$V/platform-key" "$V/platform-old-key"
chmod -R go-rwx "$V/platform-key" "$V/platform-old-key"
chown -R netshield:netshield "$V/cas-keys" "$V/cas-state" "$V/cas-counter" "$V/records" "$V/attacker"
for w in $WITNESSES; do chown netshield:netshield "$V/$w" && chmod 0700 "$V/$w"; done   # one sidecar each
chmod 0700 "$V/cas-keys" "$V/cas-state" "$V/cas-counter"
chmod 0400 "$V/cas-keys/mesh-ca.key"
chown -R 10002:10002 "$V/operator"          # the operator: the story container (uid 10002)
chmod 0700 "$V/operator"
chmod 0755 "$V/public" && chmod 0644 "$V/public/policy.yaml" "$V/public/mesh-ca.pem"
echo "setup: trust domain $TD; platforms p-current (TCB 7) and p-old-firmware (TCB 3); keys on their own volumes"
