"""netshield: a network shield for confidential services.

Sidecars wrap service traffic in mutual TLS between attested identities; the configuration and
attestation service (CAS) issues short-lived certificates only to workloads that passed
(simulated) remote attestation.
"""

__version__ = "0.1.0"
