"""The dashboard of a running pipeline, with every real component: `facestream run --dashboard` on a
clip of the shared photos (obama enrolled; biden not, until a test enrolls him by upload), the API
over a real uvicorn, the live streams (SSE), and the page in Debian's chromium through Playwright.

The clip cycles obama (2 s, left), nothing (2 s), biden (2 s, right), nothing (2 s), paced in real
time: every appearance is a new track (the gap outlasts a track, and the two never share a place), so a
person enrolled while it runs is named at their next appearance."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from conftest import REPO, missing
from waiting import wait_until
from webtools import free_port

pytestmark = pytest.mark.e2e

TOKEN = "e2e-token-0123456789abcdef"
FPS = 10
CYCLES = 12  # 8 s each: long enough for a loaded machine to start the page and enroll


def placed(photo: Path, left: bool, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """The photo fitted into the left or right half of a dark frame."""
    img = cv2.imread(str(photo))
    w, h = size
    s = min(w / 2 / img.shape[1], h / img.shape[0])
    small = cv2.resize(img, (int(img.shape[1] * s), int(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
    out = np.full((h, w, 3), 40, np.uint8)
    y, x = (h - small.shape[0]) // 2, (0 if left else w // 2) + (w // 2 - small.shape[1]) // 2
    out[y : y + small.shape[0], x : x + small.shape[1]] = small
    return out


def make_clip(path: Path, obama: Path, biden: Path) -> None:
    a, b = placed(obama, left=True), placed(biden, left=False)
    blank = np.full_like(a, 40)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), FPS, (640, 480))
    for _ in range(CYCLES):
        for frame, seconds in ((a, 2), (blank, 2), (b, 2), (blank, 2)):
            for _ in range(seconds * FPS):
                writer.write(frame)
    writer.release()


class Run:
    def __init__(self, proc: subprocess.Popen[bytes], base: str, log: Path):
        self.proc, self.base, self.log = proc, base, log

    def url(self, path: str) -> str:
        return self.base + path

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def run(shared_data: Path, models_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    from stream.faces import FaceAnalyzer
    from stream.gallery.enroll import EnrollOptions, enroll_person
    from stream.gallery.store import Gallery

    tmp = tmp_path_factory.mktemp("live")
    knn = shared_data / "faces" / "face_recognition" / "knn_examples"
    make_clip(tmp / "clip.mp4", knn / "test" / "obama1.jpg", knn / "train" / "biden" / "biden2.jpg")
    with Gallery.open(tmp / "g.db", create=True) as g:
        enroll_person(
            g,
            FaceAnalyzer(home=models_home),
            "obama",
            [knn / "train" / "obama" / "obama.jpg"],
            EnrollOptions(),
        )
    port = free_port()
    (tmp / "cfg.yaml").write_text(
        json.dumps({"dashboard": {"token": TOKEN, "preview_fps": 5}, "match": {"refresh_s": 0.5}})
    )
    log = tmp / "run.log"
    cmd = [
        sys.executable,
        "-m",
        "stream",
        "run",
        "--source",
        str(tmp / "clip.mp4"),
        "--gallery",
        str(tmp / "g.db"),
        "--config",
        str(tmp / "cfg.yaml"),
        "--dashboard",
        f"127.0.0.1:{port}",
        "--realtime",
        "--events",
        str(tmp / "events.jsonl"),
    ]
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=err,
            stderr=subprocess.STDOUT,
            env={**os.environ, "FACESTREAM_HOME": str(models_home)},
        )
    r = Run(proc, f"http://127.0.0.1:{port}", log)

    def ready() -> bool:
        assert proc.poll() is None, f"the run ended early:\n{r.stderr()[-3000:]}"
        try:
            return httpx.get(r.url("/readyz"), timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, 240, "the dashboard to be ready")
        yield r
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.send_signal(signal.SIGINT)  # a second one: stop now, not after the clip
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def sse(url: str, kinds: set[str], until: Any, timeout: float) -> list[tuple[str, dict[str, Any]]]:
    """Read Server-Sent Events until `until(seen)` is true (or fail after `timeout` seconds)."""
    seen: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    with httpx.stream("GET", url, timeout=httpx.Timeout(timeout, connect=5)) as resp:
        assert resp.status_code == 200, resp.read()
        kind = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind in kinds:
                seen.append((kind, json.loads(line[6:])))
                if until(seen):
                    return seen
            if time.monotonic() > deadline:
                break
    raise AssertionError(f"{url}: not seen in {timeout:g} s; got {[k for k, _ in seen][-20:]}")


def test_events_stats_and_pictures_over_http(run: Run) -> None:
    # Nobody watches yet: the sink makes no pictures.
    assert "preview on" not in run.stderr()
    got = sse(
        run.url("/api/events"),
        {"event", "stats"},
        lambda seen: (
            any(
                k == "event" and e.get("type") == "track_confirmed" and e.get("name") == "obama"
                for k, e in seen
            )
            and any(k == "stats" and e["cameras"].get("cam0", {}).get("fps", 0) > 0 for k, e in seen)
        ),
        120,
    )
    stats = [e for k, e in got if k == "stats" and e["cameras"].get("cam0", {}).get("fps", 0) > 0][-1][
        "cameras"
    ]["cam0"]
    assert stats["up"] and stats["total"]["p95"] >= stats["total"]["p50"] > 0

    frames = sse(
        run.url("/api/live"),
        {"frame"},
        lambda seen: any(f["name"] == "obama" for _, h in seen for f in h["faces"]),
        120,
    )
    head = next(h for _, h in frames if any(f["name"] == "obama" for f in h["faces"]))
    assert (head["camera"], head["width"], head["height"]) == ("cam0", 640, 480)
    picture = cv2.imdecode(np.frombuffer(base64.b64decode(head["jpeg"]), np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == (480, 640, 3)  # within preview_width: not scaled
    assert "preview on" in run.stderr()
    # The results PUB stays pixel-free and the API refuses writes without the token while running.
    r = httpx.delete(run.url("/api/people/obama"))
    assert r.status_code == 401 and "token" in r.json()["detail"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).is_file():
        missing("chromium not installed (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def test_the_page_in_chromium(run: Run, browser: Any, shared_data: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(run.url("/"))
    # The live picture shows a named face (from the preview's faces, drawn and listed under it).
    expect(page.locator(".camera .faces .known", has_text="obama").first).to_be_visible(timeout=120_000)
    expect(page.locator("#people .person .name", has_text="obama")).to_be_visible()
    # biden, not enrolled yet, came and went: at his next appearance he is a stranger seen before,
    # shown with his unknown id (match.unknowns is on by default).
    expect(page.locator(".camera .faces .unknown", has_text="unknown-").first).to_be_visible(timeout=60_000)
    # Without the token, enrolling is refused with the API's one line; nothing is stored.
    biden = shared_data / "faces" / "face_recognition" / "knn_examples" / "train" / "biden" / "biden.jpg"
    page.fill("#enroll-name", "biden")
    page.set_input_files("#enroll-photos", str(biden))
    page.click("#enroll button")
    expect(page.locator("#enroll-result")).to_contain_text("needs the token", timeout=30_000)
    assert httpx.get(run.url("/api/people")).json()["people"][0]["name"] == "obama"
    assert len(httpx.get(run.url("/api/people")).json()["people"]) == 1
    # Log in, enroll by upload: biden is named at his next appearance in the live view.
    page.fill("#token", TOKEN)
    page.click("#login button")
    expect(page.locator("#login")).to_be_hidden(timeout=10_000)
    page.click("#enroll button")
    expect(page.locator("#enroll-result")).to_contain_text("biden.jpg enrolled", timeout=120_000)
    expect(page.locator("#people .person .name", has_text="biden")).to_be_visible()
    expect(page.locator(".camera .faces .known", has_text="biden").first).to_be_visible(timeout=120_000)
    expect(page.locator("#events li", has_text="track_confirmed").first).to_be_visible()
    shot = os.environ.get("FACESTREAM_SCREENSHOT")  # docs/dashboard.png is made this way
    page.screenshot(path=shot or str(tmp_path / "dashboard.png"), full_page=True)
    page.close()


def children(pid: int) -> dict[int, str]:
    """pid -> command line of the processes whose parent is `pid`."""
    out = {}
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return out


def test_a_killed_dashboard_is_restarted(run: Run) -> None:
    dash = [p for p, cmd in children(run.proc.pid).items() if "stage dashboard" in cmd]
    assert len(dash) == 1
    os.kill(dash[0], signal.SIGKILL)

    def back() -> bool:
        assert run.proc.poll() is None, "the run ended"
        try:
            return httpx.get(run.url("/readyz"), timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(lambda: dash[0] not in children(run.proc.pid), 30, "the killed dashboard to be reaped")
    wait_until(back, 120, "the supervisor to restart the dashboard")
    assert "stage dashboard-0 died (killed by signal 9): restarting" in run.stderr()
    r = httpx.get(run.url("/api/people"))
    assert r.status_code == 200 and {p["name"] for p in r.json()["people"]} >= {"obama"}
