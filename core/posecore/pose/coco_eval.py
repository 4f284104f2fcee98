"""COCO keypoint evaluation: OKS, OKS-NMS, MMPose-style rescoring and OKS-AP through pycocotools.

The AP itself is computed by pycocotools (an optional extra, ``pip install "posecore[coco]"``), which is
imported only inside :func:`coco_keypoint_ap`; everything else here needs only numpy.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from posecore.config import Dependency, Key, Section
from posecore.errors import InputError, PosecoreError
from posecore.pose.skeleton import COCO17

STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
"""The keys of :func:`coco_keypoint_ap`'s result, in the order of pycocotools' ``COCOeval.stats``."""

PYCOCOTOOLS = Dependency("pycocotools.cocoeval", "pip install pycocotools (the posecore[coco] extra)")

_EPS = float(np.spacing(1))  # The same tiny constant COCOeval adds to the area.


def _sigmas_array(sigmas: Sequence[float], count: int) -> np.ndarray:
    array = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if array.shape[0] != count:
        raise InputError(f"{count} keypoints but {array.shape[0]} OKS sigmas")
    return array


def oks(
    keypoints_a: np.ndarray,
    keypoints_b: np.ndarray,
    visible_b: np.ndarray,
    area: float,
    sigmas: Sequence[float],
) -> float:
    """Object keypoint similarity of pose ``a`` (the prediction) to pose ``b`` (the reference).

    ``keypoints_a`` is (K, 2) or (K, 3) (a third column, e.g. scores, is ignored), ``keypoints_b`` is
    (K, 2) (or (K, 3), likewise), ``visible_b`` is (K,) and marks the reference keypoints that count
    (anything > 0). As in COCOeval, each counted keypoint scores ``exp(-d² / (2 · area · (2σ)²))``
    and the OKS is their mean. With no counted keypoint the result is 0.0 (COCOeval then falls back to
    a distance to the box, which needs the box; it is not reproduced here).
    """
    a = np.asarray(keypoints_a, dtype=np.float64)
    b = np.asarray(keypoints_b, dtype=np.float64)
    visible = np.asarray(visible_b).reshape(-1) > 0
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] < 2 or b.shape[1] < 2:
        raise InputError(f"keypoints must be (K, 2) or (K, 3), got {a.shape} and {b.shape}")
    count = a.shape[0]
    if b.shape[0] != count or visible.shape[0] != count:
        raise InputError(f"keypoint counts differ: {a.shape[0]}, {b.shape[0]} and {visible.shape[0]} visibility flags")
    sig = _sigmas_array(sigmas, count)
    if not visible.any():
        return 0.0
    return float(_keypoint_similarities(a, b, float(area), sig)[visible].mean())


def _keypoint_similarities(a: np.ndarray, b: np.ndarray, area: Any, sigmas: np.ndarray) -> np.ndarray:
    """Each keypoint's ``exp(-d² / (2 · area · (2σ)²))`` for poses ``a`` and ``b`` (..., K, ≥2), broadcast."""
    squared = (a[..., 0] - b[..., 0]) ** 2 + (a[..., 1] - b[..., 1]) ** 2
    return np.exp(-(squared / (2.0 * sigmas) ** 2 / (area + _EPS) / 2.0))


_NMS_ROWS = 128
"""Instances whose OKS to all others ``oks_nms`` computes at once (128 x 2,000 x 17 float64: 35 MB)."""


def oks_nms(instances: list[dict[str, Any]], sigmas: Sequence[float], threshold: float = 0.9) -> list[int]:
    """Greedy OKS non-maximum suppression over the pose instances of one image, as MMPose's ``oks_nms``.

    Each instance is ``{"keypoints": (K, 3) x, y, score, "score": float, "area": float}``. The best
    scoring remaining instance is kept and every other one whose OKS to it exceeds ``threshold`` is
    dropped, until none remain. The OKS counts all K keypoints and uses the mean of the two areas, so
    that it is symmetric; it is compared with ``threshold`` in float32, as MMPose stores it. Returns the
    kept indices, highest score first; equal scores keep input order (MMPose's follow numpy's unstable
    sort). Time grows with n² · K, like MMPose's (a few µs per instance pair there); memory with n² + 128 · n · K.
    """
    if not instances:
        return []
    poses = np.stack([np.asarray(item["keypoints"], dtype=np.float64) for item in instances])
    if poses.ndim != 3 or poses.shape[2] < 2:
        raise InputError(f"keypoints must be (K, 2) or (K, 3), got {poses.shape[1:]}")
    scores = np.asarray([float(item["score"]) for item in instances])
    areas = np.asarray([float(item["area"]) for item in instances])
    # All pairs, a block of rows at a time (a crowded image's n² · K floats at once could take gigabytes); the
    # greedy pass below then only looks rows up.
    sig = _sigmas_array(sigmas, poses.shape[1])
    suppresses = np.empty((len(poses), len(poses)), dtype=bool)
    for start in range(0, len(poses), _NMS_ROWS):
        rows = slice(start, start + _NMS_ROWS)
        similarity = _keypoint_similarities(poses[rows, None], poses[None, :],
                                            (areas[rows, None, None] + areas[None, :, None]) / 2.0, sig).mean(axis=-1)
        suppresses[rows] = similarity.astype(np.float32) > np.float32(threshold)
    dropped = np.zeros(len(instances), dtype=bool)
    kept: list[int] = []
    for index in np.argsort(-scores, kind="stable").tolist():
        if not dropped[index]:
            kept.append(index)
            dropped |= suppresses[index]
    return kept


