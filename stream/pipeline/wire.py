"""The wire schema: the only place messages are defined, built into headers, parsed and checked.

Each message kind is a small dataclass (below): `Frame` (capture -> detect), `Dets` (detect ->
embed), `Faces` (embed -> match), `Result` (match -> sink and the results PUB), `EndOfStream` (a
camera's end, through the pipeline), `Event` (camera and track events) and `CaptureGone` (supervisor
-> sink: a capture process exited). The four frame kinds share `FrameMessage` (pixels and what capture
says about the frame); the last three of them carry the frame's faces as one `Detections`
(stream/detections.py), converted to and from arrays here. Stages read typed fields, never header keys.

A message is multipart: part 0 is a msgpack map (the header), then one raw buffer per array,
in the order the header's `arrays` lists them. Arrays travel as their bytes (sent copy=False), never
pickled. `decode` validates everything a peer could get wrong and raises WireError; stages count
and drop such messages. Whether a well-formed message can be true of this run (its camera, who sent an
end-of-stream, where a frame reference points) is checked where it is received: trust.py.

Header keys: v, kind, cam, seq, shape, dtype (of the frame pixels, or None), t (stage -> monotonic
ns), wall (capture time, Unix s), arrays ([name, dtype, shape] of each further buffer: the kind's
detection columns), meta (the kind's own fields, exactly those, each of its type: see _KIND_META), ref
(None, or where the frame's pixels are on this host: {"ring": file name, "slot": n} -- see
framering.py; the pixels then do not travel, shape and dtype still describe them, and the slot must
hold this message's seq)."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

import msgpack
import numpy as np

from stream.detections import Detections

VERSION = 7  # 2: typed meta per kind, result faces as arrays (+ names), the capture-gone kind
# 3: face quality (faces, result), candidates (result), the frame's change score; 4: eos origin;
# 5: faces say which embeddings were carried over (reused);
# 6: unknowns (result): the unknown identity of each face of an unknown track;
# 7: liveness: faces carry the eye aspect ratio (eyes), results each face's track's liveness


class Kind(StrEnum):
    """The message kinds, one dataclass each (below)."""

    FRAME = "frame"  # capture -> detect: pixels
    DETS = "dets"  # detect -> embed: pixels + boxes, scores, landmarks
    FACES = "faces"  # embed -> match: (pixels) + boxes, scores, landmarks, embeddings, quality
    RESULT = "result"  # match -> sinks / results PUB: (pixels) + faces with tracks, names, candidates, ...
    EOS = "eos"  # end of one camera's stream, sent by its capture through the pipeline
    EVENT = "event"  # camera up/down, track events
    GONE = "gone"  # supervisor -> sink: a camera's capture process has exited (its EOS may never come)


# Short names, as the stages use them.
FRAME, DETS, FACES, RESULT = Kind.FRAME, Kind.DETS, Kind.FACES, Kind.RESULT
EOS, EVENT, GONE = Kind.EOS, Kind.EVENT, Kind.GONE
KINDS = frozenset(Kind)

# Stage stamps, in pipeline order. Latency is only ever computed between these monotonic stamps.
STAMPS = ("capture", "detect_in", "detect_out", "embed_in", "embed_out", "match_out")

_DTYPES = {"uint8": np.uint8, "float32": np.float32, "int32": np.int32, "float64": np.float64}
_MAX_DIMS = 4
_MAX_ELEMENTS = 1 << 28  # 256 M elements: refuse absurd shapes before allocating anything
_RING_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")  # a file name, never a path
_MAX_SLOT = 1 << 16
_MAX_ORIGIN = 128  # an eos origin is a token (trust.py), never a long string


class WireError(ValueError):
    """A message that does not follow this schema (or another version of it)."""


@dataclass(frozen=True)
class FrameRef:
    """Where a frame's pixels are on this host: slot `slot` of ring file `ring` (framering.py)."""

    ring: str
    slot: int
    shape: tuple[int, int, int]


# ----- the messages ---------------------------------------------------------------------------------
@dataclass(kw_only=True)
class Message:
    """What every message carries: the camera, the frame counter and the monotonic stage stamps."""

    KIND: ClassVar[Kind]
    cam: str
    seq: int
    t: dict[str, int] = field(default_factory=dict)
    wall: float = 0.0  # capture time (Unix s)

    @property
    def kind(self) -> Kind:
        return self.KIND

    def stamp(self, name: str) -> None:
        """Record that this message passed `name` now (monotonic ns, comparable on one host only)."""
        self.t[name] = time.monotonic_ns()


