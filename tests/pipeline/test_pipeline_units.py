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
from stream.pipeline.summary import Samples, books, format_summary, quantiles, summarize


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
    from prometheus_client import REGISTRY

    def out(cam: str) -> float:
        labels = {"stage": "sink", "camera": cam}
        return REGISTRY.get_sample_value("facestream_frames_total", labels) or 0.0

    before = out("cam0"), out("cam1")
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
    # What it wrote is counted (the summary's "out"); its end file says what each camera said it sent.
    assert (out("cam0") - before[0], out("cam1") - before[1]) == (1, 1)
    assert json.loads((tmp_path / "sink.json").read_text())["sent_said"] == {"cam0": 1, "cam1": 2}


def buckets(edges_counts: list[tuple[str, float]], **labels: str) -> list[tuple[dict[str, str], float]]:
    return [({**labels, "le": le}, n) for le, n in edges_counts]


def test_percentiles_interpolate_within_histogram_buckets():
    # 50 observations up to 10 ms, 50 more up to 20 ms: the median is the first bucket's edge.
    b = buckets([("0.01", 50), ("0.02", 100), ("+Inf", 100)], camera="a")
    assert quantiles(b, (50, 75)) == {"p50": 10.0, "p75": 15.0}
    # Two label sets are summed; beyond the last finite edge the best bound is that edge.
    b += buckets([("0.01", 0), ("0.02", 0), ("+Inf", 100)], camera="b")
    assert quantiles(b, (99,)) == {"p99": 20.0}
    assert quantiles(b, (50,), camera="a") == {"p50": 10.0}
    assert quantiles([], (50,)) == {"p50": None}


def test_summary_books_balance_and_read_as_text():
    samples = Samples(
        counters={
            "facestream_frames_total": [
                ({"stage": "capture", "camera": "cam0"}, 100.0),
                ({"stage": "sink", "camera": "cam0"}, 90.0),
            ],
            "facestream_frames_dropped_total": [
                ({"stage": "capture", "camera": "cam0", "reason": "busy"}, 3.0),
                ({"stage": "detect", "camera": "cam0", "reason": "stale"}, 6.0),
            ],
            "facestream_faces_total": [({"camera": "cam0"}, 120.0)],
        },
        buckets={
            "facestream_e2e_latency_seconds": buckets(
                [("0.05", 45), ("0.1", 90), ("+Inf", 90)], camera="cam0"
            )
        },
    )
    kept = books(samples, ["cam0"])["cam0"]
    # 103 read = 100 sent + 3 dropped by capture; 100 sent = 90 out + 6 stale + 4 unaccounted.
    assert (kept.read, kept.sent, kept.out, kept.unaccounted) == (103, 100, 90, 4)
    # Booked as lost with a capture that died: sent, so still not "read but not sent".
    samples.counters["facestream_frames_dropped_total"].append(
        ({"stage": "capture", "camera": "cam0", "reason": "crashed"}, 4.0)
    )
    kept = books(samples, ["cam0"])["cam0"]
    assert (kept.read, kept.unaccounted) == (103, 0)
    samples.counters["facestream_frames_dropped_total"].pop()
    d = summarize(samples, ["cam0"], span_s=9.0)
    assert d["frames"] == {"cam0": 90} and d["fps"] == 10.0 and d["unaccounted"] == {"cam0": 4}
    assert d["e2e_ms"]["p50"] == pytest.approx(50.0)
    d.update(restarts={"detect": 1})
    text = format_summary(d)
    assert "103 frames read = 90 out + 9 dropped (capture/busy 3, detect/stale 6); 120 faces" in text
    assert "4 frames UNACCOUNTED FOR" in text and "p99" in text and "detect 1" in text


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
