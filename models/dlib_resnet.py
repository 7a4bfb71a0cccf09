"""dlib's face recognition ResNet (dlib_face_recognition_resnet_model_v1.dat) in torch: a 150x150
RGB face chip -> a 128-d descriptor; same person when the Euclidean distance is <= 0.6.

The network is the one in dlib's examples/dnn_face_recognition_ex.cpp (`anet_type`), input side first:
conv 7x7/2 (32) -> affine -> relu -> max pool 3x3/2 -> residual blocks: 3 at 32 channels, then a
downsampling block followed by 3 at 64, 2 at 128, 2 at 256, then one more downsampling block at 256
-> global average pool -> fc 256 -> 128 without bias. A residual block is conv3x3 -> affine -> relu ->
conv3x3 -> affine, plus the block input, then relu; dlib's `affine` is a batch norm frozen into a
per-channel scale and shift. A downsampling block's first conv has stride 2 (no padding) and its
shortcut is a 2x2/2 average pool of the block input, with no projection: when the two branches still
differ in shape, dlib's add_prev zero-pads each to the larger one at the end of the channel, row and
column axes (that is what `ResBlock` reproduces with static pads).

Input: float32 N x 3 x 150 x 150, RGB, already normalised as (pixel - mean[c]) / 256 (the runtime
does that from the registry; the means are the ones stored in the .dat, checked at build time).
Output: N x 128, the raw descriptor (not L2-normalised).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facestream_models.dlib_dat import TAG_OR_SKIP_VERSION, DatLayer, DlibNet, read_dat
from facestream_models.onnx_export import BuildError, export_onnx, skip_optional
from facestream_models.quantize import fp32_embeddings
from stream.int8_check import CHECK_CHIPS, CHECK_FILE, verified_on, write_check
from stream.modelstore import INT8_FILE, ONNX_FILE
from stream.registry import MODELS, ModelSpec

log = logging.getLogger(__name__)
DAT_NAME = "dlib_face_recognition_resnet_model_v1.dat"
INPUT_SIZE = MODELS["dlib-resnet-v1"].crop.size[0]  # square chips, 150 x 150
INPUT_CHW = (3, INPUT_SIZE, INPUT_SIZE)
EMBEDDING_DIM = MODELS["dlib-resnet-v1"].dim  # 128
# (channels, residual blocks, first block downsamples) per stage, input side first (alevel4..alevel0).
STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))
# dlib's own 150x150 chips in the shared test data next to the repo: real inputs for the parity check.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REFERENCE_CHIPS = SHARED_DATA / "reference" / "dlib" / "chips"
# INT8 (models/quantize.py): calibrated on the chips our own aligner cuts from the shared photos
# (MTCNN's reference landmarks + the registry's template), verified on those plus dlib's own chips,
# which calibration never sees. Limits: what the recipe achieves (L2 mean ~0.036, max ~0.064 on
# 103 faces) plus headroom; typical same-person distances are 0.3-0.45, the threshold 0.6.
INT8_L2_MEAN_LIMIT = 0.045
INT8_L2_MAX_LIMIT = 0.08
# Decisions: none may change among dlib's reference chips (5 people, 903 pairs); among all 103
# faces (crowd strangers included) only pairs that fp32 puts within this of 0.6 may flip (seen:
# 7 of 5253, all within 0.007; int8 moves pair distances by at most ~0.026).
INT8_DECISION_MARGIN = 0.04
INT8_MIN_SPEEDUP = 1.2  # below this int8 is not worth a second file (batch 8, measured interleaved)
INT8_MIN_PROB = 0.9  # MTCNN detections used for calibration


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    # dlib's rule for conv and pooling alike (floor), the same as torch's default.
    return (size + 2 * padding - kernel) // stride + 1


class Affine(nn.Module):
    """dlib's affine_ layer (CONV_MODE): y = gamma[c] * x + beta[c]."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels, 1, 1), requires_grad=False)
        self.beta = nn.Parameter(torch.zeros(channels, 1, 1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma + self.beta


class ResBlock(nn.Module):
    """relu(block(x) + shortcut(x)); built for one input size, since the zero-padding that makes the
    branches addable is fixed by the shapes (static pads export to ONNX as constants)."""

    def __init__(self, c_in: int, c_out: int, size_in: int, down: bool):
        super().__init__()
        stride, pad = (2, 0) if down else (1, 1)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=pad)
        self.affine1 = Affine(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.affine2 = Affine(c_out)
        self.pool = nn.AvgPool2d(2, stride=2) if down else None
        size_main = _out_size(size_in, 3, stride, pad)
        size_short = _out_size(size_in, 2, 2, 0) if down else size_in
        self.size_out, self.c_out = max(size_main, size_short), max(c_out, c_in)
        self.pad_main = self._pads(c_out, size_main)
        self.pad_short = self._pads(c_in, size_short)

    def _pads(self, channels: int, size: int) -> tuple[int, ...] | None:
        # F.pad order: (left, right) of columns, then rows, then channels; dlib pads at the end only.
        grow, more = self.size_out - size, self.c_out - channels
        return (0, grow, 0, grow, 0, more) if grow or more else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        s = x if self.pool is None else self.pool(x)
        if self.pad_main:
            y = F.pad(y, self.pad_main)
        if self.pad_short:
            s = F.pad(s, self.pad_short)
        return F.relu(y + s)

    def dlib_layers(self) -> list[tuple[str, nn.Module | dict | None]]:
        """This block as dlib stacks it, input side first: (kind, torch module or expected fields);
        "tag"/"skip" mark dlib's tag1/tag2/skip1 wrappers, which hold nothing but a version."""
        first = [
            ("tag", None),
            ("con_4", self.conv1),
            ("affine_", self.affine1),
            ("relu_", None),
            ("con_4", self.conv2),
            ("affine_", self.affine2),
        ]
        if self.pool is None:
            return [*first, ("add_prev_", None), ("relu_", None)]
        pool = {"nr": 2, "nc": 2, "stride_y": 2, "stride_x": 2, "padding_y": 0, "padding_x": 0}
        return [
            *first,
            ("tag", None),
            ("skip", None),
            ("avg_pool_2", pool),
            ("add_prev_", None),
            ("relu_", None),
        ]


class DlibResNet(nn.Module):
    """N x 3 x 150 x 150 normalised RGB -> N x 128 raw descriptors (dlib's anet_type without its loss)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 7, stride=2)
        self.affine = Affine(32)
        self.pool = nn.MaxPool2d(3, stride=2)
        size = _out_size(_out_size(INPUT_SIZE, 7, 2, 0), 3, 2, 0)
        blocks, c_in = [], 32
        for channels, n, down in STAGES:
            for i in range(n):
                blocks.append(ResBlock(c_in, channels, size, down and i == 0))
                c_in, size = blocks[-1].c_out, blocks[-1].size_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, EMBEDDING_DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.affine(self.conv(x))))
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))

    def dlib_layers(self) -> list[tuple[str, nn.Module | dict | None]]:
        """The whole network as dlib stacks it (see ResBlock.dlib_layers), input side first."""
        stem_pool = {"nr": 3, "nc": 3, "stride_y": 2, "stride_x": 2, "padding_y": 0, "padding_x": 0}
        layers = [("con_4", self.conv), ("affine_", self.affine), ("relu_", None), ("max_pool_2", stem_pool)]
        for block in self.blocks:
            layers += block.dlib_layers()
        everything = {"nr": 0, "nc": 0, "stride_y": 1, "stride_x": 1, "padding_y": 0, "padding_x": 0}
        return [*layers, ("avg_pool_2", everything), ("fc_2", self.fc)]


# --------------------------------------------------------------------------------------------------
# Weights from the parsed .dat
# --------------------------------------------------------------------------------------------------


def _set(target: torch.Tensor, values: np.ndarray) -> None:
    with torch.no_grad():
        target.copy_(torch.from_numpy(values.reshape(target.shape)))


def _load_layer(where: str, got: DatLayer, target: nn.Module | dict | None) -> None:
    """Copy one parsed layer into its torch module after checking its settings (a dict target:
    settings only, for the parameter-free pooling layers)."""
    p = got.params
    if isinstance(target, nn.Conv2d):
        want = {
            "num_filters": target.out_channels,
            "in_channels": target.in_channels,
            "nr": target.kernel_size[0],
            "nc": target.kernel_size[1],
            "stride_y": target.stride[0],
            "stride_x": target.stride[1],
            "padding_y": target.padding[0],
            "padding_x": target.padding[1],
            "bias": 1,
        }
        _expect_fields(where, got, want)
        n = target.weight.numel()
        _set(target.weight, p[:n])  # dlib's filters are (out, in, rows, cols), like torch's
        _set(target.bias, p[n:])
    elif isinstance(target, Affine):
        _expect_fields(where, got, {"channels": target.gamma.shape[0], "mode": 0})
        half = p.size // 2
        _set(target.gamma, p[:half])
        _set(target.beta, p[half:])
    elif isinstance(target, nn.Linear):
        want = {"num_inputs": target.in_features, "num_outputs": target.out_features, "bias": 0}
        _expect_fields(where, got, want)
        _set(target.weight, p.reshape(target.in_features, target.out_features).T)  # dlib: x @ W
    elif isinstance(target, dict):
        _expect_fields(where, got, target)


def _expect_fields(where: str, got: DatLayer, want: dict) -> None:
    have = {k: got.fields.get(k) for k, v in want.items() if got.fields.get(k) != v}
    if have:
        expected = {k: want[k] for k in have}
        raise BuildError(f"{where} ({got.kind}) has {have}, expected {expected}")


def model_from_dat(net: DlibNet, name: str = DAT_NAME) -> DlibResNet:
    """The torch network with the parsed file's weights, after checking that the file holds exactly
    this architecture (layer kinds, sizes, strides, paddings and where the tags/skips sit)."""
    model = DlibResNet()
    expected = model.dlib_layers()
    # Wrapper versions outside-in: 1 for a tag/skip, 2 for a layer (the input-level one is special).
    want_wrappers = [TAG_OR_SKIP_VERSION if k in ("tag", "skip") else 2 for k, _ in reversed(expected)][:-1]
    computational = [(k, t) for k, t in expected if k not in ("tag", "skip")]
    if len(net.layers) != len(computational) or len(net.wrappers) != len(want_wrappers) + 1:
        raise BuildError(
            f"{name}: not dlib's face recognition ResNet ({len(net.layers)} layers in "
            f"{len(net.wrappers)} wrappers, expected {len(computational)} in {len(want_wrappers) + 1})"
        )
    if net.wrappers[:-1] != want_wrappers:
        first = next(i for i, (a, b) in enumerate(zip(net.wrappers, want_wrappers, strict=False)) if a != b)
        raise BuildError(f"{name}: not dlib's face recognition ResNet (tags/skips differ at wrapper {first})")
    size = (net.input.fields.get("nr"), net.input.fields.get("nc"))
    if net.input.kind != "input_rgb_image_sized" or size != (INPUT_SIZE, INPUT_SIZE):
        raise BuildError(f"{name}: input layer {net.input.kind} {net.input.fields}, expected 150x150 RGB")
    for i, (got, (kind, target)) in enumerate(zip(net.layers, computational, strict=True)):
        if got.kind != kind:
            raise BuildError(f"{name}: layer {i} is {got.kind}, expected {kind}")
        _load_layer(f"{name}: layer {i}", got, target)
    return model.eval().requires_grad_(False)


def load_dlib_resnet(dat_path: Path) -> DlibResNet:
    """The network from a dlib .dat file, in eval mode. Raises BuildError for a bad file."""
    return model_from_dat(read_dat(dat_path), Path(dat_path).name)


def input_means(net: DlibNet) -> tuple[float, float, float]:
    f = net.input.fields
    return float(f["avg_red"]), float(f["avg_green"]), float(f["avg_blue"])


# --------------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------------


def normalise_chips(chips: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """N x 150 x 150 x 3 RGB uint8 -> N x 3 x 150 x 150 float32, as the runtime feeds the model."""
    x = (chips.astype(np.float32) - np.float32(mean)) / np.float32(std)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def reference_chips(directory: Path = REFERENCE_CHIPS, limit: int | None = None) -> np.ndarray | None:
    """dlib's own 150x150 chips (N x 150 x 150 x 3 RGB uint8), or None where the shared data is absent."""
    import cv2

    files = sorted(directory.glob("*.png"))[:limit]
    chips = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in files]
    chips = [c[:, :, ::-1] for c in chips if c is not None and c.shape[:2] == (INPUT_SIZE, INPUT_SIZE)]
    return np.stack(chips) if chips else None


def aligned_chips(data: Path = SHARED_DATA, min_prob: float = INT8_MIN_PROB) -> np.ndarray | None:
    """Chips (N x 150 x 150 x 3 RGB uint8) cut by our aligner (stream.align) from the shared photos
    and video frames at MTCNN's reference landmarks, in a fixed order; None without the shared data."""
    from stream.align import crop_faces
    from stream.imageio import load_image
    from stream.registry import get_spec

    index = data / "reference" / "mtcnn" / "detections.json"
    if not index.is_file():
        return None
    crop = get_spec("dlib-resnet-v1").crop
    chips = []
    for rel, faces in sorted(json.loads(index.read_text())["images"].items()):
        faces = [f for f in faces if f["prob"] >= min_prob]
        path = data / rel
        if not faces or not path.is_file():
            continue
        boxes = np.array([f["box"] for f in faces], dtype=np.float32)
        landmarks = np.array([f["landmarks"] for f in faces], dtype=np.float32)
        chips.append(crop_faces(load_image(path), boxes, landmarks, crop))
    return np.concatenate(chips) if chips else None


def build_int8(out_dir: Path, spec: ModelSpec) -> dict:
    """Write out_dir/model.int8.onnx from out_dir/model.onnx when it is verified and worthwhile.

    Returns the manifest's "int8" entry: the figures, the processor it was verified on and a check
    file for other processors (stream.int8_check), or {"skipped": reason} where no int8 file is
    written: no real faces to calibrate and verify on, a failed verification, or no speed-up here.
    int8 is optional, so none of these fails the build of the fp32 model. Without the shared data
    we skip rather than calibrate on synthetic input: an int8 model whose identity decisions were
    never checked on real faces must not be published."""
    ours = aligned_chips()
    dlib_chips = reference_chips()
    if ours is None or dlib_chips is None:
        return skip_optional(
            spec.name, "int8", f"no real face chips to calibrate and verify int8 on ({SHARED_DATA} absent)"
        )
    try:
        return _quantize_checked(out_dir, spec, ours, dlib_chips)
    except BuildError as e:
        (out_dir / INT8_FILE).unlink(missing_ok=True)
        (out_dir / CHECK_FILE).unlink(missing_ok=True)
        return skip_optional(spec.name, "int8", str(e))


def _quantize_checked(out_dir: Path, spec: ModelSpec, ours: np.ndarray, dlib_chips: np.ndarray) -> dict:
    from facestream_models.quantize import quantize_and_verify, speedup

    calibration = normalise_chips(ours, spec.mean, spec.std)
    verification = np.concatenate([calibration, normalise_chips(dlib_chips, spec.mean, spec.std)])
    strict = np.arange(len(verification)) >= len(calibration)  # dlib's own chips
    fp32, int8 = out_dir / ONNX_FILE, out_dir / INT8_FILE
    stats = quantize_and_verify(
        fp32,
        int8,
        calibration,
        verification,
        spec.threshold,
        INT8_L2_MEAN_LIMIT,
        INT8_L2_MAX_LIMIT,
        INT8_DECISION_MARGIN,
        strict,
    )
    stats["held_out_faces"] = len(dlib_chips)
    stats["speedup"] = round(speedup(fp32, int8, verification[:8]), 2)
    stats["speedup_batch"] = 8
    if stats["speedup"] < INT8_MIN_SPEEDUP:
        raise BuildError(f"int8 only {stats['speedup']}x as fast as fp32 here (< {INT8_MIN_SPEEDUP}x)")
    # Real faces spread over both sets, for a recheck on CPUs with other int8 kernels.
    chips = np.concatenate([ours, dlib_chips])
    pick = np.linspace(0, len(chips) - 1, CHECK_CHIPS).round().astype(int)
    write_check(out_dir / CHECK_FILE, chips[pick], fp32_embeddings(fp32, verification[pick]))
    stats["verified_on"] = verified_on()
    stats["check_file"] = CHECK_FILE
    log.info(
        "%s: int8 L2 vs fp32 mean %.4f max %.4f, %d/%d decisions changed, %.2fx faster (%s)",
        spec.name,
        stats["l2_mean"],
        stats["l2_max"],
        stats["decisions_changed"],
        stats["pairs"],
        stats["speedup"],
        stats["verified_on"]["int8_kernel"],
    )
    return stats


def build_dlib_resnet(inputs: dict[str, Path], out_dir: Path, spec: ModelSpec) -> dict:
    """Rebuild the network from the .dat, export out_dir/model.onnx, prove ONNX == torch, add the
    verified int8 model (model.int8.onnx, see build_int8) and return the manifest extras.
    Raises BuildError (one line) for a bad file or a failed check."""
    if DAT_NAME not in inputs:
        raise BuildError(f"{spec.name}: no {DAT_NAME} among the inputs ({', '.join(inputs) or 'none'})")
    net = read_dat(inputs[DAT_NAME])
    means = input_means(net)
    if not np.allclose(means, spec.mean, rtol=0, atol=1e-4) or tuple(spec.std) != (256.0,) * 3:
        raise BuildError(
            f"{DAT_NAME}: input means {tuple(round(m, 4) for m in means)} / std 256 do not match the "
            f"registry's {spec.mean} / {spec.std}"
        )
    model = model_from_dat(net)
    chips = reference_chips(limit=8)
    if chips is not None:
        real = normalise_chips(chips, spec.mean, spec.std)
    else:  # no shared data: inputs in the normalised pixel range instead
        real = np.random.default_rng(1).uniform(-0.5, 0.5, (4, *INPUT_CHW)).astype(np.float32)
    parity = export_onnx(model, out_dir / ONNX_FILE, INPUT_CHW, real)
    return {
        "file": ONNX_FILE,
        "parity_max_abs": parity,
        "parity_real_faces": 0 if chips is None else len(chips),
        "int8": build_int8(out_dir, spec),
    }
