"""posecore's training augmentation against MMPose 1.3.2's (RandomFlip, RandomHalfBody, RandomBBoxTransform,
TopdownAffine; tests/golden/augment.npz, made by tests/golden/make_augment.py), and the photometric hook."""

from __future__ import annotations

import json
from statistics import NormalDist

import numpy as np
import pytest
from helpers import REPO, write_tiny_config
from PIL import Image

from posecore.errors import ConfigError
from posecore.plugins import load_config
from posecore.pose.coco import CocoKeypoints
from posecore.pose.heatmap import GaussianHeatmap
from posecore.pose.mmpose_codecs import MSRAHeatmap
from posecore.pose.skeleton import COCO17, CROWDPOSE14, keypoint_layout
from posecore.pose.transforms import IMAGENET_MEAN, IMAGENET_STD, TopDownTransform, affine_matrix, fix_aspect_ratio, \
    warp_affine
from posecore.testing import run_training

CODEC = GaussianHeatmap((48, 64), (12, 16), sigma=2.0)
GOLDEN = np.load(REPO / "tests" / "golden" / "augment.npz")
ASPECT = 48 / 64
BOX = (20.0, 10.0, 60.0, 150.0)
UPPER, LOWER = np.arange(11), np.arange(11, 17)
FIXED = {"flip_prob": 0.0, "scale_prob": 0.0, "rotate_prob": 0.0}
"""No flip, scale or rotation: the crop is the box the half body and the shift make."""


def person(visible_count: int = 17) -> dict:
    """A COCO17 person in a 100 x 200 image: keypoints spread over the box, the first ``visible_count`` labelled."""
    rng = np.random.default_rng(7)
    keypoints = np.stack([rng.uniform(20, 80, 17), np.linspace(15, 155, 17)], axis=1).astype(np.float32)
    visible = (np.arange(17) < visible_count).astype(np.float32)
    return {"image": np.zeros((200, 100, 3), np.uint8), "keypoints": keypoints, "visible": visible,
            "box": np.array(BOX, np.float32)}


