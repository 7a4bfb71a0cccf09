"""Export a torch network to ONNX with a dynamic batch axis, and prove the export right: ONNX
Runtime must agree with torch on random and real inputs (max abs difference <= 1e-4) or the build
fails."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from stream.errors import FacestreamError

log = logging.getLogger(__name__)
PARITY_TOLERANCE = 1e-4


class BuildError(FacestreamError):
    """A model build or its verification failed; nothing is published."""


def skip_optional(model: str, artifact: str, reason: str) -> dict:
    """The manifest entry of an optional artifact (int8, extras) that is not built: one warning
    line, and {"skipped": reason}. Only a default model's own checks may fail a build."""
    log.warning("%s: %s skipped: %s", model, artifact, reason)
    return {"skipped": reason}


def export_onnx(
    model: torch.nn.Module,
    out_path: Path,
    input_chw: tuple[int, int, int],
    real_inputs: np.ndarray | None = None,
    opset: int = 17,
) -> float:
    """Write `model` to `out_path` (input "input" N x C x H x W float32, output "output") and return
    the largest |torch - onnx| seen over random and `real_inputs` (N x C x H x W, already normalised)."""
    model = model.eval().float()
    dummy = torch.randn(2, *input_chw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            (dummy,),
            str(out_path),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return verify_onnx(model, out_path, input_chw, real_inputs)


def verify_onnx(
    model: torch.nn.Module,
    onnx_path: Path,
    input_chw: tuple[int, int, int],
    real_inputs: np.ndarray | None = None,
) -> float:
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((n, *input_chw)).astype(np.float32) for n in (1, 3)]
    if real_inputs is not None and len(real_inputs):
        batches.append(np.ascontiguousarray(real_inputs, dtype=np.float32))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.inference_mode():
        for x in batches:
            ref = model(torch.from_numpy(x)).numpy()
            got = sess.run(None, {"input": x})[0]
            if got.shape != ref.shape:
                raise BuildError(f"{onnx_path.name}: ONNX output shape {got.shape} != torch {ref.shape}")
            worst = max(worst, float(np.abs(got - ref).max()))
    if not worst <= PARITY_TOLERANCE:
        raise BuildError(f"{onnx_path.name}: ONNX differs from torch by {worst:.2e} (> {PARITY_TOLERANCE:g})")
    return worst
