"""End-of-run numbers: the run's books, computed from the metrics of every stage process that ran.

Why the metrics and not the sink's memory: prometheus-client's multiprocess files outlive the process
that wrote them (a stage killed by -9 keeps its counts), so a restarted sink, a crashed detector or a
second Ctrl-C cannot falsify what the summary says. Counters are read by label NAME (the files keep
labels sorted by name, not in their declared order).

The books, per camera:
    read = sent + dropped by capture (late, busy)
    sent = out (result lines) + dropped downstream (stale, overwritten, ...) + unaccounted
Frames that left the capture and neither came out nor were counted by a stage can only have been in
flight in a stage that died, or in a socket when the run was cut short: the supervisor books them
(`settle`) as `crashed` (a stage died during the run), `shutdown` (the drain was cut short) or `lost`
(neither: a bug, and the summary says so).

Latency percentiles come from the histograms (merged over processes, bounded memory however long the
run), interpolated within their buckets like Prometheus's histogram_quantile; exact per-frame
latencies are in the --out JSONL."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream.pipeline.roles import Role

SECONDS_TO_MS = 1000.0
# Drop reasons of messages that were never one of the camera's frames (a forged ring reference): they
# are reported, but are not in the camera's books.
NOT_FRAMES = frozenset({"forged_ref"})
# Reasons the supervisor books (settle) for frames that were sent and then lost.
BOOKED_AFTER_SENDING = frozenset({"crashed", "shutdown", "lost"})


@dataclass
class Samples:
    """Every counter total and histogram bucket from a metrics directory, labels by name."""

    counters: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    buckets: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    def counter(self, name: str) -> list[tuple[dict[str, str], float]]:
        return self.counters.get(f"facestream_{name}_total", [])

    def per_camera(self, name: str, **match: str) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for labels, v in self.counter(name):
            if all(labels.get(k) == want for k, want in match.items()):
                out[labels["camera"]] += int(v)
        return dict(out)


def read_samples(metrics_dir: Path) -> Samples:
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    found = Samples()
    if not metrics_dir.exists():
        return found
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    for family in registry.collect():
        for s in family.samples:
            if s.name.endswith("_total"):
                found.counters.setdefault(s.name, []).append((dict(s.labels), s.value))
            elif s.name.endswith("_bucket"):
                found.buckets.setdefault(s.name[: -len("_bucket")], []).append((dict(s.labels), s.value))
    return found


def quantiles(
    buckets: list[tuple[dict[str, str], float]], qs: tuple[int, ...], **match: str
) -> dict[str, float | None]:
    """p<q> in ms from cumulative histogram buckets (summed over the label sets that match)."""
    cumulative: dict[float, float] = defaultdict(float)
    for labels, v in buckets:
        if all(labels.get(k) == want for k, want in match.items()):
            cumulative[float(labels["le"])] += v
    edges = sorted(cumulative)
    total = cumulative[edges[-1]] if edges else 0.0
    out: dict[str, float | None] = {}
    for q in qs:
        out[f"p{q}"] = None if total <= 0 else round(_quantile(q / 100, edges, cumulative, total), 1)
    return out


def _quantile(q: float, edges: list[float], cumulative: dict[float, float], total: float) -> float:
    rank = q * total
    lower, below = 0.0, 0.0
    finite = [e for e in edges if not math.isinf(e)]
    for edge in edges:
        count = cumulative[edge]
        if count >= rank:
            if math.isinf(edge):  # beyond the last bucket: its bound is the best one can say
                return finite[-1] * SECONDS_TO_MS if finite else math.nan
            inside = count - below
            frac = (rank - below) / inside if inside > 0 else 1.0
            return (lower + (edge - lower) * frac) * SECONDS_TO_MS
        lower, below = edge, count
    return (finite[-1] if finite else math.nan) * SECONDS_TO_MS


@dataclass
class Books:
    """One camera's frames, from the counters."""

    sent: int = 0
    out: int = 0
    faces: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # "stage/reason" -> frames
    forged: int = 0  # messages that claimed to be this camera's frames but never were (trust.py)

    @property
    def dropped_by_capture(self) -> int:
        """Frames read but never sent (late, busy). Not "capture/crashed": those were sent (booked by
        the supervisor against the capture that died with them in its queue)."""
        return sum(
            v
            for k, v in self.dropped.items()
            if k.startswith(f"{Role.CAPTURE}/") and k.split("/", 1)[1] not in BOOKED_AFTER_SENDING
        )

    @property
    def read(self) -> int:
        return self.sent + self.dropped_by_capture

    @property
    def unaccounted(self) -> int:
        """Sent, but neither out nor counted as dropped by any stage (> 0: lost in a crash or a cut)."""
        downstream = sum(self.dropped.values()) - self.dropped_by_capture
        return self.sent - self.out - downstream


