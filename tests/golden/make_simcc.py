"""Write simcc.npz: MMPose's own numbers for its SimCCLabel codec (RTMPose's targets and decoding) and flip test.

Run with an environment that has MMPose 1.3.2 (``/work/mmpose-ref/bin/python tests/golden/make_simcc.py``);
tests/test_simcc.py compares posecore's codec (posecore.pose.simcc) with the file and does not need MMPose. Every
array is made here from fixed numbers, so rerunning the script rewrites the same file.

For each codec setting: the labels and weights of four keypoint sets (inside the input; at, just over and well
over its edges; far outside and not labelled; on half SimCC bins, which MMPose rounds half to even), the
keypoints decoded from those labels and from noisy or all-negative logits, in input pixels and, for random
crops, in image coordinates (TopdownPoseEstimator's conversion). Decoding is done crop by crop, as MMPose's
heads call the codec. Also RTMCCHead's flip test of SimCC vectors (``flip_vectors``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from make_mmpose_codecs import image_keypoints
from mmpose.codecs import SimCCLabel
from mmpose.models.utils.tta import flip_vectors

OUT = Path(__file__).with_name("simcc.npz")

# name: SimCCLabel's arguments; posecore's codec takes the same option names.
CODECS = {
    "rtmpose": dict(input_size=(192, 256), sigma=(4.9, 5.66), simcc_split_ratio=2.0, normalize=False,
                    use_dark=False),
    "normalize": dict(input_size=(48, 64), sigma=3.0, simcc_split_ratio=2.0, normalize=True),
    "dark": dict(input_size=(48, 64), sigma=(1.5, 2.0), simcc_split_ratio=1.5, normalize=False, use_dark=True),
    "standard": dict(input_size=(48, 64), smoothing_type="standard", label_smooth_weight=0.1,
                     simcc_split_ratio=2.0),
}

VISIBLE = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 0, 0.3, 1], [1, 1, 1, 1, 1]], dtype=np.float32)


def keypoint_sets(width: int, height: int) -> np.ndarray:
    """Four sets of five keypoints (x, y) in input pixels for an input of ``width`` x ``height``."""
    inside = np.array([[0.31, 0.42], [0.55, 0.13], [0.77, 0.81], [0.12, 0.66], [0.5, 0.5]]) * [width, height]
    # Over the edge by less and by more than the 3-sigma radius of the tighter settings, and by half a pixel.
    edges = np.array([[-2.0, height / 2], [width + 3.0, 0.3 * height], [-8.0, 0.5 * height],
                      [0.5 * width, height + 10.0], [width - 0.25, height - 0.75]])
    outside = np.array([[-0.4, 0.3], [0.3, 1.6], [0.6, 0.35], [0.2, 0.2], [1.5, -0.7]]) * [width, height]
    half_bins = np.array([[10.25, 20.75], [11.75, 30.25], [0.0, 0.0], [0.25, 0.75], [width - 1.0, height - 1.0]])
    return np.stack([inside, edges, outside, half_bins]).astype(np.float32)


def codec_arrays(name: str, kwargs: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    codec = SimCCLabel(**kwargs)
    keypoints = keypoint_sets(*kwargs["input_size"])
    encoded = [codec.encode(points[None], visible[None]) for points, visible in zip(keypoints, VISIBLE)]
    x_labels = np.stack([e["keypoint_x_labels"][0] for e in encoded])
    y_labels = np.stack([e["keypoint_y_labels"][0] for e in encoded])
    # Logits a network might give: noisy labels, a blend of two label sets, plain noise, all negative.
    noisy_x, noisy_y = [], []
    for labels, out in ((x_labels, noisy_x), (y_labels, noisy_y)):
        shape = labels.shape[1:]
        scale = labels.max()
        out.extend([labels[0] + rng.normal(0, 0.05 * scale, shape),
                    0.6 * labels[3] + 0.4 * labels[0][::-1] + rng.normal(0, 0.02 * scale, shape),
                    rng.normal(0, 1, shape), -rng.uniform(0.01, 1, shape)])
    decode_x = np.concatenate([x_labels, np.stack(noisy_x)]).astype(np.float32)
    decode_y = np.concatenate([y_labels, np.stack(noisy_y)]).astype(np.float32)
    center = rng.uniform(50, 600, (len(decode_x), 2)).astype(np.float32)
    width, height = kwargs["input_size"]
    scale = (rng.uniform(30, 400, (len(decode_x), 1)) * [1, height / width]).astype(np.float32)
    decoded, scores, in_image = [], [], []
    for x, y, c, s in zip(decode_x, decode_y, center, scale):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # DARK on an all-zero label: 0 / 0 in its blur
            points, score = codec.decode(x[None].copy(), y[None].copy())  # DARK blurs its input in place
        decoded.append(points[0])
        scores.append(score[0])
        in_image.append(image_keypoints(points, score, c, s, kwargs["input_size"]))
    return {f"{name}/options": np.array(json.dumps(kwargs)), f"{name}/keypoints": keypoints,
            f"{name}/visible": VISIBLE, f"{name}/x_labels": x_labels, f"{name}/y_labels": y_labels,
            f"{name}/weights": np.stack([e["keypoint_weights"][0] for e in encoded]).astype(np.float32),
            f"{name}/noisy_x": decode_x[len(x_labels):], f"{name}/noisy_y": decode_y[len(y_labels):],
            f"{name}/center": center, f"{name}/scale": scale,
            f"{name}/decoded": np.stack(decoded).astype(np.float32), f"{name}/scores": np.stack(scores),
            f"{name}/in_image": np.stack(in_image).astype(np.float32)}


def flip_arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    x, y = rng.normal(size=(2, 5, 12)).astype(np.float32), rng.normal(size=(2, 5, 16)).astype(np.float32)
    indices = [0, 2, 1, 4, 3]
    flipped_x, flipped_y = flip_vectors(torch.from_numpy(x), torch.from_numpy(y), indices)
    return {"flip/x": x, "flip/y": y, "flip/indices": np.array(indices), "flip/flipped_x": flipped_x.numpy(),
            "flip/flipped_y": flipped_y.numpy()}


def main() -> None:
    rng = np.random.default_rng(7)
    arrays: dict[str, np.ndarray] = {"codecs": np.array(list(CODECS))}
    for name, kwargs in CODECS.items():
        arrays.update(codec_arrays(name, kwargs, rng))
    arrays.update(flip_arrays(rng))
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
