"""What every stage process shares: the `Stage` base (its lifecycle, once), exit codes, stop signals,
parent-death, readiness and fatal reports to the supervisor, blocking sends that still notice a stop.

A stage's life: `load()` (models, warm-up: slow, before any socket) -> context and `open()` (its
sockets, made with `input()` / `output()`; the frame-ring pixels are ready when its role reads them) ->
the ready marker -> `serve()` (by default: `step()` until stopped or `finished()`) -> teardown
(`close()`, then the sockets, each with its linger, then the context). A stage implements what it
does to one message or batch; `run_stage` (stages/__init__.py) picks the class by role."""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, NoReturn, Protocol

import zmq

from stream.cpu import cpu_info
from stream.pipeline import framering, metrics, transport, wire
from stream.pipeline.config import PipelineConfig
from stream.pipeline.roles import PIXEL_READERS, Role
from stream.pipeline.trust import Trust

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FATAL = 2  # cannot start (models missing, port taken...): do not restart, stop the run
EXIT_SOURCE_FAILED = 3  # a source that failed for good (never opened, undecodable): fails the run
EXIT_STOPPED = 128 + signal.SIGTERM  # forced out by a hard stop that the stage could not finish in time
HARD_STOP_S = 0.8  # a hard stop (SIGTERM) ends the process within this (+ interpreter exit)


class Stop:
    """Set by a stop signal (and when the parent supervisor dies); stages poll it between batches.

    Two kinds of stop. SIGINT asks for a graceful one: a capture stops reading, and its end-of-stream
    still goes through the pipeline behind its last frames (the supervisor's drain uses it). SIGTERM
    (and a second SIGINT, and the supervisor's death) asks for a hard one: the stage is gone within
    HARD_STOP_S however busy it is (a detection batch, a socket nobody reads); what it held is dropped,
    and the run's books count it (reason "shutdown" or "crashed")."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.hard = False
        self.cleanup: Callable[[], None] | None = None  # run before a forced exit (an orphan's dirs)
        # The supervisor names itself (its pid), so a supervisor that died before this line is noticed.
        supervisor = os.environ.get("FACESTREAM_SUPERVISED", "")
        self._parent = int(supervisor) if supervisor.isdigit() and supervisor != "1" else os.getppid()
        self._lock = threading.Lock()

    def install(self) -> Stop:
        # The signals are read by a thread from the wakeup fd, which the C-level handler writes at
        # once: the main thread may be inside a long native call (a torch batch) where no Python
        # handler runs until it returns, and a hard stop must not wait for that. The Python-level
        # handlers only keep the defaults (KeyboardInterrupt, termination) away: they must do nothing
        # else. A handler that set a threading.Event deadlocked when a second signal arrived while the
        # first one's set() held the event's lock (a stage then ignored SIGTERM for good).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: None)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        threading.Thread(target=self._listen, args=(read_fd,), name="stop-signals", daemon=True).start()
        _die_with_parent()
        # The supervisor may have died before prctl: then no signal comes, but the parent changed.
        if self.orphaned:
            self.request(hard=True)
        return self

    def _listen(self, read_fd: int) -> None:
        while True:
            for signum in os.read(read_fd, 64):
                if signum == signal.SIGTERM:
                    self.request(hard=True)
                elif signum == signal.SIGINT:
                    self.request(hard=self.event.is_set())  # a second Ctrl-C: at once

    def request(self, hard: bool) -> None:
        """Ask the stage to stop (hard: and be gone within HARD_STOP_S, whatever it is doing)."""
        with self._lock:
            self.event.set()
            if not hard or self.hard:
                return
            self.hard = True
        threading.Thread(target=self._force_exit, name="hard-stop", daemon=True).start()

    def _force_exit(self) -> None:
        time.sleep(HARD_STOP_S)
        # No logging here: the main thread may hold a logging lock where it stopped.
        note = f"{os.getpid()}: still busy {HARD_STOP_S:.1f} s after a hard stop: exiting now\n"
        try:
            os.write(2, note.encode())
            if self.cleanup is not None:
                self.cleanup()
        finally:
            os._exit(EXIT_STOPPED)

    @property
    def supervisor(self) -> int:
        """The supervisor's pid (this process's parent when it started)."""
        return self._parent

    @property
    def orphaned(self) -> bool:
        """The supervisor is gone (re-parented): nobody reads what this stage sends any more."""
        return bool(os.environ.get("FACESTREAM_SUPERVISED")) and os.getppid() != self._parent

    def __bool__(self) -> bool:
        # Fallback for systems without PR_SET_PDEATHSIG: an orphan is re-parented.
        if not self.hard and self.orphaned:
            self.request(hard=True)
        return self.event.is_set()


def exit_now(code: int) -> NoReturn:
    """End the process at once (no interpreter finalization), with what was logged flushed."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the supervisor dies, even by kill -9, so no stage is orphaned."""
    if not os.environ.get("FACESTREAM_SUPERVISED") or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # no prctl: Stop's check of the parent in the loop still ends the stage


