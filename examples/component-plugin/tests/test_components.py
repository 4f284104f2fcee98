"""Run with `python -m pytest tests` once posecore-example-components is installed."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import posecore_example_components
from posecore.errors import ConfigError, InputError
from posecore.pose.skeleton import COCO17
from posecore.pose.synthetic import SyntheticPoses
from posecore.testing import TINY_CONFIG, run_training
from posecore_example_components.components import KeypointError, KeypointFolder, TransformersHeatmapNet

HERE = Path(__file__).resolve().parents[1]
LAYOUT = {"keypoint_names": ["head", "left_hand", "right_hand"], "flip_pairs": [[1, 2]], "skeleton": [[0, 1], [0, 2]],
          "sigmas": [0.1, 0.1, 0.1]}


SPEC = importlib.util.spec_from_file_location("make_data", HERE / "make_data.py")  # a script, not installed
make_data = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(make_data)


def write_persons(folder, name, persons, size=(20, 10)):
    folder.mkdir(exist_ok=True)
    Image.new("RGB", size).save(folder / f"{name}.png")
    (folder / f"{name}.json").write_text(persons if isinstance(persons, str) else json.dumps(persons))


def test_trains_and_validates_on_a_folder_of_images(tmp_path):
    make_data.write_folder(tmp_path / "train", 8, 64, seed=0)
    make_data.write_folder(tmp_path / "val", 4, 64, seed=1)
    config = {**TINY_CONFIG,
              "model": {"type": "TransformersHeatmapNet", "hidden_sizes": [8, 16], "deconv_channels": [8, 8]},
              "train_dataloader": {"batch_size": 4, "num_workers": 0,
                                   "dataset": {"type": "KeypointFolder", "folder": str(tmp_path / "train")}},
              "val_dataloader": {"batch_size": 4,
                                 "dataset": {"type": "KeypointFolder", "folder": str(tmp_path / "val")}},
              "val_evaluator": {"type": "KeypointError", "per_keypoint": True}}
    recording = run_training(tmp_path / "wd", plugins={"example_components": posecore_example_components},
                             config=config)
    assert isinstance(recording.run.model.backbone, transformers.ResNetBackbone)
    (first, last) = [call["metrics"] for call in recording.calls_of("after_val")]
    assert set(last) == {"NME", *(f"NME_{name}" for name in COCO17.names)}
    assert 0 < last["NME"] < 1 and last["NME"] != first["NME"]
    assert sorted(p.name for p in (tmp_path / "wd").glob("iter_*.pth")) == ["iter_2.pth", "iter_4.pth"]


def test_make_data_writes_what_the_dataset_reads(tmp_path):
    make_data.write_folder(tmp_path, 3, 48, seed=5)
    figure = SyntheticPoses(num_samples=3, image_size=(48, 48), seed=5).load(2)
    record = KeypointFolder(tmp_path).load(2)
    assert record["image"].shape == (48, 48, 3) and record["image_id"] == 2
    np.testing.assert_allclose(record["keypoints"], figure["keypoints"], atol=0.005)
    np.testing.assert_allclose(record["box"], figure["box"], atol=0.005)
    np.testing.assert_array_equal(record["visible"], figure["visible"])


def test_reads_several_persons_boxes_and_a_layout_of_its_own(tmp_path):
    labelled = {"keypoints": [[2, 3, 2], [6, 11, 1], [9, 9, 0]]}  # no box: from the two labelled keypoints
    boxed = {"keypoints": [[1, 1, 2], [2, 2, 2], [3, 3, 2]], "box": [0, 0, 5, 4]}
    unlabelled = {"keypoints": [[0, 0, 0]] * 3, "box": [1, 1, 2, 2]}
    write_persons(tmp_path, "a", [labelled, boxed, unlabelled])
    write_persons(tmp_path, "b", [])
    write_persons(tmp_path, "c", boxed)  # one person: the object alone
    assert KeypointFolder.layout(LAYOUT).names == ("head", "left_hand", "right_hand")
    training, validation = KeypointFolder(tmp_path, **LAYOUT), KeypointFolder(tmp_path, train=False, **LAYOUT)
    assert (len(training), len(validation)) == (3, 4)  # training leaves the unlabelled person out
    first = training.load(0)
    np.testing.assert_allclose(first["box"], [2 - 0.8, 3 - 0.8, 4 + 1.6, 8 + 1.6], rtol=1e-6)  # 10% of 8 a side
    np.testing.assert_array_equal(first["visible"], [1, 1, 0])
    assert first["image"].shape == (10, 20, 3)
    assert [training.load(i)["image_id"] for i in range(3)] == [0, 0, 2]
    np.testing.assert_array_equal(validation.load(2)["box"], [1, 1, 2, 2])


def test_bad_files_are_one_line_errors_naming_the_file(tmp_path):
    cases = [
        ("{\"keypoints\": [[1, 2, 2]]", "invalid JSON at line 1, column 26: Expecting ',' delimiter; fix the file"),
        ({"keypoints": [[1, 2, 2]] * 2}, "person 0: needs 'keypoints', 3 [x, y, v] number triples"),
        ([{"keypoints": [[1, 2, 2]] * 3, "box": [0, 0, 0, 4]}], "person 0: 'box' must be [x, y, w, h] with w and h"),
        ([{"keypoints": [[1, 2, 2]] * 3}, {"keypoints": [[1, 2, 0]] * 3}],
         "person 1: no 'box' and no labelled keypoint (v > 0) to take one from; add a box"),
    ]
    for index, (persons, problem) in enumerate(cases):
        folder = tmp_path / str(index)
        write_persons(folder, "img", persons)
        with pytest.raises(InputError) as raised:
            KeypointFolder(folder, train=False, **LAYOUT)
        assert str(raised.value).startswith(f"{folder / 'img.json'}: {problem}")
        assert "\n" not in str(raised.value)
    (tmp_path / "0" / "img.json").rename(tmp_path / "0" / "other.json")
    with pytest.raises(InputError, match="other.json: no image of that name beside it"):
        KeypointFolder(tmp_path / "0", **LAYOUT)
    (tmp_path / "0" / "other.json").unlink()
    with pytest.raises(InputError, match="img.json: not found; each image needs a JSON file of its persons beside it"):
        KeypointFolder(tmp_path / "0", **LAYOUT)


def test_the_metric_scores_errors_relative_to_the_box_size():
    predictions = {
        "pred": torch.tensor([[[3.0, 4.0], [5.0, 5.0]], [[0.0, 0.0], [1.0, 4.0]]]),
        "keypoints": torch.tensor([[[0.0, 0.0], [5.0, 5.0]], [[9.0, 9.0], [1.0, 1.0]]]),
        "visible": torch.tensor([[1.0, 1.0], [0.0, 1.0]]),
        "box": torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 4.0, 9.0]]),  # sizes 10 and 6
        "pred_score": torch.tensor([[0.5, 0.25], [1.0, 0.75]]),
        "image_id": torch.tensor([7, 8]),
    }
    layout = KeypointFolder.layout({"keypoint_names": ["a", "b"], "sigmas": [0.1, 0.1], "flip_pairs": [],
                                    "skeleton": []})
    metrics, results = KeypointError(layout, {}, per_keypoint=True)(predictions)
    assert metrics == pytest.approx({"NME": (0.5 + 0 + 0.5) / 3, "NME_a": 0.5, "NME_b": 0.25})
    assert results == [{"keypoints": [[3.0, 4.0, 0.5], [5.0, 5.0, 0.25]], "error": 0.25, "image_id": 7},
                       {"keypoints": [[0.0, 0.0, 1.0], [1.0, 4.0, 0.75]], "error": 0.5, "image_id": 8}]
    predictions["visible"][1] = 0  # the second person has no labelled keypoint left
    metrics, results = KeypointError(layout, {}, per_keypoint=True)(predictions)
    assert metrics == pytest.approx({"NME": 0.25, "NME_a": 0.5, "NME_b": 0.0})
    assert results[1]["error"] is None
    predictions["visible"][0] = 0
    assert math.isnan(KeypointError(layout, {})(predictions)[0]["NME"])  # nothing to score


def test_the_model_builds_both_backbones_and_loads_a_saved_one(tmp_path):
    crops = torch.rand(2, 3, 64, 48)
    for backbone in ("resnet", "convnext"):
        model = TransformersHeatmapNet(3, backbone=backbone, hidden_sizes=[8, 16], deconv_channels=[8]).eval()
        assert model(crops).shape == (2, 3, 16, 12)  # output stride 4 * 2 / 2 = 4
    model.backbone.save_pretrained(tmp_path / "saved")
    loaded = TransformersHeatmapNet(3, backbone="convnext", pretrained=str(tmp_path / "saved"), deconv_channels=[8])
    saved, weights = model.backbone.state_dict(), loaded.backbone.state_dict()
    assert weights.keys() == saved.keys() and all(torch.equal(value, saved[key]) for key, value in weights.items())
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"^model.pretrained '.*empty' cannot be loaded \(.+\); check the model id"):
        TransformersHeatmapNet(3, pretrained=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"^model.hidden_sizes \[8, 16\] and model.depths \[1\] must have the same"):
        TransformersHeatmapNet(3, hidden_sizes=[8, 16], depths=[1])
