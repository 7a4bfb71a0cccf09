"""End-of-run numbers: collected by the sink from every result's stamps, printed by the supervisor.

Percentiles come from the exact per-frame latencies (not histogram buckets)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.pipeline import wire

# Processing time inside each stage (queue wait excluded), from the stamps.
PROCESSING = {
    "detect": ("detect_in", "detect_out"),
    "embed": ("embed_in", "embed_out"),
    "match": ("match_in", "match_out"),
}


@dataclass
class Stats:
    frames: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    faces: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # incl. queue
    processing: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    first_ns: int | None = None
    last_ns: int | None = None

    def add(self, cam: str, t: dict[str, int], faces: int) -> dict[str, float | None]:
        """Count one result; returns its latency_ms for the JSONL line."""
        self.frames[cam] += 1
        self.faces[cam] += faces
        lat = wire.latencies_ms(t)
        for k, v in lat.items():
            if v is not None:
                self.latency[k].append(v)
        for k, (a, b) in PROCESSING.items():
            if a in t and b in t:
                self.processing[k].append((t[b] - t[a]) / 1e6)
        if "capture" in t:
            self.first_ns = t["capture"] if self.first_ns is None else min(self.first_ns, t["capture"])
        if "match_out" in t:
            self.last_ns = t["match_out"] if self.last_ns is None else max(self.last_ns, t["match_out"])
        return lat

    def to_dict(self) -> dict[str, Any]:
        def pct(values: list[float], qs: tuple[int, ...]) -> dict[str, float | None]:
            if not values:
                return {f"p{q}": None for q in qs}
            arr = np.asarray(values)
            return {f"p{q}": round(float(np.percentile(arr, q)), 2) for q in qs}

        span = (self.last_ns - self.first_ns) / 1e9 if self.first_ns and self.last_ns else 0.0
        total = sum(self.frames.values())
        return {
            "frames": dict(self.frames),
            "faces": dict(self.faces),
            "seconds": round(span, 3),
            "fps": round(total / span, 2) if span > 0 else None,
            "latency_ms": {k: pct(v, (50, 95)) for k, v in self.latency.items() if k != "total"},
            "processing_ms": {k: pct(v, (50, 95)) for k, v in self.processing.items()},
            "e2e_ms": pct(self.latency.get("total", []), (50, 95, 99)),
        }


def format_summary(s: dict[str, Any]) -> str:
    """A few lines for stderr."""
    frames = s.get("frames", {})
    faces = s.get("faces", {})
    lines = ["facestream run summary"]
    for cam in sorted(set(frames) | set(s.get("cameras", []))):
        drops = s.get("dropped", {}).get(cam, {})
        drop_txt = ", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none"
        err = s.get("errors", {}).get(cam)
        lines.append(
            f"  camera {cam}: {frames.get(cam, 0)} frames, {faces.get(cam, 0)} faces, dropped: {drop_txt}"
            + (f", FAILED: {err}" if err else "")
        )
    if s.get("fps"):
        lines.append(f"  throughput: {s['fps']} frames/s over {s['seconds']} s")
    lat, proc = s.get("latency_ms", {}), s.get("processing_ms", {})
    for stage in ("detect", "embed", "match"):
        if stage in lat:
            a, b = lat[stage], proc.get(stage, {})
            lines.append(
                f"  {stage:6s} p50 {a['p50']} ms, p95 {a['p95']} ms "
                f"(processing p50 {b.get('p50')} ms, p95 {b.get('p95')} ms)"
            )
    e2e = s.get("e2e_ms", {})
    if e2e.get("p50") is not None:
        lines.append(f"  end-to-end p50 {e2e['p50']} ms, p95 {e2e['p95']} ms, p99 {e2e['p99']} ms")
    if s.get("restarts"):
        lines.append("  restarts: " + ", ".join(f"{k} {v}" for k, v in sorted(s["restarts"].items())))
    if s.get("bad_messages"):
        lines.append("  bad messages: " + ", ".join(f"{k} {v}" for k, v in sorted(s["bad_messages"].items())))
    return "\n".join(lines)
