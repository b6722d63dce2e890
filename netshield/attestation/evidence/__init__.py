"""Attestation evidence from real and simulated hardware, one module per evidence type.

- `sim`: the simulated platform's ``netshield-sim-quote/1`` quotes (codec and verifier live in
  `netshield.attestation.quote` / `.verifier`; `sim` states their result as evidence);
- `snp`: AMD SEV-SNP attestation reports, verified against the VCEK/VLEK → ASK → ARK chain;
- `sgx` and `tdx`: the report bodies of Intel DCAP quotes; `dcap` parses the quotes and
  verifies the PCK chain, the quoting enclave and the TCB status against Intel's collateral
  (`intel`: TCB Info and QE Identity; `collateral`: the files an operator fetched);
- `chains`: pinned vendor roots and certificate path checks; `claims`: `VerifiedEvidence`, the
  one value every verifier returns; `decode`: which type a byte string is;
  `verifier.EvidenceVerifier`: the CAS's `QuoteVerifier` over all of them.

Everything here is pure (bytes and `now` in, values out) except
`collateral.read_collateral_dir`, which reads the operator's collateral directory. The
appraisal against policy is one shared step above this package
(`netshield.attestation.appraisal`).
"""
