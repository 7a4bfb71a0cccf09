"""The wire schema: the only place message headers are built, parsed and checked.

A message is multipart: part 0 is a msgpack map (the header), then one raw buffer per array,
in the order the header's `arrays` lists them. Arrays travel as their bytes (sent copy=False), never
pickled. `decode` validates everything a peer could get wrong and raises WireError; stages count
and drop such messages.

Header keys: v, kind, cam, seq, shape, dtype (of the frame pixels, or None), t (stage -> monotonic
ns), wall (capture time, Unix s), arrays ([name, dtype, shape] of each further buffer), meta (small
msgpack-able extras: the faces of a result, an end-of-stream count, an event), ref (None, or where the
frame's pixels are on this host: {"ring": file name, "slot": n} -- see framering.py; the pixels then do
not travel, shape and dtype still describe them, and the slot must hold this message's seq)."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

VERSION = 1

FRAME = "frame"  # capture -> detect: pixels
DETS = "dets"  # detect -> embed: pixels + boxes, scores, landmarks
FACES = "faces"  # embed -> match: (pixels) + boxes, scores, landmarks, embeddings
RESULT = "result"  # match -> sinks / results PUB: meta["faces"], (pixels)
EOS = "eos"  # end of one camera's stream; meta: sent, read, dropped, error
EVENT = "event"  # camera up/down, track events; meta: the event dict
KINDS = frozenset({FRAME, DETS, FACES, RESULT, EOS, EVENT})

# Stage stamps, in pipeline order. Latency is only ever computed between these monotonic stamps.
STAMPS = ("capture", "detect_in", "detect_out", "embed_in", "embed_out", "match_out")

_DTYPES = {"uint8": np.uint8, "float32": np.float32, "int32": np.int32}
_MAX_DIMS = 4
_MAX_ELEMENTS = 1 << 28  # 256 M elements: refuse absurd shapes before allocating anything
_RING_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")  # a file name, never a path
_MAX_SLOT = 1 << 16


class WireError(ValueError):
    """A message that does not follow this schema (or another version of it)."""


@dataclass(frozen=True)
class FrameRef:
    """Where a frame's pixels are on this host: slot `slot` of ring file `ring` (framering.py)."""

    ring: str
    slot: int
    shape: tuple[int, int, int]


@dataclass
class Message:
    kind: str
    cam: str
    seq: int
    t: dict[str, int] = field(default_factory=dict)
    wall: float = 0.0
    frame: np.ndarray | None = None  # H x W x 3 RGB uint8
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    ref: FrameRef | None = None  # pixels in a shared-memory ring: sent instead of them (frame: a view)

    @property
    def has_pixels(self) -> bool:
        return self.frame is not None or self.ref is not None

    def stamp(self, name: str) -> None:
        """Record that this message passed `name` now (monotonic ns, comparable on one host only)."""
        self.t[name] = time.monotonic_ns()


def frame_message(
    cam: str, seq: int, frame: np.ndarray | None, ref: FrameRef | None = None, **meta: Any
) -> Message:
    """A fresh frame as capture emits it: stamped `capture` now, wall clock for the outputs. With
    `ref` the pixels are in a ring slot and only the reference travels."""
    msg = Message(FRAME, cam, seq, wall=time.time(), frame=frame, meta=dict(meta), ref=ref)
    msg.stamp("capture")
    return msg


def eos_message(cam: str, sent: int, **meta: Any) -> Message:
    """End of a camera's stream: `sent` frames went out before it (seq 0..sent-1 at most)."""
    return Message(EOS, cam, sent, wall=time.time(), meta={"sent": sent, **meta})


def event_message(cam: str, event: dict[str, Any]) -> Message:
    return Message(EVENT, cam, 0, wall=time.time(), meta={"event": event})


def encode(msg: Message) -> list[Any]:
    """Header bytes followed by the raw buffers (contiguous arrays; zmq sends them without copies)."""
    buffers: list[np.ndarray] = []
    shape = dtype = ref = None
    if msg.ref is not None:  # the pixels stay in the ring; msg.frame (a view of it) is not sent
        shape, dtype = list(msg.ref.shape), "uint8"
        ref = {"ring": msg.ref.ring, "slot": msg.ref.slot}
    elif msg.frame is not None:
        frame = _contiguous(msg.frame)
        shape, dtype = list(frame.shape), frame.dtype.name
        buffers.append(frame)
    specs = []
    for name, arr in msg.arrays.items():
        arr = _contiguous(arr)
        specs.append([name, arr.dtype.name, list(arr.shape)])
        buffers.append(arr)
    header = {
        "v": VERSION,
        "kind": msg.kind,
        "cam": msg.cam,
        "seq": msg.seq,
        "shape": shape,
        "dtype": dtype,
        "t": msg.t,
        "wall": msg.wall,
        "arrays": specs,
        "meta": msg.meta,
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
    """Parts as received (zmq.Frame, bytes or memoryview) -> Message; arrays view the buffers."""
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
    kind = _field(header, "kind", str)
    if kind not in KINDS:
        raise WireError(f"unknown kind {kind!r}")
    cam = _field(header, "cam", str)
    seq = _field(header, "seq", int)
    if seq < 0:
        raise WireError(f"negative seq {seq}")
    t = _field(header, "t", dict)
    if not all(isinstance(k, str) and isinstance(x, int) for k, x in t.items()):
        raise WireError("t must map stage names to integer ns")
    wall = _field(header, "wall", (int, float))
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
    msg = Message(kind, cam, seq, t, float(wall), frame, arrays, meta, ref)
    _check_kind(msg)
    return msg


# What each kind must carry, so that stages can index arrays without further checks.
_FACE_ARRAYS = {"boxes": (4,), "scores": (), "landmarks": (5, 2)}
_KIND_ARRAYS = {DETS: _FACE_ARRAYS, FACES: {**_FACE_ARRAYS, "embeddings": None}}


def _check_kind(msg: Message) -> None:
    if msg.kind in (FRAME, DETS) and not msg.has_pixels:
        raise WireError(f"{msg.kind} message without pixels")
    want = _KIND_ARRAYS.get(msg.kind)
    if want is None:
        return
    n = None
    for name, tail in want.items():
        arr = msg.arrays.get(name)
        if arr is None or arr.dtype != np.float32 or arr.ndim < 1:
            raise WireError(f"{msg.kind}: float32 array {name!r} missing")
        if tail is not None and arr.shape[1:] != tail:
            raise WireError(f"{msg.kind}: {name} has shape {arr.shape}")
        if n is not None and arr.shape[0] != n:
            raise WireError(f"{msg.kind}: arrays disagree on the number of faces")
        n = arr.shape[0]
    emb = msg.arrays.get("embeddings")
    if emb is not None and emb.ndim != 2:
        raise WireError(f"{msg.kind}: embeddings must be 2-d")


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


def _field(header: dict, key: str, types: type | tuple[type, ...]) -> Any:
    value = header.get(key)
    if not isinstance(value, types) or isinstance(value, bool):
        raise WireError(f"header field {key!r} missing or of the wrong type")
    return value


def _bytes(part: Any) -> bytes | memoryview:
    return part.buffer if hasattr(part, "buffer") else part


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
