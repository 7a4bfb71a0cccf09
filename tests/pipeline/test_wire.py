"""The wire schema: round trips without copies, and every way a peer can get a message wrong."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from stream.detections import Detections
from stream.pipeline import wire


def frame_msg() -> wire.Message:
    frame = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    return wire.frame_message("cam0", 7, frame, fps=25.0)


def faces_msg(n: int = 2) -> wire.Faces:
    dets = Detections(
        np.ones((n, 4), np.float32),
        np.ones((n,), np.float32),
        np.ones((n, 5, 2), np.float32),
        embeddings=np.arange(n * 128, dtype=np.float32).reshape(n, 128),
        quality=np.linspace(0, 1, n, dtype=np.float32),
    )
    return frame_msg().to(wire.Faces, dets=dets)


def test_frame_round_trip_keeps_pixels_and_stamps():
    msg = frame_msg()
    parts = wire.encode(msg)
    header = msgpack.unpackb(parts[0])
    assert header["v"] == wire.VERSION and header["kind"] == "frame" and header["seq"] == 7
    assert header["shape"] == [48, 64, 3] and header["dtype"] == "uint8"
    assert "capture" in header["t"] and header["wall"] > 0
    back = wire.decode([bytes(p) for p in parts])
    assert np.array_equal(back.frame, msg.frame)
    assert back.t == msg.t and (back.fps, back.pts, back.live, back.skipped, back.error) == (
        25.0,
        None,
        False,
        0,
        None,
    )


def test_decode_views_the_received_buffer_without_copying():
    msg = frame_msg()
    parts = wire.encode(msg)
    buf = bytearray(parts[1].tobytes())
    back = wire.decode([parts[0], memoryview(buf)])
    buf[0] ^= 0xFF  # the decoded array is a view of the buffer
    assert back.frame.reshape(-1)[0] == buf[0]


def test_faces_round_trip():
    back = wire.decode(wire.encode(faces_msg(3)))
    assert isinstance(back, wire.Faces) and back.dets.embeddings is not None
    assert back.dets.embeddings.shape == (3, 128)
    assert back.dets.landmarks.shape == (3, 5, 2)


def test_no_faces_is_a_valid_faces_message():
    back = wire.decode(wire.encode(faces_msg(0)))
    assert isinstance(back, wire.Faces) and len(back.dets.boxes) == 0


def bad(parts) -> str:
    with pytest.raises(wire.WireError) as e:
        wire.decode(parts)
    return str(e.value)


def test_wrong_version_is_rejected():
    parts = wire.encode(frame_msg())
    header = msgpack.unpackb(parts[0])
    header["v"] = 99
    assert "version" in bad([msgpack.packb(header), parts[1]])


@pytest.mark.parametrize(
    "parts",
    [
        [],
        [b"\xc1garbage"],
        [msgpack.packb([1, 2, 3])],
        [msgpack.packb({"v": 1})],
        [b"hello", b"world"],
    ],
)
def test_malformed_headers_are_rejected(parts):
    bad(parts)


def test_buffer_size_must_match_shape():
    parts = wire.encode(frame_msg())
    assert "bytes" in bad([parts[0], parts[1].tobytes()[:-1]])


def test_missing_and_extra_buffers_are_rejected():
    parts = wire.encode(faces_msg())
    bad(parts[:-1])
    bad([*parts, b"extra"])


def test_hostile_header_fields_are_rejected():
    parts = wire.encode(frame_msg())
    for key, value in [
        ("kind", "pickle"),
        ("seq", -1),
        ("seq", "7"),
        ("t", {"a": "b"}),
        ("dtype", "object"),
        ("shape", [1, 2]),
        ("shape", [10**9, 10**9, 3]),
        ("cam", None),
    ]:
        header = msgpack.unpackb(parts[0])
        header[key] = value
        bad([msgpack.packb(header), parts[1]])


def with_array(parts: list, name: str, arr: np.ndarray | None) -> list:
    """A faces message as a peer could send it: array `name` replaced (or left out, with None)."""
    header = msgpack.unpackb(parts[0])
    names = [spec[0] for spec in header["arrays"]]
    i = names.index(name)
    bufs = list(parts[2:])  # parts[1] is the frame
    if arr is None:
        del header["arrays"][i], bufs[i]
    else:
        header["arrays"][i] = [name, arr.dtype.name, list(arr.shape)]
        bufs[i] = arr
    return [msgpack.packb(header), parts[1], *bufs]


def test_faces_arrays_must_agree():
    parts = wire.encode(faces_msg(2))
    assert "disagree" in bad(with_array(parts, "scores", np.ones((3,), np.float32)))
    bad(with_array(parts, "embeddings", None))


def test_object_arrays_cannot_be_sent():
    msg = faces_msg(1)
    msg.dets.embeddings = np.array([object()])
    with pytest.raises(wire.WireError):
        wire.encode(msg)


def test_latencies_add_up():
    t = {
        "capture": 0,
        "detect_in": 1_000_000,
        "detect_out": 5_000_000,
        "embed_in": 5_500_000,
        "embed_out": 8_000_000,
        "match_out": 9_000_000,
    }
    lat = wire.latencies_ms(t)
    assert lat == {"detect": 5.0, "embed": 3.0, "match": 1.0, "total": 9.0}
    assert wire.latencies_ms({})["total"] is None


# ----- one detection type, typed kinds ---------------------------------------------------------------
def named(n: int) -> Detections:
    d = faces_msg(n).dets
    return d.with_columns(
        tracks=np.arange(n, dtype=np.int32),
        names=[f"p{i}" if i % 2 else None for i in range(n)],
        candidates=[f"p{i}" if i != 1 else None for i in range(n)],
        distances=np.array([0.123456789, np.inf, 0.5][:n], np.float64),
        unknowns=[None, None, "unknown-7"][:n],
    )


def test_detections_empty_slice_index_merge():
    d = named(3)
    assert len(Detections.empty()) == 0 and len(d[1:]) == 2 and len(d[0]) == 1
    assert d[np.array([False, True, True])].names == ["p1", None]
    assert d[[2, 0]].tracks.tolist() == [2, 0]
    both = Detections.merge([d, d[:1]])
    assert len(both) == 4 and both.names == [None, "p1", None, None]
    assert Detections.merge([d, Detections.empty()]).tracks is None  # a column not every part has
    with pytest.raises(ValueError):
        Detections(np.zeros((2, 4), np.float32), np.zeros(3, np.float32), np.zeros((2, 5, 2), np.float32))


def test_result_round_trip_and_json_faces():
    msg = faces_msg(3).to(wire.Result, dets=named(3))
    back = wire.decode(wire.encode(msg))
    assert isinstance(back, wire.Result) and back.dets.names == [None, "p1", None]
    assert back.dets.candidates == ["p0", None, "p2"]
    faces = wire.faces_json(back.dets)
    assert faces[0] == {
        "box": [1.0, 1.0, 1.0, 1.0],
        "score": 1.0,
        "landmarks": [[1.0, 1.0]] * 5,
        "track": 0,
        "name": None,
        "candidate": "p0",  # its own nearest person, over the threshold or not named by its track
        "unknown": None,
        "distance": 0.12346,
        "quality": 0.0,
        "liveness": None,  # the camera does not ask for liveness
    }
    assert faces[1]["distance"] is None and faces[1]["name"] == "p1" and faces[1]["candidate"] is None
    assert faces[2]["quality"] == 1.0 and faces[2]["unknown"] == "unknown-7"


def test_result_columns_are_checked_and_the_change_score_travels():
    msg = faces_msg(2).to(wire.Result, dets=named(2), change=0.42)
    back = wire.decode(wire.encode(msg))
    assert isinstance(back, wire.Result) and back.change == pytest.approx(0.42)
    assert wire.decode(wire.encode(frame_msg())).change is None
    header = msgpack.unpackb(wire.encode(msg)[0])
    header["meta"]["candidates"] = ["p0"]  # one candidate for two faces
    with pytest.raises(wire.WireError, match="candidates"):
        wire.decode([msgpack.packb(header), *wire.encode(msg)[1:]])
    header = msgpack.unpackb(wire.encode(msg)[0])
    header["meta"]["unknowns"] = [None, 7]  # an unknown id is a string
    with pytest.raises(wire.WireError, match="unknowns"):
        wire.decode([msgpack.packb(header), *wire.encode(msg)[1:]])
    header["meta"]["candidates"] = [1, None]
    with pytest.raises(wire.WireError, match="candidates must be strings"):
        wire.decode([msgpack.packb(header), *wire.encode(msg)[1:]])
    with pytest.raises(wire.WireError, match="without quality"):
        wire.encode(msg.to(wire.Result, dets=named(2).with_columns(quality=None)))


def test_liveness_travels_with_faces_and_results():
    faces = faces_msg(3)
    assert np.isnan(wire.decode(wire.encode(faces)).dets.eyes).all()  # not measured: NaN
    faces.dets = faces.dets.with_columns(eyes=np.array([0.3, np.nan, 0.1], np.float32))
    back = wire.decode(wire.encode(faces))
    assert back.dets.eyes[0] == pytest.approx(0.3) and np.isnan(back.dets.eyes[1])
    msg = faces.to(wire.Result, dets=named(3).with_columns(liveness=["live", None, "not_live"]))
    back = wire.decode(wire.encode(msg))
    assert back.dets.liveness == ["live", None, "not_live"]
    assert [f["liveness"] for f in wire.faces_json(back.dets)] == ["live", None, "not_live"]
    assert back.dets[[2]].liveness == ["not_live"]
    header = msgpack.unpackb(wire.encode(msg)[0])
    header["meta"]["liveness"] = ["live", "alive", None]
    with pytest.raises(wire.WireError, match="liveness must be"):
        wire.decode([msgpack.packb(header), *wire.encode(msg)[1:]])
    header["meta"]["liveness"] = ["live"]  # one verdict for three faces
    with pytest.raises(wire.WireError, match="liveness"):
        wire.decode([msgpack.packb(header), *wire.encode(msg)[1:]])


def test_capture_gone_is_its_own_kind():
    back = wire.decode(wire.encode(wire.CaptureGone(cam="cam0", seq=0, error="crashed")))
    assert isinstance(back, wire.CaptureGone) and back.kind == "gone" and back.error == "crashed"
    eos = wire.decode(
        wire.encode(wire.eos_message("cam0", 4, read=5, dropped={"busy": 1}, ring="cap0-1-0.ring"))
    )
    assert isinstance(eos, wire.EndOfStream) and (eos.sent, eos.read, eos.dropped) == (4, 5, {"busy": 1})


def test_meta_of_the_wrong_type_is_rejected():
    parts = wire.encode(frame_msg())
    for key, value in [("skipped", "3"), ("live", 1), ("fps", "25"), ("extra", 1)]:
        header = msgpack.unpackb(parts[0])
        header["meta"][key] = value
        bad([msgpack.packb(header), parts[1]])