@dataclass(kw_only=True)
class FrameMessage(Message):
    """A frame on its way through the pipeline: its pixels (inline, or a ring reference) and what
    capture and the stages say about it. Base of Frame, Dets, Faces and Result."""

    frame: np.ndarray | None = None  # H x W x 3 RGB uint8 (with a ref: a view of the ring slot)
    ref: FrameRef | None = None  # pixels in a shared-memory ring: sent instead of them
    fps: float | None = None  # the source's frame rate (the recorder's)
    pts: float | None = None  # the frame's time in the video (files); tracking uses wall time without
    live: bool = False  # latest-frame semantics: a busy detector may skip to a newer frame
    skipped: int = 0  # frames of this camera dropped just before this one (the sink's accounting)
    error: str | None = None  # what went wrong with this frame (its faces are then empty)
    # How much the whole picture changed since the camera's previous frame (0..1, capture's
    # stream.pipeline.stages.capture.change_score); None: not measured (first frame). A scene cut
    # ends the camera's tracks.
    change: float | None = None

    @property
    def has_pixels(self) -> bool:
        return self.frame is not None or self.ref is not None

    def to(self, cls: type[F], **changes: Any) -> F:
        """This frame as the next kind (Frame -> Dets -> Faces -> Result): same header and pixels."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return cls(**values)


@dataclass(kw_only=True)
class Frame(FrameMessage):
    KIND = Kind.FRAME


@dataclass(kw_only=True)
class Detected(FrameMessage):
    """A frame with its faces: one Detections, filled in column by column along the pipeline."""

    dets: Detections = field(default_factory=Detections.empty)


@dataclass(kw_only=True)
class Dets(Detected):
    KIND = Kind.DETS


@dataclass(kw_only=True)
class Faces(Detected):
    KIND = Kind.FACES  # dets.embeddings, quality set


@dataclass(kw_only=True)
class Result(Detected):
    KIND = Kind.RESULT  # dets.tracks, names, candidates, distances, quality set


@dataclass(kw_only=True)
class EndOfStream(Message):
    """The end of one camera's stream; seq = frames sent before it (seq 0..sent-1 at most)."""

    KIND = Kind.EOS
    read: int = 0  # frames the source delivered
    dropped: dict[str, int] = field(default_factory=dict)  # capture's drops by reason
    error: str | None = None  # why the source failed, if it did
    ring: str | None = None  # the camera's ring file (readers mark the end taken there)
    skipped: int = 0  # frames dropped by stages after the camera's last frame that went on
    origin: str | None = None  # the capture process's token from its supervisor (trust.py)

    @property
    def sent(self) -> int:
        return self.seq


@dataclass(kw_only=True)
class Event(Message):
    KIND = Kind.EVENT
    event: dict[str, Any] = field(default_factory=dict)  # written as one --events JSON line


@dataclass(kw_only=True)
class CaptureGone(Message):
    """Supervisor -> sink: this camera's capture process exited. Normally its own end-of-stream comes
    through the pipeline; when it cannot (capture killed), the sink ends the camera once it is quiet."""

    KIND = Kind.GONE
    error: str | None = None


F = TypeVar("F", bound=FrameMessage)
_CLASSES: dict[Kind, type[Message]] = {
    c.KIND: c for c in (Frame, Dets, Faces, Result, EndOfStream, Event, CaptureGone)
}


def frame_message(
    cam: str,
    seq: int,
    frame: np.ndarray | None,
    ref: FrameRef | None = None,
    *,
    fps: float | None = None,
    pts: float | None = None,
    live: bool = False,
    change: float | None = None,
) -> Frame:
    """A fresh frame as capture emits it: stamped `capture` now, wall clock for the outputs. With
    `ref` the pixels are in a ring slot and only the reference travels."""
    msg = Frame(
        cam=cam, seq=seq, wall=time.time(), frame=frame, ref=ref, fps=fps, pts=pts, live=live, change=change
    )
    msg.stamp("capture")
    return msg


