"""MTCNN's three networks (P-Net, R-Net, O-Net) in torch, laid out so that facenet-pytorch 2.5.3's
`pnet.pt`, `rnet.pt` and `onet.pt` state dicts load as they are; `stream.detector.MTCNN` runs them
and the build (facestream_models.mtcnn) checks and publishes the weights.

The forward passes compute what facenet-pytorch's modules compute (to float rounding), written for
speed on CPU: channels-last tensors (oneDNN convolutions; facenet-pytorch's NCHW is slower), large
max pools as separable strided maxima (torch's channels-last max_pool2d is slower there; exact),
and each net returning only the face probability instead of both softmax channels. P-Net also
exposes its trunk and heads separately so that the detector can run it in strips and compute box
regression only where a face is likely.

Torch runs these nets faster than ONNX Runtime on CPU, so the detector runs them in torch on CPU as
on GPU, and no ONNX export is built. The timings per net (against facenet-pytorch and ONNX Runtime)
and of each choice above: benchmarks/RESULTS.md, MTCNN.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import nn

WEIGHT_FILES = ("pnet.pt", "rnet.pt", "onet.pt")  # a built MTCNN: one state dict per net
CL = torch.channels_last


def _strided(x: torch.Tensor, dim: int, start: int, step: int, count: int) -> torch.Tensor:
    idx = [slice(None)] * x.dim()
    idx[dim] = slice(start, start + step * (count - 1) + 1, step)
    return x[tuple(idx)]


def _max_pool_axis(x: torch.Tensor, k: int, s: int, dim: int) -> torch.Tensor:
    n = x.shape[dim]
    out_n = math.ceil((n - k) / s) + 1  # ceil_mode=True, no padding, as torch computes it
    if (out_n - 1) * s >= n:
        out_n -= 1
    full = (n - k) // s + 1  # windows entirely inside
    if out_n == full:
        head = torch.maximum(_strided(x, dim, 0, s, full), _strided(x, dim, 1, s, full))
        for j in range(2, k):
            head = torch.maximum(head, _strided(x, dim, j, s, full))
        return head
    shape = list(x.shape)
    shape[dim] = out_n
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=CL)
    head = out.narrow(dim, 0, full)
    torch.maximum(_strided(x, dim, 0, s, full), _strided(x, dim, 1, s, full), out=head)
    for j in range(2, k):
        torch.maximum(head, _strided(x, dim, j, s, full), out=head)
    # the last, partial window: 1 or 2 elements here (k <= 3)
    rest = n - full * s
    tail = x.narrow(dim, full * s, 1)
    if rest > 1:
        tail = torch.maximum(tail, x.narrow(dim, full * s + 1, 1))
    out.narrow(dim, full, 1).copy_(tail)
    return out


def max_pool(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """F.max_pool2d(x, k, s, ceil_mode=True), bit for bit (k <= 3). Large tensors: two separable
    passes of strided maxima (torch's channels-last max_pool2d is slower there: RESULTS.md); small ones:
    torch's own (fewer operator calls). Channels-last result."""
    if x.numel() <= 300_000 or x.device.type != "cpu":
        return F.max_pool2d(x, k, s, ceil_mode=True)
    y = _max_pool_axis(_max_pool_axis(x, k, s, 2), k, s, 3)
    return y if y.is_contiguous(memory_format=CL) else y.contiguous(memory_format=CL)


def prelu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.prelu(x, weight), bit for bit, for a channels-last N x C x H x W tensor. Seen as rows of
    W * C values with the weight tiled W times, the per-channel weight runs along the contiguous
    axis: torch then vectorises it (much faster for P-Net's 10 channels, whose channels-last PReLU
    otherwise takes a scalar loop: RESULTS.md)."""
    n, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(n * h, w * c)  # a view when x is channels-last
    return F.prelu(rows, weight.repeat(w)).view(n, h, w, c).permute(0, 3, 1, 2)


def _flatten_whc(x: torch.Tensor) -> torch.Tensor:
    # The weights come from a Caffe/TensorFlow graph: flatten in (W, H, C) order.
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class PNet(nn.Module):
    """Proposal net, fully convolutional, stride 2, 12 x 12 window: N x 3 x H x W (pixels scaled to
    [-1, 1]) -> box regression N x 4 x h x w and face probability N x h x w."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    @staticmethod
    def output_size(n: int) -> int:
        """Output rows (or columns) for n input rows: conv 3, pool 2/2 (ceil), conv 3, conv 3."""
        return math.ceil((n - 2 - 2) / 2) + 1 - 4

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W -> features N x 32 x h x w (channels-last)."""
        x = x.contiguous(memory_format=CL)
        x = max_pool(prelu(self.conv1(x), self.prelu1.weight), 2, 2)
        x = prelu(self.conv2(x), self.prelu2.weight)
        return prelu(self.conv3(x), self.prelu3.weight)

    def prepare(self) -> None:
        """Cache the heads in the form the detector uses (after the weights are loaded)."""
        w = self.conv4_1.weight.flatten(1)
        b = self.conv4_1.bias
        assert b is not None and self.conv4_2.bias is not None  # nn.Conv2d's default: with bias
        self._margin_w = (w[1] - w[0]).contiguous()
        self._margin_b = b[1] - b[0]
        self._reg_w = self.conv4_2.weight.flatten(1).t().contiguous()

    def face_prob(self, feat: torch.Tensor) -> torch.Tensor:
        """Face probability N x h x w: softmax over the two class logits, computed as the sigmoid of
        their difference."""
        if not hasattr(self, "_margin_w"):
            self.prepare()
        n, c, h, w = feat.shape
        rows = feat.permute(0, 2, 3, 1).reshape(-1, c)  # a view: feat is channels-last
        return torch.sigmoid(torch.addmv(self._margin_b, rows, self._margin_w)).view(n, h, w)

    def regression(self, feat_rows: torch.Tensor) -> torch.Tensor:
        """Box regression for feature vectors K x 32 (features at chosen positions) -> K x 4."""
        if not hasattr(self, "_reg_w"):
            self.prepare()
        bias = self.conv4_2.bias
        assert bias is not None
        return torch.addmm(bias, feat_rows, self._reg_w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.trunk(x)
        n, c, h, w = feat.shape
        reg = self.regression(feat.permute(0, 2, 3, 1).reshape(-1, c)).view(n, h, w, 4).permute(0, 3, 1, 2)
        return reg, self.face_prob(feat)


class RNet(nn.Module):
    """Refine net: N x 3 x 24 x 24 -> box regression N x 4, face probability N."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.contiguous(memory_format=CL)
        x = max_pool(prelu(self.conv1(x), self.prelu1.weight), 3, 2)
        x = max_pool(prelu(self.conv2(x), self.prelu2.weight), 3, 2)
        x = prelu(self.conv3(x), self.prelu3.weight)
        x = F.prelu(self.dense4(_flatten_whc(x)), self.prelu4.weight)
        prob = torch.softmax(self.dense5_1(x), dim=1)[:, 1]
        return self.dense5_2(x), prob


class ONet(nn.Module):
    """Output net: N x 3 x 48 x 48 -> box regression N x 4, landmarks N x 10 (5 x then 5 y, relative
    to the box), face probability N."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = x.contiguous(memory_format=CL)
        x = max_pool(prelu(self.conv1(x), self.prelu1.weight), 3, 2)
        x = max_pool(prelu(self.conv2(x), self.prelu2.weight), 3, 2)
        x = max_pool(prelu(self.conv3(x), self.prelu3.weight), 2, 2)
        x = prelu(self.conv4(x), self.prelu4.weight)
        x = F.prelu(self.dense5(_flatten_whc(x)), self.prelu5.weight)
        prob = torch.softmax(self.dense6_1(x), dim=1)[:, 1]
        return self.dense6_2(x), self.dense6_3(x), prob


NETS: dict[str, type[nn.Module]] = {"pnet": PNet, "rnet": RNet, "onet": ONet}


@overload
def load_net(name: Literal["pnet"], path: Path, device: str | torch.device = ...) -> PNet: ...
@overload
def load_net(name: Literal["rnet"], path: Path, device: str | torch.device = ...) -> RNet: ...
@overload
def load_net(name: Literal["onet"], path: Path, device: str | torch.device = ...) -> ONet: ...
@overload
def load_net(name: str, path: Path, device: str | torch.device = ...) -> nn.Module: ...


def load_net(name: str, path: Path, device: str | torch.device = "cpu") -> nn.Module:
    """Build net `name` ("pnet", "rnet", "onet") and load its state dict from `path` (strict)."""
    net = NETS[name]()
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    # Module.to takes memory_format at run time (it passes it on to Tensor.to); torch's stubs omit it.
    net.eval().requires_grad_(False).to(device, memory_format=CL)  # type: ignore[call-overload]
    if isinstance(net, PNet):
        net.prepare()
    return net
