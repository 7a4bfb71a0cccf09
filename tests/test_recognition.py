"""Our whole chain (MTCNN + 5-point alignment + dlib-resnet-v1 through ONNX Runtime) on real photos."""

import itertools
import json

import numpy as np
import pytest

from stream.embedder import distance


@pytest.fixture(scope="module")
def train_embeddings(analyzer, shared_data):
    """The largest face of every photo in knn_examples/train, with its person's name."""
    photos = sorted((shared_data / "faces/face_recognition/knn_examples/train").glob("*/*"))
    assert len(photos) >= 9
    names, vectors = [], []
    for photo in photos:
        faces = analyzer.analyze_image(photo)
        assert faces, f"no face found in {photo}"
        vectors.append(max(faces, key=lambda f: f.size).embedding)
        names.append(photo.parent.name)
    return names, np.array(vectors)


def test_same_people_within_threshold_different_beyond(train_embeddings, analyzer):
    names, vectors = train_embeddings
    threshold = analyzer.embedder.threshold
    assert threshold == pytest.approx(0.6)
    same, different = [], []
    for i, j in itertools.combinations(range(len(names)), 2):
        d = float(distance(vectors[i], vectors[j])[0])
        (same if names[i] == names[j] else different).append((d, names[i], names[j]))
    assert len(same) >= 4 and len(different) >= 20
    assert max(same)[0] < threshold, f"same person too far: {max(same)}"
    assert min(different)[0] > threshold, f"different people too close: {min(different)}"


def test_our_alignment_reproduces_dlibs_descriptors(analyzer, shared_data):
    """Faces cut by our MTCNN landmarks + template give embeddings close to dlib's own (its HOG
    detector, 5-point predictor and get_face_chip), so identity decisions agree."""
    ref = shared_data / "reference/dlib"
    index = json.loads((ref / "index.json").read_text())["images"]
    descriptors = np.load(ref / "descriptors.npz")
    gaps = {}
    for rel, faces in index.items():
        if "test_images_aligned" in rel or "partial_face" in rel:
            continue  # pre-cropped or cut-off faces: the two detectors frame these differently
        ours = analyzer.analyze_image(shared_data / rel)
        for face in faces:
            centre = (np.array(face["box"][:2]) + face["box"][2:]) / 2
            nearest = min(ours, key=lambda f: np.linalg.norm((f.box[:2] + f.box[2:]) / 2 - centre))
            gaps[face["key"]] = float(np.linalg.norm(nearest.embedding - descriptors[face["key"]]))
    assert len(gaps) >= 30
    values = np.array(list(gaps.values()))
    assert np.median(values) < 0.2, f"median gap {np.median(values):.3f}"
    assert values.max() < 0.3, f"worst: {max(gaps.items(), key=lambda kv: kv[1])}"
