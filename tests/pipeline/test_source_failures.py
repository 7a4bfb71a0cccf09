"""`facestream run` with sources that never open (issue 7, item 6): real processes, real models, real
sockets and devices -- a webcam index with no device, an rtsp:// URL on a loopback port nothing
listens on, a file that does not exist.

What a user may rely on: a warning with the reason on every retry; a source that has NEVER opened
fails the whole run after its open timeout (one line on stderr, exit 2), unless it is configured to
wait forever, in which case it retries (camera_up 0 in /metrics) until Ctrl-C, which exits 0.
Open timeouts here are ~1.5 s so that each run costs seconds (mostly model loading)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_sources import closed_port, serve_video
from waiting import wait_until

pytestmark = pytest.mark.e2e  # every test here starts processes

FAST = "capture: {reconnect_initial_s: 0.2, reconnect_max_s: 0.5, open_timeout_s: 1.5}\n"
RUN_LIMIT_S = 120  # model loading on a busy 2-core machine; the runs themselves take seconds
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def run(tmp: Path, config: str, *args: str) -> subprocess.Popen:
    (tmp / "config.yaml").write_text(config)
    return subprocess.Popen(
        [sys.executable, "-m", "stream", "run", "--config", str(tmp / "config.yaml"), *args],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "stderr.txt", "w"),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=tmp,
    )


def wait(proc: subprocess.Popen, timeout: float = RUN_LIMIT_S) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def stamp(line: str) -> float:
    m = STAMP.match(line)
    assert m, line
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def check_gave_up(text: str, cam: str, url: str, why: str, timeout_s: float = 1.5) -> None:
    """Retry warnings with the reason, then the one-line error as the last line, at the deadline."""
    retries = [
        ln for ln in text.splitlines() if f"camera {cam} down: {url}: {why}" in ln and "retrying in" in ln
    ]
    assert len(retries) >= 2, text[-3000:]
    assert all("gives up in" in ln for ln in retries)
    last = text.strip().splitlines()[-1]
    assert last.startswith("facestream: error: "), last
    assert f"source {cam} ({url}) never opened in {timeout_s:g} s: {why}" in last, last
    assert "; set open_timeout_s: forever to wait for it" in last, last
    failed = next(ln for ln in text.splitlines() if f"camera {cam} failed:" in ln)  # the sink's log line
    waited = stamp(failed) - stamp(retries[0])
    assert timeout_s - 0.3 <= waited <= timeout_s + 3, waited
    assert "Traceback" not in text and "[tcp @" not in text  # no FFmpeg chatter on every retry


def test_missing_file_fails_at_once_even_beside_a_good_source(tmp_path):
    """A file will not appear by retrying: refused before any model loads, the run as a whole."""
    good = tmp_path / "good.mp4"
    w = cv2.VideoWriter(str(good), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (64, 48))
    w.write(np.zeros((48, 64, 3), np.uint8))
    w.release()
    missing = tmp_path / "missing.mp4"
    t0 = time.monotonic()
    proc = run(tmp_path, "{}\n", "--source", str(good), "--source", str(missing))
    assert wait(proc, 60) == 2
    elapsed = time.monotonic() - t0
    text = (tmp_path / "stderr.txt").read_text()
    assert text.strip().splitlines() == [
        f"facestream: error: source cam1 ({missing}) cannot be read: no such file or folder"
    ]
    assert elapsed < 20, elapsed  # no model loading: the Python start-up only


def test_nonexistent_webcam_fails_after_its_open_timeout(models_home, tmp_path):
    if Path("/dev/video9").exists():
        pytest.skip("this machine has a /dev/video9")
    proc = run(tmp_path, FAST, "--source", "9")
    assert wait(proc) == 2
    check_gave_up((tmp_path / "stderr.txt").read_text(), "cam0", "9", "no such camera (/dev/video9")


def test_refused_rtsp_fails_after_its_open_timeout(models_home, tmp_path):
    """Two refused cameras: the first to reach its deadline fails the run; the other, stopped before
    its own (longer) deadline, is named too -- and not restarted as if it had crashed."""
    ports = closed_port(), closed_port()
    urls = [f"rtsp://127.0.0.1:{p}/live" for p in ports]
    sources = f"sources: [{{url: '{urls[0]}'}}, {{url: '{urls[1]}', open_timeout_s: 60}}]\n"
    events = tmp_path / "events.jsonl"
    proc = run(tmp_path, FAST + sources, "--events", str(events))
    assert wait(proc) == 2
    text = (tmp_path / "stderr.txt").read_text()
    check_gave_up(text, "cam0", urls[0], f"connection refused by 127.0.0.1:{ports[0]}")
    assert text.strip().splitlines()[-1].endswith(f"; not opened either: cam1 ({urls[1]})")
    assert "restarting" not in text and "restarts:" not in text
    assert events.read_text().count('"type":"camera_down"') == 2


def test_a_never_opened_source_fails_the_run_and_the_working_one_drains(models_home, tmp_path):
    """Two sources, one that works (a file, every frame) and one that never opens: the run fails as a
    whole at the deadline, and the working camera's frames read so far all reach the output."""
    clip = tmp_path / "long.mp4"
    w = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (320, 240))
    rng = np.random.default_rng(0)
    for _ in range(1500):  # ~170 of these pass in the 1.5 s window here: the file is still going
        w.write(rng.integers(0, 255, (240, 320, 3), np.uint8))
    w.release()
    url = f"rtsp://127.0.0.1:{closed_port()}/live"
    out = tmp_path / "r.jsonl"
    proc = run(tmp_path, FAST, "--source", str(clip), "--source", url, "--out", str(out))
    assert wait(proc) == 2
    text = (tmp_path / "stderr.txt").read_text()
    check_gave_up(text, "cam1", url, "connection refused")
    seqs = [int(m) for m in re.findall(r'"seq":(\d+)', out.read_text())]
    m = re.search(r"camera cam0: (\d+) frames read, (\d+) sent", text)
    assert m, text[-3000:]
    read, sent = int(m.group(1)), int(m.group(2))
    assert 0 < read < 1500  # stopped by the other source's failure, not by the end of the file
    assert seqs == list(range(read)) and sent == read  # every frame read was output, in order
    assert "facestream run summary" in text


