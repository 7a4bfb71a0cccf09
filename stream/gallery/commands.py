"""CLI: `enroll`, `gallery init|list|remove|rename|rebuild|reject`, `identify`, `verify`, `eval`.

Heavy imports (onnxruntime, torch via the detector) happen inside the command functions so that
`facestream --help` stays fast. Bad input raises FacestreamError: one line, exit 2."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream.errors import FacestreamError

if TYPE_CHECKING:  # the modules themselves load inside the commands (see above)
    import numpy as np

    from stream.faces import Face, FaceAnalyzer
    from stream.gallery.enroll import Outcome
    from stream.gallery.matcher import Match, Matcher
    from stream.gallery.store import Gallery


def _default_model() -> str:
    from stream.registry import DEFAULT_EMBEDDER

    return DEFAULT_EMBEDDER


def _num(x: float | None, nd: int = 6) -> float | None:
    """JSON-safe number: inf/NaN (no match, one-class eval) become null."""
    if x is None or not math.isfinite(float(x)):
        return None
    return round(float(x), nd)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=None, allow_nan=False))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    model_help = "embedding model (default: dlib-resnet-v1)"

    p = sub.add_parser("enroll", help="add photos of people to a gallery")
    p.add_argument("--gallery", required=True, type=Path, help="gallery file (created if missing)")
    p.add_argument("name", nargs="?", help="the person's name")
    p.add_argument("images", nargs="*", type=Path, help="photos of that person")
    p.add_argument("--from-dir", type=Path, help="folder of DIR/<name>/*.jpg or DIR/<name>.jpg")
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--largest", action="store_true", help="photos with several faces: take the largest")
    p.add_argument("--force", action="store_true", help="enroll faces that are too small or blurred")
    p.add_argument(
        "--keep-going", action="store_true", help="report bad photos and go on (exit 1 at the end)"
    )
    p.add_argument("--min-eye-px", type=float, default=None, help="smallest eye distance accepted (px)")
    p.add_argument("--min-sharpness", type=float, default=None, help="lowest Laplacian variance accepted")
    p.set_defaults(func=cmd_enroll)

    g = sub.add_parser("gallery", help="list, remove, rename people; rebuild for another model")
    g.add_argument("--gallery", required=True, type=Path, help="gallery file")
    gs = g.add_subparsers(dest="gallery_command", metavar="ACTION")
    gs.required = True
    gi = gs.add_parser("init", help="create an empty gallery (nothing changes if it exists)")
    gi.set_defaults(func=cmd_gallery_init)
    gl = gs.add_parser("list", help="people, sample counts, models")
    gl.add_argument("--json", action="store_true")
    gl.set_defaults(func=cmd_gallery_list)
    gr = gs.add_parser("remove", help="delete a person and all their samples")
    gr.add_argument("name")
    gr.set_defaults(func=cmd_gallery_remove)
    gn = gs.add_parser("rename", help="rename a person")
    gn.add_argument("old")
    gn.add_argument("new")
    gn.set_defaults(func=cmd_gallery_rename)
    gj = gs.add_parser(
        "reject",
        help="not this person: a face (a crop or photo file, or an unknown id) is never named NAME again",
    )
    gj.add_argument("name")
    gj.add_argument("face", metavar="CROP_OR_ID", help="a face crop or photo, or unknown-17")
    gj.add_argument("--model", default=None, help=model_help)
    gj.add_argument("--largest", action="store_true", help="a photo with several faces: the largest")
    gj.set_defaults(func=cmd_gallery_reject)
    gb = gs.add_parser("rebuild", help="re-embed every sample from its stored crop with a model")
    gb.add_argument("--model", required=True, help="model to embed with")
    gb.set_defaults(func=cmd_gallery_rebuild)

    i = sub.add_parser("identify", help="name the faces in a photo")
    i.add_argument("--gallery", required=True, type=Path)
    i.add_argument("image", type=Path)
    i.add_argument("--model", default=None, help=model_help)
    i.add_argument(
        "--threshold", type=float, default=None, help="default: gallery's calibrated, else model's"
    )
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_identify)

    v = sub.add_parser("verify", help="are two photos the same person?")
    v.add_argument("image1", type=Path)
    v.add_argument("image2", type=Path)
    v.add_argument("--model", default=None, help=model_help)
    v.add_argument("--threshold", type=float, default=None)
    v.add_argument("--gallery", type=Path, default=None, help="use this gallery's calibrated threshold")
    v.add_argument("--largest", action="store_true", help="photos with several faces: take the largest")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)

    e = sub.add_parser(
        "eval",
        help="verification accuracy on labelled pairs (CSV file_x,file_y,same)",
        description="Each image is embedded once; its largest face stands for it. 'pairs' counts the pairs "
        "scored, 'no_face' those left out because an image had no face.",
    )
    e.add_argument("--pairs", required=True, type=Path, help="CSV with columns file_x,file_y,same")
    e.add_argument("--images", required=True, type=Path, help="folder the CSV's file names are relative to")
    e.add_argument("--model", default=None, help=model_help)
    e.add_argument(
        "--threshold", type=float, default=None, help="threshold for 'accuracy' (default: model's)"
    )
    e.add_argument("--json", action="store_true")
    e.add_argument("--plot", type=Path, default=None, help="draw the ROC curve into this PNG")
    e.add_argument(
        "--set-threshold", action="store_true", help="store best_threshold in --gallery for the model"
    )
    e.add_argument("--gallery", type=Path, default=None)
    e.set_defaults(func=cmd_eval)


# ----- enroll ---------------------------------------------------------------------------------
def cmd_enroll(args: argparse.Namespace) -> int:
    from stream.gallery.enroll import EnrollOptions, collect_dir, enroll_person, photo_hash
    from stream.gallery.quality import MIN_EYE_PX, MIN_SHARPNESS
    from stream.gallery.store import Gallery, validate_name

    if args.from_dir is not None:
        if args.name is not None:
            raise FacestreamError("give either NAME IMAGE... or --from-dir, not both")
        people = collect_dir(args.from_dir)
    else:
        if args.name is None or not args.images:
            raise FacestreamError("enroll needs NAME and at least one IMAGE (or --from-dir DIR)")
        validate_name(args.name)
        people = {args.name: list(args.images)}
    # Cheap checks first, before models load or the gallery file appears.
    for photos in people.values():
        for photo in photos:
            photo_hash(photo)
    existed = args.gallery.exists()
    if existed:
        Gallery.open(args.gallery).close()  # refuses a foreign/newer file before any work
    opts = EnrollOptions(
        largest=args.largest,
        force=args.force,
        keep_going=args.keep_going,
        min_eye_px=MIN_EYE_PX if args.min_eye_px is None else args.min_eye_px,
        min_sharpness=MIN_SHARPNESS if args.min_sharpness is None else args.min_sharpness,
    )
    analyzer = _analyzer(args.model)
    gallery = Gallery.open(args.gallery, create=True)
    counts = {"enrolled": 0, "skipped": 0, "failed": 0}

    def report(o: Outcome) -> None:
        counts[o.status] += 1
        print(o.line(), file=sys.stderr if o.status == "failed" else sys.stdout, flush=True)

    try:
        for name, photos in people.items():
            enroll_person(gallery, analyzer, name, photos, opts, report)
        other = set(gallery.models()) - {analyzer.embedder.name}
        n_people = len(gallery.people())
    except BaseException:
        _drop_if_new_and_empty(gallery, existed)
        raise
    gallery.close()
    print(
        f"{counts['enrolled']} photo(s) enrolled, {counts['skipped']} skipped, {counts['failed']} failed; "
        f"{args.gallery} has {n_people} people"
    )
    if other:
        print(
            f"note: this gallery also holds samples of {', '.join(sorted(other))}; "
            f"`facestream gallery --gallery {args.gallery} rebuild --model M` fills in the missing ones",
            file=sys.stderr,
        )
    return 1 if counts["failed"] else 0


def _drop_if_new_and_empty(gallery: Gallery, existed: bool) -> None:
    """A command that failed before storing anything leaves no new empty gallery file behind."""
    try:
        empty = gallery.count_samples() == 0 and not gallery.people()
    except Exception:  # noqa: BLE001 - cleanup must not mask the real error
        empty = False
    gallery.close()
    if not existed and empty:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{gallery.path}{suffix}").unlink(missing_ok=True)


def _analyzer(model: str | None) -> FaceAnalyzer:
    from stream.faces import FaceAnalyzer

    return FaceAnalyzer(model=model or _default_model())


# ----- gallery --------------------------------------------------------------------------------
def cmd_gallery_init(args: argparse.Namespace) -> int:
    """For deployments: a gallery file must exist before the match stage starts, and enrolling
    someone should not be the only way to make one."""
    from stream.gallery.store import Gallery

    existed = args.gallery.exists()
    with Gallery.open(args.gallery, create=True) as g:
        people = len(g.people())
    print(f"gallery {args.gallery} {'exists' if existed else 'created'} ({people} people)")
    return 0


def cmd_gallery_list(args: argparse.Namespace) -> int:
    from stream.gallery.store import Gallery

    with Gallery.open(args.gallery) as g:
        people = g.people()
        models = g.models()
        thresholds = g.thresholds()
    if args.json:
        _print_json(
            {
                "people": [{"name": p.name, "samples": p.samples, "models": p.models} for p in people],
                "models": models,
                "thresholds": thresholds,
            }
        )
        return 0
    width = max([len(p.name) for p in people] + [4])
    for p in people:
        per_model = ", ".join(f"{m}: {n}" for m, n in p.models.items()) or "no embeddings"
        print(f"{p.name:<{width}}  {p.samples} sample(s)  ({per_model})")
    summary = ", ".join(f"{m} ({n} samples)" for m, n in models.items()) or "none"
    print(f"{len(people)} people; models: {summary}")
    for m, t in thresholds.items():
        print(f"calibrated threshold for {m}: {t:.4f}")
    return 0


def cmd_gallery_remove(args: argparse.Namespace) -> int:
    from stream.gallery.store import Gallery

    with Gallery.open(args.gallery) as g:
        n = g.remove_person(args.name)
    print(f"removed {args.name} ({n} sample(s))")
    return 0


def cmd_gallery_rename(args: argparse.Namespace) -> int:
    from stream.gallery.store import Gallery

    with Gallery.open(args.gallery) as g:
        g.rename_person(args.old, args.new)
    print(f"renamed {args.old} -> {args.new}")
    return 0


def cmd_gallery_reject(args: argparse.Namespace) -> int:
    from stream.gallery import rejections
    from stream.gallery.store import Gallery

    model = args.model or _default_model()
    with Gallery.open(args.gallery) as g:
        if g.person_id(args.name) is None:
            raise FacestreamError(f"no person named {args.name!r} in gallery {args.gallery}")
        faces, source = _rejected_faces(g, args.face, model, args.largest)
        n = rejections.add(g, args.name, model, faces, source)
    print(f"rejected {n} face(s) of {source} as {args.name} ({model})")
    return 0


def _rejected_faces(
    g: Gallery, face: str, model: str, largest: bool
) -> tuple[list[tuple[np.ndarray, bytes | None]], str]:
    """(embedding, crop) of the faces a `reject` names: an unknown identity's stored faces, or the
    face of a crop or photo file (embedded like an enrollment photo, without its quality gate: the
    face that was taken for someone may well be a poor one)."""
    from stream.gallery.crops import encode_crop, make_crop
    from stream.gallery.enroll import pick_face
    from stream.gallery.unknowns import Unknowns, parse_label
    from stream.imageio import load_image

    path = Path(face)
    if not path.is_file():
        try:
            uid = parse_label(face)
        except FacestreamError:
            raise FacestreamError(
                f"{face!r} is neither an image file nor an unknown id (unknown-17)"
            ) from None
        samples = Unknowns(g).samples(uid, model)
        if not samples:
            raise FacestreamError(f"{face} has no faces embedded with {model}")
        return samples, face
    frame = load_image(path)
    picked = pick_face(_analyzer(model).analyze([frame])[0], path, largest, force=True)
    crop, _ = make_crop(frame, picked.box)
    return [(picked.embedding, encode_crop(crop))], path.name


def cmd_gallery_rebuild(args: argparse.Namespace) -> int:
    from stream.embedder import Embedder
    from stream.gallery.enroll import rebuild
    from stream.gallery.store import Gallery
    from stream.registry import get_spec

    get_spec(args.model)
    with Gallery.open(args.gallery) as g:
        n = rebuild(g, Embedder(args.model))
    print(f"re-embedded {n} sample(s) with {args.model}")
    return 0


# ----- identify / verify ----------------------------------------------------------------------
def cmd_identify(args: argparse.Namespace) -> int:
    from stream.gallery.matcher import Matcher
    from stream.imageio import load_image

    model = args.model or _default_model()
    matcher = Matcher(args.gallery, model, threshold=args.threshold)  # gallery checks before models load
    frame = load_image(args.image)
    faces, matches = identify_faces(_analyzer(model), matcher, frame)
    matcher.close()
    if args.json:
        _print_json(identify_json(faces, matches))
        return 0
    if not faces:
        print(f"{args.image}: no face found")
    for f, m in zip(faces, matches, strict=True):
        box = ", ".join(f"{v:.0f}" for v in f.box)
        dist = "no samples" if not math.isfinite(m.distance) else f"distance {m.distance:.3f}"
        print(f"[{box}]  {m.name or 'unknown'}  ({dist}, threshold {matcher.threshold:.3f})")
    return 0


def identify_faces(
    analyzer: FaceAnalyzer, matcher: Matcher, frame: np.ndarray
) -> tuple[list[Face], list[Match]]:
    """The faces in an RGB frame and their nearest gallery person (the CLI and the web API)."""
    faces = analyzer.analyze([frame])[0]
    return faces, matcher.match(_stack([f.embedding for f in faces])) if faces else []


def identify_json(faces: list[Face], matches: list[Match]) -> dict[str, Any]:
    """`identify --json`'s answer (and POST /api/identify's)."""
    return {
        "faces": [
            {
                "box": [round(float(v), 1) for v in f.box],
                "score": _num(f.score, 4),
                "name": m.name,
                "distance": _num(m.distance),
            }
            for f, m in zip(faces, matches, strict=True)
        ]
    }


def _stack(vectors: list[np.ndarray]) -> np.ndarray:
    import numpy as np

    return np.stack([np.asarray(v, np.float32) for v in vectors])


def _one_face(analyzer: FaceAnalyzer, frame: np.ndarray, path: Path, largest: bool) -> Face:
    from stream.gallery.enroll import pick_face

    faces = analyzer.analyze([frame])[0]
    try:  # ignore false/tiny detections beside the face, as enroll does
        return pick_face(faces, path, largest)
    except FacestreamError:
        # No face passes the enrollment checks: a poor face can still be compared, if it is alone.
        return pick_face(faces, path, largest, force=True)


def threshold_for(model: str, explicit: float | None, gallery: Path | None) -> float:
    """Explicit, else the gallery's calibrated threshold for the model, else the model's default."""
    from stream.gallery.store import Gallery
    from stream.registry import get_spec

    if explicit is not None:
        return explicit
    if gallery is not None:
        with Gallery.open(gallery) as g:
            t = g.threshold(model)
        if t is not None:
            return t
    return float(get_spec(model).threshold)


def cmd_verify(args: argparse.Namespace) -> int:
    from stream.imageio import load_image

    model = args.model or _default_model()
    threshold = threshold_for(model, args.threshold, args.gallery)
    frames = [load_image(args.image1), load_image(args.image2)]  # bad files fail before models load
    result = verify_json(_analyzer(model), frames, (args.image1, args.image2), threshold, args.largest)
    if args.json:
        _print_json(result)
    else:
        d, same = float(result["distance"]), bool(result["same"])
        print(
            f"{'same person' if same else 'different people'} (distance {d:.3f}, threshold {threshold:.3f})"
        )
    return 0


def verify_json(
    analyzer: FaceAnalyzer,
    frames: list[np.ndarray],
    paths: tuple[Path, Path],
    threshold: float,
    largest: bool,
) -> dict[str, Any]:
    """`verify --json`'s answer (and POST /api/verify's): one face per photo, their distance."""
    from stream.embedder import distance

    a = _one_face(analyzer, frames[0], paths[0], largest)
    b = _one_face(analyzer, frames[1], paths[1], largest)
    d = float(distance(a.embedding, b.embedding, analyzer.embedder.metric)[0])
    return {"distance": _num(d), "threshold": _num(threshold), "same": d <= threshold}


# ----- eval -----------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    import numpy as np

    from stream.embedder import distance
    from stream.gallery import evaluate as ev
    from stream.gallery.store import Gallery
    from stream.registry import get_spec

    model = args.model or _default_model()
    spec = get_spec(model)
    if args.set_threshold and args.gallery is None:
        raise FacestreamError("--set-threshold needs --gallery G to store the threshold in")
    if args.gallery is not None and args.gallery.exists():
        Gallery.open(args.gallery).close()
    if not args.images.is_dir():
        raise FacestreamError(f"{args.images}: not a folder")
    pairs = ev.read_pairs(args.pairs)
    files = sorted({p.file_x for p in pairs} | {p.file_y for p in pairs})
    for f in files:  # every file must exist before the slow part starts
        if not (args.images / f).is_file():
            raise FacestreamError(f"{args.images / f}: no such file (named in {args.pairs})")
    analyzer = _analyzer(model)
    # Each image is embedded once however many pairs it is in; its largest face stands for it.
    embedding: dict[str, np.ndarray | None] = {}
    for f in files:
        faces = analyzer.analyze_image(args.images / f)
        embedding[f] = max(faces, key=lambda x: x.box[2] - x.box[0]).embedding if faces else None
    found = {f: e for f, e in embedding.items() if e is not None}
    scored = [p for p in pairs if p.file_x in found and p.file_y in found]
    if not scored:
        raise FacestreamError("no pair could be scored: no face found in their images")
    d = distance(
        _stack([found[p.file_x] for p in scored]),
        _stack([found[p.file_y] for p in scored]),
        spec.metric,
    ).astype(np.float64)
    same = np.array([p.same for p in scored], bool)
    threshold = args.threshold if args.threshold is not None else float(analyzer.embedder.threshold)
    stats = ev.summarize(d, same, threshold)
    result = {
        "pairs": len(scored),
        "no_face": len(pairs) - len(scored),
        **{k: _num(v) for k, v in stats.items()},
        "model": model,
    }
    if args.plot is not None:
        ev.plot_roc(ev.roc(d, same), args.plot, f"{model}: AUC {stats['auc']:.4f}, {len(scored)} pairs")
    if args.set_threshold:
        if same.all() or (~same).all():
            raise FacestreamError("--set-threshold needs both same and different pairs")
        with Gallery.open(args.gallery, create=True) as g:
            g.set_threshold(model, stats["best_threshold"], str(args.pairs))
    if args.json:
        _print_json(result)
        return 0
    for k, v in result.items():
        print(f"{k:>16}: {v}")
    wrong = [(p, x) for p, x in zip(scored, d, strict=True) if (x <= threshold) != p.same]
    for p, x in wrong:
        print(
            f"wrong at {threshold:.3f}: {p.file_x} vs {p.file_y} ({'same' if p.same else 'different'}, {x:.3f})"
        )
    no_face = sorted(f for f, e in embedding.items() if e is None)
    if no_face:
        print(f"no face found in: {', '.join(no_face)}")
    if args.set_threshold:
        print(f"stored threshold {stats['best_threshold']:.4f} for {model} in {args.gallery}")
    return 0
