"""Transparent capture: the NAT rules that send a network namespace's TCP to its sidecar, and the
recovery of where a redirected connection was going.

- `spec`: what to capture (`CaptureSpec`) and the parsers for its port and CIDR lists (pure).
- `iptables`: the rules as iptables-restore input, and the install/remove scripts computed from
  the tables as they are now (pure).
- `apply`: runs iptables-save / iptables-restore (iptables-nft or iptables-legacy).
- `origdst`: SO_ORIGINAL_DST (IPv4) and IP6T_SO_ORIGINAL_DST (IPv6) on an accepted socket.
- `destinations`: which mesh service, native service or outside address a recovered destination
  is, from the service registry the CAS hands out (pure).
"""