def eos_message(
    cam: str,
    sent: int,
    *,
    read: int = 0,
    dropped: dict[str, int] | None = None,
    error: str | None = None,
    ring: str | None = None,
    origin: str | None = None,
) -> EndOfStream:
    """End of a camera's stream: `sent` frames went out before it (seq 0..sent-1 at most). `origin`:
    the token the supervisor gave this capture process (trust.py), which the readers check."""
    return EndOfStream(
        cam=cam,
        seq=sent,
        wall=time.time(),
        read=read,
        dropped=dropped or {},
        error=error,
        ring=ring,
        origin=origin,
    )


def event_message(cam: str, event: dict[str, Any]) -> Event:
    return Event(cam=cam, seq=0, wall=time.time(), event=event)


# ----- detections on the wire and in the outputs ----------------------------------------------------
# The arrays each kind carries, with dtype and shape after the face count (None: any width).
_Spec = tuple[str, tuple[int, ...] | None]
_DETECTOR: dict[str, _Spec] = {
    "boxes": ("float32", (4,)),
    "scores": ("float32", ()),
    "landmarks": ("float32", (5, 2)),
}
_KIND_ARRAYS: dict[Kind, dict[str, _Spec]] = {
    Kind.DETS: _DETECTOR,
    Kind.FACES: {
        **_DETECTOR,
        "embeddings": ("float32", None),
        "quality": ("float32", ()),
        "reused": ("uint8", ()),
        "eyes": ("float32", ()),
    },
    Kind.RESULT: {
        **_DETECTOR,
        "tracks": ("int32", ()),
        "distances": ("float64", ()),
        "quality": ("float32", ()),
    },
}


def detections_to_wire(dets: Detections, kind: Kind) -> dict[str, np.ndarray]:
    """The arrays of `kind` (see _KIND_ARRAYS) from a Detections; a missing column is an error."""
    out: dict[str, np.ndarray] = {}
    for name, (dtype, _) in _KIND_ARRAYS[kind].items():
        col = getattr(dets, name)
        if col is None and name == "reused":  # not said: every embedding is fresh
            col = np.zeros(len(dets), np.uint8)
        if col is None and name == "eyes":  # not measured (the camera does not ask for liveness)
            col = np.full(len(dets), np.nan, np.float32)
        if col is None:
            if len(dets):
                raise WireError(f"{kind}: detections without {name}")
            col = np.zeros((0, 0) if name == "embeddings" else (0,), dtype)
        try:
            out[name] = np.asarray(col, dtype)
        except (TypeError, ValueError):
            raise WireError(
                f"{kind}: {name} of dtype {np.asarray(col).dtype} cannot travel as {dtype}"
            ) from None
    return out


def detections_from_wire(
    arrays: dict[str, np.ndarray],
    names: list[str | None] | None = None,
    candidates: list[str | None] | None = None,
    unknowns: list[str | None] | None = None,
    liveness: list[str | None] | None = None,
) -> Detections:
    """A Detections viewing the received arrays (validated by decode)."""
    return Detections(
        arrays["boxes"],
        arrays["scores"],
        arrays["landmarks"],
        arrays.get("embeddings"),
        arrays.get("tracks"),
        names,
        arrays.get("distances"),
        arrays.get("quality"),
        candidates,
        None if arrays.get("reused") is None else arrays["reused"].astype(bool),
        unknowns,
        arrays.get("eyes"),
        liveness,
    )


def faces_json(dets: Detections) -> list[dict[str, Any]]:
    """The `faces` of a `run --out` line (README, "Output fields"): box, score, landmarks (rounded),
    track, name (the decision), candidate and distance (this face's own nearest person; both None
    when there is no one to be near), quality, liveness (of the face's track: live | not_live |
    unknown; None where the camera does not ask)."""
    n = len(dets)
    tracks: list[Any] = dets.tracks.tolist() if dets.tracks is not None else [None] * n
    names = dets.names if dets.names is not None else [None] * n
    cands = dets.candidates if dets.candidates is not None else [None] * n
    unknowns = dets.unknowns if dets.unknowns is not None else [None] * n
    distances = dets.distances if dets.distances is not None else np.full(n, np.inf)
    quality: list[Any] = dets.quality.tolist() if dets.quality is not None else [None] * n
    live = dets.liveness if dets.liveness is not None else [None] * n
    return [
        {
            "box": [round(float(x), 2) for x in dets.boxes[i]],
            "score": round(float(dets.scores[i]), 5),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in dets.landmarks[i]],
            "track": None if tracks[i] is None else int(tracks[i]),
            "name": names[i],
            "candidate": cands[i] if math.isfinite(distances[i]) else None,
            "unknown": unknowns[i],
            "distance": round(float(distances[i]), 5) if math.isfinite(distances[i]) else None,
            "quality": None if quality[i] is None or not math.isfinite(quality[i]) else round(quality[i], 3),
            "liveness": live[i],
        }
        for i in range(n)
    ]


