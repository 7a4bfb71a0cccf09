"""Pieces of the pipeline without models: dynamic batching, the sink's end-of-run rule, summaries."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import zmq
from waiting import wait_until

from stream.detections import Detections
from stream.pipeline import batching, config, transport, wire
from stream.pipeline.stages.sinks import Sink
from stream.pipeline.summary import Stats, format_summary


@pytest.fixture
def pair():
    ctx = zmq.Context()
    push = transport.socket(ctx, zmq.PUSH, bind="inproc://batch", hwm=100)
    pull = transport.socket(ctx, zmq.PULL, connect=["inproc://batch"], hwm=100)
    yield push, pull
    push.close(0)
    pull.close(0)
    ctx.term()


def arrived(pull: zmq.Socket) -> None:
    """What was sent has arrived: inproc writes every message into the pipe as it is sent, so once
    the first can be read, all can."""
    wait_until(lambda: pull.poll(0), 5.0, "the sent messages to arrive")


def frame(seq: int, cam: str = "cam0") -> wire.Message:
    return wire.frame_message(cam, seq, np.zeros((8, 8, 3), np.uint8))


def test_batch_takes_what_is_waiting_up_to_max(pair):
    push, pull = pair
    for i in range(6):
        transport.send(push, frame(i))
    arrived(pull)
    batch = batching.take_batch(pull, "detect", max_batch=4, max_wait_ms=50)
    assert [r.msg.seq for r in batch] == [0, 1, 2, 3]
    assert [r.msg.seq for r in batching.take_batch(pull, "detect", 4, 50)] == [4, 5]


def test_batch_never_waits_longer_than_max_wait(pair):
    push, pull = pair
    transport.send(push, frame(0))
    t = time.monotonic()
    batch = batching.take_batch(pull, "detect", max_batch=8, max_wait_ms=30)
    assert len(batch) == 1 and time.monotonic() - t < 0.5


def test_batch_is_empty_when_idle(pair):
    _, pull = pair
    assert batching.take_batch(pull, "detect", 4, 5, idle_ms=20) == []


def test_control_message_closes_the_batch_in_order(pair):
    push, pull = pair
    transport.send(push, frame(0))
    transport.send(push, wire.eos_message("cam0", 1))
    transport.send(push, frame(0, "cam1"))
    arrived(pull)
    batch = batching.take_batch(pull, "detect", 8, 50)
    assert [r.msg.kind for r in batch] == ["frame", "eos"]


def test_bad_messages_are_skipped_inside_a_batch(pair):
    push, pull = pair
    push.send_multipart([b"junk"])
    transport.send(push, frame(3))
    arrived(pull)
    batch = batching.take_batch(pull, "detect", 4, 20)
    assert [r.msg.seq for r in batch] == [3]


def test_weighted_batches_count_faces(pair):
    push, pull = pair
    for i in range(3):
        transport.send(push, frame(i))
    arrived(pull)
    batch = batching.take_batch(pull, "embed_test", max_batch=10, max_wait_ms=20, weigh=lambda m: 5)
    assert len(batch) == 2


def result(cam: str, seq: int) -> wire.Message:
    t = {
        "capture": 0,
        "detect_in": 1_000_000,
        "detect_out": 2_000_000,
        "embed_in": 2_000_000,
        "embed_out": 3_000_000,
        "match_in": 3_000_000,
        "match_out": 4_000_000 + seq,
    }
    no_faces = Detections.empty().with_columns(
        tracks=np.zeros(0, np.int32),
        names=[],
        distances=np.zeros(0, np.float64),
        quality=np.zeros(0, np.float32),
    )
    return wire.Result(cam=cam, seq=seq, t=t, wall=1.5, dets=no_faces)


def test_sink_ends_after_every_camera_and_writes_jsonl(tmp_path):
    cfg = config.load(
        None,
        {
            "sources": [{"url": "a"}, {"url": "b"}],
            "outputs.out": str(tmp_path / "r.jsonl"),
            "transport.run_dir": str(tmp_path),
            "supervisor.eos_grace_s": 0.2,
        },
    )
    sink = Sink(cfg)
    sink.handle(result("cam0", 0))
    sink.handle(wire.eos_message("cam0", 1))
    assert not sink.finished()  # cam1 has not ended
    sink.handle(result("cam1", 0))
    sink.handle(wire.eos_message("cam1", 2))  # one frame of cam1 still missing
    assert not sink.finished()
    time.sleep(0.25)  # the 0.2 s grace runs out: a clock, nothing else to wait for
    assert sink.finished()  # lost in flight: given up after the grace period
    sink.close()
    rows = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [(r["camera"], r["seq"]) for r in rows] == [("cam0", 0), ("cam1", 0)]
    assert rows[0]["latency_ms"] == {"detect": 2.0, "embed": 1.0, "match": 1.0, "total": 4.0}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["missing"] == {"cam1": 1} and summary["frames"] == {"cam0": 1, "cam1": 1}


def test_summary_text():
    s = Stats()
    for i in range(100):
        s.add(
            "cam0",
            {
                "capture": 0,
                "detect_in": 0,
                "detect_out": i * 1_000_000,
                "embed_in": 0,
                "embed_out": i * 1_000_000,
                "match_in": 0,
                "match_out": i * 1_000_000,
            },
            1,
        )
    d = s.to_dict()
    assert d["frames"] == {"cam0": 100} and d["e2e_ms"]["p50"] == pytest.approx(49.5)
    d.update(dropped={"cam0": {"capture/busy": 3}}, restarts={"detect": 1})
    text = format_summary(d)
    assert "100 frames" in text and "capture/busy 3" in text and "p99" in text and "detect 1" in text


def test_busy_detector_skips_to_each_live_cameras_newest_frame(pair):
    """Live frames: the detector takes the newest frame per camera and counts the rest as stale; file
    frames are never skipped; an end-of-stream keeps its place after the frames before it."""
    from prometheus_client import REGISTRY

    from stream.pipeline import metrics
    from stream.pipeline.stages.detect import keep_freshest

    push, pull = pair
    live = [
        wire.frame_message(cam, i, np.zeros((8, 8, 3), np.uint8), live=True) for i in range(4) for cam in "ab"
    ]
    for msg in [*live, frame(0, "file"), frame(1, "file"), wire.eos_message("a", 4), frame(4, "a")]:
        transport.send(push, msg)
    arrived(pull)
    m = metrics.get()
    stale = {"stage": "detect", "camera": "a", "reason": "stale"}

    def stale_count() -> float:
        return REGISTRY.get_sample_value("facestream_frames_dropped_total", stale) or 0.0

    stale_before = stale_count()
    batch = batching.take_batch(pull, "detect", max_batch=2, max_wait_ms=20)
    kept = keep_freshest(batch, pull, m)
    got = [(r.msg.kind, r.msg.cam, r.msg.seq, getattr(r.msg, "skipped", 0)) for r in kept]
    assert got == [
        ("frame", "a", 3, 3),
        ("frame", "b", 3, 3),
        ("frame", "file", 0, 0),
        ("frame", "file", 1, 0),
        ("eos", "a", 4, 0),
    ]
    assert stale_count() - stale_before == 3
    # What follows the end-of-stream is left for the next batch.
    assert [r.msg.seq for r in batching.take_batch(pull, "detect", 4, 20)] == [4]
