"""COCO data end to end, generated and real: transform round trip, flip test, `posecore predict`, overfitting."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import SHARED_COCO, CocoFiles, coco_config, coco_sample_config, posecore
from posecore.pose.coco import CocoKeypoints
from posecore.evaluation import predict
from posecore.pose.heatmap import GaussianHeatmap, decode_heatmaps, heatmap_to_image
from posecore.pose.transforms import TopDownTransform, flip_order
from posecore.testing import run_training


def _labelled_annotations(files: CocoFiles) -> list[dict]:
    return [ann for ann in json.loads(files.ann_file.read_text())["annotations"]
            if any(v > 0 for v in ann["keypoints"][2::3])]


def test_keypoints_survive_crop_heatmap_decode_and_inverse_within_a_pixel(coco_files):
    source = CocoKeypoints(coco_files.ann_file, coco_files.img_dir)
    # MMPose's usual codec: 192x256 input, 48x64 heatmaps (4 image pixels per heatmap pixel for a 300 px person).
    transform = TopDownTransform(GaussianHeatmap((192, 256), (48, 64), sigma=2.0))  # no rng: no augmentation
    samples = [transform(source.load(index)) for index in range(len(source))]
    heatmaps = torch.as_tensor(np.stack([s["heatmaps"] for s in samples]))
    coords, _ = decode_heatmaps(heatmaps)
    decoded = heatmap_to_image(coords, np.stack([s["center"] for s in samples]),
                               np.stack([s["scale"] for s in samples]), (48, 64)).numpy()
    used = np.stack([s["weights"] for s in samples]) > 0
    truth = np.stack([s["keypoints"] for s in samples])
    labelled = sum(v > 0 for ann in _labelled_annotations(coco_files) for v in ann["keypoints"][2::3])
    assert used.sum() == labelled  # every labelled keypoint lies inside its padded box crop
    error = np.linalg.norm(decoded[used] - truth[used], axis=1)
    assert error.max() < 1.0, f"worst keypoint off by {error.max():.3f} px"


def test_flip_test_averages_mirrored_heatmaps_with_left_and_right_swapped(tmp_path):
    """Flip-tested predictions are exactly mirror-symmetric for any model: predicting on the mirrored
    crop gives the mirrored poses with left and right swapped. Without flip test an untrained model is not."""
    run = run_training(tmp_path).run
    run.model.eval()
    images = torch.randn(3, 3, 32, 32)
    center, scale = np.full((3, 2), 50.0, np.float32), np.full((3, 2), 40.0, np.float32)
    order = flip_order(17, run.layout.flip_pairs)

    def mirror_error() -> float:
        pred, _ = predict(run, images, center, scale)
        mirrored_pred, _ = predict(run, images.flip(-1), center, scale)
        expected = pred[:, order].clone()
        expected[..., 0] = 2 * center[0, 0] - expected[..., 0]  # mirror about the crop centre
        return float((mirrored_pred - expected).abs().max())

    assert mirror_error() > 0.5
    run.config["model"]["flip_test"] = True
    assert mirror_error() < 1e-3


@pytest.fixture(scope="module")
def coco_checkpoint(coco_files, tmp_path_factory) -> tuple[CocoFiles, Path, Path]:
    """A data set, a config on it and a checkpoint trained from it (4 iterations) in a fresh process."""
    folder = tmp_path_factory.mktemp("coco_run")
    config = coco_config(folder, coco_files)
    trained = posecore("train", str(config), "--work-dir", str(folder / "wd"), "--cfg-options",
                       "val_evaluator.type=PCKAccuracy", "val_dataloader.dataset.det_file=None")
    assert trained.returncode == 0, trained.stderr
    return coco_files, config, folder / "wd" / "iter_4.pth"


def _images(files: CocoFiles) -> list[tuple[Path, list[list[float]]]]:
    """Each image of the data set with the boxes of its labelled persons."""
    labelled = _labelled_annotations(files)
    return [(files.img_dir / image["file_name"], [ann["bbox"] for ann in labelled if ann["image_id"] == image["id"]])
            for image in json.loads(files.ann_file.read_text())["images"]]


def _crowded_image(files: CocoFiles) -> tuple[Path, list[list[float]]]:
    """The first image with two or more labelled persons, and their boxes."""
    return next((path, boxes) for path, boxes in _images(files) if len(boxes) >= 2)


def test_predict_draws_the_whole_image_as_one_person_by_default(coco_checkpoint, tmp_path):
    files, config, checkpoint = coco_checkpoint
    image, _ = _crowded_image(files)
    other = next(path for path, _ in _images(files) if path != image)
    result = posecore("predict", str(image), str(other), "--config", str(config), "--checkpoint", str(checkpoint),
                      "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "wd"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"2 image(s) -> {tmp_path / 'out'}"
    summary = json.loads((tmp_path / "out" / "keypoints.json").read_text())
    assert summary["keypoint_names"][0] == "nose" and len(summary["skeleton"]) == 19
    assert [entry["image"] for entry in summary["images"]] == [str(image), str(other)]
    first = summary["images"][0]
    assert first["drawn"] == image.name
    original = np.asarray(Image.open(image).convert("RGB"))
    (person,) = first["persons"]
    assert person["bbox"] == [0, 0, original.shape[1], original.shape[0]]
    points = np.array(person["keypoints"])
    assert points.shape == (17, 3) and np.isfinite(points).all()
    drawn = np.asarray(Image.open(tmp_path / "out" / image.name).convert("RGB"))
    assert drawn.shape == original.shape


def test_predict_with_boxes_draws_each_person_where_predicted(coco_checkpoint, tmp_path):
    files, config, checkpoint = coco_checkpoint
    image, boxes = _crowded_image(files)
    boxes_file = tmp_path / "boxes.json"
    boxes_file.write_text(json.dumps({image.name: [boxes[0] + [0.8], boxes[1]]}))
    result = posecore("predict", str(image), "--config", str(config), "--checkpoint", str(checkpoint),
                      "--boxes", str(boxes_file), "--kpt-thr", "0", "--out", str(tmp_path / "out"),
                      "--work-dir", str(tmp_path / "wd"))
    assert result.returncode == 0, result.stderr
    persons = json.loads((tmp_path / "out" / "keypoints.json").read_text())["images"][0]["persons"]
    assert [p["bbox_score"] for p in persons] == [0.8, 1.0]
    for person, box in zip(persons, boxes):
        points = np.array(person["keypoints"])[:, :2]
        # Predictions land in the box's padded crop, in image coordinates.
        low, size = np.array(box[:2]), np.array(box[2:])
        assert (points >= low - size).all() and (points <= low + 2 * size).all()
    drawn = np.asarray(Image.open(tmp_path / "out" / image.name).convert("RGB")).astype(int)
    original = np.asarray(Image.open(image).convert("RGB")).astype(int)
    changed = np.abs(drawn - original).sum(axis=2) > 60
    for person in persons:  # every keypoint (all score above --kpt-thr 0) is drawn where it was predicted
        for x, y, _ in person["keypoints"]:
            x, y = round(x), round(y)
            if 0 <= x < original.shape[1] and 0 <= y < original.shape[0]:
                assert changed[max(0, y - 2):y + 3, max(0, x - 2):x + 3].any(), (x, y)


@pytest.mark.parametrize("coco_files", ["synthetic"], indirect=True)  # the errors do not depend on the data
def test_predict_input_errors_are_one_line(coco_checkpoint, synthetic_coco, tmp_path):
    files, config, checkpoint = coco_checkpoint
    image, boxes = _crowded_image(files)
    boxes_file = tmp_path / "boxes.json"
    common = ["--config", str(config), "--checkpoint", str(checkpoint), "--work-dir", str(tmp_path / "wd")]
    for content, message in [
        ("{", "line 1, column 2"),
        ("[]", "expected a JSON object"),
        (json.dumps({"other.jpg": []}), f"no entry for image {image}"),
        (json.dumps({image.name: [[1, 2, 0, 4]]}), f"'{image.name}' box 0 is [1, 2, 0, 4]"),
    ]:
        boxes_file.write_text(content)
        bad = posecore("predict", str(image), *common, "--boxes", str(boxes_file))
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
    missing = posecore("predict", str(tmp_path / "nope.jpg"), *common)
    assert missing.returncode == 2 and re.search(r"image .*nope\.jpg: not found", missing.stderr)
    for broken in (synthetic_coco.truncated_image, synthetic_coco.not_an_image):
        undecodable = posecore("predict", str(broken), *common, "--out", str(tmp_path / "out"))
        assert undecodable.returncode == 2, undecodable.stderr
        last = undecodable.stderr.strip().splitlines()[-1]
        assert last.startswith(f"posecore: error: image {broken}: cannot be decoded ("), last


@pytest.mark.slow
def test_overfitting_the_twelve_coco_persons_reaches_a_high_ap(tmp_path, shared_data):
    """examples/coco_sample.toml trains and scores on the same 12 persons: loss falls and AP nears 1
    (measured: AP 0.91 after 30 iterations, 1.0 from 100 on; an untrained model scores 0)."""
    config = coco_sample_config(tmp_path, SHARED_COCO)  # the example, reading the data from SHARED_DATA
    result = posecore("train", str(config), "--work-dir", str(tmp_path / "wd"), "--cfg-options",
                      "train.max_iters=100", "train.val_interval=0")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in next((tmp_path / "wd").glob("*/vis_data/scalars.json")).read_text()
             .splitlines()]
    losses = [line["loss"] for line in lines if "loss" in line]
    assert losses[-1] < losses[0] / 10
    (val,) = [line for line in lines if "val/AP" in line]
    assert val["val/AP"] >= 0.95
