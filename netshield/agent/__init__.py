"""The sidecar agent: attest, hold credentials in memory, renew, follow revocations."""
