"""The top-down pipeline: crop the person box, augment, normalise, and encode keypoints as the codec does.

Coordinates are continuous pixel coordinates with integer values at pixel centres, in the image,
the network input and the heatmap alike. A crop maps its centre to the centre of the output,
((width - 1) / 2, (height - 1) / 2), so mirroring the image about the crop centre mirrors the
output exactly, and heatmap pixel u covers input pixels [u * stride, (u + 1) * stride).
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any, Sequence

import numpy as np

from posecore.pose.skeleton import COCO17

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255
_NORMAL = NormalDist()
_WITHIN_ONE = (_NORMAL.cdf(-1.0), _NORMAL.cdf(1.0))


def box_to_center_scale(
    box: Sequence[float], aspect_ratio: float, padding: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
    """Centre (2,) and size (2,) in pixels of the crop around box (x, y, w, h).

    The box is widened or heightened to ``aspect_ratio`` (width / height of the network input), then
    enlarged by ``padding``, as MMPose does (but in pixels, not in units of 200 pixels).
    """
    x, y, width, height = (float(v) for v in box)
    center = np.array([x + width / 2, y + height / 2], dtype=np.float32)
    return center, fix_aspect_ratio((width, height), aspect_ratio) * padding


def fix_aspect_ratio(size: Sequence[float], aspect_ratio: float) -> np.ndarray:
    """Size (w, h) widened or heightened to ``aspect_ratio`` (width / height), float32 (2,)."""
    width, height = (float(v) for v in size)
    if width > aspect_ratio * height:
        height = width / aspect_ratio
    else:
        width = height * aspect_ratio
    return np.array([width, height], dtype=np.float32)


def affine_matrix(
    center: Sequence[float],
    scale: Sequence[float],
    rotation_deg: float,
    output_size: tuple[int, int],
    inverse: bool = False,
) -> np.ndarray:
    """(2, 3) matrix taking image coords to output (crop) coords, or back when ``inverse``.

    The crop of size ``scale`` around ``center``, turned by ``rotation_deg`` (positive: the content
    appears turned counter-clockwise in the output), fills an output of ``output_size`` (w, h).
    """
    width, height = output_size
    angle = np.deg2rad(rotation_deg)
    cos, sin = np.cos(angle), np.sin(angle)
    stretch = np.array([width / scale[0], height / scale[1]])
    linear = stretch[:, None] * np.array([[cos, sin], [-sin, cos]])
    output_center = np.array([(width - 1) / 2, (height - 1) / 2])
    matrix = np.concatenate([linear, (output_center - linear @ np.asarray(center, dtype=np.float64))[:, None]], axis=1)
    return invert_affine(matrix) if inverse else matrix


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """The (2, 3) affine matrix that undoes ``matrix``."""
    linear = np.linalg.inv(matrix[:, :2])
    return np.concatenate([linear, -linear @ matrix[:, 2:]], axis=1)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (K, 2) points."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp_affine(image: np.ndarray, matrix: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """Bilinear warp of a uint8 (H, W, C) image by ``matrix`` (image to output) into float32 (h, w, C).

    Outside the image counts as zero; values are rounded to whole numbers, as any uint8 warp (OpenCV's
    in MMPose) rounds them. Pillow does the sampling, reading only the pixels the output
    needs (converting the whole image to float first cost 10x more on COCO-sized photos).
    """
    from PIL import Image

    a, b, c, d, e, f = invert_affine(matrix).ravel().tolist()
    # Pillow maps output pixel u to input a * (u + 0.5) + b * (v + 0.5) + c in coordinates whose pixel
    # centres lie at +0.5; ours have them at integers, hence the half-pixel terms.
    coefficients = (a, b, c + 0.5 - 0.5 * (a + b), d, e, f + 0.5 - 0.5 * (d + e))
    warped = Image.fromarray(image).transform(tuple(output_size), Image.Transform.AFFINE, coefficients,
                                             resample=Image.Resampling.BILINEAR)
    return np.asarray(warped, dtype=np.float32)


class TopDownTransform:
    """Record (image, keypoints, visible, box) to network sample: crop, augment, normalise, encode.

    The crop has the codec's ``input_size`` (width, height). With ``train`` and an rng, it is augmented as
    MMPose's pipeline does (mirrored; narrowed to the upper or lower body's labelled keypoints, as RandomHalfBody;
    shifted, scaled and rotated, as RandomBBoxTransform), drawing the same count of numbers from that rng only
    whatever the settings, and the codec encodes the keypoints as training targets; otherwise the crop is the
    padded box as is, without targets. ``upper_body`` lists the layout's upper-body keypoints (the rest are the
    lower body); the half body needs it. The returned ``center``/``scale`` are always those of the unaugmented
    crop (for decoding predictions), and ``keypoints``/``visible``/``box`` are the record's, in image coordinates
    (the ground truth).
    """

    def __init__(
        self,
        codec: Any,
        flip_pairs: Sequence[tuple[int, int]] = COCO17.flip_pairs,
        train: bool = True,
        flip_prob: float = 0.5,
        scale_factor: float = 0.25,
        rotate_factor: float = 30.0,
        rotate_prob: float = 0.6,
        padding: float = 1.25,
        shift_factor: float = 0.16,
        shift_prob: float = 0.0,
        half_body_prob: float = 0.0,
        min_total_keypoints: int = 9,
        min_upper_keypoints: int = 2,
        min_lower_keypoints: int = 3,
        half_body_padding: float = 1.5,
        upper_prioritized_prob: float = 0.7,
        upper_body: Sequence[int] | None = COCO17.upper_body,
    ) -> None:
        self.codec = codec
        self.input_size = tuple(codec.input_size)
        self.crop_matrix = getattr(codec, "crop_matrix", affine_matrix)
        self.flip_pairs = tuple(tuple(pair) for pair in flip_pairs)
        self.train = train
        self.flip_prob = flip_prob
        self.scale_factor = scale_factor
        self.rotate_factor = rotate_factor
        self.rotate_prob = rotate_prob
        self.padding = padding
        self.shift_factor = shift_factor
        self.shift_prob = shift_prob
        self.half_body_prob = half_body_prob
        self.min_total_keypoints = min_total_keypoints
        self.min_upper_keypoints = min_upper_keypoints
        self.min_lower_keypoints = min_lower_keypoints
        self.half_body_padding = half_body_padding
        self.upper_prioritized_prob = upper_prioritized_prob
        self.upper_body = None if upper_body is None else tuple(upper_body)
        if train and half_body_prob > 0 and self.upper_body is None:
            raise ValueError("half_body_prob > 0 needs the layout's upper_body keypoints")

    def __call__(self, record: dict, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """Turn one record into a sample of numpy arrays (see the class docstring)."""
        input_width, input_height = self.input_size
        center, scale = box_to_center_scale(record["box"], input_width / input_height, self.padding)
        keypoints = np.asarray(record["keypoints"], dtype=np.float32)
        visible = np.asarray(record["visible"], dtype=np.float32)
        crop_center, crop_scale, rotation, flip = center, scale, 0.0, False
        if self.train and rng is not None:
            crop_center, crop_scale, rotation, flip = self._draw_augmentation(record["box"], center, scale,
                                                                              keypoints, visible, rng)
        matrix = self.crop_matrix(crop_center, crop_scale, rotation, self.input_size)
        if flip:
            matrix = _mirror_output(matrix, input_width)
        image = warp_affine(record["image"], matrix, self.input_size)
        sample = {"img": np.ascontiguousarray(((image - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))}
        if self.train:
            order = flip_order(len(keypoints), self.flip_pairs) if flip else slice(None)
            sample.update(self.codec.encode(transform_points(keypoints[order], matrix), visible[order]))
        sample.update(center=center, scale=scale, keypoints=keypoints, visible=visible,
                      box=np.asarray(record["box"], dtype=np.float32))
        return sample

    def _draw_augmentation(
        self, box: Sequence[float], center: np.ndarray, scale: np.ndarray, keypoints: np.ndarray,
        visible: np.ndarray, rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, float, bool]:
        # Always draw all nine numbers, in this order, so one probability setting does not shift the others' stream
        # (and configs without the half body and shift draw their first four numbers as before).
        scale_noise, rotate_noise = rng.standard_normal(2)
        rotate_draw, flip_draw, half_draw, upper_draw, shift_draw = rng.random(5)
        # MMPose's shift is a standard normal truncated to [-1, 1], drawn here by inverting its distribution.
        low, high = _WITHIN_ONE
        shift_noise = np.array([_NORMAL.inv_cdf(low + u * (high - low)) for u in rng.random(2)])
        # MMPose shifts by the padded box's size before it takes the input's aspect ratio.
        size = np.asarray(box[2:], dtype=np.float32) * np.float32(self.padding)
        if half_draw < self.half_body_prob:
            half_body = self._half_body(keypoints, visible, upper_draw)
            if half_body is not None:
                center, size = half_body
                scale = fix_aspect_ratio(size, self.input_size[0] / self.input_size[1])
        if shift_draw < self.shift_prob:
            center = (center + shift_noise * self.shift_factor * size).astype(np.float32)
        factor = self.scale_factor
        crop_scale = scale * np.float32(np.clip(1 + scale_noise * factor, 1 - factor, 1 + factor))
        rotation, limit = 0.0, 2 * self.rotate_factor
        if rotate_draw < self.rotate_prob:
            rotation = float(np.clip(rotate_noise * self.rotate_factor, -limit, limit))
        return center, crop_scale, rotation, bool(flip_draw < self.flip_prob)

    def _half_body(
        self, keypoints: np.ndarray, visible: np.ndarray, upper_draw: float
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Centre (the mean) and padded size (not yet of the input's aspect ratio) of the box around the upper
        or the lower body's labelled keypoints, chosen as MMPose's RandomHalfBody does; None where too few are
        labelled."""
        labelled = visible > 0
        if labelled.sum() < self.min_total_keypoints:
            return None
        upper = np.zeros(len(labelled), dtype=bool)
        upper[list(self.upper_body)] = True
        upper_count, lower_count = int((labelled & upper).sum()), int((labelled & ~upper).sum())
        upper_ok, lower_ok = upper_count >= self.min_upper_keypoints, lower_count >= self.min_lower_keypoints
        if not (upper_ok or lower_ok):
            return None
        use_upper = upper_ok and (not lower_ok or upper_draw < self.upper_prioritized_prob)
        points = keypoints[labelled & (upper if use_upper else ~upper)]
        size = (points.max(axis=0) - points.min(axis=0)) * np.float32(self.half_body_padding)
        if not size.any():  # all at one point: no box to crop (MMPose's would divide by zero)
            return None
        return points.mean(axis=0), size


def _mirror_output(matrix: np.ndarray, width: int) -> np.ndarray:
    """Follow ``matrix`` by a horizontal mirror of its output, x -> width - 1 - x."""
    mirrored = -matrix
    mirrored[1] = matrix[1]
    mirrored[0, 2] += width - 1
    return mirrored


def flip_order(count: int, flip_pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """Index array that swaps each left keypoint with its right partner."""
    order = np.arange(count)
    for left, right in flip_pairs:
        order[left], order[right] = right, left
    return order
