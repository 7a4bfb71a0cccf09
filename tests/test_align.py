"""5-point similarity alignment and box+margin crops."""

import numpy as np

from stream.align import crop_faces, similarity_transforms
from stream.registry import DLIB_CHIP_TEMPLATE, CropSpec


def test_similarity_transform_recovers_a_known_one():
    template = np.array(DLIB_CHIP_TEMPLATE)
    rng = np.random.default_rng(1)
    src, truth = [], []
    for _ in range(4):
        angle, scale = rng.uniform(-0.6, 0.6), rng.uniform(0.3, 3.0)
        t = rng.uniform(-200, 200, 2)
        rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        # points in the frame that the true transform maps exactly onto the template
        src.append((template - t) @ np.linalg.inv(rot).T)
        truth.append(np.hstack([rot, t[:, None]]))
    mats = similarity_transforms(np.array(src), template)
    np.testing.assert_allclose(mats, np.array(truth), atol=1e-6)


def test_least_squares_with_noise_beats_any_single_point_fit():
    template = np.array(DLIB_CHIP_TEMPLATE)
    noisy = template + np.random.default_rng(2).normal(0, 2.0, template.shape)
    m = similarity_transforms(noisy[None], template)[0]
    mapped = noisy @ m[:, :2].T + m[:, 2]
    assert np.sqrt(((mapped - template) ** 2).sum(1)).mean() < 3.0


def test_landmark_crop_puts_eyes_on_the_template():
    frame = np.zeros((300, 400, 3), np.uint8)
    template = np.array(DLIB_CHIP_TEMPLATE)
    # a face twice the chip size at (100, 50): paint bright dots at its two eyes
    lms = template * 2 + [100, 50]
    for x, y in lms[:2]:
        frame[int(round(y)) - 2 : int(round(y)) + 3, int(round(x)) - 2 : int(round(x)) + 3] = 255
    spec = CropSpec(mode="landmarks5", size=(150, 150), template=DLIB_CHIP_TEMPLATE)
    chips = crop_faces(frame, np.zeros((1, 4)), lms[None], spec)
    assert chips.shape == (1, 150, 150, 3) and chips.dtype == np.uint8
    for x, y in template[:2]:
        assert chips[0, int(round(y)), int(round(x))].max() > 100


def test_box_margin_crop_follows_facenet_pytorch_convention():
    frame = np.zeros((200, 200, 3), np.uint8)
    frame[50:150, 50:150] = 200
    spec = CropSpec(mode="box_margin", size=(160, 160), margin=0.0)
    chip = crop_faces(frame, np.array([[50.0, 50.0, 150.0, 150.0]]), np.zeros((1, 5, 2)), spec)[0]
    assert chip.shape == (160, 160, 3) and chip.min() == 200
    spec = CropSpec(mode="box_margin", size=(160, 160), margin=32.0)
    chip = crop_faces(frame, np.array([[50.0, 50.0, 150.0, 150.0]]), np.zeros((1, 5, 2)), spec)[0]
    assert chip[0, 0].max() == 0 and chip[80, 80].min() == 200  # the margin shows the dark border


def test_no_faces_gives_an_empty_batch():
    spec = CropSpec(mode="landmarks5", size=(150, 150), template=DLIB_CHIP_TEMPLATE)
    chips = crop_faces(np.zeros((10, 10, 3), np.uint8), np.zeros((0, 4)), np.zeros((0, 5, 2)), spec)
    assert chips.shape == (0, 150, 150, 3)
