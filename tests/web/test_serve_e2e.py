"""`facestream serve` as a user starts it: a real uvicorn in its own process, the token generated and
printed once (or taken from $FACESTREAM_TOKEN), loopback reads open and writes closed, any other
address closed to reads as well; Ctrl-C stops it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from conftest import REPO
from waiting import wait_until
from webtools import free_port

pytestmark = pytest.mark.e2e


@contextmanager
def serve(tmp_path: Path, listen: str, env: dict[str, str]) -> Iterator[tuple[str, Path]]:
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "stream", "serve", "--gallery", str(tmp_path / "g.db"), "--listen", listen]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{listen.rsplit(':', 1)[1]}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(base + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 60, "serve to answer")
        yield base, log
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) in (0, 130), log.read_text()


def test_loopback_token_printed_once(tmp_path: Path, models_home: Path, shared_data: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FACESTREAM_TOKEN"}
    env["FACESTREAM_HOME"] = str(models_home)
    with serve(tmp_path, f"127.0.0.1:{free_port()}", env) as (base, log):
        found = re.findall(
            r"dashboard token \(needed to change the gallery; printed once\): (\S+)", log.read_text()
        )
        assert len(found) == 1
        token = found[0]
        assert httpx.get(base + "/readyz").json() == {"status": "ready"}
        assert httpx.get(base + "/api/people").json()["people"] == []  # reads open on loopback
        photo = shared_data / "faces" / "face_recognition" / "knn_examples" / "train" / "obama" / "obama.jpg"
        files = {"photos": (photo.name, photo.read_bytes(), "image/jpeg")}
        r = httpx.post(base + "/api/people", data={"name": "obama"}, files=files)
        assert r.status_code == 401
        r = httpx.post(
            base + "/api/people",
            data={"name": "obama"},
            files=files,
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
        )
        assert r.status_code == 201, r.text
        assert [p["name"] for p in httpx.get(base + "/api/people").json()["people"]] == ["obama"]
    assert log.read_text().count(token) == 1


def test_beyond_loopback_every_read_needs_the_token(tmp_path: Path) -> None:
    token = "env-token-0123456789abcdef"
    env = {**os.environ, "FACESTREAM_TOKEN": token}
    with serve(tmp_path, f"0.0.0.0:{free_port()}", env) as (base, log):
        assert "printed once" not in log.read_text()  # it was given, not generated
        assert httpx.get(base + "/healthz").status_code == 200
        assert httpx.get(base + "/api/people").status_code == 401
        assert (
            httpx.get(base + "/api/people", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        )


def test_a_short_token_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "FACESTREAM_TOKEN": "short"}
    cmd = [
        sys.executable,
        "-m",
        "stream",
        "serve",
        "--gallery",
        str(tmp_path / "g.db"),
        "--listen",
        "127.0.0.1:0",
    ]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        "facestream: error: $FACESTREAM_TOKEN: use at least 16 characters"
    )
