"""The trust boundaries, piece by piece (no process; the running pipeline: test_forged_messages.py):
messages for cameras that are not in the config, end-of-stream origin and counts, ring references
checked against their ring before use."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import numpy as np
import pytest
import zmq
from prometheus_client import REGISTRY
from waiting import wait_until

from stream.pipeline import batching, config, framering, metrics, transport, trust, wire
from stream.pipeline.stages.sinks import Sink
from stream.pipeline.trust import Trust

SHAPE = (36, 64, 3)


def value(name: str, **labels: str) -> float:
    metrics.get()
    return REGISTRY.get_sample_value(name, labels) or 0.0


def dropped(stage: str, camera: str, reason: str) -> float:
    return value("facestream_frames_dropped_total", stage=stage, camera=camera, reason=reason)


def bad(stage: str) -> float:
    return value("facestream_bad_messages_total", stage=stage)


def frame(cam: str, seq: int = 0) -> wire.Frame:
    return wire.frame_message(cam, seq, np.zeros((8, 8, 3), np.uint8))


@pytest.fixture
def pair():
    ctx = zmq.Context()
    push = transport.socket(ctx, zmq.PUSH, bind="inproc://trust", hwm=100)
    pull = transport.socket(ctx, zmq.PULL, connect=["inproc://trust"], hwm=100)
    yield push, pull
    push.close(0)
    pull.close(0)
    ctx.term()


# ----- cameras not in the config --------------------------------------------------------------------
def test_messages_for_unknown_cameras_are_dropped_counted_and_logged_once_a_minute(pair, caplog):
    push, pull = pair
    t = Trust(["cam0", "cam1"], None, "detect")
    before_frames = dropped("detect", trust.UNKNOWN_CAMERA, "unknown_camera")
    before_bad = bad("detect")
    forged = [frame(f"ghost{i}") for i in range(5)] + [wire.eos_message("ghost", 3)]
    for msg in [*forged, frame("cam1", 7)]:
        transport.send(push, msg)
    wait_until(lambda: pull.poll(0), 5.0, "the messages to arrive")
    with caplog.at_level(logging.WARNING, logger="stream.pipeline.trust"):
        got = [batching.receive(pull, "detect", zmq.NOBLOCK, t) for _ in range(len(forged) + 1)]
    assert got[:-1] == [None] * len(forged)
    assert got[-1] is not None and (got[-1].msg.cam, got[-1].msg.seq) == ("cam1", 7)
    assert dropped("detect", trust.UNKNOWN_CAMERA, "unknown_camera") - before_frames == 5  # the frames
    assert bad("detect") - before_bad == 1  # the end-of-stream is no frame
    # The forger's names never become label values (each would be a new time series).
    assert all(dropped("detect", f"ghost{i}", "unknown_camera") == 0 for i in range(5))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "'ghost0'" in lines[0] and "not in the config" in lines[0], lines


def test_the_unknown_camera_log_reports_what_it_held_back(caplog):
    t = Trust(["cam0"], None, "embed")
    with caplog.at_level(logging.WARNING, logger="stream.pipeline.trust"):
        for i in range(4):
            assert not t.admit(frame(f"g{i}"))
        t._log._last["unknown_camera"] -= trust.LOG_INTERVAL_S  # a minute later (without waiting it)
        assert not t.admit(frame("g9"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "(and 3 more since the last report)" in lines[1], lines


def test_without_a_trust_receive_only_checks_the_schema(pair):
    push, pull = pair
    transport.send(push, frame("ghost"))
    wait_until(lambda: pull.poll(0), 5.0, "the message to arrive")
    got = batching.receive(pull, "detect", zmq.NOBLOCK)
    assert got is not None and got.msg.cam == "ghost"


# ----- end-of-stream: origin ------------------------------------------------------------------------
def test_end_of_stream_needs_its_captures_token(tmp_path: Path):
    run_dir = tmp_path
    token0 = trust.issue_token(run_dir, 0)
    trust.issue_token(run_dir, 1)
    assert stat.S_IMODE(trust.token_path(run_dir, 0).stat().st_mode) == 0o600
    t = Trust(["cam0", "cam1"], run_dir, "sink")
    before = bad("sink")
    assert t.admit(wire.eos_message("cam0", 5, origin=token0))
    refused = [
        wire.eos_message("cam0", 5),  # no origin
        wire.eos_message("cam0", 5, origin="0" * 32),  # a guess
        wire.eos_message("cam0", 5, origin=trust.read_token(run_dir, 1)),  # another camera's capture
        wire.eos_message("cam0", 5, origin="é" * 32),  # not ASCII: still just refused
    ]
    assert [t.admit(m) for m in refused] == [False] * 4
    assert bad("sink") - before == 4
    assert not t.renewed
    # The supervisor restarts cam0's capture: a new token, re-read on the first mismatch; the old one
    # is refused from then on.
    token0b = trust.issue_token(run_dir, 0)
    assert token0b != token0
    assert t.admit(wire.eos_message("cam0", 2, origin=token0b))
    assert t.renewed == {"cam0"}
    assert not t.admit(wire.eos_message("cam0", 2, origin=token0))
    # Frames and events carry no origin: only end-of-stream messages are checked.
    assert t.admit(frame("cam0")) and t.admit(wire.event_message("cam0", {"type": "x"}))


def test_without_a_supervisors_token_the_origin_is_not_checked(tmp_path: Path):
    assert Trust(["cam0"], None, "sink").admit(wire.eos_message("cam0", 5))
    assert Trust(["cam0"], tmp_path, "sink").admit(wire.eos_message("cam0", 5))  # no token file


def test_the_supervisor_keeps_a_token_unless_asked_to_renew(tmp_path: Path):
    first = trust.issue_token(tmp_path, 3)
    assert trust.issue_token(tmp_path, 3, renew=False) == first
    assert trust.issue_token(tmp_path, 3) != first
    assert not list(tmp_path.glob("*.tmp"))


def test_origin_survives_the_wire_and_is_bounded():
    msg = wire.decode(wire.encode(wire.eos_message("cam0", 4, origin="ab" * 16)))
    assert isinstance(msg, wire.EndOfStream) and msg.origin == "ab" * 16
    with pytest.raises(wire.WireError, match="origin"):
        wire.decode(wire.encode(wire.eos_message("cam0", 4, origin="x" * 1000)))


# ----- end-of-stream: counts at the sink ------------------------------------------------------------
def result(cam: str, seq: int) -> wire.Result:
    return frame(cam, seq).to(wire.Result, frame=None)


def sink_for(tmp_path: Path) -> Sink:
    cfg = config.load(
        None,
        {
            "sources": [{"url": "a"}],
            "outputs.out": str(tmp_path / "r.jsonl"),
            "supervisor.eos_grace_s": 0.2,
        },
    )
    return Sink(cfg)


def test_sink_refuses_an_end_of_stream_that_says_less_than_it_has_seen(tmp_path: Path):
    sink = sink_for(tmp_path)
    for seq in range(6):
        sink.handle(result("cam0", seq))
    skipping = result("cam0", 7)
    skipping.skipped = 1  # frame 6 was dropped on the way
    sink.handle(skipping)
    before = bad("sink")
    sink.handle(wire.eos_message("cam0", 3))  # 3 sent, but 7 arrived and 1 was dropped
    eos = wire.eos_message("cam0", 8)
    eos.skipped = 1  # one more dropped after the last frame: 9 seen, 8 sent
    sink.handle(eos)
    assert bad("sink") - before == 2
    state = sink.cams["cam0"]
    assert (state.sent, state.eos_at, state.stale) == (None, None, 1)  # nothing changed
    assert not sink.finished()
    sink.handle(wire.eos_message("cam0", 8))  # the true one: 7 arrived + 1 dropped
    assert state.sent == 8 and sink.finished()
    sink.close()


def test_after_a_capture_restart_the_sink_checks_the_token_only(tmp_path: Path):
    sink = sink_for(tmp_path)
    for seq in range(5):
        sink.handle(result("cam0", seq))
    sink.trust.renewed.add("cam0")  # what Trust records when the capture's token changed
    sink.handle(wire.eos_message("cam0", 2))  # the new process sent 2: its seq restarted at 0
    assert sink.cams["cam0"].sent == 2
    sink.close()


# ----- ring references ------------------------------------------------------------------------------
@pytest.fixture
def rings(tmp_path: Path):
    ring_dir = tmp_path / "rings"
    ring_dir.mkdir(mode=0o700)
    cfg = config.load(
        None,
        {"sources": [{"url": "a.mp4"}, {"url": "b.mp4"}], "transport": {"shm_dir": str(ring_dir)}},
    )
    w0 = framering.RingWriter(ring_dir, 0, lambda nbytes: 8)
    w1 = framering.RingWriter(ring_dir, 1, lambda nbytes: 8)
    pixels = framering.StagePixels(cfg, "detect")
    yield w0, w1, pixels
    pixels.close()
    w0.close()
    w1.close()


def ref_frame(cam: str, seq: int, ring: str, slot: int, shape=SHAPE) -> wire.Frame:
    msg = wire.frame_message(cam, seq, None, ref=wire.FrameRef(ring, slot, shape))
    out = wire.decode(wire.encode(msg))
    assert isinstance(out, wire.Frame)
    return out


def test_a_bad_reference_costs_exactly_its_own_message(rings):
    w0, w1, pixels = rings
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, SHAPE, dtype=np.uint8) for _ in range(4)]
    for seq in range(3):
        w0.write(imgs[seq], seq)
    w1.write(imgs[3], 0)
    ring0 = w0.name
    pixels.done(ref_frame("cam0", 0, ring0, 0))  # detect is through with frame 0 of cam0
    done_before = [int(x) for x in w0.ring.done], [int(x) for x in w1.ring.done]
    before = dropped("detect", "cam0", "forged_ref") + dropped("detect", "cam1", "forged_ref")
    forged = [
        ref_frame("cam1", 1, ring0, 1),  # cam1's frame in cam0's ring (it exists, the slot is valid)
        ref_frame("cam0", 1, ring0, 7),  # slot within the ring but not seq % slots
        ref_frame("cam0", 1, ring0, 60000),  # beyond the ring's slots
        ref_frame("cam0", 40001, ring0, 40001 % 8),  # far ahead of what cam0's capture has written
        ref_frame("cam0", 3, ring0, 3),  # the next frame: not written yet
        ref_frame("cam0", 1, ring0, 1, (72, 128, 3)),  # not the ring's frame shape
        ref_frame("cam0", 1, "cap7-1-0.ring", 1),  # a camera index that does not exist
    ]
    for msg in forged:
        assert not pixels.load(msg)
        assert msg.ref is None and msg.frame is None  # forgotten: nothing of it can be used
        pixels.done(msg)
    assert dropped("detect", "cam0", "forged_ref") + dropped("detect", "cam1", "forged_ref") - before == 7
    # No reader progress moved, no slot released, nothing carried as a frame of either camera.
    assert ([int(x) for x in w0.ring.done], [int(x) for x in w1.ring.done]) == done_before
    nxt = wire.eos_message("cam0", 3)
    pixels.carry(nxt)
    assert nxt.skipped == 0 and pixels.skipped == {}
    # The real frames are untouched.
    for seq in (1, 2):
        msg = ref_frame("cam0", seq, ring0, seq)
        assert pixels.load(msg) and np.array_equal(msg.frame, imgs[seq]) and pixels.check(msg)


def test_a_reference_to_a_ring_that_is_gone_is_a_frame_of_the_camera(rings, tmp_path):
    _, _, pixels = rings
    before = dropped("detect", "cam0", "bad_ref")
    msg = ref_frame("cam0", 0, "cap0-1-0.ring", 0)
    assert not pixels.load(msg)
    assert dropped("detect", "cam0", "bad_ref") - before == 1
    assert pixels.skipped == {"cam0": 1}  # a retired generation's frame: the sink must not wait


def test_end_of_stream_releases_only_its_own_ring_up_to_what_was_written(rings):
    w0, w1, pixels = rings
    img = np.zeros(SHAPE, np.uint8)
    for seq in range(3):
        w0.write(img, seq)
    w1.write(img, 0)
    ring0, ring1 = w0.name, w1.name
    detect = framering.PIXEL_READERS.index("detect")
    pixels.done(wire.eos_message("cam0", 50, ring=ring0))  # says 50 sent: 3 were written
    pixels.done(wire.eos_message("cam1", 3, ring=ring0))  # cam1's end naming cam0's ring
    assert int(w0.ring.done[detect]) == 0
    pixels.done(wire.eos_message("cam0", 3, ring=ring0))  # the true end: the capture may exit
    assert int(w0.ring.done[detect]) == 4
    assert int(w1.ring.done[detect]) == 0
    # The reader's own check, without StagePixels: a frame never past the writer.
    reader = framering.RingReader(w0.dir, "embed")
    reader.done(ring1, 5)
    assert int(w1.ring.done[framering.PIXEL_READERS.index("embed")]) == 0
    reader.close()


def test_match_keeps_the_captures_token_off_the_results_pub():
    """The results PUB reaches dashboards (maybe beyond loopback): an end-of-stream goes there
    without its origin, and to the sink with it."""
    from stream.pipeline.stages.base import Stop
    from stream.pipeline.stages.match import Match

    cfg = config.load(None, {"sources": [{"url": "a"}]})
    stage = Match(cfg, 0, Stop())
    ctx = zmq.Context()
    try:
        stage.sink = transport.socket(ctx, zmq.PUSH, bind="inproc://to-sink", hwm=10, linger_ms=0)
        stage.pub = transport.socket(ctx, zmq.PUB, bind="inproc://pub", hwm=10, linger_ms=0)
        sink = transport.socket(ctx, zmq.PULL, connect=["inproc://to-sink"], hwm=10, linger_ms=0)
        sub = transport.socket(ctx, zmq.SUB, connect=["inproc://pub"], hwm=10, linger_ms=0)
        stage.emit(wire.eos_message("cam0", 4, origin="ab" * 16))
        for sock, origin in ((sink, "ab" * 16), (sub, None)):
            assert sock.poll(5000)
            msg = wire.decode(sock.recv_multipart())
            assert isinstance(msg, wire.EndOfStream) and msg.origin == origin
    finally:
        ctx.destroy(linger=0)
