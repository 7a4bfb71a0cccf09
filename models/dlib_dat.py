"""Reading a dlib DNN file (what `dlib::serialize(path) << net` writes, e.g.
dlib_face_recognition_resnet_model_v1.dat) in pure Python: no dlib needed.

The format, as dlib's serialize.h, dnn/core.h, dnn/layers.h, dnn/input.h and dnn/loss.h write it:
- integer: a control byte (bit 7: negative; low 4 bits: how many bytes follow) and the magnitude,
  little-endian;
- float/double: two integers, mantissa then exponent, value = mantissa * 2**exponent (exponents
  32000/32001/32002 mean +inf/-inf/nan);
- string: its length (an integer), then the bytes;  bool: one byte, ASCII '1' or '0';
- tensor: version 2, num_samples, k, nr, nc, then the values as raw float32 little-endian;
  alias_tensor (a view into a layer's params): version 1 and the four dims only.

A network is nested wrappers, each writing its version first and its subnetwork before its own
details, so the file reads: the loss layer (version 1, loss details), then the versions of every
wrapper outside-in (add_layer: 2; tag and skip layers: 1, with nothing else, not even their tag
id), then the input layer, then each computational layer's details from the input side outward,
each followed by its add_layer's bookkeeping (flags and training-time tensors, empty in a cleaned
net). `read_dat` returns that as structured layers; turning them into a network is the caller's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facestream_models.onnx_export import BuildError

ADD_LAYER_VERSION = 2  # add_layer over another layer
INPUT_ADD_LAYER_VERSIONS = (2, 3)  # the add_layer directly over the input layer (3 adds one integer)
TAG_OR_SKIP_VERSION = 1
_FLOAT_SPECIALS = {32000: float("inf"), 32001: float("-inf"), 32002: float("nan")}
_MAX_STRING = 1 << 12  # dlib's layer names are short; a huge length means a corrupt file
_MAX_TENSOR = 1 << 28  # values; bigger than any sane layer, small enough to catch garbage dims


@dataclass
class DatLayer:
    """One layer's details: `kind` is the version string dlib writes (e.g. "con_4", "relu_"),
    `fields` its scalar settings, `params` its parameter tensor (flat float32; empty if none)."""

    kind: str
    fields: dict[str, int | float] = field(default_factory=dict)
    params: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


@dataclass
class DlibNet:
    loss: DatLayer
    input: DatLayer
    wrappers: list[int]  # wrapper versions outside-in, the input-level add_layer last
    layers: list[DatLayer]  # computational layers, input side first


class _Reader:
    """Typed reads from the file's bytes; every failure is a one-line BuildError."""

    def __init__(self, data: bytes, name: str):
        self.data = data
        self.name = name
        self.pos = 0

    def fail(self, what: str) -> BuildError:
        return BuildError(f"{self.name}: not a valid dlib network file ({what} at byte {self.pos})")

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise BuildError(f"{self.name}: truncated (ends at byte {len(self.data)} while reading {what})")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def read_int(self, what: str = "an integer") -> int:
        ctrl = self.take(1, what)[0]
        size = ctrl & 0x0F
        if ctrl & 0x70 or size > 8:
            raise self.fail(f"bad integer control byte 0x{ctrl:02x} in {what}")
        magnitude = int.from_bytes(self.take(size, what), "little")
        return -magnitude if ctrl & 0x80 else magnitude

    def read_float(self, what: str = "a float") -> float:
        mantissa, exponent = self.read_int(what), self.read_int(what)
        if exponent in _FLOAT_SPECIALS:
            return _FLOAT_SPECIALS[exponent]
        return float(mantissa) * 2.0**exponent

    def read_str(self, what: str = "a string") -> str:
        n = self.read_int(what)
        if not 0 <= n <= _MAX_STRING:
            raise self.fail(f"string length {n} in {what}")
        try:
            return self.take(n, what).decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"non-ASCII {what}") from None

    def read_bool(self, what: str = "a flag") -> bool:
        b = self.take(1, what)
        if b not in (b"0", b"1"):
            raise self.fail(f"flag byte {b!r} in {what}")
        return b == b"1"

    def read_version(self, expected: tuple[int, ...], what: str) -> int:
        v = self.read_int(what)
        if v not in expected:
            raise self.fail(f"{what} version {v}, expected {' or '.join(map(str, expected))}")
        return v

    def read_tensor(self, what: str) -> np.ndarray:
        self.read_version((2,), f"{what} tensor")
        dims = [self.read_int(f"{what} tensor dims") for _ in range(4)]
        if min(dims) < 0 or int(np.prod(dims, dtype=np.int64)) > _MAX_TENSOR:
            raise self.fail(f"{what} tensor dims {dims}")
        n = int(np.prod(dims))
        values = np.frombuffer(self.take(4 * n, f"{what} tensor values"), dtype="<f4")
        return values.astype(np.float32).reshape(dims)

    def read_alias(self, what: str) -> tuple[int, int, int, int]:
        self.read_version((1,), f"{what} alias_tensor")
        n, k, nr, nc = (self.read_int(f"{what} alias_tensor dims") for _ in range(4))
        return n, k, nr, nc

    def peek_string_startswith(self, prefix: bytes) -> bool:
        """Is a string starting with `prefix` next? (Never raises; the position is kept.)"""
        start = self.pos
        try:
            return len(prefix) <= self.read_int() <= _MAX_STRING and self.take(len(prefix), "") == prefix
        except BuildError:
            return False
        finally:
            self.pos = start


