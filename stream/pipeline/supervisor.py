"""The supervisor: starts every stage as its own process (`python -m stream stage ...`), watches them,
restarts crashed ones (bounded per minute), serves the one /metrics, drains on SIGINT/SIGTERM and
prints the summary.

Run lifecycle: workers (sink, match, embed, detect) start first and report ready once their models
are loaded; then the captures start. The run ends when the sink has seen every camera's end of
stream (and its frames) and exits; then the workers are stopped. A first SIGINT/SIGTERM stops the
captures only, so what is in flight drains through to the outputs; a second one stops everything.

A source that cannot be read (a file that does not open, a live source that never opened within its
open timeout) fails the whole run: the other captures are stopped the same way, what they sent
drains through, and the run exits non-zero with that source's one line. Why not keep the others
running: with live cameras the run never ends by itself, so a misspelled URL would be one warning
scrolling by while that camera silently produces nothing; a source that should be waited for says
so in the config (open_timeout_s: forever)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from stream.errors import FacestreamError
from stream.pipeline import framering, metrics, transport, trust, wire
from stream.pipeline.config import PipelineConfig
from stream.pipeline.roles import CONTROL, Role
from stream.pipeline.sources import check, is_live, without_url
from stream.pipeline.stages.base import EXIT_FATAL, EXIT_OK, EXIT_SOURCE_FAILED
from stream.pipeline.stages.capture import opened_mark
from stream.pipeline.stages.sinks import END_FILE, SPAN_FILE, Span
from stream.pipeline.summary import Samples, books, format_summary, read_samples, summarize

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 600.0
# A stage ends within HARD_STOP_S of SIGTERM by itself (stages/base.py); this is the last resort.
STOP_TIMEOUT_S = 3.0


@dataclass
class Child:
    role: Role
    index: int
    proc: subprocess.Popen[bytes] | None = None
    restarts: deque[float] = field(default_factory=deque)
    finished: bool = False  # exited for good (capture done, sink done)

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"


class Supervisor:
    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.own_run_dir = cfg.transport.run_dir is None
        remove_stale_runs()
        # Named after this process (facestream-<pid>-*): a run killed by -9 is recognised as dead.
        run_dir = (
            Path(tempfile.mkdtemp(prefix=f"facestream-{os.getpid()}-"))
            if cfg.transport.run_dir is None
            else Path(cfg.transport.run_dir)
        )
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(run_dir, 0o700)  # ipc sockets and metrics files: this user only
        self.run_dir = run_dir
        cfg.transport.run_dir = run_dir
        # One host: frames travel through per-camera shared-memory rings in a private directory that
        # this supervisor owns and removes when the run ends, however it ends (framering.py).
        self.ring_dir: Path | None = None
        if cfg.transport.kind == "ipc" and cfg.transport.shm is not False and not cfg.replicas:
            self.ring_dir = framering.make_dir(run_dir)
            cfg.transport.shm_dir = self.ring_dir
        self.cfg_path = run_dir / "config.yaml"
        cfg.dump(self.cfg_path)
        self.children: list[Child] = []
        self.signals = 0
        self.stopping_captures = False
        self.errors: dict[str, str] = {}
        self.failed_sources: dict[str, str] = {}  # camera -> its one line; the run fails with them
        self.restart_counts: dict[str, int] = {}
        self.died: set[str] = set()  # roles of stages that died during the run (their frames: "crashed")
        self.cut_short = False  # the drain did not finish (timeout, a second signal): "shutdown"
        self.metrics_server: WSGIServer | None = None
        self._ctx: zmq.Context[Any] | None = None
        self._control: zmq.Socket[Any] | None = None

    # ----- processes ------------------------------------------------------------------------------
    def _spawn(self, child: Child) -> None:
        cmd = [sys.executable, "-m", "stream"]
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            cmd.append("-v")
        cmd += ["stage", child.role, "--config", str(self.cfg_path), "--index", str(child.index)]
        env = {**os.environ, "FACESTREAM_SUPERVISED": str(os.getpid()), "OPENCV_LOG_LEVEL": "ERROR"}
        if child.role == Role.CAPTURE:  # its identity for its end-of-stream; a new one on a restart
            env[trust.TOKEN_ENV] = trust.issue_token(self.run_dir, child.index, renew=child.proc is not None)
        # Own session: a terminal's Ctrl-C reaches only the supervisor, which then drains in order.
        child.proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        log.debug("started %s (pid %d)", child.name, child.proc.pid)

    def _signal(self, *_args: object) -> None:
        self.signals += 1

    def _fatal_message(self, child: Child) -> str | None:
        path = self.run_dir / f"fatal-{child.name}"
        return path.read_text().strip() if path.exists() else None

    # ----- main -------------------------------------------------------------------------------------
    def run(self) -> int:
        old = {s: signal.signal(s, self._signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._run()
        finally:
            self._stop_all()
            for s, h in old.items():
                signal.signal(s, h)
            if self.metrics_server is not None:
                self.metrics_server.shutdown()
                self.metrics_server.server_close()
            if self._control is not None:
                self._control.close(linger=0)
            if self._ctx is not None:
                self._ctx.term()
            if self.ring_dir is not None:
                shutil.rmtree(self.ring_dir, ignore_errors=True)
            if self.own_run_dir:
                shutil.rmtree(self.run_dir, ignore_errors=True)

    def _run(self) -> int:
        cfg = self.cfg
        metrics.use_multiprocess_dir(self.run_dir / "metrics")
        self.m = metrics.get()
        if cfg.metrics.port is not None:
            self.metrics_server = metrics.serve(cfg.metrics.port, cfg.metrics.host)
            log.info("metrics on http://%s:%d/metrics", cfg.metrics.host, self.metrics_server.server_port)
        for path in (cfg.outputs.out, cfg.outputs.events):
            if path is not None:
                path.write_text("")  # truncate; the sink appends (so a restarted sink continues)
        self._ctx = zmq.Context()
        self._control = transport.socket(self._ctx, zmq.PUSH, bind=cfg.endpoint(CONTROL), hwm=100)

        for i in range(len(cfg.sources)):  # before the stages start, so a changed token means a restart
            trust.issue_token(self.run_dir, i)
        workers = [Child(Role.SINK, 0), Child(Role.MATCH, 0)]
        workers += [Child(Role.EMBED, i) for i in range(cfg.embed.workers)]
        workers += [Child(Role.DETECT, i) for i in range(cfg.detect.workers)]
        if cfg.replicas:  # detect and embed meet at the relay (transport.topology, config.py)
            workers.append(Child(Role.RELAY, 0))
        if cfg.dashboard is not None:  # the web app: supervised like a stage (stages/dashboard.py)
            workers.append(Child(Role.DASHBOARD, 0))
        self.children = workers
        # Every stage's restart series exists from the start at 0, so the first restart is an
        # increase() that alerts can see, not a series appearing with value 1.
        for role in {c.role for c in workers} | {Role.CAPTURE}:
            self.m.worker_restarts_total.labels(role)
        for c in workers:
            self._spawn(c)
        if not self._wait_ready(workers):
            return 0  # interrupted while loading: nothing processed, nothing to report
        captures = [Child(Role.CAPTURE, i) for i in range(len(cfg.sources))]
        self.children += captures
        for c in captures:
            self._spawn(c)

        drain_deadline: float | None = None
        handled_signals = 0
        while True:
            if self.signals > handled_signals:
                handled_signals = self.signals
                if handled_signals == 1:
                    log.info("stopping: draining what is in flight (again to stop at once)")
                    drain_deadline = self._drain(captures)
                else:
                    log.warning("stopping now")
                    self.cut_short = True
                    break
            if drain_deadline is not None and time.monotonic() > drain_deadline:
                log.warning("drain took longer than %.0fs; stopping", cfg.supervisor.drain_timeout_s)
                self.cut_short = True
                break
            if self._watch():
                break
            if self.failed_sources and drain_deadline is None:
                log.info("stopping: a source cannot be read; draining what is in flight")
                drain_deadline = self._drain(captures)
            time.sleep(0.05)
        return self._finish()

    def _drain(self, captures: list[Child]) -> float:
        """Stop the sources gracefully (SIGINT: each sends its end-of-stream behind its last frames);
        what they sent flows on to the outputs. Returns the drain's deadline; the main loop goes on
        watching meanwhile, so a second Ctrl-C is heard at once."""
        self.stopping_captures = True  # a capture we stop is done, whatever its exit, not restarted
        for c in captures:
            if not c.finished and c.proc is not None and c.proc.poll() is None:
                c.proc.send_signal(signal.SIGINT)
        return time.monotonic() + self.cfg.supervisor.drain_timeout_s

    def _wait_ready(self, workers: list[Child]) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if all((self.run_dir / f"ready-{c.name}").exists() for c in workers):
                return True
            if self.signals:
                return False
            self._watch()
            if time.monotonic() > deadline:
                raise FacestreamError(f"stages not ready after {READY_TIMEOUT_S:.0f}s")
            time.sleep(0.05)

    def _watch(self) -> bool:
        """Handle exited children; True when the run is over (the sink finished)."""
        for c in self.children:
            if c.finished or c.proc is None:
                continue
            rc = c.proc.poll()
            if rc is None:
                continue
            metrics.mark_process_dead(c.proc.pid)
            if rc == EXIT_FATAL:
                raise FacestreamError(self._fatal_message(c) or f"stage {c.name} could not start")
            if c.role == Role.SINK and rc == EXIT_OK:
                c.finished = True
                return True
            stopped = self.signals or self.stopping_captures  # on purpose, by us (or with us: systemd)
            if c.role == Role.CAPTURE and (rc in (EXIT_OK, EXIT_SOURCE_FAILED) or stopped):
                c.finished = True  # done, failed for good, or stopped on purpose by us
                if rc == EXIT_SOURCE_FAILED:
                    self._source_failed(c)
                self._capture_gone(c)
                continue
            self._restart(c, rc)
        return False

    def _source_failed(self, c: Child) -> None:
        cam = self.cfg.cameras[c.index]
        message = self._fatal_message(c) or f"source {cam} ({self.cfg.sources[c.index].url}) failed"
        self.errors[cam] = self.failed_sources[cam] = message

    def _capture_gone(self, c: Child, error: str | None = None) -> None:
        """Tell the sink this camera's capture has exited. Its own end-of-stream message normally
        arrives through the pipeline; this notice is the fallback that lets the run end when that
        message cannot come (capture killed) -- the sink then ends the camera once it goes quiet."""
        cam = self.cfg.cameras[c.index]
        notice = wire.CaptureGone(cam=cam, seq=0, wall=time.time(), error=error)
        if self._sink_done():
            return  # it took the camera's own end-of-stream and has stopped reading: nothing to tell
        assert self._control is not None, "captures start after the control socket"
        if not transport.try_send(self._control, notice, timeout_ms=1000) and not self._sink_done():
            log.warning("could not tell the sink that camera %s ended", cam)

    def _sink_done(self) -> bool:
        """The sink has ended (it writes END_FILE as it closes, then exits)."""
        sink = next((c for c in self.children if c.role == Role.SINK), None)
        exited = sink is not None and sink.proc is not None and sink.proc.poll() is not None
        return exited or (self.run_dir / END_FILE).exists()

    def _restart(self, c: Child, rc: int) -> None:
        how = f"killed by signal {-rc}" if rc < 0 else f"exit {rc}"
        src = self.cfg.sources[c.index] if c.role == Role.CAPTURE else None
        if src is not None and not is_live(src.url):
            # A file cannot resume mid-way: report it, and end that camera for the sink.
            c.finished = True
            cam = src.name or ""
            self.died.add(c.role)
            self.errors[cam] = f"capture crashed ({how})"
            log.error("camera %s: capture crashed (%s); its remaining frames are skipped", cam, how)
            self._capture_gone(c, error=self.errors[cam])
            return
        now = time.monotonic()
        while c.restarts and now - c.restarts[0] > 60:
            c.restarts.popleft()
        if len(c.restarts) >= self.cfg.supervisor.max_restarts_per_minute:
            raise FacestreamError(
                f"stage {c.name} keeps failing ({how}; {len(c.restarts)} restarts in the last minute): giving up"
            )
        c.restarts.append(now)
        self.died.add(c.role)
        self.m.worker_restarts_total.labels(c.role).inc()
        self.restart_counts[c.role] = self.restart_counts.get(c.role, 0) + 1
        log.warning("stage %s died (%s): restarting", c.name, how)
        if self.ring_dir is not None:  # the frames it held are lost: the captures stop waiting for them
            framering.bump_epoch(self.ring_dir, c.role)
        self._spawn(c)

    def _terminate(self, children: list[Child], timeout_s: float = STOP_TIMEOUT_S) -> None:
        live = [(c, proc) for c in children if (proc := c.proc) is not None and proc.poll() is None]
        for _c, proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for c, proc in live:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("stage %s did not stop in %.0fs: killing it", c.name, timeout_s)
                proc.kill()
                proc.wait()

    def _stop_all(self) -> None:
        # Sink last-but-gently: it flushes its files on SIGTERM.
        self._terminate([c for c in self.children if c.role != Role.SINK])
        self._terminate([c for c in self.children if c.role == Role.SINK])
        for c in self.children:
            if c.proc is not None:
                metrics.mark_process_dead(c.proc.pid)

    # ----- the end ----------------------------------------------------------------------------------
    def _finish(self) -> int:
        self._stop_all()
        # The sink may end (it got the failed camera's end-of-stream) before _watch sees that capture
        # exit, and our SIGTERM may then catch it in interpreter shutdown: its line is the evidence.
        for c in self.children:
            if c.role == Role.CAPTURE and self._fatal_message(c):
                self._source_failed(c)
        self.settle()
        summary = self.summary()
        print(format_summary(summary), file=sys.stderr)
        if self.cfg.outputs.summary is not None:
            self.cfg.outputs.summary.write_text(json.dumps(summary, indent=1) + "\n")
        if self.failed_sources:  # their own lines, already naming source, URL and reason
            # Sources stopped by this failure before their own deadline (two typos: name both).
            pending = [
                f"{s.name} ({s.url})"
                for i, s in enumerate(self.cfg.sources)
                if s.name not in self.failed_sources
                and is_live(s.url)
                and self.cfg.open_timeout(i) is not None
                and not opened_mark(self.run_dir, i).exists()
            ]
            also = [f"not opened either: {', '.join(pending)}"] if pending else []
            raise FacestreamError("; ".join([*self.failed_sources.values(), *also]))
        errors = {**self.errors, **summary.get("errors", {})}  # the sink has the sources' own words
        if errors and set(errors) >= set(self.cfg.cameras):
            raise FacestreamError(
                "no source could be read: " + "; ".join(f"{k}: {v}" for k, v in errors.items())
            )
        if errors:
            raise FacestreamError(
                f"{len(errors)} of {len(self.cfg.cameras)} sources failed: "
                + "; ".join(f"{k}: {v}" for k, v in sorted(errors.items()))
            )
        return 0

    def settle(self) -> None:
        """Book the frames that were sent but neither came out nor were counted by any stage: they
        were in flight in a stage that died ("crashed"), or in a queue when the run was cut short
        ("shutdown"); with neither, they are "lost" -- a bug, said loudly. Booked in this process's
        own metrics, so /metrics and the summary agree."""
        samples = read_samples(self.run_dir / "metrics")
        for cam, b in books(samples, self.cfg.cameras).items():
            if b.unaccounted <= 0:
                if b.unaccounted < 0:
                    log.error("camera %s: %d more frames out or dropped than sent", cam, -b.unaccounted)
                continue
            if self.died:
                stage, reason = (next(iter(self.died)) if len(self.died) == 1 else "pipeline"), "crashed"
            else:
                stage, reason = "pipeline", "shutdown" if self.cut_short else "lost"
            self.m.frames_dropped_total.labels(stage, cam, reason).inc(b.unaccounted)
            how = {
                "crashed": "in flight in a stage that died",
                "shutdown": "in flight when the run was cut short",
            }
            if reason == "lost":
                log.error(
                    "camera %s: %d frames unaccounted for (a bug: please report it)", cam, b.unaccounted
                )
            else:
                log.warning("camera %s: %d frames lost %s", cam, b.unaccounted, how[reason])

    def summary(self) -> dict[str, Any]:
        samples: Samples = read_samples(self.run_dir / "metrics")
        s = summarize(samples, self.cfg.cameras, Span.seconds(self.run_dir / SPAN_FILE))
        end = self.run_dir / END_FILE
        said = json.loads(end.read_text()) if end.exists() else {}
        s["errors"] = said.get("errors", {})
        s["restarts"] = dict(self.restart_counts)
        return s


def remove_stale_runs() -> None:
    """Remove the run directories and frame rings of runs that died (kill -9; the stages normally
    remove them as they follow their supervisor): this user's, whose supervisor process is gone.
    One line says what was removed."""
    removed = framering.remove_stale(Path(tempfile.gettempdir()))
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        removed += framering.remove_stale(shm)
    if removed:
        log.warning(
            "removed what %d dead run(s) left behind: %s", len(removed), ", ".join(map(str, sorted(removed)))
        )


def precheck(cfg: PipelineConfig) -> None:
    """Refuse at once what cannot work, before any model loads: a missing gallery or models, and any
    local source that cannot be read (a missing file or an empty folder will not appear by retrying,
    and such a source fails the run anyway: better now than after the models load and the other
    sources have run)."""
    if not cfg.sources:
        raise FacestreamError("no --source given")
    problems = [
        f"source {s.name} ({s.url}) cannot be read: {without_url(s.url, p)}"
        for s in cfg.sources
        if (p := check(s.url))
    ]
    if problems:
        raise FacestreamError("; ".join(problems))
    if cfg.gallery is not None and not cfg.gallery.is_file():
        raise FacestreamError(f"gallery {cfg.gallery} does not exist (enroll someone to create it)")
    from stream.modelstore import require_model

    require_model("mtcnn", cfg.home)
    require_model(cfg.model, cfg.home)
    if any(s.liveness.mode != "off" for s in cfg.sources):  # liveness: the optional face mesh
        require_model("mediapipe-face-landmark", cfg.home)