def books(samples: Samples, cameras: list[str]) -> dict[str, Books]:
    sent = samples.per_camera("frames", stage=Role.CAPTURE)
    out = samples.per_camera("frames", stage=Role.SINK)
    faces = samples.per_camera("faces")
    result = {cam: Books(sent.get(cam, 0), out.get(cam, 0), faces.get(cam, 0)) for cam in cameras}
    for labels, v in samples.counter("frames_dropped"):
        if v and labels["camera"] in result and labels["reason"] in NOT_FRAMES:
            result[labels["camera"]].forged += int(v)
        elif v and labels["camera"] in result:
            key = f"{labels['stage']}/{labels['reason']}"
            result[labels["camera"]].dropped[key] = result[labels["camera"]].dropped.get(key, 0) + int(v)
    return result


def summarize(samples: Samples, cameras: list[str], span_s: float | None) -> dict[str, Any]:
    """The summary (the --summary JSON; format_summary prints it)."""
    kept = books(samples, cameras)
    hist = samples.buckets
    stage_s = hist.get("facestream_stage_seconds", [])
    queue_s = hist.get("facestream_queue_wait_seconds", [])
    total_out = sum(b.out for b in kept.values())
    stages = (Role.DETECT, Role.EMBED, Role.MATCH)
    return {
        "cameras": cameras,
        "frames": {c: b.out for c, b in kept.items()},
        "faces": {c: b.faces for c, b in kept.items()},
        "read": {c: b.read for c, b in kept.items()},
        "sent": {c: b.sent for c, b in kept.items()},
        "dropped": {c: dict(sorted(b.dropped.items())) for c, b in kept.items() if b.dropped},
        "unaccounted": {c: b.unaccounted for c, b in kept.items() if b.unaccounted},
        "forged": {c: b.forged for c, b in kept.items() if b.forged},
        "seconds": round(span_s, 3) if span_s else 0.0,
        "fps": round(total_out / span_s, 2) if span_s else None,
        "processing_ms": {s: quantiles(stage_s, (50, 95), stage=s) for s in stages if _seen(stage_s, s)},
        "queue_ms": {s: quantiles(queue_s, (50, 95), stage=s) for s in stages if _seen(queue_s, s)},
        "e2e_ms": quantiles(hist.get("facestream_e2e_latency_seconds", []), (50, 95, 99)),
        "bad_messages": {labels["stage"]: int(v) for labels, v in samples.counter("bad_messages") if v},
    }


def _seen(buckets: list[tuple[dict[str, str], float]], stage: str) -> bool:
    return any(labels.get("stage") == stage and v for labels, v in buckets)


def format_summary(s: dict[str, Any]) -> str:
    """A few lines for stderr."""
    frames, faces, read = s.get("frames", {}), s.get("faces", {}), s.get("read", {})
    lines = ["facestream run summary"]
    for cam in sorted(set(frames) | set(s.get("cameras", []))):
        drops = s.get("dropped", {}).get(cam, {})
        n_dropped = sum(drops.values())
        drop_txt = ", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none"
        err = s.get("errors", {}).get(cam)
        lines.append(
            f"  camera {cam}: {read.get(cam, 0)} frames read = {frames.get(cam, 0)} out + {n_dropped} dropped"
            f" ({drop_txt}); {faces.get(cam, 0)} faces" + (f"; FAILED: {err}" if err else "")
        )
        forged = s.get("forged", {}).get(cam)
        if forged:
            lines.append(f"    {forged} forged frame messages refused (not the camera's frames)")
        missing = s.get("unaccounted", {}).get(cam)
        if missing:
            lines.append(f"    {missing} frames UNACCOUNTED FOR (a bug: please report it)")
    if s.get("fps"):
        lines.append(f"  throughput: {s['fps']} frames/s over {s['seconds']} s")
    proc, queue = s.get("processing_ms", {}), s.get("queue_ms", {})
    for stage in (Role.DETECT, Role.EMBED, Role.MATCH):
        if stage in proc:
            a, b = proc[stage], queue.get(stage, {})
            lines.append(
                f"  {stage:6s} processing p50 {a['p50']} ms, p95 {a['p95']} ms"
                f" (queue before it p50 {b.get('p50')} ms, p95 {b.get('p95')} ms)"
            )
    e2e = s.get("e2e_ms", {})
    if e2e.get("p50") is not None:
        lines.append(f"  end-to-end p50 {e2e['p50']} ms, p95 {e2e['p95']} ms, p99 {e2e['p99']} ms")
    if s.get("restarts"):
        lines.append("  restarts: " + ", ".join(f"{k} {v}" for k, v in sorted(s["restarts"].items())))
    if s.get("bad_messages"):
        lines.append("  bad messages: " + ", ".join(f"{k} {v}" for k, v in sorted(s["bad_messages"].items())))
    return "\n".join(lines)
