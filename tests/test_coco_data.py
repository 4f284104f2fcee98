"""CocoKeypoints and CROWDPOSE14 against the real sample data in shared/data, and against broken files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from posecore.errors import InputError
from posecore.pose.coco import CocoKeypoints, DataError
from posecore.pose.skeleton import CROWDPOSE14
from posecore.pose.skeleton import COCO17
from posecore.pose.transforms import TopDownTransform

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COCO = DATA / "coco"
COCO_ANN = COCO / "test_coco.json"
COCO_DET = COCO / "test_coco_det_AP_H_56.json"
OCHUMAN = DATA / "ochuman"
CROWDPOSE = DATA / "crowdpose"

needs_data = pytest.mark.skipif(
    not COCO_ANN.is_file(), reason=f"shared sample data not found at {DATA} (see shared/data/README.md)"
)


def _json(path: Path):
    return json.loads(path.read_text())


def _transform(info) -> TopDownTransform:
    return TopDownTransform(input_size=(48, 64), heatmap_size=(24, 32), flip_pairs=info.flip_pairs, train=False)


# ---------------------------------------------------------------- real data


@needs_data
def test_coco_train_instances_match_the_json():
    source = CocoKeypoints(COCO_ANN, COCO)
    data = _json(COCO_ANN)
    assert len(data["annotations"]) == 14
    assert len(source) == 12
    assert source.keypoint_info is COCO17
    anns = {ann["id"]: ann for ann in data["annotations"]}
    images = {image["id"]: image for image in data["images"]}
    records = [source.load(index) for index in range(len(source))]
    assert sum(int(record["visible"].sum()) for record in records) == 181
    # The ids kept are those with labelled keypoints; the two without are dropped.
    kept = {record["ann_id"] for record in records}
    assert kept == {ann["id"] for ann in data["annotations"] if any(v > 0 for v in ann["keypoints"][2::3])}
    assert {1202706, 508900}.isdisjoint(kept)

    record = source.load(1)
    ann = anns[record["ann_id"]]
    image = images[record["image_id"]]
    assert record["image_id"] == ann["image_id"] == 40083
    assert record["image"].dtype == np.uint8
    assert record["image"].shape == (image["height"], image["width"], 3) == (333, 500, 3)
    triples = np.asarray(ann["keypoints"], dtype=np.float32).reshape(17, 3)
    np.testing.assert_array_equal(record["keypoints"], triples[:, :2])
    np.testing.assert_array_equal(record["visible"], (triples[:, 2] > 0).astype(np.float32))
    assert record["keypoints"].dtype == record["visible"].dtype == record["box"].dtype == np.float32
    assert record["keypoints"].shape == (17, 2) and record["visible"].shape == (17,)
    np.testing.assert_allclose(record["box"], ann["bbox"], rtol=1e-6)
    assert record["score"] == 1.0 and isinstance(record["ann_id"], int)


@needs_data
def test_coco_eval_mode_keeps_persons_without_keypoints():
    source = CocoKeypoints(COCO_ANN, COCO, train=False)
    assert len(source) == 14
    records = [source.load(index) for index in range(len(source))]
    empty = [record for record in records if record["ann_id"] in (1202706, 508900)]
    assert len(empty) == 2
    assert all(record["visible"].sum() == 0 and record["keypoints"].shape == (17, 2) for record in empty)


@needs_data
@pytest.mark.parametrize("threshold", [0.0, 0.3])
def test_detections_give_one_instance_per_box_above_threshold(threshold):
    detections = _json(COCO_DET)
    kept = [det for det in detections if det["score"] >= threshold]
    assert 0 < len(kept) <= len(detections) == 118
    source = CocoKeypoints(COCO_ANN, COCO, det_file=COCO_DET, det_score_thr=threshold)
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


@needs_data
def test_detection_thresholds_differ():
    low = CocoKeypoints(COCO_ANN, COCO, det_file=COCO_DET, det_score_thr=0.0)
    high = CocoKeypoints(COCO_ANN, COCO, det_file=COCO_DET, det_score_thr=0.5)
    assert len(high) == sum(det["score"] >= 0.5 for det in _json(COCO_DET)) < len(low) == 118
    assert min(high.load(index)["score"] for index in range(len(high))) >= 0.5


@needs_data
def test_ochuman_uses_file_name_not_image_id():
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


@needs_data
def test_crowdpose_fourteen_keypoints_without_area():
    ann_file = CROWDPOSE / "test_crowdpose.json"
    data = _json(ann_file)
    assert all("area" not in ann for ann in data["annotations"])
    images = {image["id"]: image for image in data["images"]}
    source = CocoKeypoints(ann_file, CROWDPOSE, keypoint_info=CROWDPOSE14)
    # 4 of 5 persons have keypoints; num_keypoints undercounts (head and neck left out) and is not used.
    assert len(source) == 4
    records = [source.load(index) for index in range(len(source))]
    labelled = sum(int(record["visible"].sum()) for record in records)
    assert labelled == sum(sum(v > 0 for v in ann["keypoints"][2::3]) for ann in data["annotations"]) == 47
    transform = _transform(CROWDPOSE14)
    for record in records:
        image = images[record["image_id"]]
        assert record["image"].shape == (image["height"], image["width"], 3)
        assert record["keypoints"].shape == (14, 2) and record["visible"].shape == (14,)
        sample = transform(record)
        assert sample["heatmaps"].shape == (14, 32, 24)
    with pytest.raises(DataError, match=r"annotation id \d+ .*14 keypoints found \(42 values\), expected 17"):
        CocoKeypoints(ann_file, CROWDPOSE)  # the COCO-17 default does not fit


@needs_data
def test_coco_records_feed_the_transform():
    source = CocoKeypoints(COCO_ANN, COCO)
    transform = _transform(source.keypoint_info)
    for index in range(0, len(source), 5):
        sample = transform(source.load(index))
        assert sample["img"].shape == (3, 64, 48)
        assert sample["heatmaps"].shape == (17, 32, 24)
        assert np.isfinite(sample["img"]).all()
    detected = CocoKeypoints(COCO_ANN, COCO, det_file=COCO_DET, det_score_thr=0.9)
    sample = transform(detected.load(0))
    assert sample["weights"].sum() == 0  # no ground truth for detections


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
        f"expected 17 (51 values); use a keypoint_info that matches the dataset"
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


@needs_data
@pytest.mark.parametrize("folder, ann, layout, count", [
    (COCO, "test_coco.json", {"keypoints": "coco17"}, 17),
    (CROWDPOSE, "test_crowdpose.json", {"keypoints": "crowdpose14"}, 14),
    # CrowdPose expressed in the config, as a layout of one's own would be:
    (CROWDPOSE, "test_crowdpose.json", {"keypoint_names": list(CROWDPOSE14.names),
                                        "flip_pairs": [list(p) for p in CROWDPOSE14.flip_pairs],
                                        "skeleton": [list(p) for p in CROWDPOSE14.skeleton],
                                        "sigmas": list(CROWDPOSE14.sigmas)}, 14)])
def test_training_on_coco_format_data_through_the_cli(tmp_path, folder, ann, layout, count):
    import torch

    from helpers import posecore, write_tiny_config

    dataset = {"type": "CocoKeypoints", "ann_file": str(folder / ann), "img_dir": str(folder), **layout}
    config = write_tiny_config(tmp_path, train_dataloader={"batch_size": 2, "num_workers": 0, "dataset": dataset},
                               val_dataloader={"batch_size": 4, "dataset": dataset})
    result = posecore("train", str(config), "--work-dir", str(tmp_path / "wd"))
    assert result.returncode == 0, result.stderr
    assert "Iter(val) [4]  PCK: " in result.stderr
    weights = torch.load(tmp_path / "wd" / "iter_4.pth", weights_only=True)["model"]
    assert weights["final.weight"].shape[0] == count  # one heatmap per keypoint of the layout


def test_coco_dataset_without_files_is_a_config_error(tmp_path):
    from helpers import posecore, write_tiny_config

    config = write_tiny_config(tmp_path, val_dataloader={"dataset": {"type": "CocoKeypoints", "img_dir": "x"}})
    result = posecore("config", str(config))
    assert result.returncode == 2
    assert "val_dataloader.dataset of type CocoKeypoints needs ann_file" in result.stderr


@needs_data
def test_coco_metric_validation_logs_ap_and_keeps_the_best(tmp_path):
    pytest.importorskip("pycocotools")
    from helpers import coco_config, posecore

    config = coco_config(tmp_path, det_score_thr=0.3)
    result = posecore("train", str(config), "--work-dir", str(tmp_path / "wd"), "--cfg-options",
                      'checkpoint.save_best="AP"')
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in next((tmp_path / "wd").glob("*/vis_data/scalars.json")).read_text()
             .splitlines() if "val/AP" in line]
    assert [line["step"] for line in lines] == [2, 4]
    assert all(0.0 <= line["val/AP"] <= 1.0 and "val/ARl" in line for line in lines)
    assert len(list((tmp_path / "wd").glob("best_AP_iter_*.pth"))) == 1


def test_coco_metric_needs_a_coco_validation_set(tmp_path):
    from helpers import posecore, write_tiny_config

    result = posecore("config", str(write_tiny_config(tmp_path, val_evaluator={"type": "CocoMetric"})))
    assert result.returncode == 2
    assert "val_evaluator.type CocoMetric needs a CocoKeypoints val_dataloader.dataset" in result.stderr


@needs_data
def test_posecore_test_prints_the_metrics_and_writes_coco_results(tmp_path):
    pytest.importorskip("pycocotools")
    from helpers import coco_config, posecore
    from posecore.pose.coco_eval import coco_keypoint_ap

    config = coco_config(tmp_path)
    trained = posecore("train", str(config), "--work-dir", str(tmp_path / "wd"))
    assert trained.returncode == 0, trained.stderr
    result = posecore("test", str(config), "--checkpoint", str(tmp_path / "wd" / "iter_4.pth"),
                      "--work-dir", str(tmp_path / "test"))
    assert result.returncode == 0, result.stderr
    table = dict(line.split() for line in result.stdout.splitlines()[1:])
    assert list(table) == ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]
    (written,) = (tmp_path / "test").glob("*/predictions.keypoints.json")
    results = json.loads(written.read_text())
    assert results and {"image_id", "category_id", "keypoints", "score"} <= set(results[0])
    assert f"{coco_keypoint_ap(COCO_ANN, written)['AP']:.4f}" == table["AP"]  # the file is what was scored
    missing = posecore("test", str(config), "--checkpoint", str(tmp_path / "nope.pth"))
    assert missing.returncode == 2 and "checkpoint not found" in missing.stderr


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
    from helpers import write_tiny_config
    from posecore.errors import ConfigError
    from posecore.plugins import load_config

    dataset = {"type": "CocoKeypoints", "ann_file": "a.json", "img_dir": "."}
    config = write_tiny_config(tmp_path, train_dataloader={"dataset": {**dataset, **train_layout}},
                               val_dataloader={"dataset": {**dataset, **(val_layout if val_layout is not None
                                                                         else train_layout)}})
    with pytest.raises(ConfigError) as error:
        load_config(config, [], [])
    assert message in str(error.value)
