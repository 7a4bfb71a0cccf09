"""Enrollment: photos -> checked faces -> gallery samples; and re-embedding a gallery for a model.

Transactions: all new photos of one person are written in one transaction, after every one of them
passed its checks. So `enroll NAME a.jpg b.jpg` adds both photos or neither, and `--from-dir`
commits person by person: a crash or kill keeps every person committed before it, whole, and
re-running the command skips what is already in (same file hash) and adds the rest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stream.errors import FacestreamError
from stream.gallery.crops import decode_crop, encode_crop, make_crop, to_crop_coords
from stream.gallery.quality import MIN_EYE_PX, MIN_SHARPNESS, quality_problem
from stream.gallery.store import Gallery, NewSample, validate_name
from stream.imageio import IMAGE_SUFFIXES, read_file

if TYPE_CHECKING:
    from stream.embedder import Embedder
    from stream.faces import Face, FaceAnalyzer


@dataclass
class EnrollOptions:
    largest: bool = False  # several faces: take the largest instead of refusing
    force: bool = False  # enroll faces that fail the size/blur checks
    keep_going: bool = False  # report a bad photo and go on instead of stopping
    min_eye_px: float = MIN_EYE_PX
    min_sharpness: float = MIN_SHARPNESS


@dataclass
class Outcome:
    name: str
    path: Path
    status: str  # "enrolled" | "skipped" | "failed"
    detail: str = ""

    def line(self) -> str:
        tail = f": {self.detail}" if self.detail else ""
        return f"{self.status} {self.name} <- {self.path}{tail}"


def face_size(face: Face) -> float:
    return float(max(face.box[2] - face.box[0], face.box[3] - face.box[1]))


def pick_face(
    faces: list[Face],
    path: Path,
    largest: bool,
    min_eye_px: float = MIN_EYE_PX,
    min_sharpness: float = MIN_SHARPNESS,
    force: bool = False,
) -> Face:
    """The one face of a photo to use. Faces too small or blurred to use do not count as "another
    person" (MTCNN finds face-like texture now and then; a tiny face far behind is not who the photo
    is of); with `force` every face counts. Several usable faces need `largest`."""
    if not faces:
        raise FacestreamError(f"{path}: no face found")
    faces = sorted(faces, key=face_size, reverse=True)
    problems = [
        quality_problem(f.landmarks, f.chip, min_eye_px, min_sharpness, f.box, f.score) for f in faces
    ]
    pool = faces if force else [f for f, p in zip(faces, problems, strict=True) if p is None]
    if not pool:
        raise FacestreamError(f"{path}: {problems[0]}; --force enrolls it anyway")
    if len(pool) > 1 and not largest:
        raise FacestreamError(f"{path}: {len(pool)} faces found; use a photo of one person, or --largest")
    return pool[0]


def photo_hash(path: Path) -> str:
    return hashlib.sha256(read_file(path)).hexdigest()


def prepare_sample(analyzer: FaceAnalyzer, path: Path, sha256: str, opts: EnrollOptions) -> NewSample:
    """Detects, checks and embeds the face of one photo; FacestreamError naming the file if unfit."""
    from stream.imageio import load_image

    frame = load_image(path)
    faces = analyzer.analyze([frame])[0]
    face = pick_face(faces, path, opts.largest, opts.min_eye_px, opts.min_sharpness, opts.force)
    crop, origin = make_crop(frame, face.box)
    return NewSample(
        source_sha256=sha256,
        source_name=path.name,
        box=[float(v) for v in face.box],
        landmarks=np.asarray(face.landmarks, np.float64),
        crop_image=encode_crop(crop),
        crop_origin=origin,
        embedding=np.asarray(face.embedding, np.float32),
    )


def enroll_person(
    gallery: Gallery,
    analyzer: FaceAnalyzer,
    name: str,
    paths: Iterable[Path],
    opts: EnrollOptions,
    report: Callable[[Outcome], None] = lambda o: None,
) -> list[Outcome]:
    """Checks every photo, then stores the new ones in one transaction."""
    validate_name(name)
    model = analyzer.embedder.name
    samples: list[NewSample] = []
    pending: list[Outcome] = []
    done: list[Outcome] = []
    seen: dict[str, Path] = {}

    def settle(o: Outcome) -> None:
        done.append(o)
        report(o)

    for path in paths:
        path = Path(path)
        try:
            sha = photo_hash(path)
            if sha in seen:
                settle(Outcome(name, path, "skipped", f"same photo as {seen[sha]}"))
                continue
            seen[sha] = path
            owner = gallery.find_source(sha)
            if owner is not None:
                settle(Outcome(name, path, "skipped", f"photo already enrolled (as {owner})"))
                continue
            samples.append(prepare_sample(analyzer, path, sha, opts))
            pending.append(Outcome(name, path, "enrolled"))
        except FacestreamError as e:
            if not opts.keep_going:
                raise
            settle(Outcome(name, path, "failed", str(e).removeprefix(f"{path}: ")))
    if samples:
        for o, sid in zip(pending, gallery.add_person(name, samples, model), strict=True):
            if sid is None:  # another process enrolled this photo meanwhile
                o.status, o.detail = "skipped", "photo already enrolled (by another process)"
            settle(o)
    return done


def collect_dir(root: Path) -> dict[str, list[Path]]:
    """root/<name>/*.jpg and root/<name>.jpg -> {name: photos}; names validated before any work."""
    if not root.is_dir():
        raise FacestreamError(f"{root}: not a folder")
    people: dict[str, list[Path]] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            photos = sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not photos:
                raise FacestreamError(f"{entry}: no photos in this person's folder")
            people.setdefault(entry.name, []).extend(photos)
        elif entry.suffix.lower() in IMAGE_SUFFIXES:
            people.setdefault(entry.stem, []).append(entry)
    if not people:
        raise FacestreamError(f"{root}: no <name>/ folders or <name>.jpg photos found")
    for name in people:
        try:
            validate_name(name)
        except FacestreamError as e:
            raise FacestreamError(f"{root / name}: {e}") from None
    return people


def rebuild(gallery: Gallery, embedder: Embedder, batch: int = 32) -> int:
    """Re-embeds every sample from its stored crop with `embedder`, replacing that model's vectors;
    one transaction at the end, so an interrupted rebuild changes nothing."""
    from stream.align import crop_faces

    vectors: dict[int, np.ndarray] = {}
    ids: list[int] = []
    chips: list[np.ndarray] = []

    def flush() -> None:
        if chips:
            emb = embedder.embed(np.stack(chips))
            vectors.update(zip(ids, emb, strict=True))
            ids.clear()
            chips.clear()

    for s in gallery.iter_samples():
        img = decode_crop(s.crop_image)
        box = to_crop_coords(np.asarray(s.box).reshape(2, 2), s.crop_origin).reshape(1, 4)
        lm = to_crop_coords(s.landmarks, s.crop_origin).reshape(1, 5, 2)
        chips.append(crop_faces(img, box, lm, embedder.crop_spec)[0])
        ids.append(s.id)
        if len(chips) >= batch:
            flush()
    flush()
    gallery.set_embeddings(embedder.name, vectors)
    return len(vectors)
