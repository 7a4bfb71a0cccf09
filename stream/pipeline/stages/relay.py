"""Relay (topology replicas): where detect replicas meet embed replicas. Binds a PULL that every detect
replica pushes into and a PUSH that every embed replica pulls from, and moves messages across as they
are, without decoding them (the embed replicas check what they take: batching.receive, trust.py).

Why a relay: both sides scale, so neither can bind for the other (a bound side's replicas would each
need an address the other side knows). The relay is stateless and tiny, so one pod of it is a fixed
point like match; a restarted relay loses only the few messages its two queues held (transport.hwm
each), which the sink's books and match's end barrier already allow for (lost in flight).

Backpressure passes through: a message is taken from detect only when an embed replica has room, so
the relay holds at most one message besides its sockets' queues, and file runs block end to end."""

from __future__ import annotations

import logging

import zmq

from stream.pipeline import transport
from stream.pipeline.roles import Role
from stream.pipeline.stages.base import Stage

log = logging.getLogger(__name__)


class Relay(Stage):
    role = Role.RELAY

    def open(self) -> None:
        self.inp = self.input()  # binds detect's output endpoint
        self.out = self.output()  # binds the relay's own: embed replicas connect

    def ready_line(self) -> str:
        return f"relay ready ({self.cfg.upstream(self.role)[0]} -> {self.cfg.endpoint(self.role)})"

    def step(self) -> None:
        while not self.out.poll(100, zmq.POLLOUT):  # no embed replica with room: leave detect's queued
            if self.stop:
                return
        if not self.inp.poll(100, zmq.POLLIN):
            return
        try:
            parts = transport.recv_parts(self.inp, zmq.NOBLOCK)
        except zmq.Again:  # its sender went away between the poll and now
            return
        while not self.stop:
            try:
                self.out.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:  # the replica that had room went away meanwhile
                self.out.poll(100, zmq.POLLOUT)
