"""The identity benchmark's machinery (benchmarks/bench_identity.py, tests/pipeline/test_identity.py):
labelled clips built from still photos, each frame's faces detected, embedded and scored once, then
named by the match stage's own Namer and by a per-frame baseline, and scored against the truth.

A clip is a list of appearances: a photo's face (its box in the photo known) cut out with some
context and placed on a plain wall at a given face centre and height, moving linearly over its
frames, with motion blur or JPEG noise where the case asks. The truth of each frame is where each
pasted face is and who it is (None: a stranger), so scoring needs no hand labels.

Scores per case (`Scores`): wrong names (a face output with a name that is not the person's: a
stranger named, a person named as someone else, a non-face named), per-frame recall of enrolled
people, frames to first name (per appearance, counted from the first frame the face was detected),
identity switches (track changes within one appearance)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from stream.detections import Detections
from stream.gallery.tracking import iou_matrix
from stream.pipeline.follow import FollowSettings

if TYPE_CHECKING:
    from stream.faces import FaceAnalyzer
    from stream.pipeline.config import PipelineConfig

SIZE = (640, 360)
WALL = (58, 60, 62)
CONTEXT = 1.5  # the cut-out around a face: this many face boxes wide and high


@dataclass(frozen=True)
class Actor:
    person: str | None  # the enrolled name, None for a stranger
    photo: Path
    face: tuple[float, float, float, float]  # the face's box in the photo


@dataclass(frozen=True)
class Appearance:
    actor: Actor
    first: int  # frames [first, last] of the clip
    last: int
    start: tuple[float, float, float]  # face centre x, y and face height in the clip's frame
    end: tuple[float, float, float]
    blur: float = 0.0  # motion blur length in pixels (horizontal)


@dataclass(frozen=True)
class Case:
    name: str
    what: str  # in words, for the table
    frames: int
    appearances: tuple[Appearance, ...]
    jpeg: int | None = None  # JPEG quality every frame goes through
    clear: bool = True  # clear faces: the goal is a name in their first frame


@dataclass(frozen=True)
class Truth:
    person: str | None
    box: np.ndarray  # where the face is in the frame
    appearance: int  # index in the case's appearances
    visible: bool  # not mostly covered by a face pasted over it


def _pose(a: Appearance, f: int) -> tuple[float, float, float]:
    t = 0.0 if a.last == a.first else (f - a.first) / (a.last - a.first)
    s, e = np.asarray(a.start, np.float64), np.asarray(a.end, np.float64)
    x, y, h = s + (e - s) * t
    return float(x), float(y), float(h)


def render(case: Case, photos: dict[Path, np.ndarray]) -> list[tuple[np.ndarray, list[Truth]]]:
    """Every frame (RGB) of the case with its truth. photos: RGB images by path."""
    out = []
    for f in range(case.frames):
        frame = np.empty((SIZE[1], SIZE[0], 3), np.uint8)
        frame[:] = WALL
        truth: list[Truth] = []
        patches: list[np.ndarray] = []
        for k, a in enumerate(case.appearances):
            if not a.first <= f <= a.last:
                continue
            fx, fy, fh = _pose(a, f)
            box, patch = _paste(frame, photos[a.actor.photo], a.actor.face, fx, fy, fh, a.blur)
            truth.append(Truth(a.actor.person, box, k, True))
            patches.append(patch)
        # A face mostly covered by a later paste is not visible (recall does not count it).
        for i, t in enumerate(truth):
            covered = max((_covered(t.box, p) for p in patches[i + 1 :]), default=0.0)
            if covered > 0.3:
                truth[i] = Truth(t.person, t.box, t.appearance, False)
        if case.jpeg is not None:
            ok, buf = cv2.imencode(".jpg", frame[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, case.jpeg])
            back = cv2.imdecode(buf, cv2.IMREAD_COLOR)
            assert ok and back is not None
            frame = np.ascontiguousarray(back[:, :, ::-1])
        out.append((frame, truth))
    return out


def _covered(box: np.ndarray, patch: np.ndarray) -> float:
    x1, y1 = max(box[0], patch[0]), max(box[1], patch[1])
    x2, y2 = min(box[2], patch[2]), min(box[3], patch[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return float(inter / max((box[2] - box[0]) * (box[3] - box[1]), 1e-9))


def _paste(
    frame: np.ndarray,
    photo: np.ndarray,
    face: tuple[float, float, float, float],
    fx: float,
    fy: float,
    fh: float,
    blur: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste the face's surroundings so that the face is centred at (fx, fy), fh high; returns the
    face box and the pasted region in frame coordinates."""
    x1, y1, x2, y2 = face
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    scale = fh / h
    half_w, half_h = CONTEXT * w / 2, CONTEXT * h / 2
    sx1, sy1 = max(0, int(cx - half_w)), max(0, int(cy - half_h))
    sx2, sy2 = min(photo.shape[1], int(cx + half_w)), min(photo.shape[0], int(cy + half_h))
    crop = photo[sy1:sy2, sx1:sx2]
    small = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    if blur >= 2:
        k = np.zeros((1, int(blur) | 1), np.float32)
        k[:] = 1.0 / k.size
        small = cv2.filter2D(small, -1, k)
    ox, oy = int(round(fx - (cx - sx1) * scale)), int(round(fy - (cy - sy1) * scale))
    H, W = frame.shape[:2]
    dx1, dy1 = max(ox, 0), max(oy, 0)
    dx2, dy2 = min(ox + small.shape[1], W), min(oy + small.shape[0], H)
    if dx2 > dx1 and dy2 > dy1:
        frame[dy1:dy2, dx1:dx2] = small[dy1 - oy : dy2 - oy, dx1 - ox : dx2 - ox]
    box = np.array([fx - w * scale / 2, fy - fh / 2, fx + w * scale / 2, fy + fh / 2])
    return box, np.array([dx1, dy1, dx2, dy2], np.float64)


