"""The end-of-run summary's counts come from the metrics files of every stage process that ran (dead
ones included), read by label NAME: prometheus-client's multiprocess files keep labels sorted by
name, so reading them by position once mixed up camera, stage and reason and the summary said
"dropped: none" while /metrics counted thousands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stream.pipeline.summary import books, read_samples

pytestmark = pytest.mark.e2e  # every test here starts processes

WRITER = """
import sys
from pathlib import Path
from stream.pipeline import metrics
metrics.use_multiprocess_dir(Path(sys.argv[1]), wipe=False)
m = metrics.get()
m.frames_dropped_total.labels("capture", "door", "busy").inc(int(sys.argv[2]))
m.frames_dropped_total.labels("detect", "door", "stale").inc(2)
m.bad_messages_total.labels("match").inc(1)
"""


def test_counts_are_read_by_label_name_and_summed_over_processes(tmp_path: Path):
    for busy in (5, 7):  # two capture processes, the first one "killed": its counts stay
        subprocess.run([sys.executable, "-c", WRITER, str(tmp_path), str(busy)], check=True, timeout=60)
    samples = read_samples(tmp_path)
    assert books(samples, ["door"])["door"].dropped == {"capture/busy": 12, "detect/stale": 4}
    assert {labels["stage"]: v for labels, v in samples.counter("bad_messages")} == {"match": 2}
    assert books(read_samples(tmp_path / "absent"), ["door"])["door"].dropped == {}
