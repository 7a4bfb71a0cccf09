"""Every pipeline metric (names and buckets per DESIGN.md), and the one /metrics endpoint.

Aggregation: prometheus-client's multiprocess mode. Each stage process writes its samples to mmap
files in a run-private directory; the supervisor's /metrics merges them at scrape time. Why: no extra
socket or protocol between stages, nothing lost when a worker is killed -9 (its counters stay in its
files, so a restarted worker's frames and the restart itself still add up), and a scrape costs the
stages nothing. The environment variable must be set before prometheus_client is imported, hence
`use_multiprocess_dir()` first and metric objects created lazily by `get()`.

A stage started alone (`facestream stage`) without that directory uses the ordinary in-process
registry and can serve its own /metrics."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stream.errors import FacestreamError

if TYPE_CHECKING:  # prometheus_client itself is imported late (see above)
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import Counter, Gauge, Histogram

ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)


def use_multiprocess_dir(path: Path, wipe: bool = True) -> None:
    """Point this process (and the children it starts) at a fresh multiprocess directory."""
    if "prometheus_client" in sys.modules and os.environ.get(ENV) != str(path):
        # Metric value classes are chosen at import time: too late to switch now.
        raise RuntimeError("use_multiprocess_dir() must run before prometheus_client is imported")
    if wipe and path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.environ[ENV] = str(path)


@dataclass
class Metrics:
    stage_seconds: Histogram
    queue_wait_seconds: Histogram
    e2e_latency_seconds: Histogram
    batch_size: Histogram
    frames_total: Counter
    frames_dropped_total: Counter
    faces_total: Counter
    faces_rejected_total: Counter
    matches_total: Counter
    camera_up: Gauge
    camera_reconnects_total: Counter
    worker_restarts_total: Counter
    bad_messages_total: Counter
    detect_plans_total: Counter
    embeddings_total: Counter
    auth_failures_total: Counter
    links_lost_total: Counter
    busy_seconds_total: Counter


_metrics: Metrics | None = None


def get() -> Metrics:
    global _metrics
    if _metrics is None:
        from prometheus_client import Counter, Gauge, Histogram

        h = LATENCY_BUCKETS
        _metrics = Metrics(
            stage_seconds=Histogram(
                "facestream_stage_seconds", "Processing time inside a stage", ["stage", "camera"], buckets=h
            ),
            queue_wait_seconds=Histogram(
                "facestream_queue_wait_seconds",
                "Time a message waited before the stage took it",
                ["stage"],
                buckets=h,
            ),
            e2e_latency_seconds=Histogram(
                "facestream_e2e_latency_seconds", "Capture to match result", ["camera"], buckets=h
            ),
            batch_size=Histogram(
                "facestream_batch_size",
                "Items per batch (frames: detect; faces: embed)",
                ["stage"],
                buckets=BATCH_BUCKETS,
            ),
            frames_total=Counter("facestream_frames", "Frames a stage processed", ["stage", "camera"]),
            frames_dropped_total=Counter(
                "facestream_frames_dropped", "Frames skipped, by reason", ["stage", "camera", "reason"]
            ),
            faces_total=Counter(
                "facestream_faces", "Faces in the output (counted as the sink writes them)", ["camera"]
            ),
            faces_rejected_total=Counter(
                "facestream_faces_rejected",
                "Detections dropped before embedding (landmarks no face has), by reason",
                ["camera", "reason"],
            ),
            matches_total=Counter(
                "facestream_matches", "Match decisions (known/unknown)", ["camera", "result"]
            ),
            # mostrecent: the last value any capture process wrote for a camera (a restarted capture
            # overrides its predecessor; a dead one's last word, normally 0, stays visible).
            camera_up=Gauge(
                "facestream_camera_up",
                "1 while the camera delivers frames",
                ["camera"],
                multiprocess_mode="mostrecent",
            ),
            camera_reconnects_total=Counter(
                "facestream_camera_reconnects", "Attempts to reopen a camera", ["camera"]
            ),
            worker_restarts_total=Counter(
                "facestream_worker_restarts", "Stage processes restarted", ["stage"]
            ),
            bad_messages_total=Counter(
                "facestream_bad_messages", "Messages that failed to decode or validate", ["stage"]
            ),
            embeddings_total=Counter(
                "facestream_embeddings",
                "Face embeddings: computed, or carried over from the same face a frame ago",
                ["how"],
            ),
            detect_plans_total=Counter(
                "facestream_detect_plans",
                "Frames by what detection looked at (first/periodic/cut: whole frame; guided: regions; "
                "still: nothing)",
                ["camera", "plan"],
            ),
            auth_failures_total=Counter(
                "facestream_auth_failures",
                "CURVE handshakes a stage's server sockets refused, by reason",
                ["stage", "reason"],
            ),
            links_lost_total=Counter(
                "facestream_links_lost",
                "tcp connections closed under a stage: the peer exited, reset, or stayed silent past "
                "transport.peer_timeout_s (heartbeats)",
                ["stage"],
            ),
            # A counter, not a gauge: rate() over it is the fraction of time a process works (0..1),
            # which the HorizontalPodAutoscaler scales detect and embed on (deploy/k8s/hpa.yaml).
            busy_seconds_total=Counter(
                "facestream_busy_seconds",
                "Seconds a stage process spent working on batches (not waiting for input or for room "
                "downstream)",
                ["stage"],
            ),
        )
    return _metrics


def serve(port: int, host: str = "127.0.0.1") -> WSGIServer:
    """Start /metrics in a daemon thread: merged over all processes in multiprocess mode.
    Returns the server (its .server_port is the bound port, useful with port 0)."""
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

    registry = REGISTRY
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        raise FacestreamError(f"metrics port {host}:{port} unusable ({e.strerror or e})") from None
    return server


def mark_process_dead(pid: int) -> None:
    """Drop a dead process's live-only gauge files (counters and histograms stay counted)."""
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
