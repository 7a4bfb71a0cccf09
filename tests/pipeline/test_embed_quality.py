"""The embed stage scores each face's quality and drops detections whose landmarks no face has,
counted, before embedding; the frame's other faces keep their rows aligned with their embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zmq
from prometheus_client import REGISTRY

from stream.detections import Detections
from stream.pipeline import metrics, wire
from stream.pipeline.batching import Received, receive
from stream.pipeline.stages.embed import process


class Never:
    def __bool__(self) -> bool:
        return False


def test_implausible_detections_are_dropped_and_counted(analyzer, shared_data: Path) -> None:
    from stream.imageio import load_image

    frame = load_image(shared_data / "faces/face_recognition/two_people.jpg")
    real = analyzer.detect([frame])[0]
    assert len(real) == 2
    # A third "face": the first face's points with the mouth above the eyes (a hand, a microphone).
    lm = real.landmarks[0].copy()
    lm[[0, 1, 3, 4]] = lm[[3, 4, 0, 1]]
    fake = Detections.of(real.boxes[:1], [0.97], lm[None])
    dets = Detections.merge([real[:1], fake, real[1:]])
    msg = wire.Dets(cam="qcam", seq=0, frame=frame, dets=dets)

    ctx = zmq.Context.instance()
    out, inp = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    out.bind("inproc://embed-quality")
    inp.connect("inproc://embed-quality")
    try:
        before = REGISTRY.get_sample_value(
            "facestream_faces_rejected_total", {"camera": "qcam", "reason": "not a face"}
        )
        process([Received(msg, 0)], analyzer.embedder, out, metrics.get(), Never(), keep_pixels=False)
        got = receive(inp, "match")
    finally:
        out.close()
        inp.close()
    assert got is not None and isinstance(got.msg, wire.Faces)
    d = got.msg.dets
    assert len(d) == 2 and d.embeddings is not None and d.quality is not None
    np.testing.assert_array_equal(d.boxes, real.boxes)
    # Each row's embedding is that face's own: the same as embedding the two real faces alone.
    alone = analyzer.embedder.embed(analyzer.embedder.crop(frame, real))
    np.testing.assert_allclose(d.embeddings, alone, atol=1e-4)
    assert np.all((d.quality > 0) & (d.quality <= 1))
    after = REGISTRY.get_sample_value(
        "facestream_faces_rejected_total", {"camera": "qcam", "reason": "not a face"}
    )
    assert after == (before or 0) + 1