# --------------------------------------------------------------------------------------------------
# Layer details, one reader per version string this network uses
# --------------------------------------------------------------------------------------------------


def _con(r: _Reader, kind: str) -> DatLayer:
    params = r.read_tensor(kind)
    names = ("num_filters", "nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")
    fields: dict[str, int | float] = {n: r.read_int(f"{kind} {n}") for n in names}
    filters, biases = r.read_alias(f"{kind} filters"), r.read_alias(f"{kind} biases")
    for n in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult"):
        r.read_float(f"{kind} {n}")
    n_filters = int(np.prod(filters))
    if filters[0] != fields["num_filters"] or n_filters + int(np.prod(biases)) != params.size:
        raise r.fail(f"{kind} with filters {filters}, biases {biases} and {params.size} params")
    fields["in_channels"] = filters[1]
    fields["bias"] = int(np.prod(biases) > 0)
    return DatLayer(kind, fields, params.reshape(-1))


def _affine(r: _Reader, kind: str) -> DatLayer:
    params = r.read_tensor(kind)
    gamma, beta = r.read_alias(f"{kind} gamma"), r.read_alias(f"{kind} beta")
    mode = r.read_int(f"{kind} mode")  # 0: CONV_MODE (one scale per channel), 1: FC_MODE
    if np.prod(gamma) != np.prod(beta) or 2 * int(np.prod(gamma)) != params.size:
        raise r.fail(f"{kind} with gamma {gamma}, beta {beta} and {params.size} params")
    return DatLayer(kind, {"channels": int(np.prod(gamma)), "mode": mode}, params.reshape(-1))


def _pool(r: _Reader, kind: str) -> DatLayer:
    names = ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")
    return DatLayer(kind, {n: r.read_int(f"{kind} {n}") for n in names})


def _no_fields(r: _Reader, kind: str) -> DatLayer:
    return DatLayer(kind)


