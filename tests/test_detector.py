"""`posecore predict --detector`: person boxes from a torchvision detector, its errors, and the whole-image warning.

The detector's weights are made here, set so that it finds known boxes in any image: every proposal is the
whole image, and the box head turns it into the left half for a person (score 0.35) and the right half for
a bicycle (COCO label 2, score 0.6), so that the person-only rule and the score threshold both show.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import posecore, write_tiny_config
from posecore.cli import cli
from posecore.errors import InputError
from posecore.plugins import load_config
from posecore.predict import COCO_CLASSES, DETECTORS, PERSON_LABEL, DetectorChoice, parse_detector
from posecore.run import Run

DETECTOR = "fasterrcnn_mobilenet_v3_large_320_fpn"  # the fastest
PERSON_SCORE, BICYCLE_SCORE = 0.35, 0.6
OFFLINE = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}
"""An unreachable proxy: a download fails at once, as on a machine without internet."""


def _torchvision():
    """torchvision, or skip the calling test where it does not import."""
    try:
        import torchvision.models.detection
    except Exception as err:  # also a torchvision built for another torch, which raises RuntimeError
        pytest.skip(f"torchvision does not import ({type(err).__name__}: {str(err)[:200]}); pip install "
                    f"'posecore[detect]', a torchvision built for torch {torch.__version__}")
    return torchvision


@pytest.fixture(scope="module")
def pose_model(tmp_path_factory) -> tuple[Path, Path]:
    """A config of the tiny pose model and a state_dict of it, as initialised: the boxes are what is tested."""
    folder = tmp_path_factory.mktemp("pose")
    config = write_tiny_config(folder)
    run = Run(*load_config(config))
    run.build_model()
    torch.save(run.model.state_dict(), folder / "pose.pth")
    return config, folder / "pose.pth"


@pytest.fixture(scope="module")
def detector_weights(tmp_path_factory) -> Path:
    """A state_dict of DETECTOR that finds a person in each image's left half and a bicycle in its right half."""
    torchvision = _torchvision()
    model = torchvision.models.get_model(DETECTOR, weights=None, weights_backbone=None, num_classes=COCO_CLASSES)
    rpn, predictor = model.rpn.head, model.roi_heads.box_predictor
    scores = torch.full((COCO_CLASSES,), (1 - PERSON_SCORE - BICYCLE_SCORE) / (COCO_CLASSES - 2))
    scores[PERSON_LABEL], scores[2] = PERSON_SCORE, BICYCLE_SCORE
    half_width = 5 * math.log(0.5)  # box coder weights (10, 10, 5, 5): log-width change times 5
    with torch.no_grad():
        for layer in (rpn.cls_logits, rpn.bbox_pred, predictor.cls_score, predictor.bbox_pred):
            layer.weight.zero_()
            layer.bias.zero_()
        # Only the 512-pixel anchors pass the RPN's score threshold, grown 62x (the clamp) past any image:
        # after clipping, every proposal is the whole image.
        rpn.cls_logits.bias.fill_(-10.0)
        rpn.cls_logits.bias[4::5] = 10.0
        rpn.bbox_pred.bias.view(-1, 4)[:, 2:] = 10.0
        predictor.cls_score.bias.copy_(scores.log())  # softmax gives back the scores, whatever the image
        deltas = predictor.bbox_pred.bias.view(COCO_CLASSES, 4)
        deltas[PERSON_LABEL] = torch.tensor([-2.5, 0.0, half_width, 0.0])  # centre at a quarter: the left half
        deltas[2] = torch.tensor([2.5, 0.0, half_width, 0.0])  # the right half
    path = tmp_path_factory.mktemp("detector") / "person_left_half.pth"
    # As in torchvision's COCO files, whose models have frozen BatchNorm: no num_batches_tracked.
    torch.save({key: value for key, value in model.state_dict().items() if not key.endswith("num_batches_tracked")},
               path)
    return path


def _hub_cache(root: Path, weights: Path) -> Path:
    """A TORCH_HOME whose torch.hub cache holds ``weights`` as DETECTOR's COCO weights file."""
    url = _torchvision().models.get_model_weights(DETECTOR).DEFAULT.url
    checkpoints = root / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / url.rsplit("/", 1)[-1]).symlink_to(weights)
    return root


def _predict(pose_model, images, tmp_path, *options, env=None):
    config, checkpoint = pose_model
    return posecore("predict", *map(str, images), "--config", str(config), "--checkpoint", str(checkpoint),
                    "--work-dir", str(tmp_path / "wd"), "--out", str(tmp_path / "out"), *options, env=env)


def _counts_in_log(stderr: str) -> dict[str, tuple[int, int]]:
    """Per image, the persons and keypoints above --kpt-thr that the log reports."""
    return {Path(name).name: (int(persons), int(points)) for name, persons, points in
            re.findall(r"INFO - (\S+): (\d+) person\(s\), (\d+) keypoint\(s\) above --kpt-thr", stderr)}


