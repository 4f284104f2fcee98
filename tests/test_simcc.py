"""MMPose's SimCCLabel codec (posecore.pose.simcc) against MMPose 1.3.2's own numbers, and built from a config.

golden/simcc.npz comes from golden/make_simcc.py, run with MMPose installed. Tolerances, stated with each comparison:
targets up to 1e-6 (float rounding of exp; seen: equal), weights, scores and the flip test equal; decoded keypoints
equal without DARK and up to 1e-4 input pixels with it (1e-3 image pixels; seen: 7.6e-6 and 1.5e-5: OpenCV's blur
sums in another order). The crop is MMPose's get_warp_matrix, checked against golden/mmpose_codecs.npz.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tomllib import loads

from helpers import posecore, write_tiny_config
from posecore.errors import ConfigError
from posecore.plugins import load_config
from posecore.pose.simcc import SimCCLabel
from posecore.pose.transforms import transform_points

GOLDEN = np.load(Path(__file__).parent / "golden" / "simcc.npz")
CODECS = [str(name) for name in GOLDEN["codecs"]]
RTMPOSE = {"input_size": [192, 256], "sigma": [4.9, 5.66], "simcc_split_ratio": 2.0, "normalize": False,
           "use_dark": False}


def build(name: str) -> SimCCLabel:
    return SimCCLabel(**json.loads(str(GOLDEN[f"{name}/options"])))


@pytest.mark.parametrize("name", CODECS)
def test_targets_are_mmposes(name):
    codec = build(name)
    encoded = [codec.encode(points, visible) for points, visible in
               zip(GOLDEN[f"{name}/keypoints"], GOLDEN[f"{name}/visible"])]
    for key, golden in (("keypoint_x_labels", "x_labels"), ("keypoint_y_labels", "y_labels")):
        got = np.stack([targets[key] for targets in encoded])
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, GOLDEN[f"{name}/{golden}"], rtol=0, atol=1e-6)
    weights = np.stack([targets["keypoint_weights"] for targets in encoded])
    assert weights.dtype == np.float32
    np.testing.assert_array_equal(weights, GOLDEN[f"{name}/weights"])


@pytest.mark.parametrize("name", CODECS)
def test_decoding_is_mmposes_in_input_and_image_coordinates(name):
    codec = build(name)
    simcc_x = np.concatenate([GOLDEN[f"{name}/x_labels"], GOLDEN[f"{name}/noisy_x"]])
    simcc_y = np.concatenate([GOLDEN[f"{name}/y_labels"], GOLDEN[f"{name}/noisy_y"]])
    with np.errstate(divide="ignore", invalid="ignore"):
        in_input, scores = codec._decode_input(simcc_x, simcc_y)
    keypoints, image_scores = codec.decode((torch.from_numpy(simcc_x), torch.from_numpy(simcc_y)),
                                           GOLDEN[f"{name}/center"], torch.from_numpy(GOLDEN[f"{name}/scale"]))
    np.testing.assert_array_equal(scores, GOLDEN[f"{name}/scores"])
    np.testing.assert_array_equal(image_scores.numpy(), GOLDEN[f"{name}/scores"])
    dark = codec.use_dark
    # NaN where DARK meets an all-zero vector, in both (assert_allclose compares NaN positions).
    np.testing.assert_allclose(in_input, GOLDEN[f"{name}/decoded"], rtol=0, atol=1e-4 if dark else 0)
    np.testing.assert_allclose(keypoints.numpy(), GOLDEN[f"{name}/in_image"], rtol=0, atol=1e-3 if dark else 0)


def test_flip_back_is_mmposes_flip_vectors():
    codec = SimCCLabel(input_size=(6, 8))
    flipped = codec.flip_back((torch.from_numpy(GOLDEN["flip/x"]), torch.from_numpy(GOLDEN["flip/y"])),
                              GOLDEN["flip/indices"])
    np.testing.assert_array_equal(flipped[0].numpy(), GOLDEN["flip/flipped_x"])
    np.testing.assert_array_equal(flipped[1].numpy(), GOLDEN["flip/flipped_y"])


def test_crop_matrix_is_mmposes_get_warp_matrix():
    warp = np.load(Path(__file__).parent / "golden" / "mmpose_codecs.npz")
    codec = SimCCLabel()
    got = np.stack([codec.crop_matrix(c, s, r, tuple(size)) for c, s, r, size in
                    zip(warp["warp/center"], warp["warp/scale"], warp["warp/rotation"], warp["warp/size"])])
    np.testing.assert_allclose(got[..., :2], warp["warp/msra"][..., :2], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[..., 2], warp["warp/msra"][..., 2], rtol=0, atol=1e-4)


@pytest.mark.parametrize("use_dark", [False, True])
def test_labels_decode_back_to_the_image_keypoints_within_half_a_bin(use_dark):
    codec = SimCCLabel(**{**RTMPOSE, "use_dark": use_dark})
    center, scale = np.array([310.5, 207.25]), np.array([96.0, 128.0])  # half an image pixel per input pixel
    # Off the edges: there MMPose's DARK step meets a flat log (edge padding) and jumps far, as posecore's does.
    in_image = np.random.default_rng(3).uniform(center - 0.45 * scale, center + 0.45 * scale, (17, 2))
    in_input = transform_points(in_image, codec.crop_matrix(center, scale, 0.0, codec.input_size))
    targets = codec.encode(in_input.astype(np.float32), np.ones(17, np.float32))
    assert (targets["keypoint_weights"] == 1).all()
    keypoints, scores = codec.decode((torch.from_numpy(targets["keypoint_x_labels"][None]),
                                      torch.from_numpy(targets["keypoint_y_labels"][None])), center[None], scale[None])
    half_bin = 0.5 / codec.simcc_split_ratio * scale / codec.input_size
    assert (np.abs(keypoints[0].numpy() - in_image) <= half_bin + 1e-4).all()
    np.testing.assert_array_equal(scores.numpy(), 1)


def test_output_checks_and_bad_options_are_one_line_config_errors():
    codec = SimCCLabel(**RTMPOSE)
    codec.check_output((torch.zeros(1, 17, 384), torch.zeros(1, 17, 512)))
    with pytest.raises(ConfigError, match=r"^the model outputs SimCC vectors of lengths \[192, 256\] but "
                                          r"codec.input_size \[192, 256\] with codec.simcc_split_ratio 2 gives "
                                          r"\[384, 512\]; set both as model.head.input_size and "
                                          r"model.head.simcc_split_ratio are$"):
        codec.check_output((torch.zeros(1, 17, 192), torch.zeros(1, 17, 256)))
    for output in (torch.zeros(1, 17, 64, 48), (torch.zeros(1, 17, 384),),
                   (torch.zeros(1, 17, 384), torch.zeros(1, 16, 512))):
        with pytest.raises(ConfigError, match=r"^codec.type SimCCLabel decodes SimCC vectors .* choose the codec"):
            codec.check_output(output)
    with pytest.raises(ConfigError, match="^codec.label_smooth_weight is 0.1 but only smoothing_type \"standard\""):
        SimCCLabel(label_smooth_weight=0.1)


def test_a_config_builds_the_codec_through_the_type_system(tmp_path):
    path = write_tiny_config(tmp_path, codec={"type": "SimCCLabel", **RTMPOSE})
    config, plugins = load_config(path)
    codec = plugins.build("codec", config["codec"])
    assert isinstance(codec, SimCCLabel) and codec.label_size == (384, 512)
    np.testing.assert_array_equal(codec.sigma, [4.9, 5.66])
    printed = posecore("config", str(path), "--cfg-options", "codec.sigma=3", "codec.smoothing_type=\"standard\"")
    assert printed.returncode == 0, printed.stderr
    assert loads(printed.stdout)["codec"] == {**RTMPOSE, "type": "SimCCLabel", "sigma": 3.0,
                                              "smoothing_type": "standard", "label_smooth_weight": 0.0,
                                              "decode_visibility": False}
    for override, message in (("codec.sigma=[1.0, 2.0, 3.0]", "'codec.sigma' must have 2 items, got 3"),
                              ("codec.decode_visibility=true", "'codec.decode_visibility' is True; choose one of "
                                                               "False")):
        with pytest.raises(ConfigError, match=message):
            load_config(path, [override])
