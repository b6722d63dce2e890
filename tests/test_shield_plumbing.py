"""The shield's fd plumbing on real sockets: a stalled pair end is not writable until released,
a grafted socket keeps its object and mode, connections pass through SCM_RIGHTS one by one."""

from __future__ import annotations

import select
import socket

from netshield.shield.plumbing import (
    discard_filler,
    graft,
    pass_connection,
    receive_connection,
    stall,
)


def writable(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    return bool(poller.poll(0))


def test_a_stalled_end_is_not_writable_until_released_and_the_filler_is_discarded() -> None:
    app, relay = socket.socketpair()
    held = stall(app)
    assert held.holds and held.filler > 0 and not writable(app)
    held.release()
    # release closed the stall's own handle; a grafted program socket would still hold the end
    assert held.end.fileno() == -1
    relay.close()


def test_a_grafted_socket_talks_through_the_pair_and_keeps_its_blocking_mode() -> None:
    program = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    program.setblocking(False)
    app, relay = socket.socketpair()
    held = stall(app)
    graft(program, app)
    assert not writable(program)  # "connect in progress"
    held.release()
    assert writable(program)
    program.send(b"hello")
    relay.setblocking(True)
    discard_filler(relay, held.filler)
    assert relay.recv(5) == b"hello"
    assert program.family == socket.AF_INET and program.gettimeout() == 0.0
    relay.close()
    program.close()


def test_connections_pass_one_per_message_with_their_description() -> None:
    app_channel, channel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ends = [socket.socketpair() for _ in range(2)]
    for i, (end, _other) in enumerate(ends):
        pass_connection(channel, end, {"n": i})
    pass_connection(channel, None, {"refused": "NO_CREDENTIALS"})
    for i, (_end, other) in enumerate(ends):
        fd, meta = receive_connection(app_channel)
        assert meta == {"n": i} and fd is not None
        with socket.socket(fileno=fd) as got:
            got.sendall(b"x")
            assert other.recv(1) == b"x"
    assert receive_connection(app_channel) == (None, {"refused": "NO_CREDENTIALS"})
    channel.close()
    assert receive_connection(app_channel) == (None, None)