# ----- the cases ----------------------------------------------------------------------------------------
def cases(cast: dict[str, Actor], n: int = 30) -> list[Case]:
    """The benchmark's cases from a cast: enrolled "A", "B", "C" (photos other than their enrollment's)
    and strangers "S1", "S2", "S3"; n frames per shot (the tests use fewer)."""
    A, B, C, S1, S2, S3 = (cast[k] for k in ("A", "B", "C", "S1", "S2", "S3"))
    half = n // 2
    return [
        Case(
            "hard_cut",
            "A, then a hard cut to B at the same place",
            2 * n,
            (
                Appearance(A, 0, n - 1, (320, 170, 130), (330, 175, 140)),
                Appearance(B, n, 2 * n - 1, (330, 175, 140), (320, 170, 150)),
            ),
        ),
        Case(
            "crossing",
            "A and B walk past each other, faces overlapping",
            n,
            (
                Appearance(A, 0, n - 1, (120, 150, 90), (520, 150, 90)),
                Appearance(B, 0, n - 1, (520, 200, 90), (120, 200, 90)),
            ),
        ),
        Case(
            "leave_return",
            "A leaves for 10 frames and comes back elsewhere",
            n + 10,
            (
                Appearance(A, 0, half - 1, (180, 180, 110), (220, 180, 110)),
                Appearance(A, half + 10, n + 9, (460, 170, 100), (420, 180, 110)),
            ),
        ),
        Case(
            "with_strangers",
            "C between two strangers",
            n,
            (
                Appearance(S1, 0, n - 1, (110, 180, 90), (130, 175, 95)),
                Appearance(C, 0, n - 1, (320, 170, 100), (320, 180, 105)),
                Appearance(S2, 0, n - 1, (530, 180, 90), (510, 185, 95)),
            ),
        ),
        Case(
            "stranger_only",
            "a stranger alone",
            n,
            (Appearance(S3, 0, n - 1, (300, 180, 120), (340, 175, 130)),),
        ),
        Case(
            "tiny_face",
            "A with a 32 px face",
            n,
            (Appearance(A, 0, n - 1, (300, 180, 32), (340, 180, 32)),),
            clear=False,
        ),
        Case(
            "blur_jpeg",
            "B moving fast: 9 px motion blur, JPEG quality 25",
            n,
            (Appearance(B, 0, n - 1, (150, 180, 110), (490, 180, 110), blur=9),),
            jpeg=25,
            clear=False,
        ),
    ]


# ----- faces of each frame ----------------------------------------------------------------------------
@dataclass
class FrameFaces:
    """One frame's faces as the match stage receives them (embedded, with quality) and the frame's
    change score (capture's)."""

    dets: Detections
    change: float | None
    every: np.ndarray | None = None  # every face embedded afresh (the per-frame baseline's evidence)


