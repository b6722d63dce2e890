"""Attestation: what a workload is (its measurement), what a platform says about it (a quote),
and whether that statement can be believed (the quote verifier).

Layers, bottom to top, all pure except where noted:

- `measurement`: the stand-in for MRENCLAVE, a SHA-256 over a workload's files and entry command
  (`scan_tree` is the one function here that reads files).
- `quote`: the versioned quote wire format (``netshield-sim-quote/1``) and its strict codec.
- `platform`: the simulated attestation hardware that signs quotes (and its files on disk).
- `verifier`: the `QuoteVerifier` protocol and the `SimulatedQuoteVerifier`. A verifier for real
  SGX/TDX/SEV-SNP quotes is another class with the same protocol; nothing above it changes.
- `appraisal`: policy decisions over a verified quote.

The verifier only answers "did a trusted platform sign this body?"; policy, nonces and
report-data binding belong to the appraisal.
"""
