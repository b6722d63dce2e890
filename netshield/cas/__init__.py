"""The configuration and attestation service (CAS): state, audit log, API and server.

`store` keeps the rollback-detecting state (SQLite + hash-chained `auditlog` + the outside
monotonic `counter`); `service` makes the decisions; `api`/`server` put them on the network.
Import from the submodules; this package module imports nothing so each layer stays separate.
"""