def _above(persons: list[dict], threshold: float) -> int:
    return sum(score > threshold for person in persons for _, _, score in person["keypoints"])


@pytest.fixture(scope="module")
def detected(pose_model, detector_weights, synthetic_coco, tmp_path_factory) -> tuple[list[Path], str, dict]:
    """``posecore predict --detector DETECTOR --det-score-thr 0.3 --kpt-thr 0`` on two images of different sizes,
    offline, the weights in torch.hub's cache: the images, stderr and keypoints.json."""
    folder = tmp_path_factory.mktemp("detected")
    images = [synthetic_coco.img_dir / "figures_0.jpg", synthetic_coco.img_dir / "figures_1.jpg"]
    torch_home = _hub_cache(folder / "torch_home", detector_weights)
    result = _predict(pose_model, images, folder, "--detector", DETECTOR, "--det-score-thr", "0.3", "--kpt-thr", "0",
                      env={"TORCH_HOME": str(torch_home), **OFFLINE})
    assert result.returncode == 0, result.stderr
    return images, result.stderr, json.loads((folder / "out" / "keypoints.json").read_text())


def test_the_detector_gives_the_persons_above_the_score_threshold(detected):
    """NAME takes its weights from torch.hub's cache, offline; of the detections only persons above
    --det-score-thr are kept (the bicycle scores higher), and the log counts them and their keypoints."""
    images, stderr, summary = detected
    assert "whole image" not in stderr
    counts = _counts_in_log(stderr)
    assert [entry["image"] for entry in summary["images"]] == [str(path) for path in images]
    for entry, path in zip(summary["images"], images):
        width, height = Image.open(path).size
        (person,) = entry["persons"]
        assert person["bbox"] == [0, 0, width / 2, height] and person["bbox_score"] == PERSON_SCORE
        assert len(person["keypoints"]) == 17
        assert counts[path.name] == (1, _above(entry["persons"], 0))


def test_detected_persons_are_posed_as_the_same_boxes_given_by_boxes(detected, pose_model, tmp_path):
    images, _, summary = detected
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({path.name: [[0, 0, Image.open(path).size[0] / 2, Image.open(path).size[1],
                                              PERSON_SCORE]] for path in images}))
    scores = sorted({score for entry in summary["images"] for person in entry["persons"]
                     for _, _, score in person["keypoints"]})
    threshold = scores[len(scores) // 2]  # some keypoints above, some not: the count shows the threshold applied
    given = _predict(pose_model, images, tmp_path, "--boxes", str(boxes), "--kpt-thr", str(threshold))
    assert given.returncode == 0, given.stderr
    assert json.loads((tmp_path / "out" / "keypoints.json").read_text())["images"] == summary["images"]
    counts = _counts_in_log(given.stderr)
    assert counts == {path.name: (1, _above(entry["persons"], threshold))
                      for path, entry in zip(images, summary["images"])}
    assert 0 < sum(points for _, points in counts.values()) < 17 * len(images)


def test_local_weights_and_the_default_threshold(pose_model, detector_weights, synthetic_coco, tmp_path):
    """NAME=PATH loads that file; at the default --det-score-thr 0.5 the 0.35 person is dropped."""
    image = synthetic_coco.img_dir / "figures_0.jpg"
    result = _predict(pose_model, [image], tmp_path, "--detector", f"{DETECTOR}={detector_weights}",
                      env={"TORCH_HOME": str(tmp_path / "empty_torch_home"), **OFFLINE})
    assert result.returncode == 0, result.stderr
    assert f"detector {DETECTOR} with weights {detector_weights}" in result.stderr
    assert json.loads((tmp_path / "out" / "keypoints.json").read_text())["images"][0]["persons"] == []
    assert _counts_in_log(result.stderr) == {image.name: (0, 0)}


@pytest.mark.parametrize("case", ["not found", "not loadable", "does not fit", "not cached, offline"])
def test_bad_detector_weights_are_one_line_errors_that_leave_no_run_folder(case, pose_model, synthetic_coco,
                                                                          tmp_path):
    url = _torchvision().models.get_model_weights(DETECTOR).DEFAULT.url
    empty_home = tmp_path / "torch_home"
    weights = tmp_path / "detector.pth"
    if case == "not loadable":
        weights.write_bytes(b"not a torch file")
    elif case == "does not fit":  # a predictor for 2 classes (background, person), not COCO's 91; the rest missing
        torch.save({"roi_heads.box_predictor.cls_score.weight": torch.zeros(2, 1024)}, weights)
    spec = DETECTOR if case == "not cached, offline" else f"{DETECTOR}={weights}"
    expected = {
        "not found": f"{weights}: checkpoint not found",
        "not loadable": f"{weights}: not a loadable checkpoint",
        "does not fit": f"{weights}: weights do not fit {DETECTOR} (",
        "not cached, offline": f"download {url} into {empty_home / 'hub' / 'checkpoints'}",
    }[case]
    result = _predict(pose_model, [synthetic_coco.img_dir / "figures_0.jpg"], tmp_path, "--detector", spec,
                      env={"TORCH_HOME": str(empty_home), **OFFLINE})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"posecore: error: --detector {DETECTOR}: ") and expected in last, last
    if case == "not cached, offline":
        assert f"--detector {DETECTOR}=PATH" in last  # the other way out: a local file
    else:
        assert f"torchvision.models.detection.{DETECTOR}(num_classes=91)" in last  # how the file is made
    assert not (tmp_path / "wd").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("failure, message", [
    ("ImportError(\"No module named 'torchvision'\")", "needs torchvision: pip install 'posecore\\[detect\\]'"),
    ("RuntimeError('operator torchvision::nms does not exist')", "torchvision does not load with torch .* "
     "\\(operator torchvision::nms does not exist\\); install the torchvision built for this torch"),
])
def test_a_missing_or_broken_torchvision_is_a_one_line_error(failure, message, pose_model, synthetic_coco, tmp_path):
    """Without torchvision, or with one built for another torch (a CUDA build beside a CPU torch raises
    RuntimeError on import)."""
    fake = tmp_path / "fake" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"raise {failure}\n")
    config, checkpoint = pose_model
    result = posecore("predict", str(synthetic_coco.img_dir / "figures_0.jpg"), "--config", str(config),
                      "--checkpoint", str(checkpoint), "--work-dir", str(tmp_path / "wd"), "--detector", DETECTOR,
                      pythonpath=[tmp_path / "fake"])
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert re.search(f"^posecore: error: --detector {DETECTOR}: {message}", last), last
    assert not (tmp_path / "wd").exists()


