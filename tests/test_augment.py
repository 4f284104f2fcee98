"""MMPose's half body (RandomHalfBody) and box shift (RandomBBoxTransform) in posecore's training augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import write_tiny_config

from posecore.errors import ConfigError
from posecore.plugins import load_config
from posecore.pose.heatmap import GaussianHeatmap
from posecore.pose.skeleton import COCO17, CROWDPOSE14, keypoint_layout
from posecore.pose.transforms import TopDownTransform, affine_matrix, fix_aspect_ratio
from posecore.testing import run_training

CODEC = GaussianHeatmap((48, 64), (12, 16), sigma=2.0)
ASPECT = 48 / 64
BOX = (20.0, 10.0, 60.0, 150.0)
UPPER, LOWER = np.arange(11), np.arange(11, 17)
FIXED = {"flip_prob": 0.0, "scale_factor": 0.0, "rotate_prob": 0.0}
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
    settings = [{}, {"half_body_prob": 1.0}, {"shift_prob": 1.0}, {"half_body_prob": 1.0, "shift_prob": 1.0}]
    settings = [{**options, "rotate_prob": 1.0} for options in settings] + [{"rotate_prob": 0.0, "flip_prob": 1.0}]
    after, rotations = [], []
    for options in settings:
        rng = np.random.default_rng(3)
        rotations.append(crop(TopDownTransform(CODEC, **options), record, rng)[2])
        after.append(rng.random())
    assert len(set(after)) == 1  # the same count of draws
    assert len(set(rotations[:4])) == 1 and rotations[0] != 0  # the rotation's draw is untouched by the others


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


def test_training_with_half_body_and_shift(tmp_path):
    recording = run_training(tmp_path, cfg_options=["augment.half_body_prob=1.0", "augment.shift_prob=1.0",
                                                    "augment.min_total_keypoints=4"])
    assert recording.calls_of("after_train")[0]["error"] is None and recording.count("after_val") == 2
    scalars = (next(tmp_path.glob("*/vis_data/scalars.json"))).read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in scalars if '"loss"' in line]
    assert losses and np.isfinite(losses).all()
