"""Two real processes writing one gallery file at once, the way a live deployment does: the match
stage (its Matcher and, for unknown identities, a second connection of its own: stream/gallery/
strangers.py) stores visits and reloads the gallery, while the web app enrolls people (open, write,
close, again and again).

The failure this guards against: opening the file a second time in one process must not drop the
POSIX locks of the connection already open there; if it does, the web app's closing connection takes
itself for the last one, checkpoints and deletes the WAL under the match stage, whose next read says
"database disk image is malformed" (the live chromium test saw it)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import REPO

from stream.gallery.store import Gallery, NewSample

MODEL = "dlib-resnet-v1"
ENROLLS = 20

# The match stage: the Matcher, then Strangers (a second Gallery.open in this process); it stores a
# visit and reloads the gallery in a loop until told to stop, then reports what it sees.
MATCH = f"""
import json, sys, time
from pathlib import Path
import numpy as np
from stream.gallery.matcher import Matcher
from stream.gallery.strangers import Strangers
from stream.gallery.unknowns import Face
from stream.pipeline.config import UnknownsConfig
from stream.registry import get_spec

path, stop = Path(sys.argv[1]), Path(sys.argv[2])
spec = get_spec({MODEL!r})
matcher = Matcher(path, {MODEL!r})
strangers = Strangers(path, {MODEL!r}, matcher.threshold, spec.metric, UnknownsConfig(enabled=True))
print("ready", flush=True)
rng = np.random.default_rng(0)
visits = 0
while not stop.exists():
    face = Face(rng.standard_normal(spec.dim).astype(np.float32), 0.9, time.time())
    strangers.store.add_visit({MODEL!r}, "cam", [face], None)
    strangers.refresh()
    matcher.refresh()
    visits += 1
matcher.refresh()
print(json.dumps({{"visits": visits, "samples": matcher.size, "unknowns": len(strangers.store.all())}}))
"""

# The web app: each enrollment opens the gallery, writes one person and closes it.
WEB = f"""
import sys
from pathlib import Path
import numpy as np
from stream.gallery.store import Gallery, NewSample

path = Path(sys.argv[1])
rng = np.random.default_rng(1)
for i in range({ENROLLS}):
    sample = NewSample(f"{{i:064x}}", f"p{{i}}.jpg", [0, 0, 10, 10], np.zeros((5, 2)), b"jpeg",
                       (0.0, 0.0, 1.0), rng.standard_normal(128).astype(np.float32))
    with Gallery.open(path, create=True) as g:
        g.add_person(f"person{{i}}", [sample], {MODEL!r})
"""


def python(code: str, *args: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_match_stage_and_web_enrollment_write_one_gallery_at_once(tmp_path: Path) -> None:
    path, stop = tmp_path / "g.db", tmp_path / "stop"
    with Gallery.open(path, create=True) as g:
        g.add_person(
            "first",
            [
                NewSample(
                    "f" * 64,
                    "first.jpg",
                    [0, 0, 10, 10],
                    np.zeros((5, 2)),
                    b"jpeg",
                    (0.0, 0.0, 1.0),
                    np.ones(128, np.float32),
                )
            ],
            MODEL,
        )
    match = python(MATCH, path, stop)
    try:
        assert match.stdout is not None
        assert match.stdout.readline().strip() == "ready", match.stderr.read() if match.stderr else ""
        web = python(WEB, path)
        _, web_err = web.communicate(timeout=120)
        assert web.returncode == 0, web_err
        time.sleep(0.2)  # the match stage's loop runs on after the last enrollment a moment
        stop.touch()
        out, err = match.communicate(timeout=60)
    finally:
        if match.poll() is None:
            match.kill()
            match.wait()
    assert match.returncode == 0, err  # not "database disk image is malformed"
    got = json.loads(out.strip().splitlines()[-1])
    # Every enrollment reached the running matcher, and every visit it stored is still there.
    assert got["samples"] == 1 + ENROLLS
    assert got["visits"] > 0 and got["unknowns"] == got["visits"]
    with Gallery.open(path) as g:
        assert g.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert g.count_samples() == 1 + ENROLLS
