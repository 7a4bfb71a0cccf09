"""CLI: `facestream unknowns --gallery G list | show ID | promote ID NAME | merge ID OTHER | forget ID
| cluster [--k K]` (stream/gallery/unknowns.py holds the identities; bad ids are one-line errors)."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from stream.errors import FacestreamError
from stream.gallery.unknowns import UnknownInfo, Unknowns, label, parse_label

if TYPE_CHECKING:
    from stream.faces import FaceAnalyzer


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    u = sub.add_parser("unknowns", help="strangers seen more than once: review, name, merge, forget")
    u.add_argument("--gallery", required=True, type=Path, help="gallery file")
    us = u.add_subparsers(dest="unknowns_command", metavar="ACTION")
    us.required = True
    p = us.add_parser("list", help="unknown identities, newest first")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
    p = us.add_parser("show", help="one identity: when, where, how many faces")
    p.add_argument("id", help="unknown-N")
    p.set_defaults(func=cmd_show)
    p = us.add_parser("promote", help="enroll an identity's best crops as a person (then forget it)")
    p.add_argument("id", help="unknown-N")
    p.add_argument("name", help="the person's name")
    p.add_argument("--model", default=None, help="embedding model (default: dlib-resnet-v1)")
    p.set_defaults(func=cmd_promote)
    p = us.add_parser("merge", help="the second identity's faces and visits join the first")
    p.add_argument("id", help="unknown-N to keep")
    p.add_argument("other", help="unknown-M to merge into it")
    p.set_defaults(func=cmd_merge)
    p = us.add_parser("forget", help="delete an identity with its crops and embeddings for good")
    p.add_argument("id", help="unknown-N")
    p.set_defaults(func=cmd_forget)
    p = us.add_parser("cluster", help="rebuild the identities from every stored face")
    p.add_argument(
        "--k", type=int, default=None, help="K-means with this many identities (default: by threshold)"
    )
    p.add_argument(
        "--model", default=None, help="embedding model whose faces to group (default: dlib-resnet-v1)"
    )
    p.set_defaults(func=cmd_cluster)


def _open(args: argparse.Namespace) -> Unknowns:
    return Unknowns.open(args.gallery, create=False)  # a missing gallery: one line from Gallery.open


def _line(i: UnknownInfo) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(i.last_seen))
    return (
        f"{i.label}\tvisits {i.visits}\tfaces {i.faces}\tcrops {i.crops}\tlast {when}\t{','.join(i.cameras)}"
    )


def cmd_list(args: argparse.Namespace) -> int:
    with _open(args) as store:
        infos = sorted(store.all(), key=lambda i: -i.last_seen)
    if args.json:
        print(json.dumps([i.to_dict() for i in infos]))
    else:
        for i in infos:
            print(_line(i))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    uid = parse_label(args.id)
    with _open(args) as store:
        print(json.dumps(store.get(uid).to_dict(), indent=1))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    keep, other = parse_label(args.id), parse_label(args.other)
    with _open(args) as store:
        store.merge(keep, other)
    print(f"merged {label(other)} into {label(keep)}")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    uid = parse_label(args.id)
    with _open(args) as store:
        n = store.forget(uid)
    print(f"forgot {label(uid)}: {n} faces deleted")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from stream.gallery.commands import _analyzer
    from stream.gallery.store import validate_name

    uid = parse_label(args.id)
    validate_name(args.name)
    with _open(args) as store:
        outcomes = promote(store, uid, args.name, _analyzer(args.model))
    for o in outcomes:
        print(o)
    return 0


def promote(store: Unknowns, uid: int, name: str, analyzer: FaceAnalyzer) -> list[str]:
    """Enrolls the identity's crops as `name` through the enrollment code (its detector and quality
    gate: a crop that would not pass as a photo is not enrolled), then forgets the identity. The
    crops go through a private temporary folder, removed at once: enrollment reads photos."""
    from stream.gallery.enroll import EnrollOptions, enroll_person

    crops = store.crops(uid)
    if not crops:
        raise FacestreamError(
            f"{label(uid)} has no stored crops (its faces reached the match stage without pixels); "
            f"enroll photos of {name} instead"
        )
    with tempfile.TemporaryDirectory(prefix="facestream-promote-") as tmp:
        os.chmod(tmp, 0o700)
        paths = []
        for k, (jpeg, _, _, _) in enumerate(crops):
            path = Path(tmp) / f"{label(uid)}-{k + 1}.jpg"
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(jpeg)
            paths.append(path)
        outcomes = enroll_person(
            store.gallery,
            analyzer,
            name,
            paths,
            EnrollOptions(largest=True, keep_going=True),
        )
    enrolled = sum(o.status == "enrolled" for o in outcomes)
    if not enrolled:
        why = "; ".join(f"{o.path.name}: {o.detail}" for o in outcomes)
        raise FacestreamError(f"no crop of {label(uid)} passed enrollment ({why}); it is kept")
    store.forget(uid)
    return [o.line() for o in outcomes] + [f"promoted {label(uid)} to {name}: {enrolled} faces enrolled"]


def cmd_cluster(args: argparse.Namespace) -> int:
    from stream.gallery.clustering import kmeans, threshold_clusters
    from stream.registry import DEFAULT_EMBEDDER, get_spec

    if args.k is not None and args.k < 1:
        raise FacestreamError(f"--k must be at least 1, not {args.k}")
    model = args.model or DEFAULT_EMBEDDER
    spec = get_spec(model)
    with _open(args) as store:
        face_ids, _, vecs = store.faces(model)
        if not len(face_ids):
            print(f"no unknown faces for {model}")
            return 0
        threshold = store.gallery.threshold(model) or spec.threshold
        if args.k is None:
            groups = threshold_clusters(vecs, threshold, spec.metric)
        else:
            groups = kmeans(vecs, args.k, spec.metric)
        before = len(store.all())
        assignment = store.regroup(model, face_ids, groups)
    how = f"K-means, k={args.k}" if args.k is not None else f"threshold {threshold:.3f}"
    print(f"{len(face_ids)} faces: {before} identities -> {len(assignment)} ({how})")
    return 0