def rescore(instance_keypoint_scores: np.ndarray, box_score: float, threshold: float = 0.2) -> float:
    """MMPose-style instance score: mean of the keypoint scores above ``threshold`` times the box score.

    With no keypoint score above the threshold the mean, and so the result, is 0.0.
    """
    scores = np.asarray(instance_keypoint_scores, dtype=np.float64).reshape(-1)
    confident = scores[scores > threshold]
    mean = float(confident.mean()) if confident.size else 0.0
    return mean * float(box_score)


def to_results(
    predictions: list[dict[str, Any]],
    sigmas: Sequence[float] = COCO17.sigmas,
    threshold: float = 0.9,
    category_id: int = 1,
) -> list[dict[str, Any]]:
    """COCO results list from pose instances, after OKS-NMS within each image.

    Each prediction is ``{"image_id", "keypoints": (K, 3) x, y, score, "score", "area"}``. The result
    has one ``{"image_id", "category_id", "keypoints": flat 3K list, "score"}`` per kept instance, images
    in order of first appearance and instances by descending score within an image.
    """
    by_image: dict[Any, list[int]] = {}
    for index, item in enumerate(predictions):
        by_image.setdefault(item["image_id"], []).append(index)
    results: list[dict[str, Any]] = []
    for image_id, indices in by_image.items():
        group = [predictions[i] for i in indices]
        for local in oks_nms(group, sigmas, threshold):
            item = group[local]
            keypoints = np.asarray(item["keypoints"], dtype=np.float64)
            if keypoints.ndim != 2 or keypoints.shape[1] != 3:
                raise InputError(f"prediction keypoints must be (K, 3), got {keypoints.shape}")
            results.append(
                {
                    "image_id": _plain(image_id),
                    "category_id": int(category_id),
                    "keypoints": keypoints.reshape(-1).tolist(),
                    "score": float(item["score"]),
                }
            )
    return results


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds, so that results stay JSON-friendly."""
    return value.item() if isinstance(value, np.generic) else value


def _load_json(path: str | Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as error:
        raise InputError(f"cannot read {what} {path}: {error.strerror or error}") from error
    except json.JSONDecodeError as error:
        raise InputError(f"{what} {path} is not valid JSON: {error}") from error


def _prepare_ground_truth(dataset: Any, ann_file: str | Path) -> dict[str, Any]:
    """Fill in, in memory, what COCOeval needs and some COCO-style datasets (CrowdPose) leave out."""
    if not isinstance(dataset, dict) or "annotations" not in dataset or "images" not in dataset:
        raise InputError(f"{ann_file} is not a COCO annotation file (no images or annotations)")
    for ann in dataset["annotations"]:
        if "area" not in ann:
            if "bbox" not in ann:
                raise InputError(f"annotation {ann.get('id')} in {ann_file} has neither area nor bbox")
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
        if "num_keypoints" not in ann and "keypoints" in ann:
            ann["num_keypoints"] = int(sum(1 for v in ann["keypoints"][2::3] if v > 0))
        ann.setdefault("iscrowd", 0)
    return dataset


def _prepare_results(results: list[dict[str, Any]] | str | Path, image_ids: set[Any]) -> list[dict[str, Any]]:
    if isinstance(results, (str, Path)):
        results = _load_json(results, "results file")
    if not isinstance(results, list):
        raise InputError("keypoint results must be a list of {image_id, category_id, keypoints, score}")
    prepared = []
    for entry in results:
        missing = [key for key in ("image_id", "category_id", "keypoints", "score") if key not in entry]
        if missing:
            raise InputError(f"a keypoint result lacks {', '.join(missing)}")
        if _plain(entry["image_id"]) not in image_ids:
            raise InputError(f"a keypoint result refers to image {entry['image_id']}, which the ground truth lacks")
        item = copy.deepcopy(entry)  # loadRes adds id, area and bbox to the dicts it is given.
        item["image_id"] = _plain(item["image_id"])
        item["keypoints"] = [float(v) for v in np.asarray(item["keypoints"], dtype=np.float64).reshape(-1)]
        item["score"] = float(item["score"])
        prepared.append(item)
    return prepared


def coco_keypoint_ap(
    ann_file: str | Path,
    results: list[dict[str, Any]] | str | Path,
    sigmas: Sequence[float] = COCO17.sigmas,
) -> dict[str, float]:
    """OKS-based keypoint AP/AR of ``results`` against the COCO ground truth in ``ann_file``.

    ``results`` is a COCO results list (``image_id``, ``category_id``, ``keypoints`` flat 3K, ``score``)
    or the path of a JSON file holding one. Runs pycocotools' ``COCOeval(gt, dt, "keypoints")`` with
    ``sigmas`` and returns its ten ``stats`` under :data:`STAT_NAMES` (-1.0 where an area range has no
    ground truth, as pycocotools reports it). Ground truth without ``area`` gets bbox w·h, in memory
    only. An empty results list scores 0.0 everywhere. pycocotools' printing is silenced.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as error:
        raise PosecoreError(f"COCO keypoint evaluation needs pycocotools: {PYCOCOTOOLS.install}") from error

    dataset = _prepare_ground_truth(_load_json(ann_file, "annotation file"), ann_file)
    image_ids = {image["id"] for image in dataset["images"]}
    detections = _prepare_results(results, image_ids)
    if not detections:
        return {name: 0.0 for name in STAT_NAMES}
    keypoint_count = len(detections[0]["keypoints"]) // 3
    sigma_array = _sigmas_array(sigmas, keypoint_count)
    for item in detections:
        if len(item["keypoints"]) != 3 * keypoint_count:
            raise InputError("keypoint results hold different numbers of keypoints")

    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = dataset
        ground_truth.createIndex()
        detected = ground_truth.loadRes(detections)
        evaluation = COCOeval(ground_truth, detected, "keypoints")
        evaluation.params.kpt_oks_sigmas = sigma_array
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {name: float(value) for name, value in zip(STAT_NAMES, evaluation.stats)}


