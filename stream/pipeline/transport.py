"""Tiny ZeroMQ helpers (imagezmq-sized): make sockets with explicit HWMs and linger, send and receive
wire Messages as multipart with copy=False.

Topology rule (`transport.topology: indexed`): every stage BINDS its output and CONNECTS its input to
all upstream outputs. A restarted worker rebinds the same endpoint and its peers reconnect by
themselves; a bound PUSH with no peer connected blocks (files: backpressure) or says EAGAIN (live:
drop), never buffers old frames. With `replicas` the scalable roles connect their output to a fixed
role's bound input instead (config.connects_output): such a PUSH is IMMEDIATE, so it too blocks while
nobody is connected rather than queueing frames for a connection that is not there yet.

Every tcp socket gets TCP keepalive and a user timeout, sending ones ZeroMQ heartbeats, and every
bound one (in a stage's context) a LinkMonitor that counts lost connections and refused handshakes:
links.py.

Make a stage's context with `context(cfg)`: with `transport.curve` set, every tcp socket made in it
is CURVE (bound: server, checked by the context's ZAP authenticator; connected: client that checks
the server's key) -- see security.py."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import zmq

from stream.errors import FacestreamError
from stream.pipeline import wire
from stream.pipeline.config import PipelineConfig, endpoint_host, is_loopback
from stream.pipeline.links import LinkMonitor, LostLinks, set_liveness
from stream.pipeline.roles import BINDERS, RESULTS, Role
from stream.pipeline.security import AuthFailures, Curve

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)


class Context(zmq.Context[zmq.Socket[Any]]):
    """A context that carries the process's config and CURVE keys (None: plain), its ZAP authenticator
    and the monitors of its tcp sockets (lost peers, refused clients: links.py)."""

    cfg: PipelineConfig | None = None
    stage: str = "unknown"
    curve: Curve | None = None
    authenticator: ThreadAuthenticator | None = None
    auth_failures: AuthFailures | None = None
    lost_links: LostLinks | None = None
    monitors: list[LinkMonitor]

    def _stop_authenticator(self) -> None:
        for monitor in getattr(self, "monitors", ()):  # their sockets live in this context too
            monitor.stop()
        self.monitors = []
        if self.authenticator is not None:  # its sockets live in this context: stop it first
            self.authenticator.stop()
            self.authenticator = None

    def term(self) -> None:
        self._stop_authenticator()
        super().term()

    def destroy(self, linger: int | None = None) -> None:
        self._stop_authenticator()
        super().destroy(linger)


def context(cfg: PipelineConfig, stage: str = "unknown") -> Context:
    ctx = Context()
    ctx.cfg = cfg
    ctx.stage = stage
    ctx.curve = Curve.from_config(cfg)
    ctx.monitors = []
    return ctx


def socket(
    ctx: zmq.Context[Any],
    kind: int,
    *,
    bind: str | None = None,
    connect: list[str] | tuple[str, ...] = (),
    hwm: int = 2,
    linger_ms: int = 1000,
    subscribe: bytes | None = None,
    immediate: bool = False,
) -> zmq.Socket[Any]:
    """A socket with both HWMs set (ZMQ's default 1000 would queue seconds of frames); CURVE on its tcp
    endpoints when the context has keys (see `context`); liveness checks on tcp (links.py) and
    bounded kernel buffers (transport.socket_buffer_kb).
    immediate: queue messages only to completed connections (a connecting PUSH: backpressure while
    its peer is away)."""
    curve: Curve | None = getattr(ctx, "curve", None)
    cfg: PipelineConfig | None = getattr(ctx, "cfg", None)
    sock: zmq.Socket[Any] = ctx.socket(kind)
    try:
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        sock.setsockopt(zmq.LINGER, linger_ms)
        if immediate:
            sock.setsockopt(zmq.IMMEDIATE, 1)
        if kind == zmq.SUB:
            sock.setsockopt(zmq.SUBSCRIBE, subscribe or b"")
        if any("[" in e for e in (bind or "", *connect)):
            sock.setsockopt(zmq.IPV6, 1)
        tcp_bind = bind is not None and endpoint_host(bind) is not None
        if tcp_bind or any(endpoint_host(e) is not None for e in connect):
            set_liveness(sock, kind, cfg.transport if cfg is not None else None)
            buffer_kb = cfg.transport.socket_buffer_kb if cfg is not None else 0
            if buffer_kb:
                sock.setsockopt(zmq.SNDBUF, buffer_kb * 1024)
                sock.setsockopt(zmq.RCVBUF, buffer_kb * 1024)
        if bind:
            _serve(ctx, sock, bind, curve)
        if tcp_bind:  # before bind: no event is missed
            _watch(ctx, sock, server=curve is not None)
        if bind:
            _bind(sock, bind)
        for endpoint in connect:
            if curve is not None:
                curve.connect(sock, endpoint)
            sock.connect(endpoint)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock


def _serve(ctx: zmq.Context[Any], sock: zmq.Socket[Any], endpoint: str, curve: Curve | None) -> None:
    """A tcp endpoint to bind: a CURVE server with keys, else a warning beyond loopback."""
    host = endpoint_host(endpoint)
    if host is None:
        return
    if curve is not None:
        curve.serve(ctx, sock, _stage_of(ctx, endpoint))
    elif not is_loopback(host):
        log.warning(
            "%s listens beyond loopback without CURVE: anyone who reaches it can read or feed the "
            "pipeline (set transport.curve)",
            endpoint,
        )


def _watch(ctx: zmq.Context[Any], sock: zmq.Socket[Any], server: bool) -> None:
    """A stage's bound tcp socket: a LinkMonitor (lost peers; refused handshakes on a CURVE server)."""
    monitors: list[LinkMonitor] | None = getattr(ctx, "monitors", None)
    if monitors is None:
        return  # a plain context (a tool, a test): no monitors
    lost: LostLinks | None = getattr(ctx, "lost_links", None)
    if lost is None:
        lost = ctx.lost_links = LostLinks(getattr(ctx, "stage", "unknown"))
    failures: AuthFailures | None = getattr(ctx, "auth_failures", None) if server else None
    monitor = LinkMonitor(sock, lost, failures)
    monitor.start()
    monitors.append(monitor)


def _bind(sock: zmq.Socket[Any], endpoint: str) -> None:
    host = endpoint_host(endpoint)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as e:
        if e.errno == zmq.EADDRINUSE or host is None:
            raise
        raise FacestreamError(
            f"cannot bind {endpoint}: {e.strerror} (is {host} an address of this host? see transport.hosts)"
        ) from None


def _stage_of(ctx: zmq.Context[Any], endpoint: str) -> str:
    """The role that binds `endpoint` in this context's config (match also binds the results PUB;
    topology replicas: the relay and match bind detect's and embed's outputs)."""
    cfg: PipelineConfig | None = getattr(ctx, "cfg", None)
    if cfg is not None:
        if endpoint == cfg.endpoint(RESULTS):
            return str(Role.MATCH)
        for role in sorted(BINDERS):
            if any(cfg.endpoint(role, i) == endpoint for i in range(cfg.workers(role))):
                return cfg.binder(role)
    return "unknown"


def send(sock: zmq.Socket[Any], msg: wire.Message, flags: int = 0) -> None:
    """Raises zmq.Again with flags=zmq.NOBLOCK when the peers' queues are full."""
    sock.send_multipart(wire.encode(msg), flags=flags, copy=False)


def try_send(sock: zmq.Socket[Any], msg: wire.Message, timeout_ms: int = 0) -> bool:
    """Send if a peer can take it within timeout_ms; False means the caller drops or retries."""
    if timeout_ms and not sock.poll(timeout_ms, zmq.POLLOUT):
        return False
    try:
        send(sock, msg, zmq.NOBLOCK)
        return True
    except zmq.Again:
        return False


def recv_parts(sock: zmq.Socket[Any], flags: int = 0) -> list[zmq.Frame]:
    """Raw parts, not yet validated: the caller decodes and counts what is bad."""
    return sock.recv_multipart(flags=flags, copy=False)
