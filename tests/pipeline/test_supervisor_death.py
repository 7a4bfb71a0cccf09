"""A supervisor killed by -9: its stages follow it (parent-death signal, or the parent check in their
loop), they remove its frame rings and run directory, and the next run removes whatever a dead run
still left behind, in one line. Real processes, real models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import pytest
from test_pipeline_e2e import CLIP, children, start
from waiting import wait_until

pytestmark = pytest.mark.e2e  # every test here starts processes

SHM = Path("/dev/shm")


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper has stopped: it holds no memory, socket or file)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def left_by(pid: int) -> list[Path]:
    """The run directory and ring directory named after supervisor `pid`."""
    bases = [Path(tempfile.gettempdir()), *([SHM] if SHM.is_dir() else [])]
    return [d for base in bases for d in base.glob(f"facestream-{pid}-*")]


def test_stages_die_with_a_killed_supervisor_and_leave_nothing(shared_data, models_home, tmp_path):
    proc, err = start(tmp_path, "--source", str(shared_data / CLIP), "--realtime")
    try:
        # Every stage running and a ring written: the capture has started sending frames.
        wait_until(
            lambda: (
                len(children(proc.pid)) == 5
                and any(True for d in left_by(proc.pid) for _ in d.rglob("*.ring"))
            ),
            120,
            "five stages and a frame ring",
        )
        stages = children(proc.pid)
        assert proc.poll() is None, err.read_text()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        wait_until(lambda: not [p for p in stages if alive(p)], 5, "every stage to exit")
        wait_until(lambda: not left_by(proc.pid), 5, "no ring and no run directory")
    finally:
        for p in children(proc.pid):
            os.kill(p, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


def test_the_next_run_removes_what_a_dead_run_left(shared_data, models_home, tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid whose process is gone: a supervisor killed by -9
    run_dir = Path(tempfile.mkdtemp(prefix=f"facestream-{gone.pid}-"))
    (run_dir / "config.yaml").write_text("{}\n")
    leftovers = [run_dir]
    if SHM.is_dir():
        ring_dir = Path(tempfile.mkdtemp(prefix=f"facestream-{gone.pid}-", dir=SHM))
        (ring_dir / "cap0-1-0.ring").write_bytes(b"\0" * 4096)
        leftovers.append(ring_dir)
    mine = Path(tempfile.mkdtemp(prefix=f"facestream-{os.getpid()}-"))  # a live run's: kept
    clip = tmp_path / "five.mp4"
    cap = cv2.VideoCapture(str(shared_data / CLIP))
    out = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (320, 180))
    for _ in range(5):
        ok, frame = cap.read()
        assert ok
        out.write(cv2.resize(frame, (320, 180)))
    out.release()
    try:
        proc, err = start(tmp_path, "--source", str(clip))
        assert proc.wait(240) == 0, err.read_text()[-2000:]
        assert not [d for d in leftovers if d.exists()]
        assert mine.exists()
        lines = [line for line in err.read_text().splitlines() if "dead run" in line]
        assert len(lines) == 1, err.read_text()[-2000:]
        assert all(str(d) in lines[0] for d in leftovers), lines
    finally:
        mine.rmdir()
