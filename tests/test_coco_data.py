"""CocoKeypoints on the generated COCO data set and on the real samples in shared/data, and against broken files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from coco_synth import IMAGES, PERSON_CATEGORY, panels, write_synthetic_coco
from helpers import SHARED_COCO, SHARED_DATA, coco_config, posecore, write_tiny_config
from posecore.errors import InputError
from posecore.pose.coco import CocoKeypoints, DataError
from posecore.pose.coco_eval import coco_keypoint_ap
from posecore.pose.skeleton import CROWDPOSE14
from posecore.pose.skeleton import COCO17
from posecore.pose.heatmap import GaussianHeatmap
from posecore.pose.transforms import TopDownTransform

OCHUMAN = SHARED_DATA / "ochuman"
CROWDPOSE = SHARED_DATA / "crowdpose"


def _json(path: Path):
    return json.loads(path.read_text())


def _transform(info) -> TopDownTransform:
    """Crops and targets without augmentation (a training transform called without an rng)."""
    return TopDownTransform(GaussianHeatmap((48, 64), (24, 32)), flip_pairs=info.flip_pairs)


def _labelled(ann: dict) -> int:
    """The number of labelled keypoints (v > 0) of an annotation, counted from its keypoints."""
    return sum(1 for v in ann["keypoints"][2::3] if v > 0)


# ---------------------------------------------------------------- the generated data set


def test_synthetic_coco_labels_are_the_rendered_keypoints(synthetic_coco):
    data = _json(synthetic_coco.ann_file)
    assert data["categories"] == [PERSON_CATEGORY] and len(PERSON_CATEGORY["skeleton"]) == 19
    assert min(min(link) for link in PERSON_CATEGORY["skeleton"]) == 1  # COCO numbers keypoints from 1
    labelled = [ann for ann in data["annotations"] if ann["num_keypoints"] > 0]
    scenes = panels()
    assert [len(image) for image in scenes] == [persons for persons, _ in IMAGES]
    assert len(labelled) == sum(len(image) for image in scenes)
    people = iter(labelled)
    for image, rendered in zip(data["images"], scenes):
        picture = np.asarray(Image.open(synthetic_coco.img_dir / image["file_name"]))
        expected = np.concatenate([scene["image"] for scene in rendered], axis=1)
        assert picture.shape == expected.shape == (image["height"], image["width"], 3)
        assert np.abs(picture.astype(int) - expected).mean() < 8  # JPEG loses the pixel noise; another scene is ~60 off
        for k, scene in enumerate(rendered):
            ann = next(people)
            assert ann["image_id"] == image["id"]
            triples = np.asarray(ann["keypoints"]).reshape(17, 3)
            flags = triples[:, 2]
            shifted = scene["keypoints"] + (k * scene["image"].shape[1], 0)
            np.testing.assert_allclose(triples[flags > 0, :2], shifted[flags > 0], atol=0.005)
            assert not triples[flags == 0].any()  # unlabelled: 0, 0, 0 as in COCO
            np.testing.assert_array_equal(flags == 2, scene["visible"] > 0)
            assert ann["num_keypoints"] == _labelled(ann)
            np.testing.assert_allclose(ann["bbox"][:2], scene["box"][:2] + (k * scene["image"].shape[1], 0), atol=0.005)


def test_synthetic_coco_has_the_cases_real_data_has(synthetic_coco):
    data = _json(synthetic_coco.ann_file)
    flags = [v for ann in data["annotations"] for v in ann["keypoints"][2::3]]
    assert {0, 1, 2} <= set(flags)  # out of frame, covered, visible
    (empty,) = [ann for ann in data["annotations"] if ann["num_keypoints"] == 0]
    assert not any(empty["keypoints"]) and empty["bbox"][2] > 0
    per_image = [sum(ann["image_id"] == image["id"] and ann["num_keypoints"] > 0 for ann in data["annotations"])
                 for image in data["images"]]
    assert max(per_image) == 2
    assert max(ann["area"] for ann in data["annotations"]) > 96 ** 2  # COCO's "large" persons
    detections = _json(synthetic_coco.det_file)
    boxes = [det["bbox"] for det in detections]
    assert any(boxes.count(box) > 1 for box in boxes)  # a duplicate
    assert sum(det["score"] < 0.3 for det in detections) == 2
    jittered = [det for det in detections if det["score"] >= 0.3 and det["bbox"] not in
                [ann["bbox"] for ann in data["annotations"]]]
    assert len(jittered) >= 2
    for broken in (synthetic_coco.truncated_image, synthetic_coco.not_an_image):
        with pytest.raises(OSError):
            Image.open(broken).load()


def test_synthetic_coco_is_deterministic(synthetic_coco, tmp_path):
    again = write_synthetic_coco(tmp_path / "again")
    written = sorted(path.name for path in synthetic_coco.img_dir.iterdir())
    assert written == sorted(path.name for path in again.img_dir.iterdir())
    for name in written:
        assert (synthetic_coco.img_dir / name).read_bytes() == (again.img_dir / name).read_bytes(), name
    other = write_synthetic_coco(tmp_path / "other", seed=5)
    assert other.ann_file.read_bytes() != synthetic_coco.ann_file.read_bytes()


# ---------------------------------------------------------------- both data sets


def test_coco_train_instances_match_the_json(coco_files):
    source = CocoKeypoints(coco_files.ann_file, coco_files.img_dir)
    data = _json(coco_files.ann_file)
    images = {image["id"]: image for image in data["images"]}
    # The annotations kept are those with labelled keypoints; both sets have persons without.
    labelled = [ann for ann in data["annotations"] if _labelled(ann) > 0]
    assert 0 < len(labelled) < len(data["annotations"])
    assert len(source) == len(labelled)
    assert source.keypoint_info is COCO17
    records = [source.load(index) for index in range(len(source))]
    assert [record["ann_id"] for record in records] == [ann["id"] for ann in labelled]
    for record, ann in zip(records, labelled):
        image = images[ann["image_id"]]
        assert record["image_id"] == ann["image_id"]
        assert record["image"].dtype == np.uint8
        assert record["image"].shape == (image["height"], image["width"], 3)
        triples = np.asarray(ann["keypoints"], dtype=np.float32).reshape(17, 3)
        np.testing.assert_array_equal(record["keypoints"], triples[:, :2])
        np.testing.assert_array_equal(record["visible"], (triples[:, 2] > 0).astype(np.float32))
        assert record["keypoints"].dtype == record["visible"].dtype == record["box"].dtype == np.float32
        assert record["keypoints"].shape == (17, 2) and record["visible"].shape == (17,)
        x, y, w, h = ann["bbox"]  # corners clipped to the image's pixel centres, as MMPose clips them
        corners = np.clip([x, y, x + w, y + h], 0, [image["width"] - 1, image["height"] - 1] * 2)
        np.testing.assert_allclose(record["box"], [*corners[:2], *(corners[2:] - corners[:2])], rtol=1e-6)
        assert record["score"] == 1.0 and isinstance(record["ann_id"], int)


def test_coco_eval_mode_keeps_persons_without_keypoints(coco_files):
    source = CocoKeypoints(coco_files.ann_file, coco_files.img_dir, train=False)
    annotations = _json(coco_files.ann_file)["annotations"]
    assert len(source) == len(annotations)  # neither set has crowd annotations or empty boxes
    empty_ids = {ann["id"] for ann in annotations if _labelled(ann) == 0}
    records = [source.load(index) for index in range(len(source))]
    empty = [record for record in records if record["ann_id"] in empty_ids]
    assert len(empty) == len(empty_ids) > 0
    assert all(record["visible"].sum() == 0 and record["keypoints"].shape == (17, 2) for record in empty)


@pytest.mark.parametrize("threshold", [0.0, 0.3])
def test_detections_give_one_instance_per_box_above_threshold(coco_files, threshold):
    detections = _json(coco_files.det_file)
    kept = [det for det in detections if det["score"] >= threshold]
    assert 0 < len(kept) <= len(detections)
    source = CocoKeypoints(coco_files.ann_file, coco_files.img_dir, det_file=coco_files.det_file,
                           det_score_thr=threshold)
    assert len(source) == len(kept)
    for index in (0, len(source) - 1):
        record = source.load(index)
        det = kept[index]
        assert record["ann_id"] == -1
        assert record["image_id"] == det["image_id"]
        assert record["score"] == pytest.approx(det["score"])
        np.testing.assert_allclose(record["box"], det["bbox"], rtol=1e-6)
        assert record["visible"].shape == (17,) and not record["visible"].any()
        assert record["keypoints"].shape == (17, 2) and not record["keypoints"].any()


def test_detection_thresholds_differ(coco_files):
    detections = _json(coco_files.det_file)
    low = CocoKeypoints(coco_files.ann_file, coco_files.img_dir, det_file=coco_files.det_file, det_score_thr=0.0)
    high = CocoKeypoints(coco_files.ann_file, coco_files.img_dir, det_file=coco_files.det_file, det_score_thr=0.5)
    assert len(high) == sum(det["score"] >= 0.5 for det in detections) < len(low) == len(detections)
    assert min(high.load(index)["score"] for index in range(len(high))) >= 0.5


def test_coco_records_feed_the_transform(coco_files):
    source = CocoKeypoints(coco_files.ann_file, coco_files.img_dir)
    transform = _transform(source.keypoint_info)
    for index in range(0, len(source), 5):
        sample = transform(source.load(index))
        assert sample["img"].shape == (3, 64, 48)
        assert sample["heatmaps"].shape == (17, 32, 24)
        assert np.isfinite(sample["img"]).all()
    detected = CocoKeypoints(coco_files.ann_file, coco_files.img_dir, det_file=coco_files.det_file, det_score_thr=0.9)
    sample = transform(detected.load(0))
    assert sample["weights"].sum() == 0  # no ground truth for detections


@pytest.mark.parametrize("broken", ["truncated_image", "not_an_image"])
def test_an_image_that_does_not_decode_names_file_and_image_id(synthetic_coco, tmp_path, broken):
    path = getattr(synthetic_coco, broken)
    data = _json(synthetic_coco.ann_file)
    data["images"][0]["file_name"] = path.name
    ann_file = tmp_path / "broken.json"
    ann_file.write_text(json.dumps(data))
    source = CocoKeypoints(ann_file, synthetic_coco.img_dir)
    with pytest.raises(DataError) as error:
        source.load(0)
    where = f"image {path} (image id {data['images'][0]['id']}, from broken.json): cannot be decoded ("
    assert re.fullmatch(re.escape(where) + r".+\); replace the file with a valid image", _one_line(error))


# ---------------------------------------------------------------- the real samples only


def test_shared_coco_sample_is_the_one_its_readme_describes(shared_data):
    source = CocoKeypoints(SHARED_COCO.ann_file, SHARED_COCO.img_dir)
    data = _json(SHARED_COCO.ann_file)
    assert len(data["annotations"]) == 14 and len(source) == 12
    records = [source.load(index) for index in range(len(source))]
    assert sum(int(record["visible"].sum()) for record in records) == 181
    assert {1202706, 508900}.isdisjoint(record["ann_id"] for record in records)  # the two without keypoints
    assert records[1]["image_id"] == 40083 and records[1]["image"].shape == (333, 500, 3)
    assert len(_json(SHARED_COCO.det_file)) == 118


def test_ochuman_uses_file_name_not_image_id(shared_data):
    ann_file = OCHUMAN / "test_ochuman.json"
    data = _json(ann_file)
    assert sorted(image["id"] for image in data["images"]) == [1, 2, 3]
    images = {image["id"]: image for image in data["images"]}
    source = CocoKeypoints(ann_file, OCHUMAN)
    assert len(source) == 5
    transform = _transform(COCO17)
    for index in range(len(source)):
        record = source.load(index)
        image = images[record["image_id"]]
        assert record["image"].shape == (image["height"], image["width"], 3)
        assert record["keypoints"].shape == (17, 2)
        sample = transform(record)
        assert sample["img"].shape == (3, 64, 48) and sample["heatmaps"].shape == (17, 32, 24)


def test_crowdpose_fourteen_keypoints_without_area(shared_data):
    ann_file = CROWDPOSE / "test_crowdpose.json"
    data = _json(ann_file)
    assert all("area" not in ann for ann in data["annotations"])
    images = {image["id"]: image for image in data["images"]}
    source = CocoKeypoints(ann_file, CROWDPOSE, keypoints="crowdpose14")
    assert source.keypoint_info == CROWDPOSE14
    # 4 of 5 persons have keypoints; num_keypoints undercounts (head and neck left out) and is not used.
    assert len(source) == 4
    records = [source.load(index) for index in range(len(source))]
    labelled = sum(int(record["visible"].sum()) for record in records)
    assert labelled == sum(_labelled(ann) for ann in data["annotations"]) == 47
    transform = _transform(CROWDPOSE14)
    for record in records:
        image = images[record["image_id"]]
        assert record["image"].shape == (image["height"], image["width"], 3)
        assert record["keypoints"].shape == (14, 2) and record["visible"].shape == (14,)
        sample = transform(record)
        assert sample["heatmaps"].shape == (14, 32, 24)
    with pytest.raises(DataError, match=r"annotation id \d+ .*14 keypoints found \(42 values\), expected 17"):
        CocoKeypoints(ann_file, CROWDPOSE)  # the COCO-17 default does not fit


def test_crowdpose14_layout():
    assert CROWDPOSE14.num_keypoints == 14
    assert CROWDPOSE14.names[12:] == ("head", "neck")
    for left, right in CROWDPOSE14.flip_pairs:
        assert CROWDPOSE14.names[left].replace("left", "right") == CROWDPOSE14.names[right]
    assert CROWDPOSE14.sigmas[0] == pytest.approx(0.079) and CROWDPOSE14.sigmas[6] == pytest.approx(0.107)
    linked = {k for pair in CROWDPOSE14.skeleton for k in pair}
    assert linked == set(range(14))


# ---------------------------------------------------------------- bad inputs


def _tiny_dataset(folder: Path, keypoints_per_person: int = 17, image_bytes: bytes | None = None) -> Path:
    """A one-image, one-person COCO file (image id 7, annotation id 42) with its 20x10 image."""
    folder.mkdir(parents=True, exist_ok=True)
    image_path = folder / "person.png"
    if image_bytes is None:
        Image.new("RGB", (20, 10), (10, 20, 30)).save(image_path)
    else:
        image_path.write_bytes(image_bytes)
    keypoints = [5.0, 4.0, 2] * keypoints_per_person
    data = {
        "images": [{"id": 7, "file_name": "person.png", "width": 20, "height": 10}],
        "annotations": [
            {"id": 42, "image_id": 7, "iscrowd": 0, "bbox": [2, 1, 10, 8], "keypoints": keypoints, "num_keypoints": 0}
        ],
    }
    ann_file = folder / "ann.json"
    ann_file.write_text(json.dumps(data))
    return ann_file


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    assert isinstance(error.value, InputError) and error.value.exit_code == 2
    return message


def test_tiny_dataset_loads(tmp_path):
    ann_file = _tiny_dataset(tmp_path)
    source = CocoKeypoints(ann_file, tmp_path)
    assert len(source) == 1  # num_keypoints == 0 is ignored: the keypoints themselves count
    record = source.load(0)
    assert record["image"].shape == (10, 20, 3) and tuple(record["image"][0, 0]) == (10, 20, 30)
    assert record["image_id"] == 7 and record["ann_id"] == 42 and record["score"] == 1.0
    with pytest.raises(IndexError):
        source.load(1)


def test_missing_annotation_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(DataError) as error:
        CocoKeypoints(missing, tmp_path)
    assert _one_line(error) == f"annotation file {missing}: not found; check the path in the config"


def test_invalid_json_names_line_and_column(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "images": [],\n  "annotations": [,]\n}\n')
    with pytest.raises(DataError) as error:
        CocoKeypoints(bad, tmp_path)
    message = _one_line(error)
    assert message.startswith(f"annotation file {bad}: invalid JSON at line 3, column 19:")
    assert message.endswith("fix or regenerate the file")


def test_missing_sections(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError) as error:
        CocoKeypoints(bad, tmp_path)
    assert _one_line(error) == f"annotation file {bad}: has no 'annotations' list; is this a COCO keypoint file?"


def test_wrong_keypoint_count_names_the_annotation(tmp_path):
    ann_file = _tiny_dataset(tmp_path, keypoints_per_person=16)
    with pytest.raises(DataError) as error:
        CocoKeypoints(ann_file, tmp_path)
    assert _one_line(error) == (
        f"annotation file {ann_file}: annotation id 42 (image id 7): 16 keypoints found (48 values), "
        f"expected 17 (51 values); set the dataset's keypoints (or keypoint_names, flip_pairs, skeleton and sigmas) "
        f"to match the file"
    )


def test_missing_image_names_file_and_image_id(tmp_path):
    ann_file = _tiny_dataset(tmp_path)
    (tmp_path / "person.png").unlink()
    source = CocoKeypoints(ann_file, tmp_path)  # images are only opened in load()
    with pytest.raises(DataError) as error:
        source.load(0)
    assert _one_line(error) == (
        f"image {tmp_path / 'person.png'} (image id 7, from ann.json): not found; "
        f"check img_dir and the 'file_name' in the annotation file"
    )


def test_corrupt_image(tmp_path):
    ann_file = _tiny_dataset(tmp_path, image_bytes=b"this is not an image at all")
    source = CocoKeypoints(ann_file, tmp_path)
    with pytest.raises(DataError) as error:
        source.load(0)
    message = _one_line(error)
    assert re.fullmatch(
        re.escape(f"image {tmp_path / 'person.png'} (image id 7, from ann.json): cannot be decoded (")
        + r".+\); replace the file with a valid image",
        message,
    )


def test_truncated_image(tmp_path):
    good = tmp_path / "good"
    _tiny_dataset(good)
    png = (good / "person.png").read_bytes()
    ann_file = _tiny_dataset(tmp_path / "bad", image_bytes=png[: len(png) // 2])
    with pytest.raises(DataError, match=r"image id 7.*cannot be decoded"):
        CocoKeypoints(ann_file, ann_file.parent).load(0)


def test_image_size_mismatch(tmp_path):
    ann_file = _tiny_dataset(tmp_path)
    Image.new("RGB", (21, 10)).save(tmp_path / "person.png")
    with pytest.raises(DataError, match=r"is 21x10 but the annotation file says 20x10"):
        CocoKeypoints(ann_file, tmp_path).load(0)


def test_detection_for_unknown_image(tmp_path):
    ann_file = _tiny_dataset(tmp_path)
    det_file = tmp_path / "det.json"
    det_file.write_text(json.dumps([{"image_id": 8, "bbox": [0, 0, 5, 5], "score": 0.9}]))
    with pytest.raises(DataError) as error:
        CocoKeypoints(ann_file, tmp_path, det_file=det_file)
    assert "detection 0 refers to image id 8" in _one_line(error)


# ---------------------------------------------------------------- through the CLI


def _train_and_count_heatmaps(folder: Path, dataset: dict) -> int:
    """Train the tiny model on ``dataset`` through the CLI; the number of heatmaps its checkpoint predicts."""
    config = write_tiny_config(folder, train_dataloader={"batch_size": 2, "num_workers": 0, "dataset": dataset},
                               val_dataloader={"batch_size": 4, "dataset": dataset})
    result = posecore("train", str(config), "--work-dir", str(folder / "wd"))
    assert result.returncode == 0, result.stderr
    assert "Iter(val) [4]  PCK: " in result.stderr
    return torch.load(folder / "wd" / "iter_4.pth", weights_only=True)["model"]["final.weight"].shape[0]


def test_training_on_coco_format_data_through_the_cli(tmp_path, coco_files):
    dataset = {"type": "CocoKeypoints", "ann_file": str(coco_files.ann_file), "img_dir": str(coco_files.img_dir),
               "keypoints": "coco17"}
    assert _train_and_count_heatmaps(tmp_path, dataset) == 17


@pytest.mark.parametrize("layout", [
    {"keypoints": "crowdpose14"},
    # CrowdPose expressed in the config, as a layout of one's own would be:
    {"keypoint_names": list(CROWDPOSE14.names), "flip_pairs": [list(p) for p in CROWDPOSE14.flip_pairs],
     "skeleton": [list(p) for p in CROWDPOSE14.skeleton], "sigmas": list(CROWDPOSE14.sigmas)},
], ids=["built-in", "own"])
def test_training_on_crowdpose_through_the_cli(tmp_path, shared_data, layout):
    dataset = {"type": "CocoKeypoints", "ann_file": str(CROWDPOSE / "test_crowdpose.json"), "img_dir": str(CROWDPOSE),
               **layout}
    assert _train_and_count_heatmaps(tmp_path, dataset) == 14  # one heatmap per keypoint of the layout


def test_coco_dataset_without_files_is_a_config_error(tmp_path):
    config = write_tiny_config(tmp_path, val_dataloader={"dataset": {"type": "CocoKeypoints", "img_dir": "x"}})
    result = posecore("config", str(config))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"posecore: error: {config}: 'val_dataloader.dataset.ann_file' is required: COCO person-keypoints "
        f"annotation JSON"]


def test_coco_metric_validation_logs_ap_and_keeps_the_best(tmp_path, coco_files):
    config = coco_config(tmp_path, coco_files, det_score_thr=0.3)
    result = posecore("train", str(config), "--work-dir", str(tmp_path / "wd"), "--cfg-options",
                      'checkpoint.save_best="AP"')
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in next((tmp_path / "wd").glob("*/vis_data/scalars.json")).read_text()
             .splitlines() if "val/AP" in line]
    assert [line["step"] for line in lines] == [2, 4]
    assert all(0.0 <= line["val/AP"] <= 1.0 and "val/ARl" in line for line in lines)
    assert len(list((tmp_path / "wd").glob("best_AP_iter_*.pth"))) == 1


def test_coco_metric_needs_a_coco_validation_set(tmp_path):
    result = posecore("config", str(write_tiny_config(tmp_path, val_evaluator={"type": "CocoMetric"})))
    assert result.returncode == 2
    assert "val_evaluator.type CocoMetric needs a CocoKeypoints val_dataloader.dataset" in result.stderr


def test_posecore_test_prints_the_metrics_and_writes_coco_results(tmp_path, coco_files):
    config = coco_config(tmp_path, coco_files)
    trained = posecore("train", str(config), "--work-dir", str(tmp_path / "wd"))
    assert trained.returncode == 0, trained.stderr
    result = posecore("test", str(config), "--checkpoint", str(tmp_path / "wd" / "iter_4.pth"),
                      "--work-dir", str(tmp_path / "test"))
    assert result.returncode == 0, result.stderr
    table = dict(line.split() for line in result.stdout.splitlines()[1:])
    assert list(table) == ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]
    assert float(table["AP"]) < 0.2  # 4 iterations of the tiny model
    (written,) = (tmp_path / "test").glob("*/predictions.keypoints.json")
    results = json.loads(written.read_text())
    detections = _json(coco_files.det_file)
    assert 0 < len(results) <= len(detections)  # one per detected box, less those OKS-NMS drops
    assert {r["image_id"] for r in results} <= {det["image_id"] for det in detections}
    assert all(set(r) == {"image_id", "category_id", "keypoints", "score"} and len(r["keypoints"]) == 51
               for r in results)
    assert f"{coco_keypoint_ap(coco_files.ann_file, written)['AP']:.4f}" == table["AP"]  # the file is what was scored


def test_posecore_test_without_its_checkpoint_is_a_one_line_error(tmp_path, tiny_config):
    missing = posecore("test", str(tiny_config), "--checkpoint", str(tmp_path / "nope.pth"))
    assert missing.returncode == 2 and "checkpoint not found" in missing.stderr
    assert missing.stderr.strip().splitlines()[-1].startswith("posecore: error: ")


@pytest.mark.parametrize("train_layout, val_layout, message", [
    ({"keypoint_names": ["a", "b", "c"]}, None,
     "train_dataloader.dataset: 3 keypoint names but 17 sigmas; a layout of your own sets keypoint_names, sigmas"),
    ({"keypoint_names": ["a", "b", "c"], "sigmas": [0.1, 0.1, 0.1]}, None,
     "flip_pairs pair (3, 4) is out of range for 3 keypoints"),
    ({"flip_pairs": [[1]]}, None, "flip_pairs must be a list of [index, index] pairs"),
    ({"keypoints": "crowdpose14"}, {},
     "train_dataloader.dataset has 14 keypoints but val_dataloader.dataset has 17; one model predicts one layout"),
])
def test_keypoint_layout_errors_name_the_key(tmp_path, train_layout, val_layout, message):
    from posecore.errors import ConfigError
    from posecore.plugins import load_config

    dataset = {"type": "CocoKeypoints", "ann_file": "a.json", "img_dir": "."}
    config = write_tiny_config(tmp_path, train_dataloader={"dataset": {**dataset, **train_layout}},
                               val_dataloader={"dataset": {**dataset, **(val_layout if val_layout is not None
                                                                         else train_layout)}})
    with pytest.raises(ConfigError) as error:
        load_config(config, [], [])
    assert message in str(error.value)


def test_images_decode_as_mmposes_loadimage(tmp_path):
    """OpenCV decodes (as MMPose's LoadImage) to the pixels Pillow's RGB conversion gives, in the orientation stored
    (an EXIF rotation is ignored, as MMPose ignores it); what OpenCV cannot read (PCX), Pillow decodes; only JPEGs
    decode at reduced scale."""
    from posecore.pose.coco import EncodedImage, read_image

    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees to display"
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    Image.fromarray(pixels[..., 0]).save(tmp_path / "grey.png")
    Image.fromarray(np.dstack([pixels, pixels[..., :1]])).save(tmp_path / "alpha.png")
    Image.fromarray(pixels).save(tmp_path / "paint.pcx")
    for name in ("rotated.jpg", "grey.png", "alpha.png", "paint.pcx"):
        expected = np.asarray(Image.open(tmp_path / name).convert("RGB"))
        assert expected.shape == (20, 30, 3)
        decoded = read_image(tmp_path / name)
        np.testing.assert_array_equal(decoded, expected, err_msg=name)
        decoded[0, 0] = 0  # a copy to keep: writable
        assert EncodedImage(tmp_path / name).shape == (20, 30, 3)
        reduced, factor = EncodedImage(tmp_path / name, reduced=True).decode(8)  # only JPEGs decode reduced
        assert factor == (8 if name.endswith(".jpg") else 1) and reduced.shape[1] == (4 if factor == 8 else 30)