class CocoMetric:
    """COCO keypoint AP of the validation set's ``ann_file``: predictions rescored as MMPose does, OKS-NMS
    within each image, then pycocotools' COCOeval; the results are what ``posecore test`` writes."""

    options = Section({
        "nms_thr": Key(float, 0.9, "OKS-NMS threshold among one image's instances.", min=0, max=1),
        "keypoint_score_thr": Key(float, 0.2, "Keypoint scores above this form the instance score.", min=0, max=1),
    }, "COCO keypoint AP via pycocotools (`posecore[coco]`): `AP`, `AP50`, ... `ARl`; needs a CocoKeypoints "
       "validation set.", requires=(PYCOCOTOOLS,))

    results_file = "predictions.keypoints.json"  # COCO's name for keypoint results

    def __init__(self, layout: Any, dataset: Mapping[str, Any], nms_thr: float = 0.9,
                 keypoint_score_thr: float = 0.2) -> None:
        self.sigmas = layout.sigmas
        self.ann_file = dataset["ann_file"]
        self.nms_thr, self.keypoint_score_thr = nms_thr, keypoint_score_thr

    def __call__(self, predictions: Mapping[str, Any]) -> tuple[dict[str, float], list[dict[str, Any]]]:
        results = to_results(self.instances(predictions), self.sigmas, self.nms_thr)
        return coco_keypoint_ap(self.ann_file, results, self.sigmas), results

    def instances(self, predictions: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The predictions as :func:`to_results` takes them, scored by :func:`rescore`; area: the box's w·h."""
        return [{"image_id": int(image_id), "keypoints": np.concatenate([pred, score[:, None]], 1),
                 "score": rescore(score, float(box_score), self.keypoint_score_thr),
                 "area": float(scale[0] * scale[1])}
                for image_id, pred, score, box_score, scale in
                zip(predictions["image_id"].tolist(), predictions["pred"].numpy(),
                    predictions["pred_score"].numpy(), predictions["score"].tolist(),
                    predictions["scale"].numpy())]
