"""TLS glue over the standard library's `ssl`: contexts and in-memory credential loading.

No sockets live here: this package builds `ssl.SSLContext` objects from in-memory material;
the network adapters wrap their sockets with them.
"""