# ----- encode / decode ------------------------------------------------------------------------------
def _meta(msg: Message) -> dict[str, Any]:
    """The kind's own fields (everything but the envelope, the pixels and the detections)."""
    skip = {"cam", "seq", "t", "wall", "frame", "ref", "dets"}
    meta = {f.name: getattr(msg, f.name) for f in fields(msg) if f.name not in skip}
    if isinstance(msg, Result):
        meta["names"] = msg.dets.names if msg.dets.names is not None else [None] * len(msg.dets)
        cands = msg.dets.candidates
        meta["candidates"] = cands if cands is not None else [None] * len(msg.dets)
        unk = msg.dets.unknowns
        meta["unknowns"] = unk if unk is not None else [None] * len(msg.dets)
        live = msg.dets.liveness
        meta["liveness"] = live if live is not None else [None] * len(msg.dets)
    return meta


def encode(msg: Message) -> list[Any]:
    """Header bytes followed by the raw buffers (contiguous arrays; zmq sends them without copies)."""
    buffers: list[np.ndarray] = []
    shape = dtype = ref = None
    if isinstance(msg, FrameMessage):
        if msg.ref is not None:  # the pixels stay in the ring; msg.frame (a view of it) is not sent
            shape, dtype = list(msg.ref.shape), "uint8"
            ref = {"ring": msg.ref.ring, "slot": msg.ref.slot}
        elif msg.frame is not None:
            frame = _contiguous(msg.frame)
            shape, dtype = list(frame.shape), frame.dtype.name
            buffers.append(frame)
    arrays = detections_to_wire(msg.dets, msg.kind) if isinstance(msg, Detected) else {}
    specs = []
    for name, arr in arrays.items():
        arr = _contiguous(arr)
        specs.append([name, arr.dtype.name, list(arr.shape)])
        buffers.append(arr)
    header = {
        "v": VERSION,
        "kind": msg.kind.value,
        "cam": msg.cam,
        "seq": msg.seq,
        "shape": shape,
        "dtype": dtype,
        "t": msg.t,
        "wall": msg.wall,
        "arrays": specs,
        "meta": _meta(msg),
    }
    if ref is not None:
        header["ref"] = ref
    return [msgpack.packb(header, use_bin_type=True), *buffers]


