"""Unit tests of posecore.pose: synthetic data, transforms, heatmaps, decoding, metric, model and loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from posecore.pose.heatmap import GaussianHeatmap, decode_heatmaps, gaussian_heatmaps, heatmap_to_image
from posecore.pose.metrics import pck
from posecore.pose.model import TopDownHeatmapNet, heatmap_loss
from posecore.pose.skeleton import COCO17, KeypointInfo
from posecore.pose.synthetic import SyntheticPoses
from posecore.pose.transforms import (
    TopDownTransform,
    affine_matrix,
    box_to_center_scale,
    transform_points,
    warp_affine,
)

INPUT_SIZE, HEATMAP_SIZE = (48, 64), (12, 16)


@pytest.fixture(scope="module")
def dataset() -> SyntheticPoses:
    return SyntheticPoses(num_samples=50, image_size=(128, 96), seed=3)


CODEC = GaussianHeatmap(INPUT_SIZE, HEATMAP_SIZE, sigma=2.0)


def no_augmentation() -> TopDownTransform:
    """A training transform: called without an rng, it crops the box as it is and encodes the targets."""
    return TopDownTransform(CODEC)


def decode_to_image(samples: list[dict], heatmap_size=HEATMAP_SIZE) -> np.ndarray:
    heatmaps = torch.as_tensor(np.stack([s["heatmaps"] for s in samples]))
    coords, _ = decode_heatmaps(heatmaps)
    center = np.stack([s["center"] for s in samples])
    scale = np.stack([s["scale"] for s in samples])
    return heatmap_to_image(coords, center, scale, heatmap_size).numpy()


def test_coco17_layout_is_consistent():
    assert COCO17.num_keypoints == 17 and len(COCO17.sigmas) == 17
    assert COCO17.names[5] == "left_shoulder" and COCO17.sigmas[11] == pytest.approx(0.107)
    for left, right in COCO17.flip_pairs:
        assert COCO17.names[left].replace("left", "right") == COCO17.names[right]
    with pytest.raises(ValueError):
        KeypointInfo(names=("a", "b"), flip_pairs=((0, 2),), skeleton=(), sigmas=(0.1, 0.1))


def test_synthetic_record_format(dataset):
    record = dataset.load(0)
    assert record["image"].shape == (96, 128, 3) and record["image"].dtype == np.uint8
    assert record["keypoints"].shape == (17, 2) and record["keypoints"].dtype == np.float32
    assert record["visible"].shape == (17,) and set(np.unique(record["visible"])) <= {0.0, 1.0}
    assert record["box"].shape == (4,) and record["box"].dtype == np.float32
    assert len(dataset) == 50 and dataset.keypoint_info is COCO17
    visible_fraction = np.mean([dataset.load(i)["visible"].mean() for i in range(len(dataset))])
    assert 0.85 < visible_fraction < 1.0
    with pytest.raises(IndexError):
        dataset.load(50)


def test_synthetic_is_deterministic_per_seed_and_index(dataset):
    first, again = dataset.load(7), dataset.load(7)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["image"], dataset.load(8)["image"])
    other_seed = SyntheticPoses(num_samples=50, image_size=(128, 96), seed=4).load(7)
    assert not np.array_equal(first["image"], other_seed["image"])
    assert not np.allclose(first["keypoints"], other_seed["keypoints"])


def test_box_contains_visible_keypoints_and_stays_in_image(dataset):
    for index in range(len(dataset)):
        record = dataset.load(index)
        x, y, w, h = record["box"]
        visible = record["keypoints"][record["visible"] > 0]
        assert np.all(visible >= (x, y)) and np.all(visible <= (x + w, y + h)), index
        assert x >= 0 and y >= 0 and x + w <= 128 and y + h <= 96
        assert 0.3 * 96 < max(w, h)


def test_box_to_center_scale_keeps_aspect_ratio_and_padding():
    center, scale = box_to_center_scale([10, 20, 30, 80], aspect_ratio=0.75, padding=1.25)
    np.testing.assert_allclose(center, [25, 60])
    np.testing.assert_allclose(scale, [60 * 1.25, 80 * 1.25])
    _, wide = box_to_center_scale([0, 0, 90, 30], aspect_ratio=0.75, padding=1.0)
    np.testing.assert_allclose(wide, [90, 120])


def test_affine_matrix_maps_crop_and_inverts():
    matrix = affine_matrix([50, 40], [30, 40], 0.0, (48, 64))
    corners = transform_points(np.array([[50.0, 40.0], [65.0, 60.0]]), matrix)
    np.testing.assert_allclose(corners, [[23.5, 31.5], [47.5, 63.5]])
    rotated = affine_matrix([50, 40], [30, 40], 25.0, (48, 64))
    back = affine_matrix([50, 40], [30, 40], 25.0, (48, 64), inverse=True)
    points = np.random.default_rng(0).uniform(0, 100, (5, 2))
    np.testing.assert_allclose(transform_points(transform_points(points, rotated), back), points, atol=1e-9)


def test_warp_affine_samples_bilinearly_with_zero_outside():
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(warp_affine(image, identity, (30, 20)), image)
    shift_half = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, 0.0]])  # output x = image x - 0.5
    warped = warp_affine(image, shift_half, (30, 20))
    # Bilinear, rounded to whole numbers as a uint8 warp is.
    np.testing.assert_allclose(warped[:, :29], (image[:, :29].astype(np.float32) + image[:, 1:]) / 2, atol=0.5)
    far_away = np.array([[1.0, 0.0, 100.0], [0.0, 1.0, 0.0]])
    assert warp_affine(image, far_away, (30, 20)).max() == 0
    # Pixel types OpenCV does not warp (int64 from np.array of a list) are warped as float32.
    np.testing.assert_array_equal(warp_affine(image.astype(np.int64), shift_half, (30, 20)),
                                  warp_affine(image.astype(np.float32), shift_half, (30, 20)))


def test_gaussian_heatmaps_peak_and_weights():
    keypoints = np.array([[5.0, 7.0], [3.0, 3.0], [-4.0, 2.0], [2.25, 9.5]])
    visible = np.array([1, 0, 1, 1])
    heatmaps, weights = gaussian_heatmaps(keypoints, visible, (12, 16), sigma=2.0)
    assert heatmaps.shape == (4, 16, 12) and heatmaps.dtype == np.float32
    np.testing.assert_array_equal(weights, [1, 0, 0, 1])
    assert heatmaps[0, 7, 5] == pytest.approx(1.0) and heatmaps[0].max() == pytest.approx(1.0)
    assert heatmaps[0, 7, 7] == pytest.approx(np.exp(-4 / 8))
    assert heatmaps[1].max() == 0 and heatmaps[2].max() == 0
    assert heatmaps[3].max() < 1.0


def test_decode_recovers_sub_pixel_peaks():
    keypoints = np.array([[5.3, 7.8], [2.6, 3.2], [8.1, 11.9], [0.3, 14.6]])
    heatmaps, _ = gaussian_heatmaps(keypoints, np.ones(4), (12, 16), sigma=2.0)
    coords, scores = decode_heatmaps(torch.as_tensor(heatmaps)[None])
    assert coords.shape == (1, 4, 2) and scores.shape == (1, 4)
    np.testing.assert_allclose(coords[0, :3].numpy(), keypoints[:3], atol=0.01)
    # Within a pixel of the border the blur's edge replication biases the estimate a little.
    np.testing.assert_allclose(coords[0, 3].numpy(), keypoints[3], atol=0.15)
    assert torch.all(scores > 0.9)
    exact, _ = decode_heatmaps(torch.as_tensor(heatmaps)[None], blur_sigma=0.0)
    np.testing.assert_allclose(exact[0].numpy(), keypoints, atol=1e-3)


def test_round_trip_image_to_heatmap_to_image(dataset):
    transform = no_augmentation()
    records = [dataset.load(i) for i in range(12)]
    samples = [transform(record) for record in records]
    assert samples[0]["img"].shape == (3, 64, 48) and samples[0]["heatmaps"].shape == (17, 16, 12)
    predicted = decode_to_image(samples)
    used = np.stack([sample["weights"] for sample in samples]) > 0
    truth = np.stack([sample["keypoints"] for sample in samples])
    assert used.sum() > 0.8 * used.size
    np.testing.assert_allclose(predicted[used], truth[used], atol=1.0)


def test_flip_augmentation_matches_a_mirrored_record(dataset):
    record = dataset.load(5)
    width = record["image"].shape[1]
    order = np.arange(17)
    for left, right in COCO17.flip_pairs:
        order[left], order[right] = right, left
    x, y, w, h = record["box"]
    mirrored = {
        "image": record["image"][:, ::-1],
        "keypoints": np.stack([width - 1 - record["keypoints"][:, 0], record["keypoints"][:, 1]], axis=1)[order],
        "visible": record["visible"][order],
        "box": np.array([width - 1 - x - w, y, w, h], dtype=np.float32),
    }
    flip_only = TopDownTransform(CODEC, flip_prob=1.0, scale_prob=0.0, rotate_prob=0.0)
    flipped = flip_only(record, np.random.default_rng(0))
    expected = no_augmentation()(mirrored)
    one_level = 1 / (0.224 * 255)  # one grey level after normalisation: rounding of a sample at .5 may differ
    np.testing.assert_allclose(flipped["img"], expected["img"], atol=one_level)
    np.testing.assert_allclose(flipped["heatmaps"], expected["heatmaps"], atol=1e-5)
    np.testing.assert_array_equal(flipped["weights"], expected["weights"])
    # Decoded targets of the flipped crop, read in the unflipped crop, are the GT mirrored about the crop centre.
    unflipped = no_augmentation()(record)
    np.testing.assert_allclose(flipped["img"], unflipped["img"][:, :, ::-1], atol=one_level)
    decoded = decode_to_image([flipped])[0]
    mirrored_gt = np.stack([2 * flipped["center"][0] - record["keypoints"][:, 0], record["keypoints"][:, 1]], 1)
    used = flipped["weights"] > 0
    np.testing.assert_allclose(decoded[used], mirrored_gt[order][used], atol=1.0)
    np.testing.assert_array_equal(flipped["keypoints"], record["keypoints"])


def test_augmentation_depends_only_on_the_given_rng(dataset):
    record = dataset.load(2)
    transform = TopDownTransform(CODEC)
    np.random.seed(1)
    first = transform(record, np.random.default_rng(np.random.SeedSequence([0, 1, 2])))
    np.random.seed(2)
    same = transform(record, np.random.default_rng(np.random.SeedSequence([0, 1, 2])))
    for key in first:
        np.testing.assert_array_equal(first[key], same[key])
    others = [transform(record, np.random.default_rng(np.random.SeedSequence([0, epoch, 2]))) for epoch in (2, 3)]
    assert any(not np.array_equal(first["img"], other["img"]) for other in others)
    plain = no_augmentation()(record)
    np.testing.assert_array_equal(TopDownTransform(CODEC, train=False)(record, None)["img"], plain["img"])
    assert "heatmaps" not in TopDownTransform(CODEC, train=False)(record) and "heatmaps" in plain
    np.testing.assert_array_equal(first["center"], plain["center"])
    np.testing.assert_array_equal(first["scale"], plain["scale"])


def test_pck_counts_visible_keypoints_within_threshold():
    gt = np.zeros((2, 3, 2))
    pred = np.array([[[1.0, 0.0], [0.0, 3.0], [0.0, 0.5]], [[4.0, 0.0], [0.0, 0.0], [9.0, 9.0]]])
    visible = np.array([[1, 1, 1], [1, 1, 0]])
    box_size = np.array([[20.0, 40.0], [100.0, 10.0]])
    # Normalised distances: 0.05, 0.075, 0.0125 | 0.04, 0.0, (invisible).
    assert pck(pred, gt, visible, box_size, 0.06) == pytest.approx(4 / 5)
    assert pck(pred, gt, visible, box_size, 0.045) == pytest.approx(3 / 5)
    tensors = [torch.as_tensor(a) for a in (pred, gt, visible, box_size)]
    assert pck(*tensors, threshold=1.0) == 1.0
    assert pck(pred, gt, np.zeros((2, 3)), box_size, 0.5) == 0.0


def test_model_output_shapes():
    small = TopDownHeatmapNet()
    assert small(torch.zeros(2, 3, 64, 48)).shape == (2, 17, 32, 24)
    assert small.output_stride == 2
    custom = TopDownHeatmapNet(
        num_keypoints=5, stage_channels=[8, 16], stage_blocks=[1, 2], deconv_channels=[8, 8], dropout=0.1
    )
    assert custom(torch.zeros(1, 3, 32, 24)).shape == (1, 5, 32, 24)
    assert custom.output_stride == 1
    bottleneck = TopDownHeatmapNet(preset="resnet50", stage_channels=[16, 32], stage_blocks=[1, 1],
                                   deconv_channels=[8, 8, 8])
    assert bottleneck(torch.zeros(1, 3, 64, 48)).shape == (1, 17, 64, 48)
    with pytest.raises(ValueError):
        TopDownHeatmapNet(preset="resnet18")


def test_resnet50_preset_layout():
    model = TopDownHeatmapNet(preset="resnet50")
    assert model.output_stride == 4
    assert sum(p.numel() for p in model.backbone.parameters()) > 20_000_000
    assert model.final.in_channels == 256 and model.final.out_channels == 17


def test_heatmap_loss_is_weighted_mse():
    target = torch.rand(2, 3, 4, 4)
    weights = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    assert heatmap_loss(target, target, weights).item() == 0.0
    pred = target.clone()
    pred[0, 1] += 5.0
    pred[1, 2] -= 3.0
    assert heatmap_loss(pred, target, weights).item() == pytest.approx(0.0, abs=1e-7)
    pred[0, 0] += 1.0
    assert heatmap_loss(pred, target, weights).item() == pytest.approx(16 / (2 * 3 * 16))
