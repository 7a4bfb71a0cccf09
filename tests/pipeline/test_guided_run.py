"""detect.mode: guided in a real run: the same frames come out, about as many faces are found as with
the whole frame every frame, and the detector says per frame what it looked at (a metric)."""

from __future__ import annotations

import json

import pytest
from test_pipeline_e2e import finish, lines, small_clip, start  # noqa: F401 - a fixture

from stream.pipeline.summary import read_samples

pytestmark = pytest.mark.e2e  # every test here starts processes


def faces_found(tmp, clip, mode: str) -> tuple[list[dict], dict, dict[str, int]]:
    run_dir = tmp / f"run-{mode}"
    run_dir.mkdir(mode=0o700)
    out, summary = tmp / f"{mode}.jsonl", tmp / f"{mode}-summary.json"
    config = f"transport: {{run_dir: {run_dir}}}\ndetect: {{mode: {mode}, full_every_s: 1.0}}\n"
    proc, err = start(tmp, "--source", str(clip), "--out", str(out), "--summary", str(summary), config=config)
    assert finish(proc) == 0, err.read_text()[-2000:]
    plans: dict[str, int] = {}
    for labels, v in read_samples(run_dir / "metrics").counter("detect_plans"):
        plans[labels["plan"]] = plans.get(labels["plan"], 0) + int(v)
    return lines(out), json.loads(summary.read_text()), plans


def test_guided_finds_what_the_whole_frame_finds(small_clip, models_home, tmp_path):  # noqa: F811
    full_rows, full_summary, full_plans = faces_found(tmp_path, small_clip, "full")
    rows, summary, plans = faces_found(tmp_path, small_clip, "guided")
    assert [r["seq"] for r in rows] == [r["seq"] for r in full_rows] == list(range(40))
    assert full_plans == {}  # the whole frame every frame: no plans
    assert sum(plans.values()) == 40 and plans.get("first") == 1 and plans.get("periodic", 0) >= 1
    whole, guided = full_summary["faces"]["cam0"], summary["faces"]["cam0"]
    assert guided >= 0.95 * whole, (guided, whole, plans)
