"""What every stage process shares: exit codes, stop signals, parent-death, readiness and fatal
reports to the supervisor, blocking sends that still notice a stop."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time
from pathlib import Path

import zmq

from stream.cpu import cpu_info
from stream.pipeline import transport, wire
from stream.pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FATAL = 2  # cannot start (models missing, port taken...): do not restart, stop the run
EXIT_SOURCE_FAILED = 3  # a source that failed for good (never opened, undecodable): fails the run


class Stop:
    """Set by SIGTERM/SIGINT (and when the parent supervisor dies); stages poll it between batches."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._parent = os.getppid()

    def install(self) -> Stop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.event.set())
        _die_with_parent()
        return self

    def __bool__(self) -> bool:
        # Fallback for systems without PR_SET_PDEATHSIG: an orphan is re-parented.
        if os.getppid() != self._parent and os.environ.get("FACESTREAM_SUPERVISED"):
            self.event.set()
        return self.event.is_set()


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the supervisor dies, even by kill -9, so no stage is orphaned."""
    if not os.environ.get("FACESTREAM_SUPERVISED"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def name(role: str, index: int) -> str:
    return f"{role}-{index}"


def report_ready(cfg: PipelineConfig, role: str, index: int) -> None:
    if cfg.transport.run_dir is not None:
        (Path(cfg.transport.run_dir) / f"ready-{name(role, index)}").touch()


def report_fatal(cfg: PipelineConfig, role: str, index: int, message: str) -> None:
    """The supervisor prints this one line and stops the run."""
    if cfg.transport.run_dir is not None and os.environ.get("FACESTREAM_SUPERVISED"):
        (Path(cfg.transport.run_dir) / f"fatal-{name(role, index)}").write_text(message)
    else:
        log.error("%s", message)


def send_blocking(sock: zmq.Socket, msg: wire.Message, stop: Stop, timeout_s: float | None = None) -> bool:
    """Wait for a downstream peer with room (backpressure), but give up on stop or timeout."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        if transport.try_send(sock, msg, timeout_ms=100):
            return True
        if stop or (deadline is not None and time.monotonic() > deadline):
            return False


def stage_threads(cfg: PipelineConfig, role: str) -> int:
    """Threads for one detect/embed worker: configured, or by default detection (the heavy stage) gets
    the cores shared among its workers and embedding half as many. This only works because stage
    threads sleep rather than spin when idle (OMP_WAIT_POLICY=PASSIVE from the supervisor, ONNX
    Runtime spinning off): with spinning, detect's CPU time grew ~20x on 2 cores. Measured on the
    1080p clip, 2 cores: detect 2 threads + passive 10.2 frames/s vs 1 thread 8.4."""
    configured = cfg.detect.threads if role == "detect" else cfg.embed.threads
    if configured:
        return configured
    cores = cpu_info().logical_cpus  # what this process may use (containers, taskset), not the machine
    if role == "detect":
        return max(1, cores // cfg.detect.workers)
    return max(1, cores // (2 * cfg.embed.workers))


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