def test_unknown_detector_and_boxes_with_detector_are_one_line_usage_errors(pose_model, synthetic_coco, tmp_path):
    image = synthetic_coco.img_dir / "figures_0.jpg"
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({image.name: []}))
    for options, message in [
        (["--detector", "fasterrcnn_mobilenet"],
         "--detector fasterrcnn_mobilenet: unknown detector (did you mean 'fasterrcnn_mobilenet_v3_large_fpn'?); NAME "
         "is one of " + ", ".join(DETECTORS)),
        (["--detector", DETECTOR, "--boxes", str(boxes)], "--boxes and --detector exclude each other"),
    ]:
        result = _predict(pose_model, [image], tmp_path, *options)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"posecore: error: {message}") and result.stderr.count("\n") == 1, \
            result.stderr
        assert not (tmp_path / "wd").exists()


@pytest.mark.parametrize("value, error", [
    ("my_detector.pth", "--detector my_detector.pth: name the architecture the weights are for, "
                        "--detector NAME=my_detector.pth"),
    (f"{DETECTOR}=", f"--detector {DETECTOR}=: no weights file after '='"),
    ("fasterrcnn_resnet50_fpn", "--detector fasterrcnn_resnet50_fpn: unknown detector (did you mean "
                                "'fasterrcnn_resnet50_fpn_v2'?); NAME is one of"),
    ("ssd300_vgg16", "--detector ssd300_vgg16: unknown detector; NAME is one of"),
])
def test_detector_spellings_that_are_refused(value, error):
    with pytest.raises(InputError, match=f"^{re.escape(error)}"):
        parse_detector(value)


def test_detector_spellings_that_are_accepted_and_the_help_lists_every_name():
    assert parse_detector(DETECTOR) == DetectorChoice(DETECTOR, None)
    assert parse_detector(f"{DETECTOR}=a=b.pth") == DetectorChoice(DETECTOR, Path("a=b.pth"))
    (option,) = [param for param in cli.commands["predict"].params if param.name == "detector"]
    assert re.findall(r"\b(\w+_fpn(?:_v2)?)\b", option.help) == list(DETECTORS)


def test_without_boxes_or_detector_a_warning_says_each_image_is_one_person(pose_model, synthetic_coco, tmp_path):
    images = [synthetic_coco.img_dir / "figures_0.jpg", synthetic_coco.img_dir / "figures_3.jpg"]
    result = _predict(pose_model, images, tmp_path)
    assert result.returncode == 0, result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if " - WARNING - " in line]
    assert "each whole image is taken as one person" in warning and "--detector" in warning and "--boxes" in warning
    summary = json.loads((tmp_path / "out" / "keypoints.json").read_text())
    assert _counts_in_log(result.stderr) == {Path(entry["image"]).name: (1, _above(entry["persons"], 0.3))
                                             for entry in summary["images"]}
