"""tcp links notice a peer that vanished without a word (links.py), and lose nothing when a peer
leaves properly.

- A host that vanishes (here: the veth between two network namespaces deleted while frames flow) is
  noticed with the default settings: TCP's user timeout and keepalive close the link in seconds.
- A process stopped with SIGSTOP keeps its connections open -- its kernel acknowledges everything --
  so only ZeroMQ heartbeats (transport.heartbeat_s, off by default) tell it is gone: the bound PUSH
  drops the connection within the peer timeout, stops routing frames to it, and counts it
  (facestream_links_lost_total, one log line). Without heartbeats nothing notices.
- A producer that exits leaves its last frames to a slow consumer (the reason heartbeats are off by
  default)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq
from prometheus_client import REGISTRY
from waiting import wait_until

from stream.pipeline import config, transport, wire

pytestmark = pytest.mark.e2e  # starts a process

CONSUMER = """
import sys, time
import zmq
from stream.pipeline import config, transport
cfg = config.load(None, {"transport": {"kind": "tcp"}})
ctx = transport.context(cfg, "detect")
pull = transport.socket(ctx, zmq.PULL, connect=[sys.argv[1]])
pull.recv_multipart()
print("got one", flush=True)
time.sleep(600)
"""


def lost() -> float:
    return REGISTRY.get_sample_value("facestream_links_lost_total", {"stage": "capture"}) or 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("heartbeat_s", [0.5, 0.0], ids=["heartbeats", "no-heartbeats"])
def test_a_silently_stopped_consumer_is_noticed_only_with_heartbeats(heartbeat_s: float, caplog) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = config.load(None, {"transport": {"kind": "tcp", "heartbeat_s": heartbeat_s, "peer_timeout_s": 2}})
    ctx = transport.context(cfg, "capture")
    push = transport.socket(ctx, zmq.PUSH, bind=endpoint, linger_ms=0)
    consumer = subprocess.Popen([sys.executable, "-c", CONSUMER, endpoint], stdout=subprocess.PIPE, text=True)
    try:
        transport.send(push, wire.frame_message("cam0", 0, np.zeros((8, 8, 3), np.uint8)))
        assert consumer.stdout is not None and consumer.stdout.readline().strip() == "got one"
        before = lost()
        with caplog.at_level(logging.WARNING, logger="stream.pipeline.links"):
            os.kill(consumer.pid, signal.SIGSTOP)
            if heartbeat_s:
                wait_until(lambda: lost() > before, 30, "the stopped consumer's connection dropped")
                assert any("closed" in r.getMessage() and endpoint in r.getMessage() for r in caplog.records)
                # ... and the PUSH no longer routes to it: with no peer left, a send finds no room.
                assert not transport.try_send(
                    push, wire.frame_message("cam0", 1, np.zeros((8, 8, 3), np.uint8))
                )
            else:
                # Three peer timeouts (2 s): heartbeats would have dropped it by now; TCP never will
                # (the stopped process's kernel still acknowledges everything).
                time.sleep(6)
                assert lost() == before
    finally:
        consumer.send_signal(signal.SIGCONT)
        consumer.kill()
        consumer.wait(30)
        push.close(0)
        ctx.term()


PRODUCER = """
import sys
import numpy as np
import zmq
from stream.pipeline import config, transport, wire
cfg = config.load(None, {"transport": {"kind": "tcp"}})  # the defaults: what a capture pod runs
ctx = transport.context(cfg, "capture")
push = transport.socket(ctx, zmq.PUSH, bind=sys.argv[1], linger_ms=-1)
frame = np.zeros((360, 640, 3), np.uint8)  # 0.7 MB: many fit in the kernel's buffers
for seq in range(30):
    transport.send(push, wire.frame_message("cam0", seq, frame))
