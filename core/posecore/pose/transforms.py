"""The top-down pipeline: crop the person box, augment, normalise, and encode keypoints as the codec does.

Coordinates are continuous pixel coordinates with integer values at pixel centres, in the image,
the network input and the heatmap alike. A crop maps its centre to the centre of the output,
((width - 1) / 2, (height - 1) / 2), so mirroring the image about the crop centre mirrors the
output exactly, and heatmap pixel u covers input pixels [u * stride, (u + 1) * stride).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Callable, Sequence

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


def warp_affine(image: Any, matrix: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """Bilinear warp of an (H, W, C) image by ``matrix`` (image to output) into (h, w, C) of its dtype: OpenCV's
    ``warpAffine`` (INTER_LINEAR, BORDER_CONSTANT 0), as MMPose's TopdownAffine warps.

    ``image`` is an array, anything ``np.asarray`` takes (a Pillow image), or an image decoded on demand: an object
    whose ``decode(largest_factor)`` gives the pixels decoded at 1 / factor of its size and that factor (as
    :class:`posecore.pose.coco.EncodedImage`). It is asked for the smallest scale that still has a pixel for each
    output pixel in every direction; the matrix then maps that image's pixels, whose centres sit at
    ``factor * i + (factor - 1) / 2`` in the full image.
    """
    import cv2

    decode = getattr(image, "decode", None)
    if decode is not None:
        stretch = _largest_singular_value(matrix[:, :2])  # output pixels per image pixel, at most
        image, factor = decode(int(min(8.0, 1.0 / stretch)))
        if factor > 1:
            offset = (factor - 1) / 2
            matrix = _compose(matrix, np.array([[factor, 0.0, offset], [0.0, factor, offset]]))
    image = np.asarray(image)
    if image.dtype not in _WARPABLE:  # e.g. int64 pixels from np.array of a list: exact in float32
        image = image.astype(np.float32)
    warped = cv2.warpAffine(image, np.asarray(matrix, dtype=np.float64), tuple(output_size), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return warped.reshape(warped.shape[:2] + image.shape[2:])  # OpenCV drops a single channel's axis


_WARPABLE = tuple(np.dtype(kind) for kind in (np.uint8, np.uint16, np.int16, np.float32, np.float64))
"""The pixel types OpenCV's ``warpAffine`` takes."""

_SCALE = (1 / IMAGENET_STD).astype(np.float32)
_SHIFT = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)


def normalise(image: np.ndarray) -> np.ndarray:
    """An (h, w, 3) crop's pixel values (uint8 or float) as the network's input: (3, h, w) float32,
    ImageNet-normalised. One channel at a time, in place (a quarter of the time whole-array broadcasting and a
    transposed copy take)."""
    normalised = np.empty((3, *image.shape[:2]), dtype=np.float32)
    for channel in range(3):
        np.multiply(image[..., channel], _SCALE[channel], out=normalised[channel])
        normalised[channel] += _SHIFT[channel]
    return normalised


Photometric = Callable[[np.ndarray, np.random.Generator], np.ndarray]
"""A photometric augmentation: (uint8 crop (h, w, 3), its own rng) to a uint8 crop of the same shape."""


