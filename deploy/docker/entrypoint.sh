#!/bin/sh
# netshield image entrypoint: `cas`, `platform`, `sidecar`, `cas-health`, or any netshield subcommand.
set -eu
role="${1:-sidecar}"
[ "$#" -gt 0 ] && shift
case "$role" in
  cas)
    exec netshield cas serve \
      --policy "${NETSHIELD_POLICY:-/etc/netshield/policy.yaml}" \
      --state "${NETSHIELD_STATE:-/var/lib/netshield/cas}" \
      --keys "${NETSHIELD_KEYS:-${NETSHIELD_STATE:-/var/lib/netshield/cas}}" \
      --listen "${NETSHIELD_LISTEN:-0.0.0.0:8443}" \
      --counter "${NETSHIELD_COUNTER:-/var/lib/netshield/counter/cas.counter}" \
      "$@"
    ;;
  cas-health)
    # the CAS answers /readyz over TLS with its mesh-CA certificate
    exec python3 -c 'import ssl, sys, urllib.request
try:
    ctx = ssl.create_default_context(cafile=sys.argv[2])
    urllib.request.urlopen(sys.argv[1] + "/readyz", context=ctx, timeout=2)
except Exception as err:
    sys.exit(f"CAS {sys.argv[1]} not ready: {err}")' \
      "${NETSHIELD_CAS_URL:-https://127.0.0.1:8443}" \
      "${NETSHIELD_CAS_CA:-${NETSHIELD_KEYS:-${NETSHIELD_STATE:-/var/lib/netshield/cas}}/mesh-ca.pem}"
    ;;
  platform)
    exec netshield platform serve --config "${NETSHIELD_PLATFORM_CONFIG:-/etc/netshield/platform.yaml}" "$@"
    ;;
  sidecar)
    exec netshield sidecar --config "${NETSHIELD_CONFIG:-/etc/netshield/sidecar.yaml}" "$@"
    ;;
  *)
    exec netshield "$role" "$@"
    ;;
esac