def embed_frames(
    analyzer: FaceAnalyzer,
    frames: Sequence[np.ndarray],
    follow: FollowSettings | None = None,
    cut_change: float = 0.1,
) -> list[FrameFaces]:
    """Detect, score, drop non-faces and embed, like the detect and embed stages (with `follow`: only
    the faces the embed stage would embed afresh, stream/pipeline/follow.py); and the change score
    like capture."""
    from stream.gallery.quality import assess_faces
    from stream.pipeline.follow import Follow
    from stream.pipeline.scenecut import SceneChange

    scene = SceneChange()
    carry = Follow(follow or FollowSettings(max_age=0))
    dim = analyzer.embedder.dim
    out = []
    for frame in frames:
        change = scene.measure(frame)
        scene.sent()
        d = analyzer.detect([frame])[0]
        reused = np.zeros(0, bool)
        if len(d):
            chips = analyzer.embedder.crop(frame, d)
            quality, keep = assess_faces(d.boxes, d.scores, d.landmarks, chips)
            d, chips = d[keep].with_columns(quality=quality[keep]), chips[keep]
            cut = change is not None and change >= cut_change
            sources = carry.assign("clip", d.boxes, quality[keep], chips, cut)
            every = (
                np.asarray(analyzer.embedder.embed(chips), np.float32)
                if len(chips)
                else np.zeros((0, dim), np.float32)
            )
            emb_fresh = every[[i for i, src in enumerate(sources) if isinstance(src, int)]]
            carry.resolve(emb_fresh)
            emb = Follow.embeddings(sources, emb_fresh, dim)
            reused = Follow.reused(sources)
        else:
            d, emb = d.with_columns(quality=np.zeros(0, np.float32)), np.zeros((0, dim), np.float32)
            every = emb
        out.append(
            FrameFaces(d.with_columns(embeddings=np.asarray(emb, np.float32), reused=reused), change, every)
        )
    return out


def follow_settings(cfg: PipelineConfig) -> FollowSettings:
    """The embed stage's settings for carrying embeddings over (config embed.follow)."""
    f = cfg.embed.follow
    return FollowSettings(f.max_age, f.min_iou, f.min_quality, f.quality_gain, f.max_chip_change)


def embeddings_saved(frames: Sequence[FrameFaces]) -> tuple[int, int]:
    """(faces, embeddings carried over instead of computed)."""
    faces = sum(len(ff.dets) for ff in frames)
    carried = sum(int(ff.dets.reused.sum()) for ff in frames if ff.dets.reused is not None)
    return faces, carried


# ----- naming -------------------------------------------------------------------------------------------
@dataclass
class Named:
    box: np.ndarray
    name: str | None
    track: int | None
    distance: float


def name_tracked(cfg: PipelineConfig, frames: Sequence[FrameFaces], fps: float = 25.0) -> list[list[Named]]:
    """The match stage's Namer (tracks, margins, quality gate, scene cuts) over the frames."""
    from stream.pipeline import wire
    from stream.pipeline.stages.match import Namer

    namer = Namer(cfg)
    out = []
    for i, ff in enumerate(frames):
        msg = wire.Faces(cam="bench", seq=i, pts=i / fps, dets=ff.dets, change=ff.change)
        result, _ = namer.name(msg)
        d = result.dets
        assert d.names is not None and d.tracks is not None and d.distances is not None
        out.append(
            [Named(d.boxes[j], d.names[j], int(d.tracks[j]), float(d.distances[j])) for j in range(len(d))]
        )
    if namer.matcher is not None:
        namer.matcher.close()
    return out


def name_per_frame(cfg: PipelineConfig, frames: Sequence[FrameFaces]) -> list[list[Named]]:
    """The baseline: each face named by its own nearest person within the threshold, no tracking."""
    from stream.gallery.matcher import Matcher

    assert cfg.gallery is not None
    matcher = Matcher(cfg.gallery, cfg.model, cfg.match.threshold)
    out = []
    for ff in frames:
        emb = ff.every if ff.every is not None else ff.dets.embeddings
        matches = matcher.match(emb) if emb is not None and len(emb) else []
        out.append([Named(ff.dets.boxes[j], m.name, None, m.distance) for j, m in enumerate(matches)])
    matcher.close()
    return out


# ----- scores -------------------------------------------------------------------------------------------
@dataclass
class Scores:
    wrong: int = 0  # faces output with a name that is not theirs
    known: int = 0  # visible faces of enrolled people (the recall's denominator)
    named: int = 0  # of those, output with their own name
    to_name: list[int | None] = field(default_factory=list)  # per appearance of an enrolled person
    # Track changes within one appearance, plus tracks that carried two people (tracked only).
    switches: int = 0

    @property
    def recall(self) -> float:
        return self.named / self.known if self.known else math.nan

    @property
    def first_name(self) -> str:
        """Frames to first name per appearance, as "1", "1/3", "-" (never named)."""
        return "/".join("-" if x is None else str(x) for x in self.to_name) or "n/a"