def _contiguous(arr: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(arr)
    if arr.dtype.name not in _DTYPES:
        raise WireError(f"dtype {arr.dtype} cannot travel on the wire")
    return arr


def decode(parts: Sequence[Any]) -> Message:
    """Parts as received (zmq.Frame, bytes or memoryview) -> the kind's Message; arrays view the
    buffers. Every field is checked here, so that stages read typed fields without further checks."""
    if not parts:
        raise WireError("empty message")
    try:
        header = msgpack.unpackb(_bytes(parts[0]), raw=False, strict_map_key=True)
    except Exception as e:  # noqa: BLE001 - msgpack raises several unrelated types
        raise WireError(f"header is not msgpack: {type(e).__name__}") from None
    if not isinstance(header, dict):
        raise WireError("header is not a map")
    v = header.get("v")
    if v != VERSION:
        raise WireError(f"schema version {v!r}, this build speaks {VERSION}")
    kind_name = _field(header, "kind", str)
    if kind_name not in KINDS:
        raise WireError(f"unknown kind {kind_name!r}")
    kind = Kind(kind_name)
    cam = _field(header, "cam", str)
    seq = _field(header, "seq", int)
    if seq < 0:
        raise WireError(f"negative seq {seq}")
    t = _field(header, "t", dict)
    if not all(isinstance(k, str) and isinstance(x, int) for k, x in t.items()):
        raise WireError("t must map stage names to integer ns")
    wall = float(_field(header, "wall", (int, float)))
    meta = _field(header, "meta", dict)
    specs = _field(header, "arrays", list)
    bufs = list(parts[1:])

    frame = ref = None
    if header.get("ref") is not None:
        ref = _ref(header["ref"], header.get("shape"), header.get("dtype"))
    elif header.get("shape") is not None:
        if not bufs:
            raise WireError("header has a frame shape but no pixel buffer")
        frame = _array(bufs.pop(0), header.get("dtype"), header["shape"], "frame")
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise WireError(f"frame must be H x W x 3 uint8, got {frame.dtype} {frame.shape}")
    if len(specs) != len(bufs):
        raise WireError(f"header lists {len(specs)} arrays, message has {len(bufs)} buffers")
    arrays = {}
    for spec, buf in zip(specs, bufs, strict=True):
        if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str)):
            raise WireError("array spec must be [name, dtype, shape]")
        arrays[spec[0]] = _array(buf, spec[1], spec[2], spec[0])
    cls = _CLASSES[kind]
    fields_ = {"cam": cam, "seq": seq, "t": t, "wall": wall, **_kind_meta(kind, meta)}
    if issubclass(cls, FrameMessage):
        if kind in (Kind.FRAME, Kind.DETS) and frame is None and ref is None:
            raise WireError(f"{kind} message without pixels")
        fields_.update(frame=frame, ref=ref)
    elif frame is not None or ref is not None:
        raise WireError(f"{kind} message with pixels")
    if issubclass(cls, Detected):
        names = fields_.pop("names", None)
        cands = fields_.pop("candidates", None)
        unk = fields_.pop("unknowns", None)
        live = fields_.pop("liveness", None)
        try:
            fields_["dets"] = detections_from_wire(_kind_arrays(kind, arrays), names, cands, unk, live)
        except ValueError as e:  # names that disagree with the arrays on the number of faces
            raise WireError(f"{kind}: {e}") from None
    elif arrays:
        raise WireError(f"{kind} message with arrays")
    return cls(**fields_)


def _kind_arrays(kind: Kind, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays `kind` must carry, all present, of their dtypes and agreeing on the face count."""
    want = _KIND_ARRAYS[kind]
    if set(arrays) != set(want):
        raise WireError(f"{kind}: arrays {sorted(arrays)}, expected {sorted(want)}")
    n = None
    for name, (dtype, tail) in want.items():
        arr = arrays[name]
        if arr.dtype != np.dtype(_DTYPES[dtype]) or arr.ndim < 1:
            raise WireError(f"{kind}: {dtype} array {name!r} missing")
        if tail is not None and arr.shape[1:] != tail:
            raise WireError(f"{kind}: {name} has shape {arr.shape}")
        if tail is None and arr.ndim != 2:
            raise WireError(f"{kind}: {name} must be 2-d")
        if n is not None and arr.shape[0] != n:
            raise WireError(f"{kind}: arrays disagree on the number of faces")
        n = arr.shape[0]
    return arrays


_FRAME_META: dict[str, Any] = {
    "fps": (int, float, type(None)),
    "pts": (int, float, type(None)),
    "live": bool,
    "skipped": int,
    "error": (str, type(None)),
    "change": (int, float, type(None)),
}
_LIVENESS = ("live", "not_live", "unknown", None)  # stream.liveness.judge.VERDICTS, or not asked
_KIND_META: dict[Kind, dict[str, Any]] = {
    Kind.FRAME: _FRAME_META,
    Kind.DETS: _FRAME_META,
    Kind.FACES: _FRAME_META,
    Kind.RESULT: {**_FRAME_META, "names": list, "candidates": list, "unknowns": list, "liveness": list},
    Kind.EOS: {
        "read": int,
        "dropped": dict,
        "error": (str, type(None)),
        "ring": (str, type(None)),
        "skipped": int,
        "origin": (str, type(None)),
    },
    Kind.EVENT: {"event": dict},
    Kind.GONE: {"error": (str, type(None))},
}


def _kind_meta(kind: Kind, meta: dict[str, Any]) -> dict[str, Any]:
    """The kind's typed fields from the header's meta map: exactly its keys, each of its type."""
    want = _KIND_META[kind]
    if set(meta) != set(want):
        raise WireError(f"{kind}: meta keys {sorted(meta)}, expected {sorted(want)}")
    for key, types in want.items():
        value = meta[key]
        if not isinstance(value, types) or (isinstance(value, bool) and types is not bool):
            raise WireError(f"{kind}: meta {key!r} of the wrong type")
    for key in ("skipped", "read"):
        if meta.get(key, 0) < 0:
            raise WireError(f"{kind}: negative {key}")
    if kind == Kind.EOS and not all(
        isinstance(k, str) and isinstance(x, int) and not isinstance(x, bool)
        for k, x in meta["dropped"].items()
    ):
        raise WireError("eos: dropped must map reasons to counts")
    if kind == Kind.EOS and meta["ring"] is not None and not _RING_NAME.match(meta["ring"]):
        raise WireError(f"eos: bad ring name {meta['ring']!r}")
    if kind == Kind.EOS and meta["origin"] is not None and len(meta["origin"]) > _MAX_ORIGIN:
        raise WireError("eos: origin too long")
    if kind == Kind.RESULT and not all(isinstance(x, str | None) for x in meta["names"]):
        raise WireError("result: names must be strings or null")
    if kind == Kind.RESULT and not all(isinstance(x, str | None) for x in meta["candidates"]):
        raise WireError("result: candidates must be strings or null")
    if kind == Kind.RESULT and not all(isinstance(x, str | None) for x in meta["unknowns"]):
        raise WireError("result: unknowns must be strings or null")
    if kind == Kind.RESULT and not all(x in _LIVENESS for x in meta["liveness"]):
        raise WireError("result: liveness must be live, not_live, unknown or null")
    out = dict(meta)
    for key in ("fps", "pts", "change"):
        if out.get(key) is not None:
            out[key] = float(out[key])
    return out


def _ref(ref: Any, shape: Any, dtype: Any) -> FrameRef:
    """A frame reference: a plain file name (no path), a slot number, and the frame's shape."""
    if not isinstance(ref, dict) or set(ref) != {"ring", "slot"}:
        raise WireError("ref must be {ring, slot}")
    ring, slot = ref["ring"], ref["slot"]
    if not isinstance(ring, str) or not _RING_NAME.match(ring) or ".." in ring:
        raise WireError(f"ref: bad ring name {ring!r}")
    if not isinstance(slot, int) or isinstance(slot, bool) or not 0 <= slot < _MAX_SLOT:
        raise WireError(f"ref: bad slot {slot!r}")
    if dtype != "uint8":
        raise WireError(f"ref: frame dtype {dtype!r}, must be uint8")
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
        or shape[2] != 3
    ):
        raise WireError(f"ref: frame shape {shape!r}, must be H x W x 3")
    if shape[0] * shape[1] * 3 > _MAX_ELEMENTS:
        raise WireError(f"ref: frame shape {shape} too large")
    return FrameRef(ring, slot, (shape[0], shape[1], 3))