def crop(transform: TopDownTransform, record: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """The centre, size and rotation of the crop ``transform`` takes of ``record``."""
    taken = []
    transform.crop_matrix = lambda *args: taken.append(args) or affine_matrix(*args)
    transform(record, rng)
    center, scale, rotation, _ = taken[0]
    return np.asarray(center), np.asarray(scale), rotation


def half_body_box(keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MMPose's half-body box: the keypoints' mean, their extent x 1.5, then the input's aspect ratio."""
    return keypoints.mean(0), fix_aspect_ratio((keypoints.max(0) - keypoints.min(0)) * 1.5, ASPECT)


def test_layouts_have_mmpose_upper_bodies():
    assert [COCO17.names[i] for i in COCO17.upper_body][-1] == "right_wrist" and len(COCO17.upper_body) == 11
    assert {CROWDPOSE14.names[i] for i in CROWDPOSE14.upper_body} == {
        "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "head", "neck"}
    own = {"keypoint_names": ["a", "b"], "sigmas": [0.1, 0.1], "flip_pairs": [], "skeleton": []}
    assert keypoint_layout(own).upper_body is None  # not COCO's
    assert keypoint_layout({**own, "upper_body": [1]}).upper_body == (1,)
    with pytest.raises(ValueError, match="upper_body \\[2\\] is out of range for 2 keypoints"):
        keypoint_layout({**own, "upper_body": [2]})


@pytest.mark.parametrize("prioritized, half", [(1.0, UPPER), (0.0, LOWER)], ids=["upper", "lower"])
def test_half_body_crops_around_the_chosen_half(prioritized, half):
    record = person()
    transform = TopDownTransform(CODEC, half_body_prob=1.0, upper_prioritized_prob=prioritized, **FIXED)
    center, scale, _ = crop(transform, record, np.random.default_rng(0))
    expected_center, expected_scale = half_body_box(record["keypoints"][half])
    np.testing.assert_allclose(center, expected_center, rtol=1e-6)
    np.testing.assert_allclose(scale, expected_scale, rtol=1e-6)
    assert scale[0] / scale[1] == pytest.approx(ASPECT)


def test_half_body_needs_enough_labelled_keypoints():
    box_center = np.array([BOX[0] + BOX[2] / 2, BOX[1] + BOX[3] / 2])
    upper_only = TopDownTransform(CODEC, half_body_prob=1.0, upper_prioritized_prob=1.0, **FIXED)
    center, _, _ = crop(upper_only, person(visible_count=8), np.random.default_rng(0))  # fewer than 9 labelled
    np.testing.assert_allclose(center, box_center)
    # 13 labelled: 11 upper, 2 lower (fewer than 3): the upper body, even where the lower is preferred.
    lower_first = TopDownTransform(CODEC, half_body_prob=1.0, upper_prioritized_prob=0.0, **FIXED)
    record = person(visible_count=13)
    center, _, _ = crop(lower_first, record, np.random.default_rng(0))
    np.testing.assert_allclose(center, half_body_box(record["keypoints"][UPPER])[0], rtol=1e-6)
    # Too few on both halves: the whole box.
    strict = TopDownTransform(CODEC, half_body_prob=1.0, min_total_keypoints=0, min_upper_keypoints=12, **FIXED)
    center, _, _ = crop(strict, record, np.random.default_rng(0))
    np.testing.assert_allclose(center, box_center)


def test_box_shift_stays_within_its_factor_of_the_padded_box():
    record = person()
    box_center = np.array([BOX[0] + BOX[2] / 2, BOX[1] + BOX[3] / 2])
    padded = np.array(BOX[2:]) * 1.25  # before the aspect ratio, as MMPose's bbox_scale
    shifted = TopDownTransform(CODEC, shift_prob=1.0, shift_factor=0.16, **FIXED)
    offsets = np.array([crop(shifted, record, np.random.default_rng(seed))[0] - box_center for seed in range(200)])
    assert (np.abs(offsets) <= 0.16 * padded + 1e-4).all()
    assert (np.abs(offsets) > 0.1 * padded).any(axis=0).all() and (offsets > 0).any() and (offsets < 0).any()
    unshifted = TopDownTransform(CODEC, shift_prob=0.0, **FIXED)
    for seed in range(5):
        np.testing.assert_array_equal(crop(unshifted, record, np.random.default_rng(seed))[0], box_center)


def test_draws_do_not_depend_on_the_settings():
    record = person()
    settings = [{}, {"half_body_prob": 1.0}, {"shift_prob": 1.0}, {"half_body_prob": 1.0, "shift_prob": 1.0},
                {"scale_prob": 0.0}, {"photometric": lambda image, rng: image}]
    settings = [{**options, "rotate_prob": 1.0} for options in settings] + [{"rotate_prob": 0.0, "flip_prob": 1.0}]
    after, rotations = [], []
    for options in settings:
        rng = np.random.default_rng(3)
        rotations.append(crop(TopDownTransform(CODEC, **options), record, rng)[2])
        after.append(rng.random())
    assert len(set(after)) == 1  # the same count of draws
    assert len(set(rotations[:-1])) == 1 and rotations[0] != 0  # the rotation's draw is untouched by the others


def test_half_body_without_an_upper_body_is_a_config_error(tmp_path):
    own = {"type": "CocoKeypoints", "ann_file": "a.json", "img_dir": ".", "keypoint_names": ["a", "b", "c"],
           "sigmas": [0.1, 0.1, 0.1], "flip_pairs": [], "skeleton": []}
    config = write_tiny_config(tmp_path, augment={"half_body_prob": 0.3}, train_dataloader={"dataset": own},
                               val_dataloader={"dataset": own})
    with pytest.raises(ConfigError, match="augment.half_body_prob > 0 needs the upper body's keypoints: set "
                                          "train_dataloader.dataset.upper_body"):
        load_config(config, [], [])
    config = write_tiny_config(tmp_path, augment={"half_body_prob": 0.3}, val_dataloader={"dataset": own},
                               train_dataloader={"dataset": {**own, "upper_body": [0]}})
    load_config(config, [], [])
    config = write_tiny_config(tmp_path, augment={"switch": {"epoch": 1, "half_body_prob": 0.3}},
                               train_dataloader={"dataset": own}, val_dataloader={"dataset": own})
    with pytest.raises(ConfigError, match="augment.switch.half_body_prob > 0 needs the upper body's keypoints"):
        load_config(config, [], [])


def test_training_with_half_body_and_shift(tmp_path):
    recording = run_training(tmp_path, cfg_options=["augment.half_body_prob=1.0", "augment.shift_prob=1.0",
                                                    "augment.min_total_keypoints=4"])
    assert recording.calls_of("after_train")[0]["error"] is None and recording.count("after_val") == 2
    scalars = (next(tmp_path.glob("*/vis_data/scalars.json"))).read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in scalars if '"loss"' in line]
    assert losses and np.isfinite(losses).all()


def test_scale_and_rotation_are_mmposes_truncated_normals():
    record = person()
    box_scale = fix_aspect_ratio(np.array(BOX[2:]) * 1.25, ASPECT)
    options = {**FIXED, "scale_factor": [0.6, 1.2], "scale_prob": 1.0, "rotate_factor": 50.0, "rotate_prob": 1.0}
    drawn = [crop(TopDownTransform(CODEC, **options), record, np.random.default_rng(seed)) for seed in range(300)]
    factors = np.array([scale / box_scale for _, scale, _ in drawn])
    rotations = np.array([rotation for _, _, rotation in drawn])
    np.testing.assert_allclose(factors[:, 0], factors[:, 1], rtol=1e-6)  # one factor for both sides
    assert 0.6 <= factors.min() < 0.65 and 1.15 < factors.max() <= 1.2 and abs(factors.mean() - 0.9) < 0.02
    assert -50 <= rotations.min() < -45 and 45 < rotations.max() <= 50
    # A truncated standard normal's standard deviation, 0.538, times the factor (the old clipped normal's: 0.8).
    assert abs(rotations.std() / 50 - 0.538) < 0.05
    unchanged = [crop(TopDownTransform(CODEC, **{**options, "scale_prob": 0.0, "rotate_prob": 0.0}), record,
                      np.random.default_rng(seed)) for seed in range(5)]
    assert all(np.allclose(scale, box_scale) and rotation == 0 for _, scale, rotation in unchanged)


class _Draws:
    """An rng whose uniforms are given: MMPose's draws, replayed."""

    def __init__(self, uniforms: list[float]) -> None:
        self.uniforms = list(uniforms)

    def random(self, count: int) -> np.ndarray:
        taken, self.uniforms = self.uniforms[:count], self.uniforms[count:]
        return np.array(taken)

    def integers(self, high: int) -> int:
        return 0


@pytest.mark.parametrize("flip", [0, 1], ids=["plain", "flipped"])
def test_augmented_crop_is_mmposes_for_the_same_draws(flip):
    """MMPose mirrors the image first, then takes the half body and shifts, scales and turns the box (in mirrored
    coordinates); the crop and the keypoints in it are MMPose's for the same draws (its pixels, border included)."""
    codec = MSRAHeatmap(input_size=(24, 32), heatmap_size=(6, 8))
    record = {"image": GOLDEN["pipeline/image"], "keypoints": GOLDEN["pipeline/keypoints"],
              "visible": np.ones(17, np.float32), "box": GOLDEN["pipeline/box"]}
    transform = TopDownTransform(codec, half_body_prob=1.0, upper_prioritized_prob=1.0, shift_prob=1.0,
                                 scale_factor=[0.6, 1.4], rotate_factor=50.0, rotate_prob=1.0)
    normal = NormalDist()
    within_one = normal.cdf(1) - normal.cdf(-1)
    truncated = [(normal.cdf(t) - normal.cdf(-1)) / within_one for t in GOLDEN["pipeline/t"].tolist()]
    taken, encoded = [], []
    transform.crop_matrix = lambda *args: taken.append(args) or codec.crop_matrix(*args)
    codec.encode = lambda keypoints, visible: encoded.append(keypoints) or {}
    # Draws: flip (below 0.5: flipped), half body, upper body, shift, scale, rotation; then the truncated normals.
    sample = transform(record, _Draws([0.9 - 0.9 * flip, 0, 0, 0, 0, 0] + truncated))
    center, scale, rotation, _ = taken[0]
    np.testing.assert_allclose(center, GOLDEN["pipeline/center"][flip], rtol=1e-5)
    np.testing.assert_allclose(scale, GOLDEN["pipeline/scale"][flip], rtol=1e-5)
    assert rotation == pytest.approx(float(GOLDEN["pipeline/rotation"][flip]), abs=1e-4)
    np.testing.assert_allclose(encoded[0], GOLDEN["pipeline/crop_keypoints"][flip], atol=2e-3)
    image = sample["img"].transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    assert np.abs(image - GOLDEN["pipeline/crop"][flip]).max() < 1e-3  # float error of normalising and back


def test_warp_is_opencvs_across_the_border():
    image = GOLDEN["warp/image"]
    assert (GOLDEN["warp/out"] == 0).all(axis=-1).any(axis=(1, 2)).sum() >= 4  # they cross the image's border
    for matrix, expected in zip(GOLDEN["warp/matrix"], GOLDEN["warp/out"]):
        np.testing.assert_array_equal(warp_affine(image, matrix, (24, 16)), expected)


def test_photometric_gets_the_crop_and_its_own_generator():
    record = {**person(), "image": np.full((200, 100, 3), 100, np.uint8)}
    seen = []

    def darken(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        seen.append((image.dtype, image.shape, image.max(), rng.random()))
        return image // 2

    sample = TopDownTransform(CODEC, photometric=darken, **FIXED)(record, np.random.default_rng(5))
    replay = np.random.default_rng(5)
    replay.random(10)
    expected = np.random.default_rng(int(replay.integers(2 ** 63))).random()
    assert seen == [(np.uint8, (64, 48, 3), 100, expected)]
    plain = TopDownTransform(CODEC, **FIXED)(record, np.random.default_rng(5))
    np.testing.assert_allclose(sample["img"] * IMAGENET_STD[:, None, None],
                               np.round(plain["img"] * IMAGENET_STD[:, None, None] + IMAGENET_MEAN[:, None, None]) // 2
                               - IMAGENET_MEAN[:, None, None], atol=1e-3)
    TopDownTransform(CODEC, photometric=darken, train=False)(record, np.random.default_rng(5))
    assert len(seen) == 1  # validation: never


def test_a_float_scale_factor_says_how_to_write_it(tmp_path):
    config = write_tiny_config(tmp_path, augment={"scale_factor": 0.25})
    with pytest.raises(ConfigError, match=r"'augment.scale_factor' must be .*write \[1 - f, 1 \+ f\]\), got float$"):
        load_config(config, [], [])


def test_annotation_boxes_are_clipped_to_the_image_as_mmpose_does(tmp_path):
    Image.new("RGB", (100, 80)).save(tmp_path / "a.png")
    keypoints = [50, 40, 2] * 17
    annotations = [{"id": 1, "image_id": 1, "bbox": [-10.5, 20, 130, 70], "keypoints": keypoints},
                   {"id": 2, "image_id": 1, "bbox": [10, 5, 20, 30], "keypoints": keypoints}]
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 80}],
                                    "annotations": annotations}))
    det_file = tmp_path / "det.json"
    det_file.write_text(json.dumps([{"image_id": 1, "bbox": [-10.5, 20, 130, 70], "score": 0.9}]))
    source = CocoKeypoints(ann_file, tmp_path)
    np.testing.assert_array_equal(source.load(0)["box"], [0, 20, 99, 59])  # corners to [0, 99] x [0, 79]
    np.testing.assert_array_equal(source.load(1)["box"], [10, 5, 20, 30])
    detected = CocoKeypoints(ann_file, tmp_path, det_file=det_file, train=False)
    np.testing.assert_array_equal(detected.load(0)["box"], [-10.5, 20, 130, 70])  # MMPose keeps detections as they are
