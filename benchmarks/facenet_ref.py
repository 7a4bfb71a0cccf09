"""Benchmark-only: load facenet-pytorch 2.5.3's MTCNN as the reference to compare against.

facenet-pytorch imports torchvision (for `to_tensor` and `batched_nms`), PIL and requests at import
time; this project has no usable torchvision. `load_reference_mtcnn` puts small stand-ins for the
missing modules into `sys.modules` (only for names that do not import) before importing it. The
stand-in `batched_nms` has torchvision's conventions (IoU with areas (x2 - x1) * (y2 - y1), suppress
IoU > threshold, kept indices in descending score order) and speed (a numpy loop would add ~20 ms
per 1080p frame to the reference's time).

Where facenet-pytorch comes from: an explicit source folder (the one holding `facenet_pytorch/`), or
else the wheel fetched with `pip download --no-deps facenet-pytorch==2.5.3` and unzipped into a cache
folder (default $FACESTREAM_HOME/bench/facenet-pytorch-2.5.3)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import torch

VERSION = "2.5.3"


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float):
    """torchvision.ops.batched_nms: greedy NMS per index, kept indices by descending score. Runs
    facestream's vectorised NMS (same IoU convention, exact greedy result, about as fast as
    torchvision's C++ kernel) so that the stand-in does not slow the reference down."""
    from stream.nms import batched_nms as fast_nms

    keep = fast_nms(boxes, scores, idxs, iou_threshold, "iou")
    return keep[torch.argsort(scores[keep], descending=True, stable=True)]


def to_tensor(pic) -> torch.Tensor:
    a = np.asarray(pic)
    if a.ndim == 2:
        a = a[:, :, None]
    t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
    return t.float().div(255) if t.dtype == torch.uint8 else t


def _module(name: str, **attrs) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    return m


def _install_stand_ins() -> None:
    def importable(name: str) -> bool:
        try:
            importlib.import_module(name)
            return True
        except Exception:  # noqa: BLE001 - a broken install counts as missing
            return False

    if not importable("torchvision.ops.boxes"):
        for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[k]
        functional = _module("torchvision.transforms.functional", to_tensor=to_tensor)
        boxes = _module("torchvision.ops.boxes", batched_nms=batched_nms)
        transforms = _module("torchvision.transforms", functional=functional)
        ops = _module("torchvision.ops", boxes=boxes)
        tv = _module("torchvision", transforms=transforms, ops=ops, __path__=[])
        transforms.__path__ = ops.__path__ = []
        sys.modules.update(
            {
                "torchvision": tv,
                "torchvision.transforms": transforms,
                "torchvision.transforms.functional": functional,
                "torchvision.ops": ops,
                "torchvision.ops.boxes": boxes,
            }
        )
    if not importable("PIL"):
        image = _module("PIL.Image", BILINEAR=2, Image=object)
        sys.modules.update({"PIL": _module("PIL", Image=image, __path__=[]), "PIL.Image": image})
    if not importable("requests"):
        adapters = _module("requests.adapters", HTTPAdapter=object)
        sys.modules.update(
            {"requests": _module("requests", adapters=adapters, __path__=[]), "requests.adapters": adapters}
        )


def fetch_facenet_pytorch(cache_dir: Path) -> Path:
    """Unzip facenet-pytorch's wheel (pip download --no-deps) into cache_dir; return the folder that
    holds the `facenet_pytorch` package."""
    target = cache_dir / f"facenet-pytorch-{VERSION}"
    if (target / "facenet_pytorch" / "__init__.py").is_file():
        return target
    dl = cache_dir / "wheel"
    dl.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "-d",
            str(dl),
            f"facenet-pytorch=={VERSION}",
        ],
        check=True,
    )
    wheel = next(dl.glob(f"facenet_pytorch-{VERSION}-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extractall(target)
    return target


def load_reference_mtcnn(src: Path | None, cache_dir: Path):
    """facenet-pytorch's MTCNN(keep_all=True) on CPU, imported from `src` (or the fetched wheel)."""
    root = Path(src) if src else fetch_facenet_pytorch(cache_dir)
    _install_stand_ins()
    sys.path.insert(0, str(root))
    try:
        from facenet_pytorch.models.mtcnn import MTCNN  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(root))
    return MTCNN(keep_all=True, device="cpu")
