"""Face embeddings through ONNX Runtime: chips (aligned per the model's manifest) -> vectors.

The CUDA provider is used when ONNX Runtime has it and a GPU is present; otherwise the CPU provider.
Precision: "fp32" runs the exported model; "int8" the statically quantised one the build verified
against it (model.int8.onnx, manifest key "int8"; faster on CPUs with int8 dot products, see
benchmarks/RESULTS.md); "auto" takes int8 on CPU where the published model has it and fp32 otherwise
(and always on CUDA, whose provider has no fast path for these QDQ graphs). The default is fp32: it
reproduces dlib's own descriptors, and int8 is a speed option a deployment chooses knowingly. An
int8 file verified on another family of int8 kernels is rechecked here on real faces first
(stream.int8_check); if it fails, fp32 runs instead, with one warning. Which provider and precision
run is logged once per model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from stream.align import crop_faces
from stream.errors import FacestreamError
from stream.gpu import ort_cuda_usable
from stream.int8_check import accept_int8
from stream.modelstore import ONNX_FILE, model_path, read_manifest
from stream.registry import DEFAULT_EMBEDDER, CropSpec, ModelSpec, get_spec

if TYPE_CHECKING:
    from stream.detections import Detections

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "int8")


def _providers(device: str | None) -> list[str]:
    available = ort.get_available_providers()
    want_cuda = device in (None, "cuda") and "CUDAExecutionProvider" in available and ort_cuda_usable()[0]
    if device == "cuda" and not want_cuda:
        raise FacestreamError("device 'cuda' requested but ONNX Runtime has no usable CUDA provider")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if want_cuda else ["CPUExecutionProvider"]


class Embedder:
    """One ONNX embedder: `crop` cuts chips from a frame, `embed` turns chips into vectors."""

    def __init__(
        self,
        name: str = DEFAULT_EMBEDDER,
        home: Path | None = None,
        device: str | None = None,
        threads: int | None = None,
        precision: str = "fp32",
    ):
        if precision not in PRECISIONS:
            raise FacestreamError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        self.name = name
        self.spec: ModelSpec = get_spec(name)
        manifest = read_manifest(name, home)
        providers = _providers(device)
        if self.spec.crop is None:
            raise FacestreamError(f"model {name!r} is a {self.spec.kind}, not an embedder (no crop spec)")
        self.crop_spec: CropSpec = self.spec.crop
        self.dim = self.spec.dim
        self.metric = self.spec.metric
        self.threshold = float(manifest.get("threshold", self.spec.threshold))
        self._mean = np.asarray(self.spec.mean, dtype=np.float32)
        self._inv_std = 1.0 / np.asarray(self.spec.std, dtype=np.float32)
        self.precision = _choose_precision(name, manifest, home, precision, providers[0])
        self._threads = threads
        if self.precision == "int8":
            self.session = self._open(model_path(name, home) / manifest["int8"]["file"], providers)
            runs_on = None if providers[0] == "CPUExecutionProvider" else providers[0]
            ok, why = accept_int8(model_path(name, home), manifest["int8"], self.embed, runs_on)
            if not ok:
                log.warning("embedder %s: int8 not usable on this CPU, using fp32: %s", name, why)
                self.precision = "fp32"
            else:
                log.debug("embedder %s: int8 %s", name, why)
        if self.precision == "fp32":
            self.session = self._open(model_path(name, home) / manifest.get("file", ONNX_FILE), providers)
        self.provider = self.session.get_providers()[0]
        log.info("embedder %s runs on %s in %s", name, self.provider, self.precision)

    def _open(self, onnx_file: Path, providers: list[str]) -> ort.InferenceSession:
        if not onnx_file.is_file():
            raise FacestreamError(
                f"{onnx_file}: missing; rebuild with `facestream models pull --force {self.name}`"
            )
        opts = ort.SessionOptions()
        if self._threads:
            opts.intra_op_num_threads = self._threads
        opts.log_severity_level = 3
        # No busy-waiting between runs: the pipeline's stages share the cores, and a spinning
        # thread pool here steals them from detection (and from torch in the same process).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(onnx_file), sess_options=opts, providers=providers)

    def crop(self, frame: np.ndarray, dets: Detections) -> np.ndarray:
        """Chips (N, H, W, 3) uint8 for one RGB frame's detected faces, cut as this model expects."""
        return crop_faces(frame, dets.boxes, dets.landmarks, self.crop_spec)

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB chips -> (N, dim) float32 embeddings."""
        chips = np.asarray(chips)
        w, h = self.crop_spec.size
        if chips.ndim != 4 or chips.shape[1:] != (h, w, 3) or chips.dtype != np.uint8:
            raise FacestreamError(
                f"{self.name}: chips must be uint8 N x {h} x {w} x 3, got {chips.dtype} {chips.shape}"
            )
        if len(chips) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        x = (chips.astype(np.float32) - self._mean) * self._inv_std
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        out: np.ndarray = self.session.run(None, {"input": x})[0]
        return out


def _choose_precision(
    name: str, manifest: dict[str, Any], home: Path | None, precision: str, provider: str
) -> str:
    int8 = manifest.get("int8") or {}
    has_int8 = bool(int8.get("file")) and (model_path(name, home) / int8["file"]).is_file()
    if precision == "fp32" or (precision == "auto" and (not has_int8 or provider != "CPUExecutionProvider")):
        return "fp32"
    if not has_int8:
        why = int8.get("skipped") or "this build has no int8 model"
        raise FacestreamError(
            f"model {name!r} has no int8 version ({why}); use precision 'fp32' or 'auto', or rebuild "
            f"with `facestream models pull --force {name}` where the shared face data is available"
        )
    return "int8"


def distance(a: np.ndarray, b: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """Row-wise distance between embeddings a (N, D) and b (N, D) (or one vector each)."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float32))
    b = np.atleast_2d(np.asarray(b, dtype=np.float32))
    d: np.ndarray
    if metric == "euclidean":
        d = np.linalg.norm(a - b, axis=1)
        return d
    if metric == "cosine":
        an = a / np.linalg.norm(a, axis=1, keepdims=True)
        bn = b / np.linalg.norm(b, axis=1, keepdims=True)
        d = 1.0 - (an * bn).sum(axis=1)
        return d
    raise ValueError(f"unknown metric {metric!r}")
