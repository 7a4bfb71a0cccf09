"""CLI: `facestream serve` -- the web app alone (gallery management, identify, verify; no pipeline)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="the web app and REST API without a pipeline (gallery, identify, verify)",
        description="Loopback by default; any other address needs a token (--token, $FACESTREAM_TOKEN, "
        "else one is generated and printed once). Changing the gallery always needs it.",
    )
    p.add_argument(
        "--gallery", required=True, type=Path, help="gallery file (created by the first enrollment)"
    )
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT")
    p.add_argument("--model", default=None, help="embedding model (default: dlib-resnet-v1)")
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--max-upload-mb", type=float, default=10.0)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from stream.registry import DEFAULT_EMBEDDER, get_spec
    from stream.web.app import Settings
    from stream.web.auth import parse_listen, resolve_token
    from stream.web.server import announce_token, uvicorn_server

    model = args.model or DEFAULT_EMBEDDER
    get_spec(model)
    host, port = parse_listen(args.listen)
    token, generated = resolve_token(os.environ.get("FACESTREAM_TOKEN"), where="$FACESTREAM_TOKEN")
    announce_token(token, generated, host, port)
    settings = Settings(
        host=host,
        token=token,
        gallery=args.gallery,
        model=model,
        threshold=args.threshold,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
    )
    uvicorn_server(settings, port).run()
    return 0
