"""InceptionResnetV1 (FaceNet): a 160x160 RGB face -> a 512-d L2-normalised embedding.

The network is the one facenet-pytorch ships with David Sandberg's checkpoints (trained on VGGFace2
or CASIA-Webface). Module names follow facenet-pytorch exactly, so its released state dicts
(`20180402-114759-vggface2.pt`, `20180408-102900-casia-webface.pt`) load as they are; their
classifier keys (`logits.*`) are checked against the expected identity count and then ignored.

Input: float32 N x 3 x 160 x 160, RGB, already normalised as (pixel - 127.5) / 128 (the runtime does
that, from the registry's mean/std). Output: N x 512, L2-normalised inside the network.
Inference only: facenet-pytorch's dropout (identity in eval mode) is left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from facestream_models.onnx_export import BuildError, export_onnx
from stream.modelstore import ONNX_FILE
from stream.pypi import sha256_file
from stream.registry import MODELS

_CHIP_W, _CHIP_H = MODELS["facenet-vggface2"].crop.size  # both checkpoints: 160 x 160
INPUT_CHW = (3, _CHIP_H, _CHIP_W)
EMBEDDING_DIM = MODELS["facenet-vggface2"].dim  # 512

# Identities in each checkpoint's classifier (`logits`): tells the two checkpoints apart.
KNOWN_NUM_CLASSES = {"facenet-vggface2": 8631, "facenet-casia": 10575}

# facenet-pytorch's own aligned test faces (160x160 PNGs); used for the ONNX parity check when present.
SAMPLE_FACES_DIR = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "faces"
    / "facenet-pytorch"
    / "test_images_aligned"
)


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


class BasicConv2d(nn.Module):
    """Conv (no bias) -> batch norm (eps 1e-3, TensorFlow's value) -> ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def _path(*convs: nn.Module) -> nn.Module:
    """One branch of an inception module: a single layer as itself, a chain as nn.Sequential
    (this decides the checkpoint key names: `branch0.conv.weight` vs `branch1.0.conv.weight`)."""
    return convs[0] if len(convs) == 1 else nn.Sequential(*convs)


class _Branches(nn.Module):
    """Holds branches named branch0, branch1, ... and concatenates their outputs on channels."""

    def __init__(self, branches: list[nn.Module]):
        super().__init__()
        self.n_branches = len(branches)
        for i, branch in enumerate(branches):
            self.add_module(f"branch{i}", branch)

    def mixed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([getattr(self, f"branch{i}")(x) for i in range(self.n_branches)], dim=1)


class Reduction(_Branches):
    """Grid reduction (Mixed_6a, Mixed_7a): stride-2 branches side by side."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixed(x)


class ResidualInception(_Branches):
    """Inception-ResNet block: branches concatenated, projected back to `channels` by a 1x1 conv
    (with bias), scaled by `scale`, added to the input, then ReLU (except in the final block)."""

    def __init__(
        self, channels: int, branches: list[nn.Module], mixed_channels: int, scale: float, relu=True
    ):
        super().__init__(branches)
        self.scale = scale
        self.conv2d = nn.Conv2d(mixed_channels, channels, kernel_size=1)
        self.relu = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2d(self.mixed(x)) * self.scale + x)


def block35(scale: float) -> ResidualInception:
    """Inception-ResNet-A, 35x35 grid in the paper (17x17 at 160 input), 256 channels."""
    c = BasicConv2d
    return ResidualInception(
        256,
        [
            _path(c(256, 32, 1)),
            _path(c(256, 32, 1), c(32, 32, 3, padding=1)),
            _path(c(256, 32, 1), c(32, 32, 3, padding=1), c(32, 32, 3, padding=1)),
        ],
        mixed_channels=96,
        scale=scale,
    )


def block17(scale: float) -> ResidualInception:
    """Inception-ResNet-B, 896 channels, factorised 7x7."""
    c = BasicConv2d
    return ResidualInception(
        896,
        [
            _path(c(896, 128, 1)),
            _path(c(896, 128, 1), c(128, 128, (1, 7), padding=(0, 3)), c(128, 128, (7, 1), padding=(3, 0))),
        ],
        mixed_channels=256,
        scale=scale,
    )


def block8(scale: float, relu: bool = True) -> ResidualInception:
    """Inception-ResNet-C, 1792 channels, factorised 3x3."""
    c = BasicConv2d
    return ResidualInception(
        1792,
        [
            _path(c(1792, 192, 1)),
            _path(c(1792, 192, 1), c(192, 192, (1, 3), padding=(0, 1)), c(192, 192, (3, 1), padding=(1, 0))),
        ],
        mixed_channels=384,
        scale=scale,
        relu=relu,
    )


def mixed_6a() -> Reduction:
    """256 -> 896 channels (384 + 256 + 256 max-pooled), grid 17 -> 8."""
    c = BasicConv2d
    return Reduction(
        [
            _path(c(256, 384, 3, stride=2)),
            _path(c(256, 192, 1), c(192, 192, 3, padding=1), c(192, 256, 3, stride=2)),
            nn.MaxPool2d(3, stride=2),
        ]
    )


def mixed_7a() -> Reduction:
    """896 -> 1792 channels (384 + 256 + 256 + 896 max-pooled), grid 8 -> 3."""
    c = BasicConv2d
    return Reduction(
        [
            _path(c(896, 256, 1), c(256, 384, 3, stride=2)),
            _path(c(896, 256, 1), c(256, 256, 3, stride=2)),
            _path(c(896, 256, 1), c(256, 256, 3, padding=1), c(256, 256, 3, stride=2)),
            nn.MaxPool2d(3, stride=2),
        ]
    )


# --------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------


class InceptionResnetV1(nn.Module):
    """Shapes in the comments are for a 160x160 input."""

    def __init__(self):
        super().__init__()
        # Stem
        self.conv2d_1a = BasicConv2d(3, 32, 3, stride=2)  # 32 x 79 x 79
        self.conv2d_2a = BasicConv2d(32, 32, 3)  # 32 x 77 x 77
        self.conv2d_2b = BasicConv2d(32, 64, 3, padding=1)  # 64 x 77 x 77
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)  # 64 x 38 x 38
        self.conv2d_3b = BasicConv2d(64, 80, 1)  # 80 x 38 x 38
        self.conv2d_4a = BasicConv2d(80, 192, 3)  # 192 x 36 x 36
        self.conv2d_4b = BasicConv2d(192, 256, 3, stride=2)  # 256 x 17 x 17
        # Body (residual scales as in the original TensorFlow model)
        self.repeat_1 = nn.Sequential(*[block35(0.17) for _ in range(5)])  # 256 x 17 x 17
        self.mixed_6a = mixed_6a()  # 896 x 8 x 8
        self.repeat_2 = nn.Sequential(*[block17(0.10) for _ in range(10)])  # 896 x 8 x 8
        self.mixed_7a = mixed_7a()  # 1792 x 3 x 3
        self.repeat_3 = nn.Sequential(*[block8(0.20) for _ in range(5)])  # 1792 x 3 x 3
        self.block8 = block8(1.0, relu=False)  # 1792 x 3 x 3
        # Head
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)  # 1792 x 1 x 1
        self.last_linear = nn.Linear(1792, EMBEDDING_DIM, bias=False)
        self.last_bn = nn.BatchNorm1d(EMBEDDING_DIM, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in (
            self.conv2d_1a,
            self.conv2d_2a,
            self.conv2d_2b,
            self.maxpool_3a,
            self.conv2d_3b,
            self.conv2d_4a,
            self.conv2d_4b,
            self.repeat_1,
            self.mixed_6a,
            self.repeat_2,
            self.mixed_7a,
            self.repeat_3,
            self.block8,
        ):
            x = stage(x)
        x = self.avgpool_1a(x).flatten(1)
        x = self.last_bn(self.last_linear(x))
        # = F.normalize(x, dim=1), written with broadcasting so the ONNX output keeps its static 512
        return x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------

_CLASSIFIER_KEYS = ("logits.weight", "logits.bias")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise BuildError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors alike: all mean "not a usable checkpoint"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BuildError(f"{path.name}: not a readable torch state dict ({reason[:200]})") from None
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise BuildError(
            f"{path.name}: expected a state dict (names -> tensors) as facenet-pytorch releases it, "
            f"got {type(obj).__name__}"
        )
    return obj


def _checked_weights(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors for every key of `model`, or BuildError naming what is wrong."""
    expected = model.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}  # unused in eval mode
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected and k not in _CLASSIFIER_KEYS]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise BuildError(
            f"{name}: not an InceptionResnetV1 (facenet-pytorch) checkpoint: keys {'; '.join(parts)}"
        )
    weights = {}
    for key, ref in expected.items():
        if key not in state:
            weights[key] = ref
            continue
        t = state[key]
        if t.shape != ref.shape:
            raise BuildError(f"{name}: {key} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}")
        if ref.is_floating_point():
            if not t.is_floating_point():
                raise BuildError(f"{name}: {key} has dtype {t.dtype}, expected a floating-point tensor")
            if not torch.isfinite(t).all():
                raise BuildError(f"{name}: {key} contains NaN or infinite values")
        weights[key] = t
    return weights


