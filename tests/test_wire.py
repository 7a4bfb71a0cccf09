"""The wire schema: round trips without copies, and every way a peer can get a message wrong."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from stream.pipeline import wire


def frame_msg() -> wire.Message:
    frame = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    return wire.frame_message("cam0", 7, frame, fps=25.0)


def faces_msg(n: int = 2) -> wire.Message:
    msg = frame_msg()
    msg.kind = wire.FACES
    msg.arrays = {
        "boxes": np.ones((n, 4), np.float32),
        "scores": np.ones((n,), np.float32),
        "landmarks": np.ones((n, 5, 2), np.float32),
        "embeddings": np.arange(n * 128, dtype=np.float32).reshape(n, 128),
    }
    return msg


def test_frame_round_trip_keeps_pixels_and_stamps():
    msg = frame_msg()
    parts = wire.encode(msg)
    header = msgpack.unpackb(parts[0])
    assert header["v"] == wire.VERSION and header["kind"] == "frame" and header["seq"] == 7
    assert header["shape"] == [48, 64, 3] and header["dtype"] == "uint8"
    assert "capture" in header["t"] and header["wall"] > 0
    back = wire.decode([bytes(p) for p in parts])
    assert np.array_equal(back.frame, msg.frame)
    assert back.t == msg.t and back.meta == {"fps": 25.0}


def test_decode_views_the_received_buffer_without_copying():
    msg = frame_msg()
    parts = wire.encode(msg)
    buf = bytearray(parts[1].tobytes())
    back = wire.decode([parts[0], memoryview(buf)])
    buf[0] ^= 0xFF  # the decoded array is a view of the buffer
    assert back.frame.reshape(-1)[0] == buf[0]


def test_faces_round_trip():
    back = wire.decode(wire.encode(faces_msg(3)))
    assert back.arrays["embeddings"].shape == (3, 128)
    assert back.arrays["landmarks"].shape == (3, 5, 2)


def test_no_faces_is_a_valid_faces_message():
    back = wire.decode(wire.encode(faces_msg(0)))
    assert len(back.arrays["boxes"]) == 0


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


def test_faces_arrays_must_agree():
    msg = faces_msg(2)
    msg.arrays["scores"] = np.ones((3,), np.float32)
    assert "disagree" in bad(wire.encode(msg))
    msg = faces_msg(2)
    del msg.arrays["embeddings"]
    bad(wire.encode(msg))


def test_object_arrays_cannot_be_sent():
    msg = frame_msg()
    msg.arrays = {"x": np.array([object()])}
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
