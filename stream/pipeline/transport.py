"""Tiny ZeroMQ helpers (imagezmq-sized): make sockets with explicit HWMs and linger, send and receive
wire Messages as multipart with copy=False.

Topology rule: every stage BINDS its output and CONNECTS its input to all upstream outputs. A
restarted worker rebinds the same endpoint and its peers reconnect by themselves; a bound PUSH with
no peer connected blocks (files: backpressure) or says EAGAIN (live: drop), never buffers old frames."""

from __future__ import annotations

import zmq

from stream.pipeline import wire


def socket(
    ctx: zmq.Context,
    kind: int,
    *,
    bind: str | None = None,
    connect: list[str] | tuple[str, ...] = (),
    hwm: int = 2,
    linger_ms: int = 1000,
    subscribe: bytes | None = None,
) -> zmq.Socket:
    """A socket with both HWMs set (ZMQ's default 1000 would queue seconds of frames)."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, linger_ms)
    if kind == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, subscribe or b"")
    if bind:
        sock.bind(bind)
    for endpoint in connect:
        sock.connect(endpoint)
    return sock


def send(sock: zmq.Socket, msg: wire.Message, flags: int = 0) -> None:
    """Raises zmq.Again with flags=zmq.NOBLOCK when the peers' queues are full."""
    sock.send_multipart(wire.encode(msg), flags=flags, copy=False)


def try_send(sock: zmq.Socket, msg: wire.Message, timeout_ms: int = 0) -> bool:
    """Send if a peer can take it within timeout_ms; False means the caller drops or retries."""
    if timeout_ms and not sock.poll(timeout_ms, zmq.POLLOUT):
        return False
    try:
        send(sock, msg, zmq.NOBLOCK)
        return True
    except zmq.Again:
        return False


def recv_parts(sock: zmq.Socket, flags: int = 0) -> list[zmq.Frame]:
    """Raw parts, not yet validated: the caller decodes and counts what is bad."""
    return sock.recv_multipart(flags=flags, copy=False)
