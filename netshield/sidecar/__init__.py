"""The sidecar: an agent (attest, renew, follow revocations) beside a proxy (inbound and outbound
listeners), with a typed configuration, connection records, metrics and an admin API.

Importing this package does nothing: the composition root builds and starts every part.
"""
