"""MediaPipe's face landmark model (face_landmark.tflite, 468 points) and its eye model
(iris_landmark.tflite: 71 eye and brow contour points + 5 iris points on a 64x64 eye crop, the one
MediaPipe uses to refine the eyes; the face model's own eyelids hardly move when eyes close) rebuilt
in torch from the TFLite flatbuffers and exported to ONNX.

The file is read with the `tflite` package's generated schema (no TensorFlow): every operator of its
one subgraph becomes one step of `TfliteGraph`, which runs them in order on NCHW tensors. Only the
operators these models use are supported (CONV_2D, DEPTHWISE_CONV_2D, PRELU, ADD, MAX_POOL_2D, PAD,
RESHAPE to a flat output, all float32); any other is a BuildError naming it. TFLite's SAME padding puts the odd pixel after (bottom,
right), which `_same_pad` reproduces with an explicit pad before a VALID convolution.

The export is verified against the TFLite file itself run by LiteRT (`ai-edge-litert`, a build-only
dependency): random inputs and face crops from the shared photos, max |onnx - tflite| <= PARITY_TOLERANCE
(in the model's output units: pixels of the 192x192 input for the landmarks, logits for the face flag).

Face model: input float32 N x 3 x 192 x 192, RGB scaled to [0, 1]; output "output": N x 1405, the 468
(x, y, z) landmarks in input pixels followed by the face-presence logit.
Eye model (iris.onnx): input N x 3 x 64 x 64 (a left eye; right eyes mirrored), output N x 228: 71
eye/brow (x, y, z) then 5 iris (x, y, z), in input pixels.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from facestream_models.onnx_export import BuildError
from stream.modelstore import ONNX_FILE

log = logging.getLogger(__name__)
TFLITE_NAME = "face_landmark.tflite"
IRIS_TFLITE_NAME = "iris_landmark.tflite"
IRIS_FILE = "iris.onnx"
IRIS_SIZE = 64
INPUT_SIZE = 192
N_POINTS = 468
# Measured worst |onnx - tflite| over random and real inputs is ~1e-4 px; 2e-3 px (1/100,000 of
# the crop) leaves room for other CPUs' summation orders while still catching any wrong layer.
PARITY_TOLERANCE = 2e-3
SHARED_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"

# tflite.ActivationFunctionType / tflite.Padding values
_ACT_NONE, _ACT_RELU, _ACT_RELU6 = 0, 1, 3
_PAD_SAME, _PAD_VALID = 0, 1


@dataclass
class _Op:
    kind: str
    inputs: list[int]
    output: int
    params: dict[str, Any] = field(default_factory=dict)


def _same_pad(size: int, k: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _activate(x: torch.Tensor, act: int) -> torch.Tensor:
    if act == _ACT_NONE:
        return x
    if act == _ACT_RELU:
        return F.relu(x)
    if act == _ACT_RELU6:
        return F.relu6(x)
    raise BuildError(f"{TFLITE_NAME}: unsupported fused activation {act}")


class TfliteGraph(nn.Module):
    """The subgraph's operators run in file order on NCHW tensors (weights held as parameters)."""

    def __init__(
        self,
        ops: list[_Op],
        weights: dict[int, np.ndarray],
        shapes: dict[int, list[int]],
        graph_in: int,
        graph_out: list[int],
    ) -> None:
        super().__init__()
        self.ops = ops
        self.shapes = shapes
        self.graph_in = graph_in
        self.graph_out = graph_out
        self.w = nn.ParameterDict(
            {str(k): nn.Parameter(torch.from_numpy(v), requires_grad=False) for k, v in weights.items()}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t: dict[int, torch.Tensor] = {self.graph_in: x}
        for op in self.ops:
            t[op.output] = self._run(op, t)
        outs = [t[i].flatten(1) for i in self.graph_out]
        return torch.cat(outs, dim=1)

    def _run(self, op: _Op, t: dict[int, torch.Tensor]) -> torch.Tensor:
        p = op.params
        x = t[op.inputs[0]]
        if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            w, b = self.w[str(op.inputs[1])], self.w[str(op.inputs[2])]
            k_h, k_w = w.shape[2], w.shape[3]
            if p["padding"] == _PAD_SAME:
                top, bottom = _same_pad(x.shape[2], k_h, p["stride_h"], p["dil_h"])
                left, right = _same_pad(x.shape[3], k_w, p["stride_w"], p["dil_w"])
                if top or bottom or left or right:
                    x = F.pad(x, (left, right, top, bottom))
            groups = x.shape[1] if op.kind == "DEPTHWISE_CONV_2D" else 1
            y = F.conv2d(
                x,
                w,
                b,
                stride=(p["stride_h"], p["stride_w"]),
                dilation=(p["dil_h"], p["dil_w"]),
                groups=groups,
            )
            return _activate(y, p["act"])
        if op.kind == "PRELU":
            return F.prelu(x, self.w[str(op.inputs[1])])
        if op.kind == "ADD":
            return _activate(x + t[op.inputs[1]], p["act"])
        if op.kind == "MAX_POOL_2D":
            if p["padding"] == _PAD_SAME:
                top, bottom = _same_pad(x.shape[2], p["k_h"], p["stride_h"])
                left, right = _same_pad(x.shape[3], p["k_w"], p["stride_w"])
                if top or bottom or left or right:
                    x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
            y = F.max_pool2d(x, (p["k_h"], p["k_w"]), (p["stride_h"], p["stride_w"]))
            return _activate(y, p["act"])
        if op.kind == "PAD":
            (n0, n1), (h0, h1), (w0, w1), (c0, c1) = p["pads"]
            if n0 or n1:
                raise BuildError(f"{TFLITE_NAME}: PAD on the batch axis is not supported")
            return F.pad(x, (w0, w1, h0, h1, c0, c1))
        if op.kind == "RESHAPE":
            out = self.shapes[op.output]
            if len(out) == 4:
                raise BuildError(f"{TFLITE_NAME}: RESHAPE to 4 dimensions is not supported")
            if x.dim() == 4:
                x = x.permute(0, 2, 3, 1)  # flatten in TFLite's NHWC order
            return x.reshape(-1, *out[1:])
        raise BuildError(f"{TFLITE_NAME}: unsupported operator {op.kind}")


def read_tflite(path: Path) -> TfliteGraph:
    """The torch graph of a float32 TFLite model made of the operators above."""
    try:
        import tflite  # build-only dependency: the flatbuffer schema
    except ImportError as e:
        raise BuildError(
            f"cannot read {path.name}: the tflite package is not installed (pip install -e '.[landmarks]')"
        ) from e

    buf = Path(path).read_bytes()
    model = tflite.Model.GetRootAsModel(buf, 0)
    if model.SubgraphsLength() != 1:
        raise BuildError(f"{path.name}: {model.SubgraphsLength()} subgraphs, expected 1")
    g = model.Subgraphs(0)
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}

    def tensor_data(idx: int) -> np.ndarray:
        tensor = g.Tensors(idx)
        data = model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(data, int) or data.size == 0:
            raise BuildError(f"{path.name}: tensor {tensor.Name()!r} has no data")
        dtype = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.INT32: np.int32}.get(tensor.Type())
        if dtype is None:
            raise BuildError(f"{path.name}: tensor {tensor.Name()!r} has unsupported type {tensor.Type()}")
        return np.frombuffer(data.tobytes(), dtype=dtype).reshape(tensor.ShapeAsNumpy()).copy()

    ops: list[_Op] = []
    weights: dict[int, np.ndarray] = {}
    shapes = {i: g.Tensors(i).ShapeAsNumpy().tolist() for i in range(g.TensorsLength())}
    for i in range(g.OperatorsLength()):
        o = g.Operators(i)
        code = model.OperatorCodes(o.OpcodeIndex())
        kind = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
        ins, outs = o.InputsAsNumpy().tolist(), o.OutputsAsNumpy().tolist()
        if len(outs) != 1:
            raise BuildError(f"{path.name}: operator {i} ({kind}) has {len(outs)} outputs")
        params: dict[str, Any] = {}
        opts = o.BuiltinOptions()
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            cls = tflite.Conv2DOptions if kind == "CONV_2D" else tflite.DepthwiseConv2DOptions
            c = cls()
            c.Init(opts.Bytes, opts.Pos)
            params = dict(
                padding=c.Padding(),
                stride_h=c.StrideH(),
                stride_w=c.StrideW(),
                dil_h=c.DilationHFactor(),
                dil_w=c.DilationWFactor(),
                act=c.FusedActivationFunction(),
            )
            w = tensor_data(ins[1])  # conv: O x kh x kw x I; depthwise: 1 x kh x kw x C*mult
            if kind == "DEPTHWISE_CONV_2D":
                if c.DepthMultiplier() not in (0, 1) or w.shape[3] != shapes[ins[0]][3]:
                    raise BuildError(f"{path.name}: depthwise multiplier != 1 is not supported")
                w = w.transpose(3, 0, 1, 2)  # C x 1 x kh x kw
            else:
                w = w.transpose(0, 3, 1, 2)
            weights[ins[1]] = np.ascontiguousarray(w)
            weights[ins[2]] = tensor_data(ins[2])
        elif kind == "PRELU":
            weights[ins[1]] = tensor_data(ins[1]).reshape(-1)  # 1 x 1 x C -> C
        elif kind == "ADD":
            a = tflite.AddOptions()
            a.Init(opts.Bytes, opts.Pos)
            params = dict(act=a.FusedActivationFunction())
        elif kind == "MAX_POOL_2D":
            m = tflite.Pool2DOptions()
            m.Init(opts.Bytes, opts.Pos)
            params = dict(
                padding=m.Padding(),
                stride_h=m.StrideH(),
                stride_w=m.StrideW(),
                k_h=m.FilterHeight(),
                k_w=m.FilterWidth(),
                act=m.FusedActivationFunction(),
            )
        elif kind == "PAD":
            params = dict(pads=tensor_data(ins[1]).tolist())
        elif kind == "RESHAPE":
            pass  # the output tensor's static shape says it all
        else:
            raise BuildError(f"{path.name}: unsupported operator {kind}")
        ops.append(_Op(kind, ins, outs[0], params))
    graph_in = g.InputsAsNumpy().tolist()
    if len(graph_in) != 1:
        raise BuildError(f"{path.name}: {len(graph_in)} inputs, expected 1")
    return TfliteGraph(ops, weights, shapes, graph_in[0], g.OutputsAsNumpy().tolist()).eval()


