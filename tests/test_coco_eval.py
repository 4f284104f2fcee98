"""posecore.pose.coco_eval against pycocotools, on the generated COCO data set and the real samples in shared/data."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import json
import math
import sys
import weakref
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from coco_synth import EMPTY_PERSON_IMAGE, IMAGES
from helpers import SHARED_COCO, SHARED_DATA
from posecore.errors import PosecoreError
from posecore.evaluation import score
from posecore.pose.heatmap import GaussianHeatmap
from posecore.pose.coco_eval import STAT_NAMES, coco_keypoint_ap, oks, oks_nms, rescore, to_results
from posecore.pose.skeleton import COCO17

CROWDPOSE_GT = SHARED_DATA / "crowdpose" / "test_crowdpose.json"
OKS_NMS_GOLDEN = np.load(Path(__file__).parent / "golden" / "oks_nms.npz")  # golden/make_oks_nms.py, with MMPose
CROWDPOSE_SIGMAS = [s / 10 for s in (0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89, 0.79, 0.79)]


def gt_as_detections(path: Path, include_empty: bool = False) -> list[dict]:
    annotations = json.loads(path.read_text())["annotations"]
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "keypoints": a["keypoints"], "score": 1.0}
        for a in annotations
        if include_empty or a["num_keypoints"] > 0
    ]


# ---------------------------------------------------------------------------------------------- oks


def test_oks_identical_is_one():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 100, size=(17, 2))
    assert oks(points, points, np.full(17, 2), 500.0, COCO17.sigmas) == pytest.approx(1.0)
    with_scores = np.concatenate([points, rng.uniform(size=(17, 1))], axis=1)
    assert oks(with_scores, points, np.ones(17), 500.0, COCO17.sigmas) == pytest.approx(1.0)


def test_oks_hand_computed_and_invisible_ignored():
    sigmas = [0.1, 0.1, 0.1]
    a = np.array([[0.0, 0.0], [3.0, 4.0], [500.0, -70.0]])
    b = np.zeros((3, 2))
    # Keypoint 1: d² = 25, (2σ)² = 0.04, area 100 -> exponent 25 / 0.04 / 100 / 2 = 3.125.
    expected = (1.0 + math.exp(-3.125)) / 2
    assert oks(a, b, np.array([2, 1, 0]), 100.0, sigmas) == pytest.approx(expected, abs=1e-12)
    # The far-off third keypoint counts once its reference is visible.
    assert oks(a, b, np.array([2, 1, 1]), 100.0, sigmas) < expected * 2 / 3 + 1e-9
    assert oks(a, b, np.zeros(3), 100.0, sigmas) == 0.0


def _cocoeval(ann_file: Path, results: Path) -> COCOeval:
    """pycocotools' keypoint evaluation of ``results``, evaluated and accumulated, quietly."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        evaluation = COCOeval(gt, gt.loadRes(str(results)), "keypoints")
        evaluation.params.kpt_oks_sigmas = np.array(COCO17.sigmas)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


def test_oks_matches_cocoeval_on_predictions(coco_files):
    evaluation = _cocoeval(coco_files.ann_file, coco_files.results_file)
    gt, dt = evaluation.cocoGt, evaluation.cocoDt
    checked = 0
    for image_id in gt.getImgIds():
        ious = evaluation.ious[(image_id, 1)]
        gts = gt.loadAnns(gt.getAnnIds(imgIds=image_id))
        dts = dt.loadAnns(dt.getAnnIds(imgIds=image_id))
        dts = [dts[i] for i in np.argsort([-d["score"] for d in dts], kind="mergesort")]
        dts = dts[: ious.shape[0]]  # COCOeval keeps the top maxDets (20) detections per image.
        for j, g in enumerate(gts):
            g_kpts = np.array(g["keypoints"], dtype=float).reshape(-1, 3)
            if not (g_kpts[:, 2] > 0).any():
                continue  # COCOeval uses a box distance there, which oks() does not reproduce.
            for i, d in enumerate(dts):
                d_kpts = np.array(d["keypoints"], dtype=float).reshape(-1, 3)
                value = oks(d_kpts, g_kpts[:, :2], g_kpts[:, 2], g["area"], COCO17.sigmas)
                assert value == pytest.approx(ious[i, j], abs=1e-12)
                checked += 1
    assert checked >= sum(a["num_keypoints"] > 0 for a in gt.loadAnns(gt.getAnnIds()))  # each person's own at least


# ------------------------------------------------------------------------------------ nms, rescore


