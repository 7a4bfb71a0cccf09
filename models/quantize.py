"""INT8 post-training quantisation of an fp32 ONNX embedder, and the proof that it is still the same
embedder: on real faces its vectors stay within a stated L2 of fp32's and not one same/different
decision at the model's threshold changes, or the build fails with a one-line BuildError.

Recipe (chosen by measurement on dlib-resnet-v1 with both families of x86 int8 kernels, see
benchmarks/RESULTS.md): ONNX Runtime's pre-processing (shape inference + basic graph optimisation,
which folds dlib's per-channel affine Mul/Add into the convolutions), then static QDQ quantisation
with per-channel weights, uint8 activations and MinMax calibration (deterministic: same chips in the
same order give the same file). Weights are int8 (U8S8, the fast kernels) except in the layers that
read the image itself, whose weights are uint8 (U8U8). Why: without VNNI, x86 CPUs multiply U8S8
with an instruction that adds pairs of u8 x s8 products in saturating 16-bit lanes; pixels fill the
whole uint8 range, so in the first convolution those pairs overflow and the embedding goes wrong
(L2 ~0.18 from fp32 instead of ~0.035), while deeper activations (after ReLU, mostly small) do not.
U8U8 has no such lane, and the first layer is a small share of the work. The other documented
remedy, 7-bit weights everywhere (reduce_range), is as portable but measurably less accurate.
The node(s) that write the graph's outputs stay fp32: their rounding would land straight in the
embedding, and they are a negligible share of the work (dlib's 256 x 128 fc)."""

from __future__ import annotations

import logging
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from facestream_models.onnx_export import BuildError

log = logging.getLogger(__name__)

RECIPE = (
    "QDQ, per-channel weights: uint8 where a layer reads the input, int8 elsewhere; uint8 activations, "
    "MinMax calibration, output layer fp32"
)


class _Batches:
    """onnxruntime CalibrationDataReader over an array, one sample per batch (the histogram
    calibrators need equal batch shapes; MinMax does not care)."""

    def __init__(self, x: np.ndarray, input_name: str):
        self._it = iter({input_name: x[i : i + 1]} for i in range(len(x)))

    def get_next(self) -> dict | None:
        return next(self._it, None)


def output_nodes(model_path: Path) -> list[str]:
    """Names of the nodes that write the graph's outputs."""
    m = onnx.load(str(model_path))
    outs = {o.name for o in m.graph.output}
    return [n.name for n in m.graph.node if outs.intersection(n.output)]


def input_weights(model_path: Path) -> list[str]:
    """Weight initializers of the nodes that read the graph's input (the image)."""
    m = onnx.load(str(model_path))
    inputs = {i.name for i in m.graph.input}
    weights = {i.name for i in m.graph.initializer}
    return [
        n.input[1]
        for n in m.graph.node
        if inputs.intersection(n.input[:1]) and n.input[1:2] and n.input[1] in weights
    ]


