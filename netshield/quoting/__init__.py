"""The platform service (`netshield platform serve`): the stand-in for a CPU's quoting enclave or
a TPM, one per host, the only holder of the platform key.

A sidecar asks it for a quote over a unix socket and sends nothing but `report_data`; the service
identifies the caller by SO_PEERCRED, measures the caller's workload itself -- the code path and
command its own workload map names for that caller, read inside the caller's root file system
through ``/proc/<pid>/root`` -- and signs a quote over its own measurement. A sidecar therefore
never sees the platform key and cannot choose what is measured.

- `config`: the service's YAML (platform directory, socket, workload map), checked once (pure).
- `procfs`: who a caller is and what its workload measures, read from ``/proc``.
- `server`: the HTTP-over-unix-socket API and `serve`.
- `client`: `PlatformSocket`, the sidecar's `Quoter` for that API.
"""