def _pose(offset: float, jitter: float = 0.0) -> np.ndarray:
    base = np.stack([np.linspace(0, 80, 17) + offset, np.linspace(0, 160, 17)], axis=1)
    return np.concatenate([base + jitter, np.ones((17, 1))], axis=1)


def test_oks_nms_drops_duplicate_keeps_distinct():
    near = [
        {"keypoints": _pose(0.0), "score": 0.6, "area": 5000.0},
        {"keypoints": _pose(0.0, jitter=0.5), "score": 0.9, "area": 5000.0},
    ]
    assert oks_nms(near, COCO17.sigmas) == [1]
    far = [
        {"keypoints": _pose(0.0), "score": 0.6, "area": 5000.0},
        {"keypoints": _pose(300.0), "score": 0.9, "area": 5000.0},
    ]
    assert oks_nms(far, COCO17.sigmas) == [1, 0]
    assert oks_nms([], COCO17.sigmas) == []


def test_oks_nms_of_a_crowded_image_goes_by_blocks_of_rows_with_the_same_result(monkeypatch):
    """Over 128 instances the pairwise OKS comes a block of rows at a time (memory); the kept set is the same."""
    import posecore.pose.coco_eval as coco_eval

    rng = np.random.default_rng(3)
    instances = [{"keypoints": _pose(float(rng.integers(0, 4)) * 40.0, jitter=float(rng.uniform(0, 8))),
                  "score": float(rng.random()), "area": float(rng.uniform(2000, 6000))} for _ in range(300)]
    blocked = oks_nms(instances, COCO17.sigmas)
    monkeypatch.setattr(coco_eval, "_NMS_ROWS", 10_000)
    assert blocked == oks_nms(instances, COCO17.sigmas) and 4 <= len(blocked) < 300


@pytest.mark.parametrize("case", sorted({key.split("/")[0] for key in OKS_NMS_GOLDEN.files}))
def test_oks_nms_keeps_what_mmpose_keeps(case):
    keypoints, scores, areas, threshold, reference = (
        OKS_NMS_GOLDEN[f"{case}/{key}"] for key in ("keypoints", "scores", "areas", "threshold", "kept"))
    instances = [{"keypoints": k, "score": s, "area": a} for k, s, a in zip(keypoints, scores, areas)]
    kept = oks_nms(instances, COCO17.sigmas, float(threshold))
    # MMPose orders equal scores as numpy's unstable argsort happens to; posecore keeps their input order.
    reference = sorted(reference.tolist(), key=lambda index: (-scores[index], index))
    if case == "tied_duplicates":  # which of identical tied poses is kept follows that order too: compare poses
        np.testing.assert_array_equal(keypoints[kept], keypoints[reference])
        np.testing.assert_array_equal(scores[kept], scores[reference])
        assert kept == [6, 0, 4]  # the first of each group of duplicates
    else:
        assert kept == reference


def test_to_results_applies_nms_per_image():
    predictions = [
        {"image_id": 1, "keypoints": _pose(0.0), "score": 0.5, "area": 5000.0},
        {"image_id": 1, "keypoints": _pose(0.0, jitter=0.5), "score": 0.8, "area": 5000.0},
        {"image_id": 2, "keypoints": _pose(0.0), "score": 0.7, "area": 5000.0},
    ]
    results = to_results(predictions)
    assert [(r["image_id"], r["score"]) for r in results] == [(1, 0.8), (2, 0.7)]
    assert results[0]["category_id"] == 1
    assert results[0]["keypoints"] == pytest.approx(list(_pose(0.0, jitter=0.5).reshape(-1)))
    json.dumps(results)  # plain Python types only


def test_rescore():
    assert rescore(np.array([0.9, 0.1, 0.5, 0.2]), 0.8) == pytest.approx((0.9 + 0.5) / 2 * 0.8)
    assert rescore(np.array([0.1, 0.2]), 0.9) == 0.0
    assert rescore(np.array([0.4, 0.6]), 1.0, threshold=0.5) == pytest.approx(0.6)


# --------------------------------------------------------------------------------------------- AP


def test_ap_matches_pycocotools(coco_files):
    ours = coco_keypoint_ap(coco_files.ann_file, coco_files.results_file)
    evaluation = _cocoeval(coco_files.ann_file, coco_files.results_file)
    assert list(ours) == list(STAT_NAMES)
    for name, value in zip(STAT_NAMES, evaluation.stats):
        assert ours[name] == pytest.approx(float(value), abs=1e-12), name
    assert 0.0 < ours["AP"] < 1.0  # noisy poses, duplicates and false positives among good ones
    # A results list gives the same as the file, and is not modified.
    listed = json.loads(coco_files.results_file.read_text())
    before = json.dumps(listed)
    assert coco_keypoint_ap(str(coco_files.ann_file), listed) == ours
    assert json.dumps(listed) == before


