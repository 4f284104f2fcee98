"""MMPose's heatmap codecs (posecore.pose.mmpose_codecs) against MMPose 1.3.2's own numbers, and in a training run.

golden/mmpose_codecs.npz comes from golden/make_mmpose_codecs.py, run with MMPose installed. Tolerances, stated
with each comparison: targets, weights, scores and the flip test are equal (targets up to 1e-6, float rounding of
exp); decoded keypoints up to 2e-4 input pixels (2e-3 image pixels; seen: 6e-5 input pixels), except on a heatmap
of plain noise, where the Newton step divides by a nearly singular Hessian and amplifies the blur's float rounding
(100 times that; seen: 2.4e-3); warp matrices up to 1e-6 in the linear part and 1e-4 pixels in the translation
(MMPose rounds to float32; seen: 9e-7 and 4e-5).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from posecore.errors import ConfigError
from posecore.plugins import reference_page
from posecore.pose.mmpose_codecs import MSRAHeatmap, UDPHeatmap
from posecore.pose.transforms import box_to_center_scale, invert_affine, transform_points, warp_affine
from posecore.testing import TINY_CONFIG, run_training

GOLDEN = np.load(Path(__file__).parent / "golden" / "mmpose_codecs.npz")
CODECS = [str(name) for name in GOLDEN["codecs"]]
NOISE = -2  # the heatmap of plain noise among the decoded ones (see make_mmpose_codecs.py)


def build(name: str) -> MSRAHeatmap | UDPHeatmap:
    options = json.loads(str(GOLDEN[f"{name}/options"]))
    return (UDPHeatmap if name.startswith("udp") else MSRAHeatmap)(**options)


@pytest.mark.parametrize("name", CODECS)
def test_targets_are_mmposes(name):
    codec = build(name)
    encoded = [codec.encode(points, visible) for points, visible in
               zip(GOLDEN[f"{name}/keypoints"], GOLDEN[f"{name}/visible"])]
    for key, golden in (("heatmaps", "heatmaps"), ("weights", "weights")):
        got = np.stack([targets[key] for targets in encoded])
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, GOLDEN[f"{name}/{golden}"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", CODECS)
def test_decoding_is_mmposes_in_input_and_image_coordinates(name):
    codec = build(name)
    maps = np.concatenate([GOLDEN[f"{name}/heatmaps"], GOLDEN[f"{name}/perturbed"]])
    center, scale = GOLDEN[f"{name}/center"], GOLDEN[f"{name}/scale"]
    with np.errstate(divide="ignore", invalid="ignore"):
        in_input, scores = codec._decode_input(maps)
    keypoints, image_scores = codec.decode(torch.from_numpy(maps), center, torch.from_numpy(scale))
    np.testing.assert_array_equal(scores, GOLDEN[f"{name}/scores"])
    np.testing.assert_array_equal(image_scores.numpy(), GOLDEN[f"{name}/scores"])
    plain = np.arange(len(maps)) != len(maps) + NOISE
    for got, golden, atol in ((in_input, GOLDEN[f"{name}/decoded"], 2e-4),
                              (keypoints.numpy(), GOLDEN[f"{name}/in_image"], 2e-3)):
        np.testing.assert_allclose(got[plain], golden[plain], rtol=0, atol=atol)
        np.testing.assert_allclose(got[~plain], golden[~plain], rtol=0, atol=100 * atol)


@pytest.mark.parametrize("codec", [MSRAHeatmap(), UDPHeatmap()], ids=["msra", "udp"])
def test_crop_matrices_are_mmposes(codec):
    golden = GOLDEN["warp/udp" if isinstance(codec, UDPHeatmap) else "warp/msra"]
    got = np.stack([codec.crop_matrix(c, s, r, tuple(size)) for c, s, r, size in
                    zip(GOLDEN["warp/center"], GOLDEN["warp/scale"], GOLDEN["warp/rotation"], GOLDEN["warp/size"])])
    np.testing.assert_allclose(got[..., :2], golden[..., :2], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[..., 2], golden[..., 2], rtol=0, atol=1e-4)


@pytest.mark.parametrize("codec", [MSRAHeatmap(input_size=(24, 32), heatmap_size=(6, 8)),
                                   UDPHeatmap(input_size=(24, 32), heatmap_size=(6, 8))], ids=["msra", "udp"])
def test_a_validation_crop_is_mmposes(codec):
    key = "udp" if isinstance(codec, UDPHeatmap) else "msra"
    image, (x1, y1, x2, y2) = GOLDEN["crop/image"], GOLDEN["crop/box"]
    center, scale = box_to_center_scale((x1, y1, x2 - x1, y2 - y1), 24 / 32)
    np.testing.assert_allclose(center, GOLDEN[f"crop/{key}_center"], rtol=1e-6)
    np.testing.assert_allclose(scale, GOLDEN[f"crop/{key}_scale"], rtol=1e-6)
    matrix = codec.crop_matrix(center, scale, 0.0, codec.input_size)
    # The crop reaches beyond the image: the border is compared too.
    grid = np.stack(np.meshgrid(np.arange(24), np.arange(32)), axis=-1).reshape(-1, 2).astype(np.float64)
    source = transform_points(grid, invert_affine(matrix))
    assert ((source < -1) | (source > image.shape[1::-1])).any()
    np.testing.assert_array_equal(warp_affine(image, matrix, codec.input_size), GOLDEN[f"crop/{key}"])


def test_flip_back_is_mmposes_flip_heatmaps():
    heatmaps, indices = torch.from_numpy(GOLDEN["flip/in"]), GOLDEN["flip/indices"]
    for shift in (True, False):
        codec = MSRAHeatmap(shift_heatmap=shift)
        np.testing.assert_array_equal(codec.flip_back(heatmaps, indices).numpy(), GOLDEN[f"flip/shift_{shift}"])
    assert MSRAHeatmap().shift_heatmap and not UDPHeatmap().shift_heatmap  # as MMPose's COCO configs set it


def test_output_checks_and_bad_options_are_one_line_config_errors():
    codec = UDPHeatmap(input_size=(32, 32), heatmap_size=(16, 16))
    codec.check_output(torch.zeros(1, 17, 16, 16))
    with pytest.raises(ConfigError, match=r"set codec.heatmap_size = \[8, 8\]$"):
        codec.check_output(torch.zeros(1, 17, 8, 8))
    with pytest.raises(ConfigError, match="^codec.type UDPHeatmap decodes heatmaps"):
        codec.check_output((torch.zeros(1, 17, 32), torch.zeros(1, 17, 32)))
    with pytest.raises(ConfigError, match=r"^codec.blur_kernel_size is 10; set an odd size"):
        MSRAHeatmap(unbiased=True, blur_kernel_size=10)


@pytest.mark.parametrize("codec_type", ["MSRAHeatmap", "UDPHeatmap"])
def test_a_tiny_run_trains_and_validates_with_flip_test(tmp_path, codec_type):
    config = copy.deepcopy(TINY_CONFIG)
    config["codec"]["type"] = codec_type
    config["model"]["flip_test"] = True
    recording = run_training(tmp_path, config=config)
    assert isinstance(recording.run.codec, MSRAHeatmap if codec_type == "MSRAHeatmap" else UDPHeatmap)
    metrics = recording.calls_of("after_val")
    assert len(metrics) == 2 and all(math.isfinite(value) for call in metrics for value in call["metrics"].values())


def test_the_reference_lists_the_codecs_options():
    lines = reference_page().splitlines()
    for type_name, keys in (("MSRAHeatmap", ["input_size", "heatmap_size", "sigma", "unbiased", "blur_kernel_size",
                                             "shift_heatmap"]),
                            ("UDPHeatmap", ["input_size", "heatmap_size", "sigma", "heatmap_type", "blur_kernel_size",
                                            "shift_heatmap"])):
        assert any(line.startswith("| `codec.type` |") and f"`{type_name}`" in line for line in lines)
        for key in keys:
            assert any(line.startswith(f"| `codec.` ({type_name}) `{key}` |") for line in lines), (type_name, key)