def scrape(port: int) -> str:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return ""


def test_wait_forever_source_keeps_retrying_until_ctrl_c(models_home, tmp_path):
    """A per-source `open_timeout_s: forever` wins over a short default: still retrying well after
    the default would have failed the run, down in /metrics, and Ctrl-C exits 0 promptly."""
    url = f"rtsp://127.0.0.1:{closed_port()}/cctv"
    port = closed_port()
    config = FAST + f"sources: [{{url: '{url}', name: gate, open_timeout_s: forever}}]\n"
    proc = run(tmp_path, config, "--metrics-port", str(port))
    err = tmp_path / "stderr.txt"
    retries: list[str] = []

    def retried_past_the_default_or_ended() -> bool:
        if proc.poll() is not None:
            return True
        down = f"camera gate down: {url}: connection refused"
        retries[:] = [ln for ln in err.read_text().splitlines() if down in ln]
        return bool(retries) and stamp(retries[-1]) - stamp(retries[0]) > 3.0  # twice the default timeout

    wait_until(retried_past_the_default_or_ended, RUN_LIMIT_S, "retries over 3 s", every=0.2)
    assert proc.poll() is None, err.read_text()[-3000:]  # the 1.5 s default did not end the run
    assert len(retries) >= 4 and not any("gives up" in ln for ln in retries)
    metrics = scrape(port)
    assert re.search(r'^facestream_camera_up\{camera="gate"\} 0\.0$', metrics, re.M), metrics[-2000:]
    reconnects = re.search(r'^facestream_camera_reconnects_total\{camera="gate"\} (\S+)$', metrics, re.M)
    assert reconnects and float(reconnects.group(1)) >= 3
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert wait(proc, 30) == 0, err.read_text()[-3000:]
    assert time.monotonic() - t0 < 10
    text = err.read_text()
    assert "facestream: error" not in text and "Traceback" not in text
    assert "camera gate: 0 frames" in text


def test_a_camera_that_opened_once_is_retried_forever_even_by_a_restarted_capture(models_home, tmp_path):
    """Live semantics: a real stream (a video over HTTP) opens, then its server goes away. However
    short the open timeout, the run keeps retrying -- and so does a capture process the supervisor
    restarts after it was killed (the source opened once in this run: no new deadline)."""
    from test_pipeline_e2e import children

    server, url = serve_video(tmp_path, frames=25)
    proc = run(tmp_path, FAST, "--source", url)
    err = tmp_path / "stderr.txt"
    try:
        until(lambda: f"camera cam0 up: {url}" in err.read_text(), proc, "the camera to open")
        server.shutdown()
        server.server_close()
        refused = f"camera cam0 down: {url}: connection refused"
        until(lambda: err.read_text().count(refused) >= 5, proc, "retries after the drop")  # > 1.5 s
        (victim,) = children(proc.pid, "capture")
        os.kill(victim, signal.SIGKILL)
        until(
            lambda: "stage capture-0 died (killed by signal 9): restarting" in err.read_text(),
            proc,
            "restart",
        )
        seen = err.read_text().count(refused)
        until(
            lambda: err.read_text().count(refused) >= seen + 6, proc, "the new capture's retries"
        )  # > 1.5 s
        assert proc.poll() is None and "gives up" not in err.read_text()
        proc.send_signal(signal.SIGINT)
        assert wait(proc, 30) == 0, err.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "never opened" not in err.read_text()


def until(cond, proc: subprocess.Popen, what: str, timeout: float = RUN_LIMIT_S) -> None:
    def met() -> bool:
        if cond():
            return True
        assert proc.poll() is None, f"the run ended while waiting for {what}"
        return False

    wait_until(met, timeout, what, every=0.1)