def tflite_reference(path: Path, x_nchw: np.ndarray) -> np.ndarray:
    """The TFLite file run by LiteRT on N x 3 x H x W inputs: N x (outputs flattened, concatenated)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise BuildError(
            f"cannot verify {path.name}: LiteRT is not installed (pip install -e '.[landmarks]')"
        ) from e
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]["index"]
    outs = [d["index"] for d in interp.get_output_details()]
    rows = []
    for x in x_nchw:
        interp.set_tensor(inp, np.ascontiguousarray(x.transpose(1, 2, 0)[None], dtype=np.float32))
        interp.invoke()
        rows.append(np.concatenate([interp.get_tensor(i).reshape(-1) for i in outs]))
    return np.stack(rows)


def real_crops(limit: int = 8, size: int = INPUT_SIZE) -> np.ndarray:
    """Face-ish crops from the shared photos (centre squares resized to 192) for the parity check;
    empty when the shared data is not next to the repo."""
    import cv2

    files = sorted(SHARED_PHOTOS.glob("**/*.jpg"))[:limit]
    crops = []
    for f in files:
        img = cv2.imread(str(f))
        if img is None:
            continue
        h, w = img.shape[:2]
        s = min(h, w)
        sq = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s, ::-1]
        crops.append(cv2.resize(sq, (size, size), interpolation=cv2.INTER_AREA).transpose(2, 0, 1))
    return (np.stack(crops).astype(np.float32) / 255.0) if crops else np.zeros((0, 3, size, size), np.float32)


def parity(tflite_path: Path, onnx_path: Path, size: int = INPUT_SIZE) -> float:
    """Largest |onnx - tflite| over random inputs in [0, 1] and the shared photos' crops."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.random((3, 3, size, size), dtype=np.float32), real_crops(size=size)])
    ref = tflite_reference(tflite_path, x)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    if got.shape != ref.shape:
        raise BuildError(f"{onnx_path.name}: ONNX output shape {got.shape} != TFLite {ref.shape}")
    return float(np.abs(got - ref).max())