class TopDownTransform:
    """Record (image, keypoints, visible, box) to network sample: crop, augment, normalise, encode.

    The crop has the codec's ``input_size`` (width, height). With ``train`` and an rng, it is augmented as
    MMPose's pipeline does, in its order: mirrored (RandomFlip: the image, keypoints and box centre); narrowed to
    the upper or lower body's labelled keypoints (RandomHalfBody); shifted, scaled and rotated (RandomBBoxTransform);
    then ``photometric``, if given, changes the warped crop's colours. The draws come from that rng only, the same
    count whatever the settings, the photometric one from a generator seeded by the last of them; the codec encodes
    the keypoints as training targets. Otherwise the crop is the padded box as is, without targets. ``upper_body``
    lists the layout's upper-body keypoints (the rest are the lower body); the half body needs it. The returned
    ``center``/``scale`` are always those of the unaugmented crop (for decoding predictions), and
    ``keypoints``/``visible``/``box`` are the record's, in image coordinates (the ground truth).
    """

    def __init__(
        self,
        codec: Any,
        flip_pairs: Sequence[tuple[int, int]] = COCO17.flip_pairs,
        train: bool = True,
        flip_prob: float = 0.5,
        scale_factor: Sequence[float] = (0.75, 1.25),
        scale_prob: float = 1.0,
        rotate_factor: float = 60.0,
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
        photometric: Photometric | None = None,
    ) -> None:
        self.codec = codec
        self.input_size = tuple(codec.input_size)
        self.crop_matrix = getattr(codec, "crop_matrix", affine_matrix)
        self.flip_pairs = tuple(tuple(pair) for pair in flip_pairs)
        self.train = train
        self.flip_prob = flip_prob
        low, high = (float(v) for v in scale_factor)
        self.scale_mean, self.scale_spread = (low + high) / 2, (high - low) / 2
        self.scale_prob = scale_prob
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
        self.photometric = photometric
        if train and half_body_prob > 0 and self.upper_body is None:
            raise ValueError("half_body_prob > 0 needs the layout's upper_body keypoints")

    def __call__(self, record: dict, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """Turn one record into a sample of numpy arrays (see the class docstring)."""
        input_width, input_height = self.input_size
        center, scale = box_to_center_scale(record["box"], input_width / input_height, self.padding)
        keypoints = np.asarray(record["keypoints"], dtype=np.float32)
        visible = np.asarray(record["visible"], dtype=np.float32)
        augment = self.train and rng is not None
        if augment:
            matrix, order = self._augmented_crop(record, center, keypoints, visible, rng)
        else:
            matrix, order = self.crop_matrix(center, scale, 0.0, self.input_size), slice(None)
        image = warp_affine(record["image"], matrix, self.input_size)
        if augment:
            photometric_seed = int(rng.integers(2 ** 63))  # drawn either way: the stream stays the same
            if self.photometric is not None:
                image = self.photometric(image, np.random.default_rng(photometric_seed))
        sample = {"img": normalise(image)}
        if self.train:
            sample.update(self.codec.encode(transform_points(keypoints[order], matrix), visible[order]))
        sample.update(center=center, scale=scale, keypoints=keypoints, visible=visible,
                      box=np.asarray(record["box"], dtype=np.float32))
        return sample

    def _augmented_crop(
        self, record: dict, center: np.ndarray, keypoints: np.ndarray, visible: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray | slice]:
        """The augmented crop's matrix (image to crop) and the keypoint order its targets take (swapped when
        mirrored), drawn as MMPose's RandomFlip, RandomHalfBody and RandomBBoxTransform draw them."""
        # Always draw all ten numbers, in this order (and the photometric seed after them), so that one probability
        # setting does not shift the others' stream.
        flip_draw, half_draw, upper_draw, shift_draw, scale_draw, rotate_draw = rng.random(6)
        shift_x, shift_y, scale_noise, rotate_noise = _truncated_normal(rng.random(4))
        # MMPose's bbox_scale: the padded box, not yet of the input's aspect ratio.
        size = np.asarray(record["box"][2:], dtype=np.float32) * np.float32(self.padding)
        order: np.ndarray | slice = slice(None)
        mirror = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        if flip_draw < self.flip_prob:
            # MMPose mirrors the image first (x to width - 1 - x) and augments the mirrored person.
            order = flip_order(len(keypoints), self.flip_pairs)
            mirror = np.array([[-1.0, 0.0, record["image"].shape[1] - 1], [0.0, 1.0, 0.0]])
            keypoints = transform_points(keypoints[order], mirror).astype(np.float32)
            visible, center = visible[order], transform_points(center, mirror).astype(np.float32)
        if half_draw < self.half_body_prob:
            half_body = self._half_body(keypoints, visible, upper_draw)
            if half_body is not None:
                center, size = half_body
        if shift_draw < self.shift_prob:
            center = (center + np.array([shift_x, shift_y]) * self.shift_factor * size).astype(np.float32)
        if scale_draw < self.scale_prob:
            size = size * np.float32(self.scale_mean + scale_noise * self.scale_spread)
        rotation = float(rotate_noise * self.rotate_factor) if rotate_draw < self.rotate_prob else 0.0
        crop_scale = fix_aspect_ratio(size, self.input_size[0] / self.input_size[1])
        return _compose(self.crop_matrix(center, crop_scale, rotation, self.input_size), mirror), order

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


def _truncated_normal(uniforms: np.ndarray) -> np.ndarray:
    """Standard normals truncated to [-1, 1] (MMPose's ``truncnorm.rvs(-1, 1)``), one per uniform in [0, 1)."""
    low, high = _WITHIN_ONE
    return np.array([_NORMAL.inv_cdf(low + u * (high - low)) for u in uniforms])


def _largest_singular_value(matrix: np.ndarray) -> float:
    """The spectral norm of a 2 x 2 matrix, in closed form (``np.linalg.norm(m, 2)`` runs an SVD: 40x slower)."""
    a, b, c, d = matrix.ravel().tolist()
    squares, determinant = a * a + b * b + c * c + d * d, a * d - b * c
    return math.sqrt((squares + math.sqrt(max(squares * squares - 4 * determinant * determinant, 0.0))) / 2)


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The (2, 3) affine matrix applying ``inner`` then ``outer``."""
    return np.concatenate([outer[:, :2] @ inner[:, :2], (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]], axis=1)


def flip_order(count: int, flip_pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """Index array that swaps each left keypoint with its right partner."""
    order = np.arange(count)
    for left, right in flip_pairs:
        order[left], order[right] = right, left
    return order
