"""One stage started alone (`facestream stage detect`), fed through its real input socket: malformed
and wrong-version messages are counted and dropped, and the stage keeps serving good frames."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from waiting import wait_until

from stream.pipeline import config, transport, wire

pytestmark = pytest.mark.e2e  # every test here starts processes


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def bad_count(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(r'^facestream_bad_messages_total\{stage="detect"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.fixture
def detect_stage(models_home: Path, tmp_path: Path):
    cfg = config.load(None, {"sources": [{"url": "unused.mp4"}], "transport.run_dir": str(tmp_path)})
    cfg.dump(tmp_path / "c.yaml")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "OMP_WAIT_POLICY")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stream",
            "stage",
            "detect",
            "--config",
            str(tmp_path / "c.yaml"),
            "--metrics-port",
            str(port),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    ctx = zmq.Context()
    # We stand where the capture and the embed stage would: bind capture-0's output, pull detect-0's.
    push = transport.socket(ctx, zmq.PUSH, bind=cfg.endpoint("capture", 0), hwm=10, linger_ms=0)
    pull = transport.socket(ctx, zmq.PULL, connect=[cfg.endpoint("detect", 0)], hwm=10, linger_ms=0)

    def ready() -> bool:
        assert proc.poll() is None, proc.stderr.read()
        return (tmp_path / "ready-detect-0").exists()

    wait_until(ready, 120, "the detect stage to be ready")
    yield proc, push, pull, port
    proc.terminate()
    proc.wait(10)
    push.close()
    pull.close()
    ctx.term()


def good_frame(seq: int) -> wire.Message:
    frame = np.full((120, 160, 3), 128, np.uint8)
    return wire.frame_message("cam0", seq, frame)


def test_a_stage_started_alone_lets_idle_threads_sleep(detect_stage):
    """No supervisor (another host, a pod): the stage itself makes idle OpenMP threads sleep, or they
    spin on cores the other stages need (benchmarks/RESULTS.md, "Stage threads")."""
    proc = detect_stage[0]
    proc.terminate()
    proc.wait(10)
    assert "torch threads; idle threads sleep" in proc.stderr.read()


def test_bad_messages_are_counted_and_the_stage_keeps_serving(detect_stage):
    proc, push, pull, port = detect_stage
    header, pixels = wire.encode(good_frame(0))
    wrong_version = msgpack.unpackb(header)
    wrong_version["v"] = wire.VERSION + 1
    bad_shape = msgpack.unpackb(header)
    bad_shape["shape"] = [4000, 4000, 3]
    wrong_kind = wire.encode(wire.Result(cam="cam0", seq=0))
    bad = [
        [b"not msgpack \xc1"],
        [msgpack.packb(wrong_version), pixels],
        [msgpack.packb(bad_shape), pixels],
        [msgpack.packb({"hello": "world"})],
        [header],  # pixels missing
        wrong_kind,  # valid, but not something detect takes
    ]
    for parts in bad:
        push.send_multipart(parts, copy=False)
    transport.send(push, good_frame(1))
    assert pull.poll(60_000), "the stage stopped serving"
    out = wire.decode(pull.recv_multipart(copy=False))
    assert out.kind == wire.DETS and out.seq == 1
    assert isinstance(out, wire.Dets)
    assert out.frame is not None and out.frame.shape == (120, 160, 3) and out.dets.boxes.shape == (0, 4)
    assert {"capture", "detect_in", "detect_out"} <= set(out.t)
    assert bad_count(port) == len(bad)
    # And once more after the barrage, with an end-of-stream passing through in order.
    transport.send(push, good_frame(2))
    transport.send(push, wire.eos_message("cam0", 3))
    got = []
    for _ in range(2):
        assert pull.poll(60_000)
        got.append(wire.decode(pull.recv_multipart(copy=False)))
    assert [(m.kind, m.seq) for m in got] == [(wire.DETS, 2), (wire.EOS, 3)]
    assert proc.poll() is None
