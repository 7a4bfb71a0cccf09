"""InceptionResnetV1 (FaceNet): facenet-pytorch checkpoints load as they are, and the ONNX export agrees
with torch. The released checkpoints cannot be downloaded here, so the tests write checkpoints in the
same format (same key names, classifier included) from a network with random weights."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from facestream_models.inception_resnet_v1 import (
    INPUT_CHW,
    InceptionResnetV1,
    build_facenet,
    load_facenet_checkpoint,
    sample_faces,
)
from facestream_models.onnx_export import PARITY_TOLERANCE, BuildError
from facestream_models.sources import FACENET_PYTORCH
from stream.registry import MODELS

VGGFACE2 = MODELS["facenet-vggface2"]
VGGFACE2_CLASSES = 8631


def random_facenet(seed: int = 0) -> InceptionResnetV1:
    """A network with random weights whose batch-norm statistics are far from the defaults (0 / 1):
    running stats calibrated on random batches, then scales and shifts perturbed. Eval mode."""
    g = torch.Generator().manual_seed(seed)
    model = InceptionResnetV1()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
            elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.momentum = None  # running stats = plain average over the calibration batches
        model.train()
        for _ in range(2):
            model(torch.randn((6, *INPUT_CHW), generator=g))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_var.mul_(0.8 + 0.4 * torch.rand(m.running_var.shape, generator=g))
                m.momentum = 0.1
    return model.eval()


def facenet_checkpoint(model: nn.Module, num_classes: int = VGGFACE2_CLASSES, seed: int = 1) -> dict:
    """`model`'s weights as facenet-pytorch releases them: its state dict plus the classifier."""
    g = torch.Generator().manual_seed(seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["logits.weight"] = torch.randn((num_classes, 512), generator=g) * 0.05
    state["logits.bias"] = torch.randn((num_classes,), generator=g) * 0.05
    return state


def face_batch() -> np.ndarray:
    """Real aligned faces when present (5 of them), else random; batch > 1 either way."""
    real = sample_faces()
    if real is not None and len(real) > 1:
        return real
    return np.random.default_rng(3).standard_normal((4, *INPUT_CHW)).astype(np.float32)


@pytest.fixture(scope="module")
def net() -> InceptionResnetV1:
    return random_facenet()


@pytest.fixture(scope="module")
def checkpoint(net, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "20180402-114759-vggface2.pt"
    torch.save(facenet_checkpoint(net), path)
    return path


@pytest.fixture(scope="module")
def built(checkpoint, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("facenet-vggface2")
    extras = build_facenet({"checkpoint": checkpoint}, out, VGGFACE2)
    return out / extras["file"], extras


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["output"], {"input": x})[0]


# ------------------------------------------------------------------------------------------------
# (1) ONNX vs torch, through build_facenet and a checkpoint saved and reloaded
# ------------------------------------------------------------------------------------------------


def test_build_facenet_parity_with_torch(net, checkpoint, built):
    onnx_path, extras = built
    assert onnx_path.name == "model.onnx" and onnx_path.is_file()
    assert extras["parity_max_abs"] <= PARITY_TOLERANCE
    assert extras["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert extras["checkpoint_num_classes"] == VGGFACE2_CLASSES

    x = face_batch()
    got = run_onnx(onnx_path, x)
    reloaded = load_facenet_checkpoint(checkpoint)
    assert not reloaded.training and all(not m.training for m in reloaded.modules())
    with torch.inference_mode():
        ref = net(torch.from_numpy(x)).numpy()
        ref_reloaded = reloaded(torch.from_numpy(x)).numpy()
    assert np.array_equal(ref, ref_reloaded)  # the checkpoint round trip loses nothing
    assert got.shape == (len(x), 512)
    assert np.abs(got - ref).max() <= PARITY_TOLERANCE

    # Dynamic batch: each face alone gives what it gives inside the batch.
    for i in range(2):
        assert np.abs(run_onnx(onnx_path, x[i : i + 1])[0] - got[i]).max() <= PARITY_TOLERANCE


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_onnx_contract(built):
    onnx_path, _ = built
    model = onnx.load(str(onnx_path))
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "input" and out.name == "output"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert _dims(inp)[1:] == [3, 160, 160] and isinstance(_dims(inp)[0], str)
    assert _dims(out)[1:] == [512] and isinstance(_dims(out)[0], str)
    # No preprocessing inside the graph: the input goes straight into the first convolution.
    consumers = [n.op_type for n in model.graph.node if "input" in n.input]
    assert consumers == ["Conv"]


def test_export_is_deterministic(checkpoint, built, tmp_path):
    onnx_path, _ = built
    again = build_facenet({"checkpoint": checkpoint}, tmp_path, VGGFACE2)
    assert (tmp_path / again["file"]).read_bytes() == onnx_path.read_bytes()


# ------------------------------------------------------------------------------------------------
# (2) Same keys, shapes and outputs as facenet-pytorch's own InceptionResnetV1
# ------------------------------------------------------------------------------------------------


def _facenet_pytorch_source(tmp: Path) -> Path:
    """facenet-pytorch 2.5.3's inception_resnet_v1.py, from its wheel on PyPI (sha256 checked)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(tmp)]
            + [f"{FACENET_PYTORCH.package}=={FACENET_PYTORCH.version}"],
            capture_output=True,
            text=True,
            timeout=180,
        )
        wheel = tmp / FACENET_PYTORCH.filename
        ok = proc.returncode == 0 and wheel.is_file()
        reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
    except (OSError, subprocess.TimeoutExpired) as e:
        ok, reason = False, str(e)
    if not ok:
        msg = f"cannot fetch {FACENET_PYTORCH.package}=={FACENET_PYTORCH.version} from PyPI: {reason}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == FACENET_PYTORCH.sha256
    member = "facenet_pytorch/models/inception_resnet_v1.py"
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(member, tmp)
    return tmp / member


def _import_reference(source: Path) -> types.ModuleType:
    """Import facenet-pytorch's module alone: its package __init__ needs torchvision (for MTCNN), so
    the package and its download helpers are stubbed; `requests` too when it is not installed."""
    pkg = "_facenet_pytorch_ref"
    stubs = {}
    for name in (pkg, f"{pkg}.models", f"{pkg}.models.utils"):
        stubs[name] = types.ModuleType(name)
        stubs[name].__path__ = []
    stubs[f"{pkg}.models.utils.download"] = types.ModuleType("download")
    stubs[f"{pkg}.models.utils.download"].download_url_to_file = None
    if importlib.util.find_spec("requests") is None:
        stubs["requests"] = types.ModuleType("requests")
        stubs["requests.adapters"] = types.ModuleType("requests.adapters")
        stubs["requests.adapters"].HTTPAdapter = object
    with pytest.MonkeyPatch.context() as mp:
        for name, mod in stubs.items():
            mp.setitem(sys.modules, name, mod)
        spec = importlib.util.spec_from_file_location(f"{pkg}.models.inception_resnet_v1", source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference_module(tmp_path_factory) -> types.ModuleType:
    return _import_reference(_facenet_pytorch_source(tmp_path_factory.mktemp("facenet_pytorch")))


@pytest.mark.e2e
def test_same_keys_and_outputs_as_facenet_pytorch(reference_module, checkpoint):
    # As facenet-pytorch builds it for the released vggface2 checkpoint (classifier included).
    ref = reference_module.InceptionResnetV1(classify=True, num_classes=VGGFACE2_CLASSES)
    ref_shapes = [(k, tuple(v.shape)) for k, v in ref.state_dict().items()]
    ours = torch.load(checkpoint, weights_only=True)
    assert [(k, tuple(v.shape)) for k, v in ours.items()] == ref_shapes  # names, order and shapes

    ref.load_state_dict(ours, strict=True)
    ref.classify = False  # embeddings, as facenet-pytorch's pretrained models give them by default
    ref.eval()
    mine = load_facenet_checkpoint(checkpoint)
    x = torch.from_numpy(face_batch())
    with torch.inference_mode():
        want, got = ref(x), mine(x)
    assert (got - want).abs().max().item() <= 1e-5


# ------------------------------------------------------------------------------------------------
# (3) Bad checkpoints: one clear BuildError, never a torch traceback
# ------------------------------------------------------------------------------------------------


def _build_error(path: Path, tmp_path: Path, spec=VGGFACE2) -> str:
    with pytest.raises(BuildError) as exc:
        build_facenet({"checkpoint": path}, tmp_path / "out", spec)
    msg = str(exc.value)
    assert msg and "\n" not in msg
    assert not (tmp_path / "out" / "model.onnx").exists()
    return msg


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    assert "corrupt.pt" in _build_error(bad, tmp_path)


def test_missing_file(tmp_path):
    assert "not found" in _build_error(tmp_path / "nope.pt", tmp_path)


def test_not_a_state_dict(tmp_path):
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    assert "state dict" in _build_error(tensor, tmp_path)
    pickled_module = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), pickled_module)  # a whole pickled module: refused by weights_only
    _build_error(pickled_module, tmp_path)


@pytest.fixture(scope="module")
def small_state(net) -> dict:
    return facenet_checkpoint(net, num_classes=3)  # the classifier's size does not matter here


def test_missing_key(small_state, tmp_path):
    state = dict(small_state)
    del state["repeat_2.3.branch1.1.conv.weight"]
    torch.save(state, tmp_path / "missing.pt")
    assert "repeat_2.3.branch1.1.conv.weight" in _build_error(tmp_path / "missing.pt", tmp_path)


def test_misnamed_key(small_state, tmp_path):
    state = {k.replace("module.", ""): v for k, v in small_state.items()}
    state["module.last_bn.weight"] = state.pop("last_bn.weight")  # e.g. saved from DataParallel
    torch.save(state, tmp_path / "misnamed.pt")
    msg = _build_error(tmp_path / "misnamed.pt", tmp_path)
    assert "last_bn.weight" in msg and "module.last_bn.weight" in msg


def test_wrong_shape(small_state, tmp_path):
    state = dict(small_state)
    state["last_linear.weight"] = torch.zeros(128, 1792)
    torch.save(state, tmp_path / "shape.pt")
    assert "last_linear.weight" in _build_error(tmp_path / "shape.pt", tmp_path)


def test_checkpoint_for_the_other_model(net, tmp_path):
    torch.save(facenet_checkpoint(net, num_classes=VGGFACE2_CLASSES), tmp_path / "vgg.pt")
    msg = _build_error(tmp_path / "vgg.pt", tmp_path, spec=MODELS["facenet-casia"])
    assert "facenet-vggface2" in msg


def test_checkpoint_without_classifier_or_batch_counters(net, small_state, tmp_path):
    """Stripped checkpoints (no logits.*, no num_batches_tracked) still load: neither is used."""
    state = {k: v for k, v in small_state.items() if not k.startswith("logits.") and "num_batches" not in k}
    torch.save(state, tmp_path / "stripped.pt")
    x = torch.from_numpy(face_batch()[:2])
    with torch.inference_mode():
        assert torch.equal(load_facenet_checkpoint(tmp_path / "stripped.pt")(x), net(x))


# ------------------------------------------------------------------------------------------------
# (4) Embeddings are L2-normalised by the graph (and depend on the face)
# ------------------------------------------------------------------------------------------------


def test_output_is_l2_normalised(built):
    onnx_path, _ = built
    x = np.concatenate([face_batch(), 3.0 * face_batch()[:1]])  # a much brighter/contrasty face too
    emb = run_onnx(onnx_path, x)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # Not a degenerate network: different faces give clearly different embeddings.
    cos = emb[:-1] @ emb[:-1].T
    assert cos[~np.eye(len(cos), dtype=bool)].max() < 0.995
