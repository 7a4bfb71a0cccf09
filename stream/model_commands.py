"""`facestream models pull|list`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("models", help="fetch, build and list face models")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    msub.required = True
    pull = msub.add_parser("pull", help="fetch + build models into $FACESTREAM_HOME (idempotent)")
    pull.add_argument(
        "names", nargs="*", metavar="NAME", help="models to build (default: mtcnn dlib-resnet-v1)"
    )
    pull.add_argument(
        "--from",
        dest="from_file",
        type=Path,
        metavar="FILE",
        help="build from this local copy of the model's source file (one NAME)",
    )
    pull.add_argument("--force", action="store_true", help="rebuild even if already built")
    pull.set_defaults(func=cmd_pull)
    ls = msub.add_parser("list", help="known models and whether they are built")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)


def cmd_pull(args: argparse.Namespace) -> int:
    # The one place the runtime reaches into the build (facestream_models): the CLI is the top of both,
    # and the build is imported only when this command runs (tests/test_package_direction.py).
    from facestream_models.build import pull
    from stream.home import models_dir

    for name, state in pull(args.names, from_file=args.from_file, force=args.force):
        print(f"{name}: {state} ({models_dir() / name})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from stream.modelstore import is_built
    from stream.registry import MODELS

    rows = [
        {
            "name": s.name,
            "kind": s.kind,
            "built": is_built(s.name),
            "dim": s.dim or None,
            "threshold": s.threshold or None,
            "description": s.description,
        }
        for s in MODELS.values()
    ]
    if args.json:
        print(json.dumps({"models": rows}))
    else:
        name_w = max(len(s.name) for s in MODELS.values())
        kind_w = max(len(s.kind) for s in MODELS.values())
        for r in rows:
            built = "built" if r["built"] else "not built"
            print(f"{r['name']:{name_w}}  {r['kind']:{kind_w}}  {built:9}  {r['description']}")
    return 0