def _field(header: dict[str, Any], key: str, types: type | tuple[type, ...]) -> Any:
    value = header.get(key)
    if not isinstance(value, types) or isinstance(value, bool):
        raise WireError(f"header field {key!r} missing or of the wrong type")
    return value


def _bytes(part: Any) -> bytes | memoryview:
    buf: bytes | memoryview = part.buffer if hasattr(part, "buffer") else part
    return buf


def _array(part: Any, dtype: Any, shape: Any, name: str) -> np.ndarray:
    if dtype not in _DTYPES:
        raise WireError(f"{name}: dtype {dtype!r} not allowed")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_DIMS
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
    ):
        raise WireError(f"{name}: bad shape {shape!r}")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count > _MAX_ELEMENTS:
        raise WireError(f"{name}: shape {shape} too large")
    buf = _bytes(part)
    nbytes = memoryview(buf).nbytes
    dt = np.dtype(_DTYPES[dtype])
    if nbytes != count * dt.itemsize:
        raise WireError(f"{name}: {nbytes} bytes for {dtype} {shape}")
    if count == 0:
        return np.zeros(shape, dt)
    # A view of the received buffer: no copy; read-only, which the stages respect.
    return np.frombuffer(buf, dtype=dt).reshape(shape)


def latencies_ms(t: dict[str, int]) -> dict[str, float | None]:
    """Per-stage latency of one frame, each including the queue before the stage, so they add up to
    the total: detect = capture->detect_out, embed = detect_out->embed_out, match = embed_out->match_out."""

    def span(a: str, b: str) -> float | None:
        return round((t[b] - t[a]) / 1e6, 3) if a in t and b in t else None

    return {
        "detect": span("capture", "detect_out"),
        "embed": span("detect_out", "embed_out"),
        "match": span("embed_out", "match_out"),
        "total": span("capture", "match_out"),
    }