def _fc(r: _Reader, kind: str) -> DatLayer:
    num_outputs, num_inputs = r.read_int(f"{kind} num_outputs"), r.read_int(f"{kind} num_inputs")
    params = r.read_tensor(kind)
    weights, biases = r.read_alias(f"{kind} weights"), r.read_alias(f"{kind} biases")
    bias_mode = r.read_int(f"{kind} bias_mode")  # 0: FC_HAS_BIAS, 1: FC_NO_BIAS
    for n in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult"):
        r.read_float(f"{kind} {n}")
    if (
        weights[:2] != (num_inputs, num_outputs)
        or int(np.prod(weights)) + int(np.prod(biases)) != params.size
    ):
        raise r.fail(f"{kind} {num_inputs}->{num_outputs} with weights {weights} and {params.size} params")
    fields = {"num_outputs": num_outputs, "num_inputs": num_inputs, "bias": int(bias_mode == 0)}
    return DatLayer(kind, fields, params.reshape(-1))


def _input_rgb_sized(r: _Reader, kind: str) -> DatLayer:
    fields = {n: r.read_float(f"{kind} {n}") for n in ("avg_red", "avg_green", "avg_blue")}
    fields.update(nr=r.read_int(f"{kind} nr"), nc=r.read_int(f"{kind} nc"))
    return DatLayer(kind, fields)


def _loss_metric(r: _Reader, kind: str) -> DatLayer:
    return DatLayer(
        kind, {"margin": r.read_float(f"{kind} margin"), "dist_thresh": r.read_float(f"{kind} dist_thresh")}
    )


_LAYERS = {
    "con_4": _con,
    "affine_": _affine,
    "relu_": _no_fields,
    "max_pool_2": _pool,
    "avg_pool_2": _pool,
    "add_prev_": _no_fields,
    "fc_2": _fc,
}
_INPUTS = {"input_rgb_image_sized": _input_rgb_sized}
_LOSSES = {"loss_metric_2": _loss_metric}


def _details(r: _Reader, readers: dict, what: str) -> DatLayer:
    at = r.pos
    kind = r.read_str(what)
    if kind not in readers:
        r.pos = at
        raise r.fail(f"unsupported {what} {kind!r} (known: {', '.join(readers)})")
    return readers[kind](r, kind)


def _bookkeeping(r: _Reader, input_level_version: int | None) -> None:
    """The add_layer's training state after its details: three flags and tensors that a cleaned
    net leaves empty (x_grad, cached_output, then params_grad; or grad_final at the input level,
    plus sample_expansion_factor in version 3)."""
    for flag in ("setup_called", "gradient_input_is_stale", "get_output_disabled"):
        r.read_bool(f"add_layer {flag}")
    for t in ("x_grad", "cached_output", "params_grad" if input_level_version is None else "grad_final"):
        r.read_tensor(f"add_layer {t}")
    if input_level_version == 3:
        r.read_int("add_layer sample_expansion_factor")


def read_dat(path: Path) -> DlibNet:
    """Parse a dlib network file. Raises BuildError (one line) for a missing, truncated, corrupt or
    unsupported file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BuildError(f"{path}: cannot read ({e.strerror or e})") from None
    r = _Reader(data, path.name)
    r.read_version((1,), "add_loss_layer")
    loss = _details(r, _LOSSES, "loss layer")

    wrappers: list[int] = []
    while not r.peek_string_startswith(b"input"):  # wrapper versions until the input layer's name
        wrappers.append(r.read_version((TAG_OR_SKIP_VERSION, ADD_LAYER_VERSION, 3), "layer"))
    if not wrappers or wrappers[-1] not in INPUT_ADD_LAYER_VERSIONS:
        raise r.fail("no add_layer directly over the input layer")
    if 3 in wrappers[:-1]:
        raise r.fail("add_layer version 3 away from the input layer")
    inp = _details(r, _INPUTS, "input layer")

    n_layers = 1 + wrappers[:-1].count(ADD_LAYER_VERSION)
    layers = []
    for i in range(n_layers):
        layers.append(_details(r, _LAYERS, f"layer {i}"))
        _bookkeeping(r, wrappers[-1] if i == 0 else None)
    if r.pos != len(data):
        raise r.fail(f"{len(data) - r.pos} unexpected trailing bytes")
    return DlibNet(loss=loss, input=inp, wrappers=wrappers, layers=layers)