def score(case: Case, truth: Sequence[Sequence[Truth]], named: Sequence[Sequence[Named]]) -> Scores:
    s = Scores()
    detected_at: dict[int, int] = {}  # appearance -> first frame its face was detected
    first_named: dict[int, int] = {}
    tracks: dict[int, list[int]] = {}
    for f, (tr, faces) in enumerate(zip(truth, named, strict=True)):
        owner = _assign(tr, faces)
        for j, face in enumerate(faces):
            t = owner.get(j)
            person = t.person if t is not None else None
            if face.name is not None and face.name != person:
                s.wrong += 1
            if t is None:
                continue
            detected_at.setdefault(t.appearance, f)
            if face.track is not None:
                tracks.setdefault(t.appearance, []).append(face.track)
            if person is not None and face.name == person:
                first_named.setdefault(t.appearance, f)
        hit = {t.appearance for j, t in owner.items() if t.person is not None and faces[j].name == t.person}
        for t in tr:
            if t.person is not None and t.visible:
                s.known += 1
                s.named += t.appearance in hit
    for k, a in enumerate(case.appearances):
        if a.actor.person is None:
            continue
        if k in first_named:
            s.to_name.append(first_named[k] - detected_at[k] + 1)
        else:
            s.to_name.append(None)
    for ids in tracks.values():
        s.switches += sum(1 for x, y in zip(ids, ids[1:], strict=False) if x != y)
    who: dict[int, set[object]] = {}  # track -> the people it carried (each stranger is their own)
    for k, ids in tracks.items():
        person = case.appearances[k].actor.person or f"stranger {case.appearances[k].actor.photo}"
        for tid in ids:
            who.setdefault(tid, set()).add(person)
    s.switches += sum(len(p) - 1 for p in who.values())
    return s


def _assign(truth: Sequence[Truth], faces: Sequence[Named]) -> dict[int, Truth]:
    """Output face index -> the true face it is (IoU >= 0.3, best pairs first)."""
    if not truth or not faces:
        return {}
    iou = iou_matrix(np.stack([f.box for f in faces]), np.stack([t.box for t in truth]))
    out: dict[int, Truth] = {}
    used: set[int] = set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        j, k = divmod(int(flat), len(truth))
        if iou[j, k] < 0.3:
            break
        if j not in out and k not in used:
            out[j] = truth[k]
            used.add(k)
    return out


def own_evidence_violations(named: Sequence[Sequence[Named]], threshold: float) -> int:
    """Faces output with a name although their own distance is over the threshold (goal: 0)."""
    return sum(1 for faces in named for f in faces if f.name is not None and f.distance > threshold)


# ----- the shared data's cast ---------------------------------------------------------------------------
ENROLL = {  # one photo each, as a new user enrolls
    "obama": "faces/face_recognition/knn_examples/train/obama/obama.jpg",
    "alex_lacamoire": "faces/face_recognition/knn_examples/train/alex_lacamoire/img1.jpg",
    "kit_harington": "faces/face_recognition/knn_examples/train/kit_harington/john1.jpeg",
    "biden": "faces/face_recognition/knn_examples/train/biden/biden.jpg",
    "rose_leslie": "faces/face_recognition/knn_examples/train/rose_leslie/img1.jpg",
}
CAST = {  # other photos of the enrolled (A, B, C) and people never enrolled (S1-S3)
    "A": ("obama", "faces/face_recognition/knn_examples/test/obama1.jpg"),
    "B": ("alex_lacamoire", "faces/face_recognition/knn_examples/test/alex_lacamoire1.jpg"),
    "C": ("kit_harington", "faces/face_recognition/knn_examples/test/johnsnow_test1.jpg"),
    "S1": (None, "faces/facenet-pytorch/test_images/angelina_jolie/1.jpg"),
    "S2": (None, "faces/facenet-pytorch/test_images/paul_rudd/1.jpg"),
    "S3": (None, "faces/facenet-pytorch/test_images/kate_siegel/1.jpg"),
}


def shared_cast(data: Path) -> tuple[dict[str, Path], dict[str, Actor]]:
    """(photos to enroll by name, the cast) from the shared data; each actor's face box is the
    largest face of the reference MTCNN detections of its photo."""
    import json

    ref = json.loads((data / "reference/mtcnn/detections.json").read_text())["images"]
    cast = {}
    for key, (person, rel) in CAST.items():
        boxes = [f["box"] for f in ref[rel]]
        x1, y1, x2, y2 = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
        cast[key] = Actor(person, data / rel, (x1, y1, x2, y2))
    return {name: data / rel for name, rel in ENROLL.items()}, cast


def load_photos(cast: dict[str, Actor]) -> dict[Path, np.ndarray]:
    from stream.imageio import load_image

    return {a.photo: load_image(a.photo) for a in cast.values()}


def enroll_gallery(analyzer: FaceAnalyzer, photos: dict[str, Path], path: Path) -> None:
    """One photo per person, through the enrollment code (its quality gate included)."""
    from stream.gallery.enroll import EnrollOptions, enroll_person
    from stream.gallery.store import Gallery

    with Gallery.open(path, create=True) as gallery:
        for name, photo in photos.items():
            enroll_person(gallery, analyzer, name, [photo], EnrollOptions(largest=True))
