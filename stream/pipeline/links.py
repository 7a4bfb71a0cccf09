"""tcp links: how a peer that vanished is noticed, and one monitor thread per bound tcp socket that
reports what happens to its connections.

A peer that vanishes with its host (power loss, a node gone, a network cut) sends no FIN or RST: TCP
alone holds such a connection for minutes (retransmissions) or hours (an idle link without
keepalive). Meanwhile a PUSH keeps routing frames into the dead pipe and a connecting socket never
reconnects to the replacement behind its Service. Two layers, each where it is safe:

- The kernel, on every tcp socket: keepalive probes on an idle link (KEEPALIVE) and TCP_USER_TIMEOUT
  (ZMQ_TCP_MAXRT) on a link with data unacknowledged (USER_TIMEOUT_S). A host that is gone answers
  neither, so its connections close within seconds. A live peer's kernel acknowledges both however
  busy the peer is, also while its receive window is full: backpressure never looks like a loss.
- ZeroMQ heartbeats (ZMTP PING/PONG), only with `transport.heartbeat_s` > 0 (off by default), on
  sending sockets only (PUSH, PUB): they catch a process that hangs while its kernel still
  acknowledges (SIGSTOP, a deadlock), which the kernel cannot. Off by default because with libzmq
  4.3.5 they cost frames: a producer that exits (a camera's end, a pod stopped) closes its socket
  while its consumers' PONGs keep arriving, its kernel answers them with a reset, and a reset makes
  the consumer discard what it had not yet read -- measured here, a slow PULL got 25 of 30 frames
  whose PUSH exited with heartbeats on, all 30 without (tests/pipeline/test_links.py keeps the
  latter). Not on receiving sockets at all: libzmq 4.3.5 aborts (`Assertion failed: !_io_error`,
  stream_engine_base.cpp:310; zeromq/libzmq#4841) when a heartbeat timer fires on a connection
  whose input a full queue had stopped and whose peer then closed it -- the normal state of a
  backpressured PULL whose producer exits (seen here: a detect worker aborted as its capture
  finished). A PING is answered only once the consumer reads it, after the frames queued before it,
  so `transport.peer_timeout_s` must be longer than a healthy consumer's longest pause.

`LinkMonitor` (libzmq allows one monitor per socket, so it is the only one), on every socket a stage
binds -- the fixed side, which in Kubernetes (topology replicas) sees every replica; a connecting
socket just reconnects -- counts and logs:
- a connection closed (`EVENT_DISCONNECTED`: the peer exited or reset, its host stopped answering,
  or it missed its heartbeats) in facestream_links_lost_total{stage}, one WARNING per endpoint per
  minute;
- on CURVE server sockets, handshakes that failed before ZAP was asked (security.AuthFailures):
  `mechanism_mismatch` (a plaintext client), `handshake_aborted`, `protocol_error`. libzmq's event
  names only the bound endpoint, not the peer, so these are logged as 'no key from an unknown address
  on ENDPOINT'."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import zmq
from zmq.utils.monitor import recv_monitor_message

if TYPE_CHECKING:
    from stream.pipeline.config import TransportConfig
    from stream.pipeline.security import AuthFailures

log = logging.getLogger(__name__)
LOST_LOG_EVERY_S = 60.0
# Kernel-level liveness (seconds): keepalive's first probe after this much idle time, then every
# interval, given up after this many unanswered probes; data unacknowledged this long closes the link.
KEEPALIVE = (5, 1, 3)
USER_TIMEOUT_S = 10
_HEARTBEATS_ON = frozenset({zmq.PUSH, zmq.PUB})  # sending sockets: their input never stops

_HANDSHAKE = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


def set_liveness(sock: zmq.Socket[Any], kind: int, t: TransportConfig | None) -> None:
    """Keepalive and TCP_USER_TIMEOUT on a socket with tcp links; heartbeats when it only sends and
    transport.heartbeat_s is set. See the module docstring for why not by default, nor on receiving
    sockets."""
    idle, interval, count = KEEPALIVE
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, idle)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, interval)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, count)
    sock.setsockopt(zmq.TCP_MAXRT, USER_TIMEOUT_S * 1000)  # TCP_USER_TIMEOUT on Linux
    heartbeat_s = 0.0 if t is None else t.heartbeat_s
    timeout_s = 30.0 if t is None else t.peer_timeout_s
    if heartbeat_s and kind in _HEARTBEATS_ON:
        sock.setsockopt(zmq.HEARTBEAT_IVL, int(heartbeat_s * 1000))
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(timeout_s * 1000))


class LostLinks:
    """One process's lost tcp connections: counted per stage, logged once a minute per endpoint."""

    def __init__(self, stage: str, every_s: float = LOST_LOG_EVERY_S):
        from stream.pipeline import metrics

        self.stage = stage
        self.every_s = every_s
        self._counter = metrics.get().links_lost_total.labels(stage)  # made here, not in a monitor
        self._lock = threading.Lock()
        self._logged: dict[str, tuple[float, int]] = {}

    def lost(self, endpoint: str) -> None:
        self._counter.inc()
        now = time.monotonic()
        with self._lock:
            last, unlogged = self._logged.get(endpoint, (None, 0))
            if last is not None and now - last < self.every_s:
                self._logged[endpoint] = (last, unlogged + 1)
                return
            self._logged[endpoint] = (now, 0)
        log.warning(
            "%s: a connection on %s closed (the peer exited, reset or went silent); reconnecting%s",
            self.stage,
            endpoint,
            f"; {unlogged} more since the last line" if unlogged else "",
        )


class LinkMonitor(threading.Thread):
    """Watches one tcp socket (see the module docstring). Stops with the socket, or `stop()`."""

    def __init__(self, sock: zmq.Socket[Any], lost: LostLinks, failures: AuthFailures | None = None):
        super().__init__(name="link-monitor", daemon=True)
        self.lost = lost
        self.failures = failures
        events = zmq.EVENT_DISCONNECTED | zmq.EVENT_MONITOR_STOPPED | (_HANDSHAKE if failures else 0)
        self.monitor: zmq.Socket[Any] = sock.get_monitor_socket(events)  # used by this thread only
        self._stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                if not self.monitor.poll(100):
                    continue
                event = recv_monitor_message(self.monitor)
                if event["event"] == zmq.EVENT_MONITOR_STOPPED:
                    return
                endpoint = bytes(event["endpoint"]).decode("utf-8", "replace")
                if event["event"] == zmq.EVENT_DISCONNECTED:
                    self.lost.lost(endpoint)
                else:
                    self._refused(event, endpoint)
        except zmq.ContextTerminated:
            pass
        finally:
            self.monitor.close(linger=0)

    def _refused(self, event: Any, endpoint: str) -> None:
        from stream.pipeline.security import NO_KEY

        assert self.failures is not None
        if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            reason = "handshake_aborted"
        elif int(event["value"]) == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            reason = "mechanism_mismatch"
        else:
            reason = "protocol_error"
        self.failures.refused(reason, NO_KEY, f"an unknown address on {endpoint}")

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(2)
