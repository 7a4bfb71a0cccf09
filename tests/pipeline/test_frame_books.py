"""Every frame accounted for: kill each kind of stage in turn (-9, mid-run) and check the run's books.
Per camera, frames read = frames out + frames dropped (by reason, `crashed` for what a dead stage held),
the summary's "out" equals the JSONL's lines (also when the sink itself was the one restarted), and no
frame is output twice. Real processes, real models, the shared clip at 640x360."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from test_pipeline_e2e import children, finish, lines, small_clip, start  # noqa: F401 - a fixture
from waiting import wait_until

pytestmark = pytest.mark.e2e  # every test here starts processes

FRAMES = 40  # small_clip's length
# Small queues and batches: what a dead stage takes with it stays small, and the run stays short.
CONFIG = "transport: {hwm: 2}\ndetect: {max_batch: 4}\nsupervisor: {eos_grace_s: 1.0}\n"
# What a stage may drop a frame for in these runs (besides a crash).
REASONS = {"stale", "overwritten", "crashed"}


def run_and_kill(tmp: Path, clip: Path, role: str) -> dict:
    out, summary = tmp / "r.jsonl", tmp / "summary.json"
    proc, err = start(tmp, "--source", str(clip), "--out", str(out), "--summary", str(summary), config=CONFIG)
    wait_until(lambda: len(out.read_text().splitlines()) >= 5 if out.exists() else False, 180, "5 results")
    (victim,) = children(proc.pid, role)
    os.kill(victim, signal.SIGKILL)
    rc = finish(proc)
    return {
        "rc": rc,
        "rows": lines(out),
        "summary": json.loads(summary.read_text()),
        "stderr": err.read_text(),
    }


@pytest.mark.parametrize("role", ["detect", "embed", "match", "sink"])
def test_a_killed_worker_is_restarted_and_every_frame_is_booked(small_clip, models_home, tmp_path, role):  # noqa: F811
    got = run_and_kill(tmp_path, small_clip, role)
    assert got["rc"] == 0, got["stderr"][-2000:]
    s, rows = got["summary"], got["rows"]
    assert s["restarts"] == {role: 1}
    seqs = [r["seq"] for r in rows]
    assert len(seqs) == len(set(seqs))  # nothing output twice
    # The summary is computed from the metrics: a restarted sink does not reset it.
    assert s["frames"]["cam0"] == len(rows), got["stderr"][-2000:]
    assert s["read"]["cam0"] == s["sent"]["cam0"] == FRAMES  # a file: every frame read and sent
    dropped = s["dropped"].get("cam0", {})
    assert s["read"]["cam0"] == len(rows) + sum(dropped.values()), dropped
    assert "unaccounted" not in s or not s["unaccounted"], s
    assert {k.split("/")[1] for k in dropped} <= REASONS, dropped
    # The frames that neither came out nor were dropped by a living stage are booked as crashed, on
    # the stage that died (a frame can also be lost to an overwritten slot, counted where it happened).
    lost = FRAMES - len(rows) - sum(v for k, v in dropped.items() if not k.endswith("/crashed"))
    assert dropped.get(f"{role}/crashed", 0) == lost, dropped
    assert "UNACCOUNTED" not in got["stderr"]


def test_a_killed_capture_ends_its_camera_with_every_frame_booked(small_clip, models_home, tmp_path):  # noqa: F811
    got = run_and_kill(tmp_path, small_clip, "capture")
    # A file cannot resume mid-way: the camera ends, reported, and the run says it failed.
    assert got["rc"] != 0 and "capture crashed (killed by signal 9)" in got["stderr"], got["stderr"][-2000:]
    s, rows = got["summary"], got["rows"]
    seqs = [r["seq"] for r in rows]
    assert len(seqs) == len(set(seqs))
    read, dropped = s["read"]["cam0"], s["dropped"].get("cam0", {})
    assert 5 <= read <= FRAMES and s["frames"]["cam0"] == len(rows)
    assert read == len(rows) + sum(dropped.values()), dropped
    assert {k for k in dropped if k.endswith("/crashed")} <= {"capture/crashed"}, dropped


def test_no_crash_no_loss(small_clip, models_home, tmp_path):  # noqa: F811
    """Without a crash the books balance with no crashed, shutdown or lost frames at all."""
    out, summary = tmp_path / "r.jsonl", tmp_path / "summary.json"
    proc, err = start(tmp_path, "--source", str(small_clip), "--out", str(out), "--summary", str(summary))
    assert finish(proc) == 0, err.read_text()[-2000:]
    s = json.loads(summary.read_text())
    assert s["read"] == s["sent"] == s["frames"] == {"cam0": FRAMES} and s["dropped"] == {}
    assert len(lines(out)) == FRAMES and s["restarts"] == {}
    assert "40 frames read = 40 out + 0 dropped" in err.read_text()