def _classifier_classes(state: dict[str, torch.Tensor]) -> int | None:
    w = state.get("logits.weight")
    return int(w.shape[0]) if w is not None and w.dim() == 2 else None


def _load(path: Path) -> tuple[InceptionResnetV1, dict[str, torch.Tensor]]:
    state = _read_state_dict(path)
    model = InceptionResnetV1()
    weights = _checked_weights(model, state, Path(path).name)
    model.load_state_dict(weights, strict=True)
    model.eval().requires_grad_(False)
    return model, state


def load_facenet_checkpoint(path: Path) -> nn.Module:
    """InceptionResnetV1 with the weights of a facenet-pytorch checkpoint, in eval mode.
    Raises BuildError (one line) for a file that is not such a checkpoint."""
    return _load(path)[0]


# --------------------------------------------------------------------------------------------------
# Build: checkpoint -> model.onnx
# --------------------------------------------------------------------------------------------------


def sample_faces(directory: Path = SAMPLE_FACES_DIR) -> np.ndarray | None:
    """facenet-pytorch's aligned test faces as network input (N x 3 x 160 x 160, RGB,
    (x - 127.5) / 128), or None when they are not on this machine."""
    import cv2

    chips = []
    for f in sorted(Path(directory).glob("*/1.png")):
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if bgr is None or bgr.shape[:2] != INPUT_CHW[1:]:
            continue
        chips.append(bgr[:, :, ::-1].transpose(2, 0, 1))
    if not chips:
        return None
    return ((np.stack(chips).astype(np.float32) - 127.5) / 128.0).astype(np.float32)


