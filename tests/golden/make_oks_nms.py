"""Write oks_nms.npz: the indices MMPose's ``oks_nms`` keeps, image by image, for posecore's ``oks_nms`` to match.

Run with an environment that has MMPose 1.3.2 (``/work/mmpose-ref/bin/python tests/golden/make_oks_nms.py``);
tests/test_coco_eval.py reads the file and does not need MMPose. The inputs are seeded, so rerunning the
script rewrites the same file. Each case is one image of 17-keypoint instances (float64 x, y, score),
with COCO's sigmas, stored as ``{case}/keypoints`` (n, 17, 3), ``{case}/scores``, ``{case}/areas``,
``{case}/threshold`` and MMPose's ``{case}/kept`` (in MMPose's order):

* ``realistic_0`` .. ``realistic_9``: 20 jittered copies of 3 persons, random scores and areas;
* ``threshold_0.5``: such an image at threshold 0.5;
* ``ties``: 4 persons far apart, 5 copies each; the copies of a person have distinct scores, but the
  same scores recur across persons (a tie never decides what is dropped, only the order of the kept);
* ``tied_duplicates``: identical poses with identical scores, as duplicate detections give: which
  duplicate MMPose keeps follows numpy's unstable argsort, so only the kept poses can be compared;
* ``identical_boxes``: identical poses and areas with distinct scores, and distinct poses of one area;
* ``zero_area``: areas of 0: identical poses still suppress each other (OKS 1), others do not (OKS 0);
* ``unlabelled``: copies whose keypoints 11-16 are unlabelled (0, 0, score 0) in every instance;
* ``float32_boundary``: pairs whose OKS is just above 0.9 in float64 but 0.9 in float32 (MMPose
  compares in float32, so it keeps both), and just above that (one is dropped).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mmpose.evaluation.functional import oks_nms

OUT = Path(__file__).with_name("oks_nms.npz")
SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0


def persons(rng: np.random.Generator, count: int, spacing: float = 0.0) -> np.ndarray:
    """``count`` random 17-keypoint poses about 150 px tall, ``spacing`` px apart along x."""
    poses = rng.uniform(0, 1, size=(count, 17, 2)) * [60, 150]
    return poses + np.arange(count)[:, None, None] * [spacing, 0.0]


def copies(rng: np.random.Generator, poses: np.ndarray, per_pose: int, jitter: tuple[float, float]) -> np.ndarray:
    """``per_pose`` copies of each pose, keypoints moved by N(0, s) px with s uniform in ``jitter``, scores added."""
    source = np.repeat(poses, per_pose, axis=0)
    moved = source + rng.normal(size=source.shape) * rng.uniform(*jitter, size=(len(source), 1, 1))
    return np.concatenate([moved, rng.uniform(0, 1, size=(len(source), 17, 1))], axis=2)


def oks64(a: np.ndarray, b: np.ndarray, area: float) -> float:
    """Float64 OKS of two poses over all keypoints, at ``area`` (the mean of the two)."""
    squared = ((a[:, :2] - b[:, :2]) ** 2).sum(axis=1)
    return float(np.exp(-squared / (2 * SIGMAS) ** 2 / (area + np.spacing(1)) / 2).mean())


def boundary_pair(rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """Two poses (the second a scaled offset of the first) whose float64 OKS at area 10,000 lies in (low, high)."""
    first = copies(rng, persons(rng, 1), 1, (0, 0))[0]
    step = rng.normal(size=(17, 2))
    near, far = 0.0, 100.0  # the offset's scale: OKS falls as it grows
    for _ in range(200):
        middle = (near + far) / 2
        second = first.copy()
        second[:, :2] += middle * step
        value = oks64(first, second, 10_000.0)
        if low < value < high:
            return np.stack([first, second])
        near, far = (middle, far) if value > high else (near, middle)
    raise RuntimeError("no offset found")


def cases() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    rng = np.random.default_rng(2024)
    made = {}
    for index in range(10):
        keypoints = copies(rng, persons(rng, 3), 7, (0.2, 6.0))[:20]
        made[f"realistic_{index}"] = (keypoints, rng.uniform(0, 1, 20), rng.uniform(4000, 12000, 20), 0.9)
    keypoints = copies(rng, persons(rng, 3), 7, (0.2, 20.0))[:20]
    made["threshold_0.5"] = (keypoints, rng.uniform(0, 1, 20), rng.uniform(4000, 12000, 20), 0.5)

    keypoints = copies(rng, persons(rng, 4, spacing=400.0), 5, (0.2, 6.0))
    scores = np.tile([0.9, 0.8, 0.7, 0.6, 0.5], 4)
    made["ties"] = (keypoints, scores, np.full(20, 9000.0), 0.9)

    single = copies(rng, persons(rng, 3, spacing=400.0), 1, (0, 0))
    keypoints = np.concatenate([np.repeat(single[:1], 4, axis=0), np.repeat(single[1:], 2, axis=0)])
    made["tied_duplicates"] = (keypoints, np.array([0.7, 0.7, 0.7, 0.7, 0.4, 0.4, 0.9, 0.9]), np.full(8, 9000.0), 0.9)

    pose = copies(rng, persons(rng, 1), 1, (0, 0))
    keypoints = np.concatenate([np.repeat(pose, 5, axis=0), copies(rng, persons(rng, 3, spacing=100.0), 1, (0, 0))])
    made["identical_boxes"] = (keypoints, rng.uniform(0, 1, 8), np.full(8, 9000.0), 0.9)

    keypoints = np.concatenate([np.repeat(pose, 3, axis=0), copies(rng, pose[..., :2], 4, (0.5, 3.0))])
    made["zero_area"] = (keypoints, rng.uniform(0, 1, 7), np.array([0.0, 0.0, 5000.0, 0.0, 0.0, 3000.0, 0.0]), 0.9)

    keypoints = copies(rng, persons(rng, 3), 7, (0.2, 6.0))[:20]
    keypoints[:, 11:] = 0.0
    made["unlabelled"] = (keypoints, rng.uniform(0, 1, 20), rng.uniform(4000, 12000, 20), 0.9)

    kept_both = boundary_pair(rng, 0.9, 0.9 + 5e-9)  # float32(value) == float32(0.9)
    dropped = boundary_pair(rng, 0.9 + 7e-9, 0.9 + 3e-8)  # float32(value) > float32(0.9)
    keypoints = np.concatenate([kept_both, dropped + [1000.0, 0.0, 0.0]])
    made["float32_boundary"] = (keypoints, np.array([0.9, 0.8, 0.7, 0.6]), np.full(4, 10_000.0), 0.9)
    return made


def main() -> None:
    arrays = {}
    for name, (keypoints, scores, areas, threshold) in cases().items():
        instances = [{"keypoints": k, "score": float(s), "area": float(a)} for k, s, a in zip(keypoints, scores, areas)]
        arrays.update({f"{name}/keypoints": keypoints, f"{name}/scores": scores, f"{name}/areas": areas,
                       f"{name}/threshold": np.float64(threshold),
                       f"{name}/kept": np.asarray(oks_nms(instances, threshold, SIGMAS), dtype=np.int64)})
    assert arrays["float32_boundary/kept"].tolist() == [0, 1, 2], arrays["float32_boundary/kept"]
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(arrays) // 5} cases)")


if __name__ == "__main__":
    main()
