"""Make tests/golden/augment.npz: MMPose 1.3.2's top-down training augmentation and OpenCV's warp, for
tests/test_augment.py.

Run with the reference venv (MMPose 1.3.2, OpenCV): ``/work/mmpose-ref/bin/python tests/golden/make_augment.py``.

- ``warp/*``: ``cv2.warpAffine`` (INTER_LINEAR, BORDER_CONSTANT 0, as MMPose's TopdownAffine) of a 20 x 30 random
  image by matrices that cross its border (shifted, scaled, rotated), into 24 x 16 outputs.
- ``pipeline/*``: MMPose's RandomFlip, RandomHalfBody, RandomBBoxTransform and TopdownAffine (MSRAHeatmap's matrix)
  on a person near the border of an 80 x 100 random image, with the truncated normals fixed to ``pipeline/t``
  (shift x, shift y, scale, rotation) and every probability 0 or 1; for each ``pipeline/flip`` (0 or 1) the final
  centre, scale, rotation, warp matrix, crop and keypoints in the crop.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from mmpose.datasets.transforms import (GetBBoxCenterScale, RandomBBoxTransform, RandomFlip, RandomHalfBody,
                                        TopdownAffine)
from mmpose.structures.bbox import get_warp_matrix

OUT = Path(__file__).with_name("augment.npz")
COCO_FLIP = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
T = np.array([0.6, -0.3, 0.8, -0.5], dtype=np.float32)


def warps(rng: np.random.Generator) -> dict[str, np.ndarray]:
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    matrices = []
    for angle, zoom, shift in [(0.0, 1.0, (-3.3, -2.6)), (0.0, 1.0, (0.5, 0.5)), (0.0, 0.8, (5.7, 4.2)),
                               (17.0, 1.3, (-8.0, -5.0)), (-40.0, 0.6, (2.0, 3.0)), (90.0, 1.0, (23.5, -6.25))]:
        rotation = cv2.getRotationMatrix2D((0.0, 0.0), angle, zoom)
        rotation[:, 2] += shift
        matrices.append(rotation)
    matrices = np.stack(matrices)
    outputs = np.stack([cv2.warpAffine(image, m, (24, 16), flags=cv2.INTER_LINEAR) for m in matrices])
    return {"warp/image": image, "warp/matrix": matrices, "warp/out": outputs}


def pipeline(rng: np.random.Generator) -> dict[str, np.ndarray]:
    image = rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
    keypoints = np.stack([rng.uniform(55, 98, 17), np.linspace(5, 75, 17)], axis=1).astype(np.float32)
    box = np.array([55.0, 3.0, 43.0, 74.0], dtype=np.float32)  # x, y, w, h
    RandomBBoxTransform._truncnorm = staticmethod(lambda low=-1.0, high=1.0, size=(): T.reshape(size))
    steps = [GetBBoxCenterScale(padding=1.25), None, RandomHalfBody(prob=1.0, upper_prioritized_prob=1.0),
             RandomBBoxTransform(shift_prob=1.0, scale_factor=(0.6, 1.4), scale_prob=1.0, rotate_factor=50.0,
                                 rotate_prob=1.0), TopdownAffine(input_size=(24, 32))]
    golden: dict[str, list] = {}
    for flip in (0, 1):
        steps[1] = RandomFlip(prob=float(flip))
        results = {"img": image.copy(), "img_shape": image.shape[:2], "bbox": np.concatenate([box[:2], box[:2] +
                   box[2:]])[None], "keypoints": keypoints[None].copy(), "keypoints_visible": np.ones((1, 17)),
                   "flip_indices": COCO_FLIP, "upper_body_ids": list(range(11)), "lower_body_ids": list(range(11, 17))}
        for step in steps:
            results = step(results)
        matrix = get_warp_matrix(results["input_center"], results["input_scale"], results["bbox_rotation"][0],
                                 (24, 32))
        for name, value in (("center", results["input_center"]), ("scale", results["input_scale"]),
                            ("rotation", results["bbox_rotation"][0]), ("matrix", matrix), ("crop", results["img"]),
                            ("crop_keypoints", results["transformed_keypoints"][0])):
            golden.setdefault(f"pipeline/{name}", []).append(value)
    return {"pipeline/image": image, "pipeline/keypoints": keypoints, "pipeline/box": box, "pipeline/t": T,
            "pipeline/flip": np.array([0, 1]), **{k: np.stack(v) for k, v in golden.items()}}


if __name__ == "__main__":
    generator = np.random.default_rng(2024)
    np.savez_compressed(OUT, **warps(generator), **pipeline(generator))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