def remove_orphaned_dirs(cfg: PipelineConfig, stop: Stop) -> None:
    """A stage whose supervisor died (kill -9) removes the run's ring and run directories as it exits:
    nobody else will until the next run. Only directories the dead supervisor made and named after
    itself (facestream-<pid>-*), never a configured run_dir; each stage tries, the last one wins."""
    if not stop.orphaned:
        return
    prefix = f"facestream-{stop.supervisor}-"
    for d in (cfg.transport.shm_dir, cfg.transport.run_dir):
        if d is not None and Path(d).name.startswith(prefix):
            shutil.rmtree(d, ignore_errors=True)


class Stage:
    """One stage process's lifecycle; subclasses set `role` and implement `step` (or `serve`)."""

    role: ClassVar[Role]

    def __init__(self, cfg: PipelineConfig, index: int, stop: Stop) -> None:
        self.cfg = cfg
        self.index = index
        self.stop = stop
        self.m = metrics.get()
        self.trust = Trust.of(cfg, self.role)  # what its inputs must be to be acted on (trust.py)
        self.ctx: transport.Context | None = None
        self.pixels: framering.StagePixels | None = None
        self._sockets: list[tuple[zmq.Socket[Any], int | None]] = []

    @property
    def name(self) -> str:
        return name(self.role, self.index)

    # ----- what a stage implements ----------------------------------------------------------------
    def load(self) -> None:
        """Models and warm-up, before any socket exists (slow; a failure here is fatal)."""

    def open(self) -> None:
        """Make the sockets (input(), output()); by default the input from upstream and the output."""
        self.inp = self.input()
        self.out = self.output()

    def step(self) -> None:
        """Handle what is waiting (one message or one batch); return soon when nothing is."""
        raise NotImplementedError

    def finished(self) -> bool:
        """True ends the stage by itself (the sink, when every camera has ended)."""
        return False

    def serve(self) -> int:
        """The main loop; returns the exit code."""
        while not self.stop and not self.finished():
            self.step()
        return EXIT_OK

    def close(self) -> None:
        """The stage's own resources (files, rings), before its sockets close."""

    def ready_line(self) -> str | None:
        return None

    # ----- sockets ---------------------------------------------------------------------------------
    def input(self, hwm: int | None = None) -> zmq.Socket[Any]:
        """PULL, connected to every output of the upstream role (and, for the sink, the control);
        topology replicas: the relay and match bind theirs, and the replicas connect."""
        hwm = self.cfg.transport.hwm if hwm is None else hwm
        upstream = self.cfg.upstream(self.role)
        if self.cfg.binds_input(self.role):
            (bind,) = upstream
            sock = transport.socket(self._ctx(), zmq.PULL, bind=bind, hwm=hwm, linger_ms=0)
        else:
            sock = transport.socket(self._ctx(), zmq.PULL, connect=upstream, hwm=hwm, linger_ms=0)
        return self._keep(sock, 0)

    def output(
        self,
        kind: int = zmq.PUSH,
        endpoint: str | None = None,
        hwm: int | None = None,
        linger_ms: int = 2000,
        linger_on_stop: int | None = 0,
    ) -> zmq.Socket[Any]:
        """A bound output (default: this worker's endpoint; topology replicas: detect and embed
        connect theirs to the relay's or match's input). Closed with linger_ms, or with
        linger_on_stop after a stop (0: drop what is queued; None: linger_ms all the same)."""
        hwm = self.cfg.transport.hwm if hwm is None else hwm
        if endpoint is None and self.cfg.connects_output(self.role):
            sock = transport.socket(
                self._ctx(),
                kind,
                connect=[self.cfg.endpoint(self.role)],
                hwm=hwm,
                linger_ms=linger_ms,
                immediate=True,
            )
            return self._keep(sock, linger_on_stop)
        endpoint = self.cfg.endpoint(self.role, self.index) if endpoint is None else endpoint
        sock = transport.socket(self._ctx(), kind, bind=endpoint, hwm=hwm, linger_ms=linger_ms)
        return self._keep(sock, linger_on_stop)

    def _ctx(self) -> transport.Context:
        assert self.ctx is not None, "sockets are made in open()"
        return self.ctx

    def _keep(self, sock: zmq.Socket[Any], linger_on_stop: int | None) -> zmq.Socket[Any]:
        """Closed at teardown, in the order made."""
        self._sockets.append((sock, linger_on_stop))
        return sock

    def send(self, sock: zmq.Socket[Any], msg: wire.Message) -> bool:
        """Blocking send (backpressure) that gives up on stop."""
        return send_blocking(sock, msg, self.stop)

    # ----- the lifecycle, once ----------------------------------------------------------------------
    def run(self) -> int:
        self.load()
        self.ctx = transport.context(self.cfg, self.role)
        try:
            if self.role in PIXEL_READERS:
                self.pixels = framering.StagePixels(self.cfg, self.role)
            self.open()
            report_ready(self.cfg, self.role, self.index)
            line = self.ready_line()
            if line:
                log.info("%s", line)
            return self.serve()
        finally:
            self._teardown()

    def _teardown(self) -> None:
        try:
            self.close()
            if self.pixels is not None:
                self.pixels.close()
        finally:
            stopped = bool(self.stop)
            # Orphaned (nobody will read what is queued) or a hard stop: do not wait for it.
            now = self.stop.hard or self.stop.orphaned
            for sock, linger_on_stop in self._sockets:
                sock.close(linger=0 if now else linger_on_stop if stopped else None)
            self._sockets.clear()
            if self.ctx is not None:
                self.ctx.term()


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


class StopFlag(Protocol):
    """Anything that says whether to stop (a Stop, or a flag that never fires)."""

    def __bool__(self) -> bool: ...


def send_blocking(
    sock: zmq.Socket[Any], msg: wire.Message, stop: StopFlag, timeout_s: float | None = None
) -> bool:
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
    threads sleep rather than spin when idle (OMP_WAIT_POLICY=PASSIVE from `facestream stage`, ONNX
    Runtime spinning off): spinning threads take the cores the other stages need. The measurements
    behind both choices: benchmarks/RESULTS.md, Pipeline, "Stage threads"."""
    configured = cfg.detect.threads if role == Role.DETECT else cfg.embed.threads
    if configured:
        return configured
    cores = cpu_info().logical_cpus  # what this process may use (containers, taskset), not the machine
    if role == Role.DETECT:
        return max(1, cores // cfg.detect.workers)
    return max(1, cores // (2 * cfg.embed.workers))


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    log.info(
        "%d torch threads; idle threads %s",
        threads,
        "sleep" if policy.upper() == "PASSIVE" else f"spin ({policy})",
    )
