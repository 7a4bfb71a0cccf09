"""int8 recipes for dlib-resnet-v1 on both families of x86 int8 kernels: accuracy against fp32 and
speed, side by side. Chooses (and re-justifies) the recipe in models/quantize.py.

Every recipe is quantised here from the same calibration chips, then verified exactly as the build
verifies (models/quantize.compare: 103 real faces, L2 to fp32, same/different decisions at 0.6):
  - natively, with this CPU's int8 kernels (e.g. AVX-512 VNNI);
  - under `qemu-x86_64 -cpu Haswell` (Debian qemu-user): an AVX2 CPU without AVX-512 or VNNI, so
    ONNX Runtime runs the kernels whose U8S8 pair sums saturate. Emulation gives the arithmetic of
    that CPU, not its speed: speed-ups are native only.

    .venv/bin/python benchmarks/bench_int8.py [--recipes u8u8-input u8s8 ...] [--no-emulation]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from facestream_models.dlib_resnet import (
    INT8_L2_MAX_LIMIT,
    INT8_L2_MEAN_LIMIT,
    aligned_chips,
    normalise_chips,
    reference_chips,
)
from facestream_models.quantize import RECIPES, compare, quantize_int8, speedup
from stream import doctor
from stream.cpu import cpu_info
from stream.modelstore import model_path
from stream.registry import get_spec

NAME = "dlib-resnet-v1"
COMPARE = """
import json, sys
from pathlib import Path
import numpy as np
from facestream_models.quantize import compare
x = np.load(sys.argv[3])
strict = np.arange(len(x)) >= int(sys.argv[4])
print(json.dumps(compare(Path(sys.argv[1]), Path(sys.argv[2]), x, 0.6, strict)))
"""


def verify(fp32: Path, int8: Path, inputs: Path, n_calibration: int, qemu: str | None) -> dict:
    cmd = [sys.executable, "-c", COMPARE, str(fp32), str(int8), str(inputs), str(n_calibration)]
    if qemu:
        cmd = [qemu, "-cpu", "Haswell", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def passes(s: dict) -> bool:
    return (
        s["l2_mean"] <= INT8_L2_MEAN_LIMIT
        and s["l2_max"] <= INT8_L2_MAX_LIMIT
        and not s["strict_decisions_changed"]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    ap.add_argument("--no-emulation", action="store_true", help="skip the qemu AVX2 runs")
    args = ap.parse_args()
    print(doctor.header())  # the machine the figures below were measured on
    spec = get_spec(NAME)
    ours, theirs = aligned_chips(), reference_chips()
    if ours is None or theirs is None:
        sys.exit("needs the shared face data (../shared/data) for real calibration and verification faces")
    calibration = normalise_chips(ours, spec.mean, spec.std)
    verification = np.concatenate([calibration, normalise_chips(theirs, spec.mean, spec.std)])
    qemu = None if args.no_emulation else shutil.which("qemu-x86_64")
    if not args.no_emulation and qemu is None:
        print("qemu-x86_64 not found (apt-get install qemu-user): native kernels only")
    fp32 = model_path(NAME) / "model.onnx"
    native = cpu_info().int8_kernel
    rows = []
    with tempfile.TemporaryDirectory(prefix="fs-bench-int8-") as tmp:
        inputs = Path(tmp) / "verification.npy"
        np.save(inputs, verification)
        for recipe in args.recipes:
            int8 = Path(tmp) / f"{recipe}.onnx"
            quantize_int8(fp32, int8, calibration, recipe=recipe)
            kernels = {
                native: compare(
                    fp32, int8, verification, spec.threshold, np.arange(len(verification)) >= len(calibration)
                )
            }
            if qemu:
                kernels["x86-avx2 (qemu Haswell)"] = verify(fp32, int8, inputs, len(calibration), qemu)
            speed = {b: speedup(fp32, int8, verification[:b], rounds=5) for b in (1, 8)}
            for kernel, s in kernels.items():
                rows.append((recipe, kernel, s, speed if kernel == native else None))
    print(
        f"\n{len(verification)} real faces ({len(calibration)} calibration + {len(theirs)} held out); "
        f"limits: L2 mean {INT8_L2_MEAN_LIMIT} / max {INT8_L2_MAX_LIMIT}, no decision change among dlib's chips\n"
    )
    print(
        "| recipe | int8 kernels | L2 mean | L2 max | decisions changed (all / dlib chips) | passes | speed-up b1 / b8 |"
    )
    print("|---|---|---|---|---|---|---|")
    for recipe, kernel, s, speed in rows:
        sp = f"{speed[1]:.2f}x / {speed[8]:.2f}x" if speed else "(emulated: no timing)"
        print(
            f"| {recipe} | {kernel} | {s['l2_mean']:.4f} | {s['l2_max']:.4f} | "
            f"{s['decisions_changed']}/{s['pairs']} / {s['strict_decisions_changed']}/{s['strict_pairs']} | "
            f"{'yes' if passes(s) else 'NO'} | {sp} |"
        )


if __name__ == "__main__":
    main()
