"""The connection log, read by operators: stream records from files or stdin (`reader`), follow
a file across rotation (`follow`), filter (`filters`), format (`table`), summarise (`summary`,
with the constant-memory `sketch`es), name who called whom (`parties`) and check the hash chain
(`chain`, `verify`). The sidecar writes the log with `netshield.recordlog.RecordSink`.

Everything here streams: memory does not grow with the size of the log.
"""