def test_gt_vs_gt_and_empty_person_pitfall(coco_files, capsys):
    assert coco_keypoint_ap(coco_files.ann_file, gt_as_detections(coco_files.ann_file))["AP"] == pytest.approx(1.0)
    # A person without keypoints is ignored ground truth: predicting it anyway is a false positive that
    # costs precision, not recall.
    pitfall = coco_keypoint_ap(coco_files.ann_file, gt_as_detections(coco_files.ann_file, include_empty=True))
    assert pitfall["AP"] < 1.0 and pitfall["AR"] == pytest.approx(1.0)
    assert capsys.readouterr().out == ""


def test_predicting_the_empty_person_costs_the_precision_it_should(synthetic_coco):
    """Every pose scores 1.0 and pycocotools ranks ties by image, so the empty person's pose, the one false
    positive, comes right after the persons of the images up to its own: precision is 1 up to that recall."""
    persons = sum(count for count, _ in IMAGES)
    before = sum(count for count, _ in IMAGES[:EMPTY_PERSON_IMAGE + 1])
    recall_points = np.linspace(0, 1, 101)  # COCOeval's
    precision = np.where(recall_points <= before / persons, 1.0, persons / (persons + 1))
    pitfall = coco_keypoint_ap(synthetic_coco.ann_file, gt_as_detections(synthetic_coco.ann_file, include_empty=True))
    assert pitfall["AP"] == pytest.approx(precision.mean(), abs=1e-12)


def test_shared_sample_scores_match_the_readme(shared_data):
    assert round(coco_keypoint_ap(SHARED_COCO.ann_file, SHARED_COCO.results_file)["AP"], 4) == 0.8609
    pitfall = coco_keypoint_ap(SHARED_COCO.ann_file, gt_as_detections(SHARED_COCO.ann_file, include_empty=True))
    assert round(pitfall["AP"], 3) == 0.894


def test_crowdpose_without_area(shared_data):
    raw = CROWDPOSE_GT.read_bytes()
    assert all("area" not in a for a in json.loads(raw)["annotations"])
    stats = coco_keypoint_ap(CROWDPOSE_GT, gt_as_detections(CROWDPOSE_GT), sigmas=CROWDPOSE_SIGMAS)
    assert stats["AP"] == pytest.approx(1.0)
    assert stats["AR"] == pytest.approx(1.0)
    pitfall = coco_keypoint_ap(CROWDPOSE_GT, gt_as_detections(CROWDPOSE_GT, include_empty=True), CROWDPOSE_SIGMAS)
    assert round(pitfall["AP"], 3) == 0.950
    assert hashlib.sha256(CROWDPOSE_GT.read_bytes()).digest() == hashlib.sha256(raw).digest()


def test_empty_results_are_zero(coco_files):
    assert coco_keypoint_ap(coco_files.ann_file, []) == {name: 0.0 for name in STAT_NAMES}


def test_missing_pycocotools_message(monkeypatch, tmp_path):
    for name in ("pycocotools", "pycocotools.coco", "pycocotools.cocoeval"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(PosecoreError, match=r"posecore\[coco\]"):
        coco_keypoint_ap(tmp_path / "missing.json", [])


def test_validation_keeps_no_input_crops():
    """Scoring holds each batch's crops only while predicting it: by the time the metric runs, none is alive (all
    of COCO val's crops at 256x192 would be gigabytes, over 60 GB with detections)."""
    codec = GaussianHeatmap((32, 32), (8, 8))
    crops = []

    def batches():
        for _ in range(3):
            images = torch.zeros(2, 3, 32, 32)
            crops.append(weakref.ref(images))
            yield {"img": images, "center": torch.full((2, 2), 16.0), "scale": torch.full((2, 2), 32.0),
                   "index": torch.arange(2)}

    def metric(val):
        gc.collect()
        assert "img" not in val and not any(crop() is not None for crop in crops)
        return {"count": float(len(val["pred"]))}, None

    model = torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Conv2d(3, 17, 1))
    run = SimpleNamespace(eval_model=model, val_loader=batches(), config={"model": {"flip_test": False}},
                          codec=codec, device=torch.device("cpu"), world_size=1, metric=metric)
    assert score(run) == ({"count": 6.0}, None)
    assert len(crops) == 3
