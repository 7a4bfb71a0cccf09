"""Forged messages injected into a running pipeline cost only themselves (trust.py, framering.py).

The forger is what the issue describes: a process of the same user that knows the run directory.
Stage inputs connect to their upstream's ipc path, so the forger binds that path first (capture-1's,
before the run starts): detect connects to it, and the real capture-1 -- which rebinds the path when
it starts -- waits for detect while the forger holds the connection. With cam0 running, the forger
sends a frame for a camera that does not exist, two end-of-stream messages for cam0 (one without the
capture's token; one with the token, read from the run directory, but fewer frames than were already
written) and three ring references (cam1's frame in cam0's ring, a slot beyond the ring, a seq far
ahead of what cam0's capture has written: the reference that used to release cam0's slots and cost
10-27 frames). It then lets go, detect reconnects to the real capture-1, and the run must end by
itself with every real frame written and only the forged messages counted."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq
from test_pipeline_e2e import finish, lines, start
from waiting import wait_until

from stream.pipeline import transport, trust, wire
from stream.pipeline.summary import read_samples

pytestmark = pytest.mark.e2e  # every test here starts processes

SIZE = (320, 180)  # small frames: detect is quick, and nothing here needs faces


def synthetic_clip(path: Path, frames: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, SIZE)
    for _ in range(frames):
        out.write(rng.integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8))
    out.release()
    return path


def counters(run_dir: Path) -> tuple[dict[tuple[str, str, str], int], dict[str, int]]:
    """(frames dropped by (stage, camera, reason), bad messages by stage), every process's, nonzero."""
    got = read_samples(run_dir / "metrics")
    dropped = {
        (lb["stage"], lb["camera"], lb["reason"]): int(v) for lb, v in got.counter("frames_dropped") if v
    }
    bad = {lb["stage"]: int(v) for lb, v in got.counter("bad_messages") if v}
    return dropped, bad


def ref_frame(cam: str, seq: int, ring: str, slot: int) -> wire.Frame:
    h, w = SIZE[1], SIZE[0]
    return wire.frame_message(cam, seq, None, ref=wire.FrameRef(ring, slot, (h, w, 3)))


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="frame rings need /dev/shm")
def test_forged_messages_cost_only_themselves(models_home, tmp_path):
    n0, n1 = 80, 12
    cam0 = synthetic_clip(tmp_path / "cam0.mp4", n0, seed=0)
    cam1 = synthetic_clip(tmp_path / "cam1.mp4", n1, seed=1)
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    out = tmp_path / "out.jsonl"

    ctx = zmq.Context()
    forger = ctx.socket(zmq.PUSH)
    forger.linger = 5000
    forger.bind(f"ipc://{run_dir}/capture-1")  # before the run: detect will connect here
    proc, err = start(
        tmp_path,
        "--source",
        str(cam0),
        "--source",
        str(cam1),
        "--out",
        str(out),
        "--summary",
        str(tmp_path / "summary.json"),
        config=f"transport: {{run_dir: {run_dir}}}\n",
    )
    try:
        # Mid-run: cam0's frames are coming out (cam1's capture waits for the forger to let go).
        def cam0_running() -> bool:
            assert proc.poll() is None, err.read_text()
            return sum(r["camera"] == "cam0" for r in lines(out)) >= 10

        wait_until(cam0_running, 180, "cam0's first results")
        assert forger.poll(0, zmq.POLLOUT), "detect is not connected to the forger"
        (ring_dir,) = Path("/dev/shm").glob(f"facestream-{proc.pid}-*")
        (ring,) = (p.name for p in ring_dir.glob("cap0-*.ring"))
        slots = struct.unpack_from("<I", (ring_dir / ring).read_bytes()[:12], 8)[0]
        token = trust.read_token(run_dir, 0)
        assert token, "the supervisor gave cam0's capture no token"
        ghost = wire.frame_message("ghost", 0, np.zeros((SIZE[1], SIZE[0], 3), np.uint8))
        far = 100_000
        forged = [
            ghost,
            wire.eos_message("cam0", 26),  # no token: refused by detect
            wire.eos_message("cam0", 3, origin=token),  # the token, but 3 < what the sink has seen
            ref_frame("cam1", 1, ring, 1 % slots),  # another camera's ring
            ref_frame("cam0", 1, ring, 60000),  # beyond the ring's slots
            ref_frame("cam0", far, ring, far % slots),  # far ahead of what cam0's capture wrote
        ]
        for msg in forged:
            transport.send(forger, msg)

        def taken() -> bool:
            dropped, bad = counters(run_dir)
            return sum(dropped.values()) >= 4 and sum(bad.values()) >= 2

        wait_until(taken, 60, "the forged messages to be taken")
        forger.close()  # detect reconnects to the real capture-1
        rc = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        forger.close(linger=0)
        ctx.term()

    stderr = err.read_text()
    assert rc == 0, stderr
    rows = lines(out)
    assert sorted(r["seq"] for r in rows if r["camera"] == "cam0") == list(range(n0)), stderr
    assert sorted(r["seq"] for r in rows if r["camera"] == "cam1") == list(range(n1)), stderr
    assert {r["camera"] for r in rows} == {"cam0", "cam1"}
    dropped, bad = counters(run_dir)
    assert dropped == {
        ("detect", trust.UNKNOWN_CAMERA, "unknown_camera"): 1,
        ("detect", "cam1", "forged_ref"): 1,
        ("detect", "cam0", "forged_ref"): 2,
    }, stderr
    assert bad == {"detect": 1, "sink": 1}, stderr  # the end-of-stream without, and with the token
    assert "dropped a frame message for camera 'ghost', which is not in the config" in stderr
    assert stderr.count("refused an end-of-stream for camera cam0") == 2, stderr
    assert "already seen" in stderr and "does not say which capture process sent it" in stderr
    # The forged references are reported, but they are not in the cameras' books, which balance.
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["forged"] == {"cam0": 2, "cam1": 1} and summary["dropped"] == {}
    assert summary["read"] == summary["frames"] == {"cam0": n0, "cam1": n1} and not summary["unaccounted"]
