"""Public-key infrastructure: keys, CAs, certificate issuance, CSRs and netshield's extensions.

Pure logic over the `cryptography` library (time is passed in, never read); the only I/O is the
key and PEM file helpers in `keys`. Private keys never appear in a repr, a log line or a message.
"""