def export_verified(tflite_path: Path, out_path: Path, size: int) -> float:
    """Export the TFLite model as ONNX and return its worst difference from LiteRT (BuildError if over
    PARITY_TOLERANCE)."""
    net = read_tflite(tflite_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.rand(2, 3, size, size),),
            str(out_path),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    worst = parity(tflite_path, out_path, size)
    if not worst <= PARITY_TOLERANCE:
        raise BuildError(f"{out_path.name}: ONNX differs from TFLite by {worst:.2e} (> {PARITY_TOLERANCE:g})")
    log.info("%s matches %s within %.2e", out_path.name, tflite_path.name, worst)
    return worst


def build_face_landmark(inputs: dict[str, Path], out_dir: Path, spec: Any = None) -> dict[str, Any]:
    """Read face_landmark.tflite and iris_landmark.tflite, rebuild them in torch, export ONNX, verify
    against LiteRT."""
    for name in (TFLITE_NAME, IRIS_TFLITE_NAME):
        if inputs.get(name) is None or not Path(inputs[name]).is_file():
            raise BuildError(f"face landmark build: {name} missing from the inputs")
    worst = export_verified(Path(inputs[TFLITE_NAME]), Path(out_dir) / ONNX_FILE, INPUT_SIZE)
    worst_iris = export_verified(Path(inputs[IRIS_TFLITE_NAME]), Path(out_dir) / IRIS_FILE, IRIS_SIZE)
    return {
        "file": ONNX_FILE,
        "input_size": [INPUT_SIZE, INPUT_SIZE],
        "input_scaling": "RGB / 255, NCHW",
        "output": "468 x (x, y, z) in input pixels, then the face-presence logit",
        "iris_file": IRIS_FILE,
        "iris_input_size": [IRIS_SIZE, IRIS_SIZE],
        "iris_output": "71 eye/brow x (x, y, z) then 5 iris x (x, y, z), in input pixels; right eyes mirrored",
        "tflite_parity_max_abs": max(worst, worst_iris),
        "tflite_parity_tolerance": PARITY_TOLERANCE,
    }