# Weight types compared in benchmarks/bench_int8.py; the build uses "u8u8-input".
#   u8s8: int8 weights everywhere (saturates without VNNI); u8s8-7bit: ONNX Runtime's reduce_range;
#   u8u8: uint8 weights everywhere (no fast U8S8 kernels at all); u8u8-input: this module's recipe.
RECIPES = ("u8u8-input", "u8s8", "u8s8-7bit", "u8u8")


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    calibration: np.ndarray,
    input_name: str = "input",
    recipe: str = "u8u8-input",
) -> None:
    """Write the static int8 (QDQ) version of `fp32_path` to `out_path`, calibrated on `calibration`
    (N x C x H x W float32, normalised exactly as the runtime feeds the model)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if recipe not in RECIPES:
        raise ValueError(f"unknown int8 recipe {recipe!r}")
    if calibration is None or len(calibration) == 0:
        raise BuildError(f"{fp32_path.name}: no calibration inputs for int8")
    with tempfile.TemporaryDirectory(prefix="fs-quant-") as tmp:
        prep = Path(tmp) / "prep.onnx"
        quant_pre_process(str(fp32_path), str(prep), skip_symbolic_shape=True)
        # U8U8 where pixels come in: no saturating 16-bit pair sums on any CPU (module docstring).
        u8_weights = input_weights(prep) if recipe == "u8u8-input" else []
        quantize_static(
            str(prep),
            str(out_path),
            _Batches(np.ascontiguousarray(calibration, dtype=np.float32), input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QUInt8 if recipe == "u8u8" else QuantType.QInt8,
            reduce_range=recipe == "u8s8-7bit",
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=output_nodes(prep),
            extra_options={
                "TensorQuantOverrides": {w: [{"quant_type": QuantType.QUInt8, "axis": 0}] for w in u8_weights}
            },
        )


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _run(sess: ort.InferenceSession, x: np.ndarray, batch: int = 16) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def fp32_embeddings(fp32_path: Path, inputs: np.ndarray) -> np.ndarray:
    return _run(_session(fp32_path), inputs)


def compare(
    fp32_path: Path, int8_path: Path, inputs: np.ndarray, threshold: float, strict: np.ndarray | None = None
) -> dict:
    """int8 vs fp32 on `inputs`: per-face L2 between the embeddings, and the same/different
    decisions (distance <= threshold) on every pair of faces; `strict` (a boolean mask over the
    faces) picks the faces among which decisions are counted separately ("strict_*")."""
    a = _run(_session(fp32_path), inputs)
    b = _run(_session(int8_path), inputs)
    l2 = np.linalg.norm(a - b, axis=1)
    pairs = np.array(list(combinations(range(len(inputs)), 2)), dtype=np.int64).reshape(-1, 2)
    da = np.linalg.norm(a[pairs[:, 0]] - a[pairs[:, 1]], axis=1)
    db = np.linalg.norm(b[pairs[:, 0]] - b[pairs[:, 1]], axis=1)
    flipped = (da <= threshold) != (db <= threshold)
    in_strict = np.ones(len(pairs), bool) if strict is None else strict[pairs[:, 0]] & strict[pairs[:, 1]]
    return {
        "faces": len(inputs),
        "l2_mean": round(float(l2.mean()), 5),
        "l2_max": round(float(l2.max()), 5),
        "pairs": len(pairs),
        "decisions_changed": int(flipped.sum()),
        # how close to the threshold fp32 put the pairs whose decision int8 changes
        "changed_within": round(float(np.abs(da[flipped] - threshold).max()), 5) if flipped.any() else 0.0,
        "pair_distance_change_max": round(float(np.abs(da - db).max()), 5) if len(pairs) else 0.0,
        "strict_pairs": int(in_strict.sum()),
        "strict_decisions_changed": int((flipped & in_strict).sum()),
        "strict_closest_to_threshold": round(float(np.abs(da[in_strict] - threshold).min()), 5)
        if in_strict.any()
        else None,
    }


def speedup(
    fp32_path: Path, int8_path: Path, sample: np.ndarray, rounds: int = 3, seconds: float = 0.4
) -> float:
    """int8 / fp32 throughput on `sample` (one batch), measured interleaved so that load from other
    processes hits both alike; the median of the per-round ratios."""
    sessions = [_session(fp32_path), _session(int8_path)]
    name = sessions[0].get_inputs()[0].name
    ratios = []
    for _ in range(rounds):
        rates = []
        for s in sessions:
            s.run(None, {name: sample})
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                s.run(None, {name: sample})
                n += 1
            rates.append(n / (time.perf_counter() - t0))
        ratios.append(rates[1] / rates[0])
    return float(np.median(ratios))


def quantize_and_verify(
    fp32_path: Path,
    out_path: Path,
    calibration: np.ndarray,
    verification: np.ndarray,
    threshold: float,
    l2_mean_limit: float,
    l2_max_limit: float,
    decision_margin: float,
    strict: np.ndarray | None = None,
) -> dict:
    """Quantise, then check int8 against fp32 on `verification` (which should include faces that
    calibration never saw). The checks: L2 mean / max within the limits; no same/different decision
    changes among the `strict` faces (a boolean mask; default all); among all faces, only pairs that
    fp32 puts within `decision_margin` of the threshold (a coin toss either way) may change.
    Returns the figures for the manifest; raises BuildError (and removes `out_path`) otherwise."""
    quantize_int8(fp32_path, out_path, calibration)
    try:
        s = compare(fp32_path, out_path, verification, threshold, strict)
        where = f"{out_path.name}: int8 vs fp32 on {s['faces']} real faces:"
        if s["l2_mean"] > l2_mean_limit or s["l2_max"] > l2_max_limit:
            raise BuildError(
                f"{where} embedding L2 mean {s['l2_mean']:.4f} / max {s['l2_max']:.4f} "
                f"over the limits {l2_mean_limit} / {l2_max_limit}"
            )
        if s["strict_decisions_changed"]:
            raise BuildError(
                f"{where} {s['strict_decisions_changed']} of {s['strict_pairs']} same/different decisions "
                f"at {threshold} changed among the reference faces"
            )
        if s["changed_within"] > decision_margin:
            raise BuildError(
                f"{where} a same/different decision changed for a pair {s['changed_within']:.3f} from the "
                f"threshold {threshold} (only pairs within {decision_margin} may change)"
            )
    except BaseException:
        out_path.unlink(missing_ok=True)
        raise
    s.update(
        file=out_path.name,
        recipe=RECIPE,
        calibration_faces=len(calibration),
        l2_mean_limit=l2_mean_limit,
        l2_max_limit=l2_max_limit,
        decision_margin=decision_margin,
    )
    return s
