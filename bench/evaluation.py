"""Evaluation at COCO scale: posecore's OKS-NMS against MMPose's ``oks_nms``, and ``posecore test``'s post-processing.

    .venv/bin/python bench/evaluation.py                 # about 2 minutes on a quiet machine (MMPose: 35 s)
    .venv/bin/python bench/evaluation.py --rounds 5 --images 5000 --per-image 20
    .venv/bin/python bench/evaluation.py --mmpose-python ''   # posecore only

The instances (seeded, ``--seed``): ``--images`` images (default 5,000) with ``--per-image`` pose
instances each (default 20; 100,000 in all, about what COCO val2017's person detections give),
17 COCO keypoints. Each image holds 2-6 persons (a standing template, scaled and placed at random,
every keypoint moved a little); each instance is a copy of one of them with its keypoints jittered by
0.2-4 % of the person's height, so OKS-NMS at 0.9 removes about a third and keeps the rest. Instance scores,
areas and keypoint scores are random (no ties).

1. OKS-NMS (threshold 0.9, COCO sigmas), image by image over all 100,000 instances: posecore's
   ``oks_nms`` here, MMPose's ``mmpose.evaluation.functional.oks_nms`` in a second process under
   ``--mmpose-python`` (the reference venv, default /work/mmpose-ref/bin/python; it lacks posecore's
   dependencies, so it reads the same instances from a file). Rounds interleave (posecore first in
   even rounds, MMPose first in odd ones); each figure is the median over ``--rounds``. The kept
   indices must be the same, in the same order.
2. ``CocoMetric`` (``posecore test``'s post-processing) on the same instances as model predictions,
   against a synthetic COCO annotation file of the images' persons: rescoring (``CocoMetric.instances``),
   OKS-NMS and the COCO results list (``to_results``), the results JSON (``json.dumps``, as ``posecore
   test`` writes it) and pycocotools (``coco_keypoint_ap``: load, evaluate, accumulate, summarize).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REFERENCE_PYTHON = "/work/mmpose-ref/bin/python"
THRESHOLD = 0.9
# A standing person facing the camera, in units of its height (x from the body's middle, y from the top).
TEMPLATE = np.array([
    [0.00, 0.05], [0.03, 0.03], [-0.03, 0.03], [0.06, 0.05], [-0.06, 0.05], [0.12, 0.18], [-0.12, 0.18],
    [0.16, 0.35], [-0.16, 0.35], [0.17, 0.50], [-0.17, 0.50], [0.09, 0.53], [-0.09, 0.53], [0.09, 0.75],
    [-0.09, 0.75], [0.09, 0.97], [-0.09, 0.97]])


def make_instances(images: int, per_image: int, seed: int) -> dict[str, np.ndarray]:
    """The seeded pose instances (module docstring) and the persons they were copied from."""
    rng = np.random.default_rng(seed)
    persons = rng.integers(2, 7, size=images)
    person_image = np.repeat(np.arange(images), persons)
    heights = rng.uniform(80, 400, size=person_image.size)
    corners = rng.uniform(0, 1, size=(person_image.size, 2)) * (np.array([640, 480]) - heights[:, None] * 0.4)
    people = (TEMPLATE[None] + rng.normal(0, 0.02, size=(person_image.size, 17, 2))) * heights[:, None, None]
    people += corners[:, None] + heights[:, None, None] * np.array([0.2, 0.0])
    first_person = np.concatenate([[0], np.cumsum(persons)[:-1]])
    copied = first_person.repeat(per_image) + rng.integers(0, persons.repeat(per_image))
    jitter = rng.uniform(0.002, 0.04, size=(copied.size, 1, 1)) * heights[copied, None, None]
    keypoints = people[copied] + rng.normal(size=(copied.size, 17, 2)) * jitter
    keypoint_scores = rng.uniform(0, 1, size=(copied.size, 17, 1))
    return {
        "image_id": np.arange(images).repeat(per_image) + 1,
        "keypoints": np.concatenate([keypoints, keypoint_scores], axis=2),
        "score": rng.uniform(0.3, 1.0, size=copied.size),
        "scale": heights[copied, None] * np.array([0.4, 1.0]) * rng.uniform(1.1, 1.4, size=(copied.size, 1)),
        "person_image": person_image + 1, "people": people,
    }


def grouped(data: dict[str, np.ndarray]) -> list[list[dict]]:
    """The instances, image by image, as both ``oks_nms`` take them (``area``: the box's w·h)."""
    groups: dict[int, list[dict]] = {}
    for image_id, keypoints, score, scale in zip(data["image_id"].tolist(), data["keypoints"], data["score"].tolist(),
                                                 data["scale"]):
        groups.setdefault(image_id, []).append({"keypoints": keypoints, "score": score,
                                                "area": float(scale[0] * scale[1])})
    return list(groups.values())


def nms_pass(nms, groups: list[list[dict]]) -> tuple[float, list[int]]:
    """Seconds for one pass of ``nms(group)`` over every image, and the kept indices (ints, image after image)."""
    begin = time.perf_counter()
    kept = [nms(group) for group in groups]
    seconds = time.perf_counter() - begin
    return seconds, [int(index) for indices in kept for index in indices]


def serve_mmpose(instances_file: str) -> None:
    """The MMPose side (in the reference venv): one timed ``oks_nms`` pass for each line read."""
    from mmpose.evaluation.functional import oks_nms

    with np.load(instances_file) as stored:
        data, sigmas = {key: stored[key] for key in stored.files}, stored["sigmas"]
    groups = grouped(data)
    for _ in sys.stdin:
        seconds, kept = nms_pass(lambda group: oks_nms(group, THRESHOLD, sigmas), groups)
        print(json.dumps({"seconds": seconds, "kept": kept}), flush=True)


def annotation_file(data: dict[str, np.ndarray], path: Path) -> None:
    """A COCO keypoint annotation file whose ground truth is the persons the instances were copied from."""
    images = [{"id": int(i), "width": 640, "height": 480, "file_name": f"{i:012d}.jpg"}
              for i in np.unique(data["image_id"])]
    annotations = []
    for index, (image_id, person) in enumerate(zip(data["person_image"].tolist(), data["people"])):
        low, high = person.min(axis=0), person.max(axis=0)
        annotations.append({
            "id": index + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0, "num_keypoints": 17,
            "keypoints": np.concatenate([person, np.full((17, 1), 2.0)], axis=1).reshape(-1).tolist(),
            "bbox": [*low.tolist(), *(high - low).tolist()], "area": float(np.prod(high - low)),
        })
    categories = [{"id": 1, "name": "person", "keypoints": [], "skeleton": []}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def post_processing(data: dict[str, np.ndarray], folder: Path) -> dict[str, float]:
    """Seconds of each phase of ``CocoMetric`` on the instances as a model's predictions."""
    import torch

    from posecore.pose.coco_eval import CocoMetric, coco_keypoint_ap, oks_nms, to_results
    from posecore.pose.skeleton import COCO17

    ann_file = folder / "annotations.json"
    annotation_file(data, ann_file)
    metric = CocoMetric(COCO17, {"ann_file": ann_file})
    predictions = {"image_id": torch.from_numpy(data["image_id"]),
                   "pred": torch.from_numpy(data["keypoints"][..., :2]).float(),
                   "pred_score": torch.from_numpy(data["keypoints"][..., 2]).float(),
                   "score": torch.from_numpy(data["score"]).float(), "scale": torch.from_numpy(data["scale"]).float()}
    seconds, begin = {}, time.perf_counter()
    instances = metric.instances(predictions)
    seconds["rescoring (CocoMetric.instances)"] = time.perf_counter() - begin
    groups: dict[int, list[dict]] = {}
    for item in instances:
        groups.setdefault(item["image_id"], []).append(item)
    begin = time.perf_counter()
    for group in groups.values():
        oks_nms(group, metric.sigmas, metric.nms_thr)
    nms = time.perf_counter() - begin
    begin = time.perf_counter()
    results = to_results(instances, metric.sigmas, metric.nms_thr)
    seconds["OKS-NMS + COCO results list (to_results)"] = time.perf_counter() - begin
    seconds["  of which OKS-NMS alone"] = nms
    begin = time.perf_counter()
    (folder / CocoMetric.results_file).write_text(json.dumps(results), encoding="utf-8")
    seconds["results JSON (json.dumps + write)"] = time.perf_counter() - begin
    begin = time.perf_counter()
    stats = coco_keypoint_ap(ann_file, results, metric.sigmas)
    seconds["pycocotools (coco_keypoint_ap)"] = time.perf_counter() - begin
    begin = time.perf_counter()
    assert metric(predictions)[0] == stats
    seconds["whole CocoMetric call (all but the JSON)"] = time.perf_counter() - begin
    print(f"{len(results)} results kept of {len(instances)}; AP {stats['AP']:.4f}, AR {stats['AR']:.4f}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--per-image", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved NMS rounds (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mmpose-python", default=REFERENCE_PYTHON,
                        help=f"python with MMPose for the comparison (default {REFERENCE_PYTHON}; '' for none)")
    parser.add_argument("--serve-mmpose", metavar="INSTANCES", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_mmpose:
        serve_mmpose(args.serve_mmpose)
        return

    from posecore.pose.coco_eval import oks_nms
    from posecore.pose.skeleton import COCO17

    data = make_instances(args.images, args.per_image, args.seed)
    sigmas = np.asarray(COCO17.sigmas)
    groups = grouped(data)
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, {os.cpu_count()} CPUs; "
          f"{len(data['score'])} instances in {len(groups)} images, OKS-NMS threshold {THRESHOLD}")
    with tempfile.TemporaryDirectory() as folder:
        mmpose = None
        if args.mmpose_python and Path(args.mmpose_python).exists():
            instances_file = Path(folder) / "instances.npz"
            np.savez(instances_file, sigmas=sigmas, **data)
            mmpose = subprocess.Popen([args.mmpose_python, __file__, "--serve-mmpose", str(instances_file)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        times: dict[str, list[float]] = {"posecore": [], "MMPose": []}
        kept: dict[str, list[int]] = {}
        for round_ in range(args.rounds):
            for side in ("posecore", "MMPose") if round_ % 2 == 0 else ("MMPose", "posecore"):
                if side == "posecore":
                    seconds, kept[side] = nms_pass(lambda group: oks_nms(group, sigmas, THRESHOLD), groups)
                elif mmpose is not None:
                    mmpose.stdin.write("run\n")
                    mmpose.stdin.flush()
                    reply = json.loads(mmpose.stdout.readline())
                    seconds, kept[side] = reply["seconds"], reply["kept"]
                else:
                    continue
                times[side].append(seconds)
        if mmpose is not None:
            mmpose.stdin.close()
            mmpose.wait()

        print(f"\nOKS-NMS, median of {args.rounds} interleaved rounds (min..max)")
        for side, figures in times.items():
            if figures:
                print(f"{side:9} {statistics.median(figures):7.3f} s  ({min(figures):.3f}..{max(figures):.3f})")
        print(f"kept {len(kept['posecore'])} of {len(data['score'])} instances")
        if times["MMPose"]:
            ratio = statistics.median(times["MMPose"]) / statistics.median(times["posecore"])
            print(f"MMPose / posecore: {ratio:.1f}x   (target >= 5x); kept indices identical, in the same order: "
                  f"{'yes' if kept['posecore'] == kept['MMPose'] else 'NO'}")
        else:
            print(f"(no MMPose comparison: {args.mmpose_python or 'no --mmpose-python'} not found)")

        print("\nposecore test's post-processing (CocoMetric), one run")
        for phase, seconds in post_processing(data, Path(folder)).items():
            print(f"{phase:42} {seconds:7.3f} s")


if __name__ == "__main__":
    main()