transport.send(push, wire.eos_message("cam0", 30))
push.close()
ctx.term()
"""


def test_a_producer_that_exits_leaves_its_last_frames_to_a_slow_consumer() -> None:
    """A capture sends its last frames and its end, then exits while its consumer is still far behind
    (most of them in the kernel's buffers, its queue full): with the default liveness settings the
    consumer still gets every frame and the end. (With heartbeats on, the consumer's answers reach a
    closed socket, whose reset made the consumer drop what it had not read: links.py.)"""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = config.load(None, {"transport": {"kind": "tcp"}})
    ctx = transport.context(cfg, "detect")
    pull = transport.socket(ctx, zmq.PULL, connect=[endpoint], linger_ms=0)
    producer = subprocess.Popen([sys.executable, "-c", PRODUCER, endpoint])
    try:
        got: list[int] = []
        while pull.poll(30_000):
            msg = wire.decode(pull.recv_multipart(copy=False))
            if isinstance(msg, wire.EndOfStream):
                break
            got.append(msg.seq)
            if producer.poll() is None:
                time.sleep(0.3)  # slow until the producer has gone
        else:
            pytest.fail(f"no end-of-stream; got frames {got}")
        assert producer.wait(30) == 0
        assert got == list(range(30))
    finally:
        if producer.poll() is None:
            producer.kill()
        pull.close(0)
        ctx.term()


LOSING_PRODUCER = """
import sys, time
import numpy as np
import zmq
from stream.pipeline import config, metrics, transport, wire
cfg = config.load(None, {"transport": {"kind": "tcp"}})  # the defaults: no heartbeats
ctx = transport.context(cfg, "capture")
push = transport.socket(ctx, zmq.PUSH, bind=sys.argv[1], linger_ms=0)
lost = metrics.get().links_lost_total.labels("capture")
frame = np.zeros((360, 640, 3), np.uint8)
seq, t0 = 0, time.monotonic()
while time.monotonic() - t0 < 120:
    if transport.try_send(push, wire.frame_message("cam0", seq, frame), timeout_ms=100):
        seq += 1
        if seq == 5:
            print("sending", flush=True)
    if lost._value.get() > 0:
        print(f"lost after {time.monotonic() - t0:.0f} s", flush=True)
        break
"""


def test_a_peer_whose_link_vanished_is_noticed_without_heartbeats(tmp_path) -> None:
    """Two network namespaces joined by a veth pair: a producer (bound PUSH, default settings) in one,
    its consumer in the other; the link is deleted while frames flow (no FIN, no RST reaches either
    side, as when a node loses power). TCP's user timeout and keepalive close the producer's side
    within seconds and it counts the lost link (without them TCP retransmits for ~15 minutes)."""
    from conftest import missing

    if shutil.which("ip") is None:
        missing("iproute2's ip not installed")
    tag = f"fl{os.getpid() % 100000}"
    a, b = f"{tag}-a", f"{tag}-b"
    made: list[str] = []
    procs: list[subprocess.Popen] = []
    try:
        for ns in (a, b):
            r = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
            if r.returncode:
                missing(f"cannot make network namespaces here: {r.stderr.strip()}")
            made.append(ns)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(
            ["ip", "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b], check=True
        )
        for ns, dev, addr in ((a, "va", "10.79.0.1/24"), (b, "vb", "10.79.0.2/24")):
            subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", dev], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        endpoint = "tcp://10.79.0.1:5550"
        producer = subprocess.Popen(
            ["ip", "netns", "exec", a, sys.executable, "-c", LOSING_PRODUCER, endpoint],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(producer)
        consumer = subprocess.Popen(
            ["ip", "netns", "exec", b, sys.executable, "-c", CONSUMER_ALL, endpoint],
            stdout=subprocess.DEVNULL,
        )
        procs.append(consumer)
        assert producer.stdout is not None and producer.stdout.readline().strip() == "sending"
        subprocess.run(["ip", "-n", a, "link", "del", "va"], check=True)  # both ends are gone
        line = producer.stdout.readline().strip()
        assert line.startswith("lost after"), line
    finally:
        for p in procs:
            p.kill()
            p.wait(30)
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


CONSUMER_ALL = """
import sys
import zmq
from stream.pipeline import config, transport
cfg = config.load(None, {"transport": {"kind": "tcp"}})
ctx = transport.context(cfg, "detect")
pull = transport.socket(ctx, zmq.PULL, connect=[sys.argv[1]])
while True:
    pull.recv_multipart()
"""


def _parked_before_backpressure(buffer_kb: int) -> int:
    """360p frames a PUSH takes without blocking towards a tcp PULL that reads nothing."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = config.load(None, {"transport": {"kind": "tcp", "socket_buffer_kb": buffer_kb}})
    ctx = transport.context(cfg, "detect")
    pull = transport.socket(ctx, zmq.PULL, bind=endpoint, linger_ms=0)
    push = transport.socket(ctx, zmq.PUSH, connect=[endpoint], linger_ms=0)
    frame = b"\0" * (640 * 360 * 3)
    sent, last_progress = 0, time.monotonic()
    try:
        while time.monotonic() - last_progress < 1.0:  # until a second passes with no room
            try:
                push.send(frame, zmq.NOBLOCK)
                sent, last_progress = sent + 1, time.monotonic()
            except zmq.Again:
                time.sleep(0.02)
    finally:
        push.close()
        pull.close()
        ctx.term()
    return sent


def test_tcp_links_park_few_frames_beyond_the_hwm() -> None:
    """Inline pixels over tcp: with the OS's autotuned buffers a link holds many frames beyond the
    HWM (latency; lost with a killed peer); the default cap keeps it to the HWMs (2 + 2) and about a
    frame in the kernel."""
    capped = _parked_before_backpressure(256)
    assert capped <= 7, capped
    assert _parked_before_backpressure(0) > capped