def build_facenet(inputs: dict[str, Path], out_dir: Path, spec) -> dict:
    """Build `out_dir/model.onnx` from inputs["checkpoint"] (a facenet-pytorch .pt state dict) and
    return the manifest extras. Raises BuildError for a bad checkpoint or a failed parity check."""
    if "checkpoint" not in inputs:
        raise BuildError(f"{spec.name}: no checkpoint file given")
    ckpt = Path(inputs["checkpoint"])
    model, state = _load(ckpt)

    classes = _classifier_classes(state)
    expected_classes = spec.extra.get("num_classes") or KNOWN_NUM_CLASSES.get(spec.name)
    if classes is not None and expected_classes is not None and classes != expected_classes:
        others = [n for n, c in KNOWN_NUM_CLASSES.items() if c == classes]
        hint = f" (looks like {others[0]})" if others else ""
        raise BuildError(
            f"{ckpt.name}: classifier has {classes} identities, {spec.name} has {expected_classes}: "
            f"wrong checkpoint for this model{hint}"
        )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / ONNX_FILE
    real = sample_faces()
    with torch.random.fork_rng(devices=[]):  # export_onnx traces a random batch: same build every time
        torch.manual_seed(0)
        parity = export_onnx(model, onnx_path, INPUT_CHW, real)
    return {
        "file": onnx_path.name,
        "parity_max_abs": parity,
        "parity_real_faces": 0 if real is None else len(real),
        "checkpoint_file": ckpt.name,
        "checkpoint_sha256": sha256_file(ckpt),
        "checkpoint_num_classes": classes,
    }
