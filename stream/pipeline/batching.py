"""Dynamic batching: take what is waiting, up to max_batch, waiting at most max_wait_ms after the
first message. Never waits for every camera: a lone camera's frame leaves after max_wait_ms at most.

Bad messages are counted and skipped here, so no stage sees an undecoded buffer, nor (given the
stage's trust.Trust) a message for a camera that is not in the config or an end-of-stream that its
camera's capture did not send."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from stream.pipeline import metrics, transport, wire
from stream.pipeline.roles import ACCEPTS
from stream.pipeline.trust import Trust

log = logging.getLogger(__name__)


@dataclass
class Received:
    msg: wire.Message
    at_ns: int  # monotonic ns when this stage took it (end of its queue wait)


def receive(sock: zmq.Socket[Any], stage: str, flags: int = 0, trust: Trust | None = None) -> Received | None:
    """One message, decoded and validated (and admitted by `trust`: the stages always give theirs);
    None (counted) when it is bad, and None (not counted) when nothing was there after all."""
    try:
        parts = transport.recv_parts(sock, flags)
    except zmq.Again:
        # A poll can say a message waits on a pipe whose peer then went away (a bound socket whose
        # replicas come and go): nothing to receive, nothing wrong.
        return None
    at = time.monotonic_ns()
    try:
        msg = wire.decode(parts)
        if msg.kind not in ACCEPTS.get(stage, wire.KINDS):
            raise wire.WireError(f"{stage} does not take {msg.kind!r} messages")
        if trust is not None and not trust.admit(msg):
            return None  # counted and logged by trust
        return Received(msg, at)
    except wire.WireError as e:
        metrics.get().bad_messages_total.labels(stage).inc()
        log.warning("%s: dropped a bad message: %s", stage, e)
        return None


def take_batch(
    sock: zmq.Socket[Any],
    stage: str,
    max_batch: int,
    max_wait_ms: float,
    idle_ms: int = 200,
    weigh: Callable[[wire.Message], int] = lambda m: 1,
    trust: Trust | None = None,
) -> list[Received]:
    """Up to max_batch units of work (weigh: 1 per frame, or faces per frame for embed).

    Returns [] after idle_ms with nothing (so the caller can check for shutdown). A control message
    (eos, event) closes the batch: it must leave after the frames that came before it."""
    batch: list[Received] = []
    weight = 0
    deadline: float | None = None
    while True:
        if deadline is None:
            timeout = idle_ms
        else:
            timeout = max(0, int((deadline - time.monotonic()) * 1000))
            if weight >= max_batch:
                break
        if not sock.poll(timeout, zmq.POLLIN):
            if deadline is None and not batch:
                return batch
            break
        got = receive(sock, stage, zmq.NOBLOCK, trust)
        if got is None:
            continue
        batch.append(got)
        if not isinstance(got.msg, wire.FrameMessage):
            break
        weight += max(1, weigh(got.msg))
        if deadline is None:
            deadline = time.monotonic() + max_wait_ms / 1000.0
        if weight >= max_batch:
            break
    return batch
