#!/bin/sh
# One-shot set-up for the compose demo (runs as root in the `setup` service): a fresh throwaway
# trust domain, the simulated platforms and the policy, written into the shared volume, owned by
# the unprivileged user the CAS and the sidecars run as. Every `docker-compose up` starts anew.
set -eu
S=/shared
TD=compose.netshield.local
rm -rf "$S/td" "$S/platforms" "$S/records" "$S/counter" "$S/attacker"
netshield init "$S/td" --trust-domain "$TD" >/dev/null
netshield platform init --vendor "$S/td/vendor" --out "$S/platforms/p-current" --tcb 7 >/dev/null
netshield platform init --vendor "$S/td/vendor" --out "$S/platforms/p-old-firmware" --tcb 3 >/dev/null
m() { netshield measure "/apps/$1" --cmd 'python3 app.py'; }
cat > "$S/td/policy.yaml" <<POLICY
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
netshield config check "$S/td/policy.yaml"
mkdir -p "$S/records" "$S/counter" "$S/attacker"
chown -R netshield:netshield "$S/td/cas" "$S/td/admin" "$S/platforms" "$S/records" "$S/counter" \
  "$S/attacker"
chown -R 10002:10002 "$S/td/admin"   # the operator: the story container (uid 10002)
chmod 0755 "$S" "$S/td"
echo "setup: trust domain $TD, platforms p-current (TCB 7) and p-old-firmware (TCB 3) in $S"
