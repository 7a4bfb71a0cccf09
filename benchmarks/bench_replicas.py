"""What interchangeable replicas cost and give on one machine: `facestream run` on the shared clip
with the one-host default (topology indexed, ipc, frames in shared-memory rings) against
topology replicas over tcp on loopback (what deploy/k8s runs: detect and embed bind nothing and meet at
the relay and match; pixels inline), with 1 and 2 detect replicas. Prints a markdown table.

    python benchmarks/bench_replicas.py [--clip 360p|1080p] [--repeat N]

Settings are interleaved, --repeat times each; the table gives medians. On a machine with fewer free
cores than stage processes, a second detect replica competes with the first for the same cores: the
ratio then says what the extra process and hop cost, not what a second node would give."""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import CLIP, make_gallery, make_small, run_pipeline  # noqa: E402


def free_base_port() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1] - 400
        try:
            for off in (0, 100, 150, 200, 300, 301):
                with socket.socket() as t:
                    t.bind(("127.0.0.1", base + off))
        except OSError:
            continue
        if 1024 < base < 60000:
            return base
    raise SystemExit("no free port range on loopback")


SETTINGS = {
    "indexed, ipc + rings, 1 detect": "detect: {workers: 1}\n",
    "replicas, tcp + relay, 1 detect": "transport: {kind: tcp, topology: replicas, base_port: PORT}\ndetect: {workers: 1}\n",
    "replicas, tcp + relay, 2 detect": "transport: {kind: tcp, topology: replicas, base_port: PORT}\ndetect: {workers: 2}\n",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clip", choices=["360p", "1080p"], default="360p")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    print(f"load average before: {open('/proc/loadavg').read().split()[:3]}", flush=True)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        clip = CLIP if args.clip == "1080p" else make_small(CLIP, tmp / "small.mp4")
        gallery = make_gallery(tmp)
        runs: dict[str, list[dict]] = {k: [] for k in SETTINGS}
        for _ in range(args.repeat):
            for name, text in SETTINGS.items():
                r = run_pipeline(clip, gallery, tmp, False, text.replace("PORT", str(free_base_port())))
                runs[name].append(r)
                print(f"  {name}: {r['frames']} frames, {r['fps']:.2f} fps", file=sys.stderr, flush=True)
    print(f"load average after: {open('/proc/loadavg').read().split()[:3]}")
    base = statistics.median(r["fps"] for r in runs[next(iter(SETTINGS))])
    print(f"\nclip {args.clip}, {args.repeat} run(s) each, medians; cpu: {os.cpu_count()} logical\n")
    print("| setting | frames out | frames/s | vs indexed | e2e p50 ms | e2e p95 ms |")
    print("|---|---|---|---|---|---|")
    for name, rs in runs.items():
        fps = statistics.median(r["fps"] for r in rs)
        p50 = statistics.median(r["e2e"][0] for r in rs)
        p95 = statistics.median(r["e2e"][1] for r in rs)
        frames = sorted({r["frames"] for r in rs})
        print(
            f"| {name} | {'/'.join(map(str, frames))} | {fps:.2f} | {fps / base:.2f}x | {p50:.0f} | {p95:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
