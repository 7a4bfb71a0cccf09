"""tcp links notice a peer that vanished without a word (links.py). A process stopped with SIGSTOP
keeps its connections open -- no FIN, no RST, its kernel acknowledges everything -- so only the
ZeroMQ heartbeats of the side that sends can tell it is gone: the bound PUSH (a capture, the relay)
drops the connection within the peer timeout, stops routing frames to it, and counts it
(facestream_links_lost_total, one log line). Without heartbeats nothing notices."""

from __future__ import annotations

import logging
import os
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
