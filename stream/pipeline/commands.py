"""CLI: `facestream run` (the supervised pipeline), `facestream stage` (one stage alone, for several
hosts), `facestream keys generate` (CURVE key pairs for tcp links) and `facestream demo`. Heavy
imports happen inside the command functions."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream.pipeline.roles import Role

if TYPE_CHECKING:
    from stream.pipeline.config import PipelineConfig

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the pipeline on one or more sources")
    p.add_argument(
        "--source",
        action="append",
        metavar="SRC",
        help="webcam index, video file, image folder, rtsp:// or http(s):// URL (repeatable)",
    )
    p.add_argument("--gallery", type=Path, help="gallery file (enrolled people)")
    p.add_argument("--out", type=Path, help="JSONL: one line per processed frame")
    p.add_argument("--record", type=Path, help="annotated video (.mp4)")
    p.add_argument("--events", type=Path, help="JSONL of track and camera events")
    p.add_argument(
        "--summary", type=Path, help="JSON: the run's summary (frames, drops, latency), at the end"
    )
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    p.add_argument("--config", type=Path, help="YAML config (flags override it)")
    p.add_argument(
        "--realtime",
        action="store_true",
        default=None,
        help="pace files at their native fps, dropping frames like a live camera",
    )
    p.add_argument("--model", help="embedder model name")
    p.add_argument("--detect-workers", type=int)
    p.add_argument("--embed-workers", type=int)
    p.add_argument("--results", metavar="ENDPOINT", help="results PUB endpoint (e.g. tcp://127.0.0.1:5599)")
    p.add_argument(
        "--dashboard",
        metavar="HOST:PORT",
        help="serve the live page and REST API here (loopback unless you say otherwise; see README)",
    )
    p.add_argument("--validate-config", action="store_true", help="check the config and flags, then exit")
    p.set_defaults(func=cmd_run)

    s = sub.add_parser("stage", help="run one pipeline stage alone (stages on several hosts)")
    s.add_argument("name", choices=[r.value for r in Role])
    s.add_argument("--config", type=Path, required=True)
    s.add_argument("--index", type=int, default=0, help="worker index (capture: which source)")
    s.add_argument("--metrics-port", type=int, help="serve this stage's own /metrics (when run alone)")
    s.set_defaults(func=cmd_stage)

    k = sub.add_parser("keys", help="CURVE key pairs for encrypted, authenticated tcp links")
    ksub = k.add_subparsers(dest="keys_command", metavar="ACTION")
    ksub.required = True
    g = ksub.add_parser(
        "generate",
        help="make this host's server and client key pairs (or one named pair) in DIR",
        description="Writes NAME.key (public: copy it to peers) and NAME.key_secret (0600: keep it "
        "here). Without --name: server and client pairs plus the servers/ and clients/ folders that "
        "transport.curve.keys_dir expects (see stream/pipeline/security.py).",
    )
    g.add_argument("dir", type=Path, metavar="DIR")
    g.add_argument("--name", help="make only this pair (e.g. a dashboard's client key)")
    g.set_defaults(func=cmd_keys_generate)

    d = sub.add_parser(
        "demo",
        help="the whole pipeline on a clip made from sample photos (or your camera/file), then a summary",
        description="Without --source: enrolls one person from one sample photo, films three other "
        "photos with camera motion (the last shot cuts to someone not enrolled), runs the pipeline on "
        "that clip and says who was named where. The photos come from the face_recognition 1.3.0 sdist "
        "on PyPI (pinned, sha256-checked, cached in $FACESTREAM_HOME/samples: offline after set-up).",
    )
    d.add_argument(
        "--source",
        metavar="SRC",
        help="your webcam index, video file or URL instead; enrolls the largest face of its first frame",
    )
    d.add_argument("--record", type=Path, default=Path("facestream-demo.mp4"), help="annotated video")
    d.add_argument(
        "--out", type=Path, default=Path("facestream-demo.jsonl"), help="JSONL, one line per frame"
    )
    d.add_argument(
        "--from",
        dest="from_file",
        type=Path,
        metavar="FILE",
        help="a local copy of face_recognition-1.3.0.tar.gz (offline machines)",
    )
    d.add_argument("--fetch-only", action="store_true", help="fetch + check the sample photos, then exit")
    d.set_defaults(func=cmd_demo)


def run_config(args: argparse.Namespace) -> PipelineConfig:
    from stream.pipeline import config

    overrides: dict[str, Any] = {
        "gallery": args.gallery and str(args.gallery),
        "model": args.model,
        "outputs.out": args.out and str(args.out),
        "outputs.record": args.record and str(args.record),
        "outputs.events": args.events and str(args.events),
        "outputs.summary": args.summary and str(args.summary),
        "outputs.results": args.results,
        "dashboard.listen": args.dashboard,
        "metrics.port": args.metrics_port,
        "capture.realtime": args.realtime,
        "detect.workers": args.detect_workers,
        "embed.workers": args.embed_workers,
    }
    if args.source:
        overrides["sources"] = [{"url": s} for s in args.source]
    return config.load(args.config, overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from stream.pipeline import security
    from stream.pipeline.supervisor import Supervisor, precheck

    cfg = run_config(args)
    if args.validate_config:
        t = cfg.transport
        link = t.kind if t.kind == "ipc" else f"tcp{' + CURVE' if t.curve else ''}"
        print(
            f"config OK: {len(cfg.sources)} source(s) ({', '.join(cfg.cameras) or 'none'}), "
            f"{cfg.detect.workers} detect / {cfg.embed.workers} embed worker(s), model {cfg.model}, "
            f"links {link}"
        )
        return 0
    precheck(cfg)
    security.check(cfg, tuple(cfg.roles()))
    return Supervisor(cfg).run()


def cmd_stage(args: argparse.Namespace) -> int:
    from stream.pipeline import config, metrics, security
    from stream.pipeline.stages import run_stage

    # Idle OpenMP threads sleep instead of spinning: stages share the cores (see stage_threads). Set
    # here, before torch loads, so a stage started alone (another host, a pod) gets it too.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cfg = config.load(args.config)
    security.check(cfg, (args.name,))  # missing keys: one line now, not after the models load
    if args.metrics_port is not None:
        metrics.serve(args.metrics_port, cfg.metrics.host)
    return run_stage(args.name, cfg, args.index)


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from stream.pipeline import security

    for path in security.generate(args.dir, args.name):
        print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from stream.pipeline.demo import demo

    return demo(args.source, args.record, args.out, args.from_file, args.fetch_only)
