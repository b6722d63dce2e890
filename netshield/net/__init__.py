"""asyncio adapters of the data plane: streams over sockets, and the relay between two of them.

Only this layer (and the agent/CAS adapters) touches sockets and the event loop; the TLS state
machine it drives lives in `netshield.tls.endpoint`.
"""
