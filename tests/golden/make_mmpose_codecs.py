"""Write mmpose_codecs.npz: MMPose's own numbers for its heatmap codecs, warp matrices, flip test and crops.

Run with an environment that has MMPose 1.3.2 (e.g. ``/work/mmpose-ref/bin/python tests/golden/make_mmpose_codecs.py``);
tests/test_mmpose_codecs.py compares posecore's codecs (posecore.pose.mmpose_codecs) with the file and does not
need MMPose. Every array is made here from fixed numbers, so rerunning the script rewrites the same file.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from mmengine.structures import InstanceData
from mmpose.codecs import MSRAHeatmap, UDPHeatmap
from mmpose.datasets.transforms import TopdownAffine
from mmpose.models.pose_estimators import TopdownPoseEstimator
from mmpose.models.utils.tta import flip_heatmaps
from mmpose.structures import PoseDataSample
from mmpose.structures.bbox import bbox_xyxy2cs, get_udp_warp_matrix, get_warp_matrix

OUT = Path(__file__).with_name("mmpose_codecs.npz")

# name: (MMPose codec class, its arguments); posecore's codecs take the same option names.
CODECS = {
    "msra": (MSRAHeatmap, dict(input_size=(48, 64), heatmap_size=(12, 16), sigma=2.0)),
    "msra_sigma1.5": (MSRAHeatmap, dict(input_size=(32, 32), heatmap_size=(16, 16), sigma=1.5)),
    "dark": (MSRAHeatmap, dict(input_size=(48, 64), heatmap_size=(12, 16), sigma=2.0, unbiased=True)),
    "dark_kernel5": (MSRAHeatmap, dict(input_size=(32, 32), heatmap_size=(16, 16), sigma=1.5, unbiased=True,
                                       blur_kernel_size=5)),
    "udp": (UDPHeatmap, dict(input_size=(48, 64), heatmap_size=(12, 16), sigma=2.0)),
    "udp_kernel17": (UDPHeatmap, dict(input_size=(64, 64), heatmap_size=(16, 16), sigma=3.0, blur_kernel_size=17)),
}

# Keypoint sets as fractions of the input size (x, y), five keypoints each, with their visibility.
FRACTIONS = np.array([
    [[0.31, 0.42], [0.55, 0.13], [0.77, 0.81], [0.12, 0.66], [0.5, 0.5]],        # inside
    [[0.01, 0.5], [0.99, 0.02], [-0.03, 0.4], [1.04, 1.02], [0.5, 0.985]],       # at and just over the border
    [[-0.4, 0.3], [0.3, 1.6], [0.6, 0.35], [0.2, 0.2], [1.5, -0.7]],             # far outside, and invisible
    [[0.25, 0.75], [0.0, 0.0], [0.125, 0.5], [0.375, 0.875], [0.999, 0.999]],    # whole and half pixels
], dtype=np.float64)
VISIBLE = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 0, 0, 1], [1, 1, 1, 0, 1]], dtype=np.float32)


def image_keypoints(keypoints: np.ndarray, scores: np.ndarray, center: np.ndarray, scale: np.ndarray,
                    input_size: tuple[int, int]) -> np.ndarray:
    """What MMPose's TopdownPoseEstimator makes of a codec's decoded keypoints (input pixels) for one crop."""
    sample = PoseDataSample(metainfo=dict(input_center=center, input_scale=scale, input_size=input_size))
    sample.gt_instances = InstanceData(bboxes=np.zeros((1, 4), np.float32), bbox_scores=np.ones(1, np.float32))
    pred = InstanceData(keypoints=keypoints.copy(), keypoint_scores=scores)
    (sample,) = TopdownPoseEstimator.add_pred_to_datasample(SimpleNamespace(test_cfg={}), [pred], None, [sample])
    return sample.pred_instances.keypoints[0]


def codec_arrays(name: str, cls: type, kwargs: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    codec = cls(**kwargs)
    width, height = kwargs["heatmap_size"]
    keypoints = (FRACTIONS * kwargs["input_size"]).astype(np.float32)
    encoded = [codec.encode(points[None], visible[None]) for points, visible in zip(keypoints, VISIBLE)]
    heatmaps = np.stack([e["heatmaps"] for e in encoded])
    shape = heatmaps.shape[1:]
    # Outputs a network might give: noisy versions of the targets, plain noise, and maps without a positive value.
    perturbed = np.stack([
        heatmaps[0] + rng.normal(0, 0.05, shape),
        heatmaps[1] + rng.normal(0, 0.1, shape),
        0.5 * heatmaps[3] + 0.4 * heatmaps[0][::-1] + rng.normal(0, 0.02, shape),
        rng.uniform(0, 1, shape),
        -rng.uniform(0.01, 1, shape),
    ]).astype(np.float32)
    decode_in = np.concatenate([heatmaps, perturbed])
    center = rng.uniform(50, 600, (len(decode_in), 2)).astype(np.float32)
    scale = (rng.uniform(30, 400, (len(decode_in), 1)) * np.array(kwargs["input_size"]) / kwargs["input_size"][1])
    scale = scale.astype(np.float32)
    decoded, scores, in_image = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-zero heatmap: 0/0 in MMPose's blur
        for maps, c, s in zip(decode_in, center, scale):
            points, score = codec.decode(maps)
            decoded.append(points[0])
            scores.append(score[0])
            in_image.append(image_keypoints(points, score, c, s, kwargs["input_size"]))
    return {f"{name}/options": np.array(json.dumps(kwargs)), f"{name}/keypoints": keypoints,
            f"{name}/visible": VISIBLE, f"{name}/heatmaps": heatmaps,
            f"{name}/weights": np.stack([e["keypoint_weights"][0] for e in encoded]).astype(np.float32),
            f"{name}/perturbed": perturbed, f"{name}/center": center, f"{name}/scale": scale,
            f"{name}/decoded": np.stack(decoded).astype(np.float32), f"{name}/scores": np.stack(scores),
            f"{name}/in_image": np.stack(in_image).astype(np.float32)}


def warp_arrays() -> dict[str, np.ndarray]:
    center = np.array([[100.3, 200.7], [512.25, 300.5], [20.0, 30.0], [333.3, 111.1], [640.5, 480.5]], np.float32)
    scale = np.array([[240.0, 320.0], [120.5, 160.7], [10.0, 10.0], [300.0, 200.0], [96.0, 128.0]], np.float32)
    rotation = np.array([0.0, 30.0, -45.5, 180.0, 12.25])
    size = np.array([[192, 256], [48, 64], [32, 32], [288, 384], [24, 32]])
    return {"warp/center": center, "warp/scale": scale, "warp/rotation": rotation, "warp/size": size,
            "warp/msra": np.stack([get_warp_matrix(c, s, r, tuple(o)) for c, s, r, o in
                                   zip(center, scale, rotation, size)]),
            "warp/udp": np.stack([get_udp_warp_matrix(c, s, r, tuple(o)) for c, s, r, o in
                                  zip(center, scale, rotation, size)])}


def flip_arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    heatmaps = rng.normal(size=(2, 5, 6, 7)).astype(np.float32)
    indices = [0, 2, 1, 4, 3]
    return {"flip/in": heatmaps, "flip/indices": np.array(indices),
            **{f"flip/shift_{shift}": flip_heatmaps(torch.from_numpy(heatmaps), indices, shift_heatmap=shift).numpy()
               for shift in (True, False)}}


def crop_arrays() -> dict[str, np.ndarray]:
    """MMPose's validation crop (bbox_xyxy2cs with padding 1.25, then TopdownAffine) of a small test image."""
    y, x = np.mgrid[0:60, 0:80].astype(np.float64)
    image = np.stack([127 + 120 * np.sin(x / 5.0) * np.cos(y / 7.0), 2 * x + y, 255 * ((x // 8 + y // 8) % 2)], -1)
    image = np.clip(image, 0, 255).astype(np.uint8)
    box = np.array([17.5, 9.25, 61.0, 52.5], np.float32)  # x1, y1, x2, y2
    arrays = {"crop/image": image, "crop/box": box}
    for name, use_udp in (("msra", False), ("udp", True)):
        center, scale = bbox_xyxy2cs(box[None], padding=1.25)
        results = TopdownAffine(input_size=(24, 32), use_udp=use_udp).transform(
            {"img": image.copy(), "bbox_center": center, "bbox_scale": scale})
        arrays.update({f"crop/{name}": results["img"], f"crop/{name}_center": results["input_center"],
                       f"crop/{name}_scale": results["input_scale"]})
    return arrays


def main() -> None:
    rng = np.random.default_rng(15)
    arrays: dict[str, np.ndarray] = {"codecs": np.array(list(CODECS))}
    for name, (cls, kwargs) in CODECS.items():
        arrays.update(codec_arrays(name, cls, kwargs, rng))
    arrays.update(warp_arrays())
    arrays.update(flip_arrays(rng))
    arrays.update(crop_arrays())
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
