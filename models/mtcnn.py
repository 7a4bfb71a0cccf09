"""Building MTCNN: facenet-pytorch's P-Net, R-Net and O-Net state dicts, checked to load into the
runtime's networks (stream.mtcnn_nets) and published as they are."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from facestream_models.onnx_export import BuildError
from stream.mtcnn_nets import WEIGHT_FILES, load_net
from stream.pyramid import SCALE


def build_mtcnn(inputs: dict[str, Path], out_dir: Path, spec=None) -> dict:
    """Publish MTCNN into `out_dir`: copies of pnet.pt, rnet.pt and onet.pt (`inputs` maps those
    names to extracted files), each checked to load into its net and to give finite outputs.
    Returns manifest extras. The nets run in torch on CPU and GPU alike: no ONNX export (see
    stream.mtcnn_nets for the measurements behind that choice)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = {"pnet": (1, 3, 12, 12), "rnet": (2, 3, 24, 24), "onet": (2, 3, 48, 48)}
    for fname in WEIGHT_FILES:
        name = fname.removesuffix(".pt")
        src = inputs.get(fname)
        if src is None or not Path(src).is_file():
            raise BuildError(f"mtcnn build: {fname} missing from the inputs")
        try:
            net = load_net(name, Path(src))
            with torch.inference_mode():
                outs = net(torch.zeros(sizes[name]))
        except Exception as e:  # noqa: BLE001 - any load failure is a build failure
            raise BuildError(
                f"mtcnn build: {fname} does not load into {name}: {str(e).splitlines()[0]}"
            ) from e
        if not all(bool(torch.isfinite(o).all()) for o in outs):
            raise BuildError(f"mtcnn build: {fname} gives non-finite outputs")
        shutil.copyfile(src, out_dir / fname)
    return {
        "weights": list(WEIGHT_FILES),
        "runtime": "torch",
        "input_scaling": f"(pixel - 127.5) * {SCALE}, RGB",
    }
