"""Shared-memory frame rings (one host): write/read in place, overwrite detection (seqlock), a new
generation when the frame size changes, flow control for blocking sources, the wire's frame
references, and that nothing is left in /dev/shm after a run."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import msgpack
import numpy as np
import pytest

from stream.pipeline import config, framering, wire


def frames(n: int, shape=(36, 64, 3)) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 255, shape, dtype=np.uint8) for _ in range(n)]


@pytest.fixture
def ring_dir(tmp_path: Path) -> Path:
    d = tmp_path / "rings"
    d.mkdir(mode=0o700)
    return d


def test_write_then_read_in_place(ring_dir):
    w = framering.RingWriter(ring_dir, 0, lambda nbytes: 4)
    r = framering.RingReader(ring_dir, "detect")
    imgs = frames(3)
    refs = [w.write(img, seq) for seq, img in enumerate(imgs)]
    assert [slot for _, slot in refs] == [0, 1, 2]
    for seq, ((name, slot), img) in enumerate(zip(refs, imgs, strict=True)):
        view = r.view(name, slot, seq, img.shape)
        assert view is not None and np.array_equal(view, img)
        assert not view.flags.writeable  # readers cannot scribble on the capture's frames
        assert r.valid(name, slot, seq)
    # The view is the slot itself (zero-copy): the next write into that slot shows through.
    name, slot = refs[0]
    view = r.view(name, slot, 0, imgs[0].shape)
    w.write(imgs[2], 4)  # seq 4 -> slot 0
    assert np.array_equal(view, imgs[2])
    w.close()
    r.close()


def test_overwritten_slot_is_detected_before_and_after_use(ring_dir):
    w = framering.RingWriter(ring_dir, 0, lambda nbytes: 4)
    r = framering.RingReader(ring_dir, "embed")
    imgs = frames(6)
    name, slot = w.write(imgs[0], 0)
    view = r.view(name, slot, 0, imgs[0].shape)
    assert view is not None
    for seq in range(1, 5):  # seq 4 lands in slot 0
        w.write(imgs[seq], seq)
    assert not r.valid(name, slot, 0)  # after use: the reader learns its pixels were not frame 0
    assert r.view(name, slot, 0, imgs[0].shape) is None  # before use: refused at once
    # A torn write (stamp cleared, pixels half written) is never valid either. (Seq 5 was written once:
    # a reference to a frame not written yet is refused outright, see the test of references below.)
    w.write(imgs[5], 5)
    ring = w.ring
    ring.stamps[1] = 0
    assert r.view(name, 1, 5, imgs[0].shape) is None and not r.valid(name, 1, 5)
    w.close()
    r.close()


def test_reference_that_does_not_match_the_ring_is_refused(ring_dir):
    w = framering.RingWriter(ring_dir, 0, lambda nbytes: 4)
    r = framering.RingReader(ring_dir, "detect")
    name, slot = w.write(frames(1)[0], 0)
    with pytest.raises(framering.RingError):
        r.view(name, slot, 0, (10, 10, 3))  # wrong shape
    with pytest.raises(framering.RingError):
        r.view(name, 3, 0, (36, 64, 3))  # slot is not seq % slots
    with pytest.raises(framering.RingError):
        r.view("cap0-1-0.ring", 0, 0, (36, 64, 3))  # no such ring
    with pytest.raises(framering.RingError):
        r.view("../../etc/passwd", 0, 0, (36, 64, 3))


def test_new_generation_when_the_frame_size_changes(ring_dir):
    w = framering.RingWriter(ring_dir, 0, lambda nbytes: 3)
    r = framering.RingReader(ring_dir, "detect")
    small, big = frames(1)[0], frames(1, (72, 128, 3))[0]
    name0, slot0 = w.write(small, 0)
    name1, slot1 = w.write(big, 1)
    assert name0 != name1 and name1.endswith("-1.ring")
    # Readers learn of the new generation from the reference itself; the old frame is still readable.
    assert np.array_equal(r.view(name1, slot1, 1, big.shape), big)
    assert np.array_equal(r.view(name0, slot0, 0, small.shape), small)
    # The old file goes once the new generation has filled its slots (its frames would be gone anyway).
    for seq in range(2, 5):
        w.write(big, seq)
    assert sorted(p.name for p in ring_dir.iterdir()) == [name1]
    w.close()
    r.close()


def test_restarted_capture_starts_a_new_ring_and_removes_its_predecessors(ring_dir):
    (ring_dir / "cap0-999999-0.ring").write_bytes(b"old")
    (ring_dir / "cap1-999999-0.ring").write_bytes(b"other camera")
    w = framering.RingWriter(ring_dir, 0, lambda nbytes: 3)
    name, _ = w.write(frames(1)[0], 0)
    assert sorted(p.name for p in ring_dir.iterdir()) == sorted(["cap1-999999-0.ring", name])
    assert str(os.getpid()) in name
    w.close()


def test_blocking_capture_waits_for_the_readers_and_a_restart_releases_it(ring_dir):
    w = framering.RingWriter(ring_dir, 0, lambda nbytes: 4)
    detect = framering.RingReader(ring_dir, "detect")
    embed = framering.RingReader(ring_dir, "embed")
    img = frames(1)[0]
    windows = {"detect": 2, "embed": 4}
    w.prepare(img.shape)
    for seq in range(2):
        assert w.wait_room(seq, windows, False, 1.0)
        w.write(img, seq)
    assert not w.wait_room(2, windows, False, 0.05)  # detect holds 2 frames: its window is full
    detect.done(w.name, 0)
    assert w.wait_room(2, windows, False, 0.05)
    w.write(img, 2)
    detect.done(w.name, 2)
    w.write(img, 3)
    assert not w.wait_room(4, windows, False, 0.05)  # slot 0 still needed by embed
    embed.done(w.name, 0)
    assert w.wait_room(4, windows, False, 0.05)
    w.write(img, 4)
    detect.done(w.name, 4)
    # embed dies with frames 1..3: once the supervisor says so, nobody waits for them.
    assert not w.wait_room(5, windows, False, 0.05)
    framering.bump_epoch(ring_dir, "embed")
    assert w.wait_room(5, windows, False, 0.05)


def test_ring_slots_follow_the_hwms_and_are_capped():
    cfg = config.load(None, {"sources": [{"url": "a.mp4"}]})
    small = cfg.ring_slots(640 * 360 * 3)
    # 2 x (4 queues of hwm 2) + detect batch 4 + embed frames 16 + 4 margin
    assert small == 2 * 8 + 4 + 16 + 4
    rec = config.load(None, {"sources": [{"url": "a.mp4"}], "outputs": {"record": "v.mp4"}})
    assert rec.ring_slots(640 * 360 * 3) > small  # the recorder reads last: a longer path
    assert cfg.ring_slots(1920 * 1080 * 3) <= 512 * 2**20 // (1920 * 1080 * 3)
    fixed = config.load(None, {"sources": [{"url": "a.mp4"}], "transport": {"ring_slots": 12}})
    assert fixed.ring_slots(1) == 12
    assert cfg.ring_windows(small)["detect"] == 2 + 1 * (2 + 4) + 1


def test_shm_is_for_one_host_only():
    from stream.errors import FacestreamError

    with pytest.raises(FacestreamError, match="shm needs kind: ipc"):
        config.load(None, {"transport": {"kind": "tcp", "shm": True}})
    tcp = config.load(None, {"transport": {"kind": "tcp", "shm_dir": "/tmp/x"}})
    assert not tcp.transport.use_shm  # tcp keeps sending pixels inline


def test_ring_dir_is_private_and_stale_ones_are_removed(tmp_path):
    d = framering.make_dir(tmp_path)
    try:
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        assert d.name.startswith(f"facestream-{os.getpid()}-")
    finally:
        d.rmdir()
    dead = d.parent / "facestream-999999999-zzz"  # a pid that cannot exist
    dead.mkdir()
    framering.remove_stale(d.parent)
    assert not dead.exists()


# ----- the wire's frame references ------------------------------------------------------------------
def ref_msg() -> wire.Message:
    ref = wire.FrameRef("cap0-123-0.ring", 5, (36, 64, 3))
    return wire.frame_message("cam0", 5, frames(1)[0], ref=ref, fps=25.0)


def test_reference_travels_instead_of_the_pixels():
    parts = wire.encode(ref_msg())
    assert len(parts) == 1  # the header only: no pixel buffer
    header = msgpack.unpackb(parts[0])
    assert header["ref"] == {"ring": "cap0-123-0.ring", "slot": 5} and header["shape"] == [36, 64, 3]
    back = wire.decode(parts)
    assert back.frame is None and back.ref == wire.FrameRef("cap0-123-0.ring", 5, (36, 64, 3))
    assert isinstance(back, wire.Frame)
    assert back.has_pixels and (back.fps, back.pts, back.live, back.skipped, back.error) == (
        25.0,
        None,
        False,
        0,
        None,
    )
    # Passed on by a stage (detect -> embed), still a reference.
    dets = back.to(wire.Dets)  # no faces: three empty arrays
    again = wire.decode(wire.encode(dets))
    assert isinstance(again, wire.Dets)
    assert again.ref == dets.ref and len(wire.encode(dets)) == 4


@pytest.mark.parametrize(
    "ref, shape, dtype",
    [
        ({"ring": "../x.ring", "slot": 0}, [36, 64, 3], "uint8"),
        ({"ring": "/dev/shm/x", "slot": 0}, [36, 64, 3], "uint8"),
        ({"ring": "a.ring", "slot": -1}, [36, 64, 3], "uint8"),
        ({"ring": "a.ring", "slot": True}, [36, 64, 3], "uint8"),
        ({"ring": "a.ring", "slot": 1 << 20}, [36, 64, 3], "uint8"),
        ({"ring": "a.ring"}, [36, 64, 3], "uint8"),
        ({"ring": "a.ring", "slot": 0, "path": "/etc"}, [36, 64, 3], "uint8"),
        ("a.ring", [36, 64, 3], "uint8"),
        ({"ring": "a.ring", "slot": 0}, [36, 64], "uint8"),
        ({"ring": "a.ring", "slot": 0}, [36, 64, 3], "float32"),
        ({"ring": "a.ring", "slot": 0}, [10**6, 10**6, 3], "uint8"),
        ({"ring": "a.ring", "slot": 0}, None, None),
    ],
)
def test_bad_references_are_bad_messages(ref, shape, dtype):
    header = msgpack.unpackb(wire.encode(ref_msg())[0])
    header.update(ref=ref, shape=shape, dtype=dtype)
    with pytest.raises(wire.WireError):
        wire.decode([msgpack.packb(header)])


def test_stage_pixels_count_an_overwritten_frame_as_a_drop(ring_dir, tmp_path):
    from prometheus_client import REGISTRY

    from stream.pipeline import metrics

    cfg = config.load(None, {"sources": [{"url": "a.mp4"}], "transport": {"shm_dir": str(ring_dir)}})
    w = framering.RingWriter(ring_dir, 0, lambda nbytes: 2)
    pixels = framering.StagePixels(cfg, "detect")
    img = frames(1)[0]
    name, slot = w.write(img, 0)
    msg = wire.decode(
        wire.encode(wire.frame_message("cam0", 0, None, ref=wire.FrameRef(name, slot, img.shape)))
    )
    metrics.get()
    labels = {"stage": "detect", "camera": "cam0", "reason": "overwritten"}

    def dropped() -> float:
        return REGISTRY.get_sample_value("facestream_frames_dropped_total", labels) or 0.0

    before = dropped()
    assert pixels.load(msg) and np.array_equal(msg.frame, img)
    w.write(img, 2)  # slot 0 again, while "detect" works on frame 0
    assert not pixels.check(msg)
    assert dropped() - before == 1
    nxt = wire.eos_message("cam0", 3)
    pixels.carry(nxt)  # the drop rides on the camera's next message: the sink's count stays exact
    assert nxt.skipped == 1
    pixels.close()
    w.close()
