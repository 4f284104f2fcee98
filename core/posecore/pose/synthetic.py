"""Procedurally drawn stick figures with COCO-17 keypoints: a dataset that needs no files.

Every figure faces the viewer, so the person's left side is on the image's right, as for a person
photographed from the front; a mirrored figure with its left/right labels swapped is therefore again
a valid sample, which is what horizontal-flip augmentation assumes. Limbs are coloured per body side
(left: reds and oranges, right: blues) and the two segments of a limb differ in shade, so elbows and
knees show as colour edges. Flipping keeps the colours but swaps the labels, so a model trained with
flips learns the side from the figure's geometry, not from the colour; the colours still tell the
two arms (or legs) apart where they cross.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from posecore.config import Key, Section
from posecore.pose.skeleton import COCO17, KeypointInfo

# Body proportions in units of standing height (head top to ankles).
_TORSO = 0.30
_SHOULDER_HALF_WIDTH = 0.11
_HIP_HALF_WIDTH = 0.075
_NECK = 0.05
_HEAD_RADIUS = 0.065
_UPPER_ARM, _FOREARM = 0.17, 0.15
_THIGH, _SHIN = 0.24, 0.23

_LEFT, _RIGHT = 1.0, -1.0  # sign of the person's side along the body's image-right axis

_NOSE, _LEFT_EYE, _RIGHT_EYE, _LEFT_EAR, _RIGHT_EAR = 0, 1, 2, 3, 4
_LIMB_CHAINS = {  # (root, middle, end) keypoints of each limb
    (_LEFT, "arm"): (5, 7, 9),
    (_RIGHT, "arm"): (6, 8, 10),
    (_LEFT, "leg"): (11, 13, 15),
    (_RIGHT, "leg"): (12, 14, 16),
}
_TORSO_CORNERS = (5, 6, 12, 11)  # left shoulder, right shoulder, right hip, left hip: a convex quad

_BACKGROUND_GRID = 4  # the smooth background colour field is interpolated from a 4x4 grid


class SyntheticPoses:
    """Stick-figure scenes with 17 COCO-ordered keypoints, drawn on the fly and deterministic per (seed, index).

    ``image_size`` is (width, height). ``load(index)`` returns a record: ``image`` uint8 (H, W, 3),
    ``keypoints`` float32 (17, 2) pixel (x, y) with integer values at pixel centres, ``visible``
    float32 (17,) (0 for keypoints out of frame or under an occluder) and ``box`` float32 (x, y, w, h)
    around the whole figure with a little padding, clipped to the image.
    """

    options = Section({
        "num_samples": Key(int, 2000, "Number of generated samples (made on the fly, no files).", min=1),
        "image_size": Key(list, [128, 128], "Scene size [width, height] in pixels.", item=int, length=2, min=16),
        "seed": Key(int, 0, "Seed of the figures themselves (not of augmentation); train and val differ.", min=0),
    }, "Human-like stick figures with 17 COCO-ordered keypoints, deterministic per index.")

    keypoint_info: KeypointInfo = COCO17

    @classmethod
    def layout(cls, options: Mapping[str, Any]) -> KeypointInfo:
        return COCO17

    def __init__(self, num_samples: int = 2000, image_size: Sequence[int] = (128, 128), seed: int = 0,
                 train: bool = True) -> None:
        """``train`` makes no difference: every figure is labelled."""
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        width, height = image_size
        if width < 16 or height < 16:
            raise ValueError(f"image_size must be at least 16x16, got {image_size}")
        self.num_samples = num_samples
        self.image_size = (int(width), int(height))
        self.seed = seed
        self._background_rows = _interpolation_matrix(self.image_size[1], _BACKGROUND_GRID)
        self._background_cols = _interpolation_matrix(self.image_size[0], _BACKGROUND_GRID)

    def __len__(self) -> int:
        return self.num_samples

    def load(self, index: int) -> dict[str, np.ndarray]:
        """Draw scene ``index``; the same (seed, index) always gives the same record."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        width, height = self.image_size
        canvas = self._background(rng)
        _draw_clutter(canvas, rng)
        figure = _Figure(rng)
        box = figure.place(rng, width, height)
        figure.draw(canvas, rng)
        visible = _occlude(canvas, figure.keypoints, rng)
        inside = (
            (figure.keypoints[:, 0] >= 0)
            & (figure.keypoints[:, 0] <= width - 1)
            & (figure.keypoints[:, 1] >= 0)
            & (figure.keypoints[:, 1] <= height - 1)
        )
        return {
            "image": np.clip(canvas, 0, 255, out=canvas).round().astype(np.uint8),
            "keypoints": figure.keypoints.astype(np.float32),
            "visible": (visible & inside).astype(np.float32),
            "box": box.astype(np.float32),
        }

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        """A smooth random colour field plus grey pixel noise, float32 (H, W, 3) in 0..255."""
        width, height = self.image_size
        grid = rng.uniform(0, 255, (_BACKGROUND_GRID, _BACKGROUND_GRID, 3)).astype(np.float32)
        # Interpolate along x, then along y, as two small matrix products.
        along_x = self._background_cols @ grid.transpose(1, 0, 2).reshape(_BACKGROUND_GRID, -1)
        along_x = along_x.reshape(width, _BACKGROUND_GRID, 3).transpose(1, 0, 2).reshape(_BACKGROUND_GRID, -1)
        canvas = (self._background_rows @ along_x).reshape(height, width, 3)
        noise_amplitude = rng.uniform(0, 40)
        canvas += (rng.random((height, width, 1), dtype=np.float32) - 0.5) * noise_amplitude
        return canvas


class _Figure:
    """A random front-facing stick figure: keypoints, limb thickness, head and colours."""

    def __init__(self, rng: np.random.Generator) -> None:
        lengths = rng.uniform(0.9, 1.1, 6) * (1.0 - 0.35 * rng.random(6) ** 2)  # size spread, foreshortening
        upper_arm, forearm, thigh, shin = lengths[:4] * (_UPPER_ARM, _FOREARM, _THIGH, _SHIN)
        twist = rng.uniform(0.6, 1.0)  # turning about the vertical axis narrows shoulders and hips
        lean = np.deg2rad(np.clip(rng.normal(0, 12), -35, 35))
        up, right = _axes(lean)

        keypoints = np.zeros((17, 2))
        pelvis = np.zeros(2)
        neck = pelvis + up * _TORSO * lengths[4]
        for side in (_LEFT, _RIGHT):
            shoulder, _, _ = _LIMB_CHAINS[side, "arm"]
            hip, _, _ = _LIMB_CHAINS[side, "leg"]
            keypoints[shoulder] = neck + side * right * _SHOULDER_HALF_WIDTH * lengths[5] * twist
            keypoints[hip] = pelvis + side * right * _HIP_HALF_WIDTH * lengths[5] * twist
        arm_angles = rng.uniform((-25, -60, -25, -60), (170, 150, 170, 150))
        leg_angles = rng.uniform((-20, -30, -20, -30), (45, 90, 45, 90))
        for (side, limb), (root, middle, end) in _LIMB_CHAINS.items():
            first, second = (upper_arm, forearm) if limb == "arm" else (thigh, shin)
            angles = arm_angles if limb == "arm" else leg_angles
            spread, bend = np.deg2rad(angles[:2] if side == _LEFT else angles[2:])
            direction = np.cos(spread) * -up + np.sin(spread) * side * right
            keypoints[middle] = keypoints[root] + first * direction
            outward = side * np.array([direction[1], -direction[0]])
            keypoints[end] = keypoints[middle] + second * (np.cos(bend) * direction + np.sin(bend) * outward)

        head_up, head_right = _axes(lean + np.deg2rad(rng.normal(0, 12)))
        self.head_radius = _HEAD_RADIUS * rng.uniform(0.85, 1.2)
        self.head_center = neck + head_up * (_NECK + self.head_radius)
        self.neck = neck
        yaw = rng.uniform(-0.35, 0.35) * self.head_radius * head_right
        radius_up, radius_right = head_up * self.head_radius, head_right * self.head_radius
        keypoints[_NOSE] = self.head_center - 0.15 * radius_up + yaw
        keypoints[_LEFT_EYE] = self.head_center + 0.25 * radius_up + 0.38 * radius_right + 0.9 * yaw
        keypoints[_RIGHT_EYE] = self.head_center + 0.25 * radius_up - 0.38 * radius_right + 0.9 * yaw
        keypoints[_LEFT_EAR] = self.head_center + 0.05 * radius_up + 0.92 * radius_right
        keypoints[_RIGHT_EAR] = self.head_center + 0.05 * radius_up - 0.92 * radius_right
        self.keypoints = keypoints
        self.thickness = rng.uniform(0.018, 0.035)
        self.colours = _figure_colours(rng)

    def place(self, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
        """Scale and move the figure into a width x height scene; returns its padded box (x, y, w, h)."""
        low, high = self._extent()
        size = high - low
        scale = rng.uniform(0.4, 0.9) * min(width / size[0], height / size[1])
        room = np.array([width, height]) - size * scale
        margin = 0.15 * size * scale if rng.random() < 0.15 else np.zeros(2)  # sometimes partly out of frame
        offset = rng.uniform(-margin, room + margin) - low * scale
        self._transform(scale, offset)
        low, high = self._extent()
        padding = 0.04 * (high - low).max()
        low = np.maximum(low - padding, 0)
        high = np.minimum(high + padding, (width - 1, height - 1))
        return np.concatenate([low, np.maximum(high - low, 1.0)])

    def draw(self, canvas: np.ndarray, rng: np.random.Generator) -> None:
        """Paint torso, legs, arms (the two sides in random order) and head into ``canvas``."""
        colours, kp, limb_radius = self.colours, self.keypoints, self.thickness
        _draw_polygon(canvas, kp[list(_TORSO_CORNERS)], limb_radius, colours["torso"])
        sides = (_LEFT, _RIGHT) if rng.random() < 0.5 else (_RIGHT, _LEFT)
        for limb in ("leg", "arm"):
            for side in sides:
                root, middle, end = _LIMB_CHAINS[side, limb]
                upper, lower = colours[side]
                _draw_capsule(canvas, kp[root], kp[middle], limb_radius, upper)
                _draw_capsule(canvas, kp[middle], kp[end], limb_radius, lower)
        _draw_capsule(canvas, self.neck, self.head_center, limb_radius, colours["torso"])
        _draw_capsule(canvas, self.head_center, self.head_center, self.head_radius, colours["head"])
        dot = max(0.9, 0.14 * self.head_radius)
        _draw_capsule(canvas, kp[_NOSE], kp[_NOSE], dot, colours["nose"])
        for eye in (_LEFT_EYE, _RIGHT_EYE):
            _draw_capsule(canvas, kp[eye], kp[eye], dot, colours["eyes"])
        _draw_capsule(canvas, kp[_LEFT_EAR], kp[_LEFT_EAR], 1.3 * dot, colours[_LEFT][0])
        _draw_capsule(canvas, kp[_RIGHT_EAR], kp[_RIGHT_EAR], 1.3 * dot, colours[_RIGHT][0])

    def _extent(self) -> tuple[np.ndarray, np.ndarray]:
        low = np.minimum(self.keypoints.min(0) - self.thickness, self.head_center - self.head_radius)
        high = np.maximum(self.keypoints.max(0) + self.thickness, self.head_center + self.head_radius)
        return low, high

    def _transform(self, scale: float, offset: np.ndarray) -> None:
        self.keypoints = self.keypoints * scale + offset
        self.head_center = self.head_center * scale + offset
        self.neck = self.neck * scale + offset
        self.head_radius *= scale
        self.thickness *= scale


def _axes(angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit 'up' and 'image-right' vectors of a body part leaning ``angle`` radians (image y points down)."""
    return np.array([np.sin(angle), -np.cos(angle)]), np.array([np.cos(angle), np.sin(angle)])


def _figure_colours(rng: np.random.Generator) -> dict:
    """Left limbs warm, right limbs cold, head skin-like; lower limb segments a shade lighter."""
    left = rng.uniform((150, 0, 0), (255, 110, 60))
    right = rng.uniform((0, 40, 150), (70, 170, 255))
    shade = rng.uniform(0.45, 0.7)
    return {
        _LEFT: (left, left + (255 - left) * shade),
        _RIGHT: (right, right + (255 - right) * shade),
        "torso": rng.uniform((60, 60, 60), (170, 170, 170)),
        "head": rng.uniform((190, 150, 110), (255, 210, 170)),
        "eyes": rng.uniform((0, 0, 0), (50, 50, 50)),
        "nose": rng.uniform((120, 0, 60), (200, 40, 120)),
    }


def _draw_clutter(canvas: np.ndarray, rng: np.random.Generator) -> None:
    """A few random sticks and discs behind the figure: the net has to tell the figure from other shapes."""
    height, width = canvas.shape[:2]
    size = np.array([width, height])
    for _ in range(rng.integers(2, 7)):
        start = rng.uniform(0, 1, 2) * size
        end = start + rng.normal(0, 0.2, 2) * size if rng.random() < 0.6 else start
        radius = rng.uniform(1, 0.08 * min(width, height))
        _draw_capsule(canvas, start, end, radius, rng.uniform(0, 255, 3))


def _occlude(canvas: np.ndarray, keypoints: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sometimes cover an elbow, wrist, hip, knee or ankle with a rectangle; returns which keypoints stay visible."""
    visible = np.ones(len(keypoints), dtype=bool)
    if rng.random() >= 0.3:
        return visible
    target = keypoints[rng.integers(7, 17)]
    extent = np.ptp(keypoints, axis=0).max()
    half = rng.uniform(0.04, 0.09, 2) * extent
    low = target - half + rng.uniform(-0.7, 0.7, 2) * half
    high = low + 2 * half
    height, width = canvas.shape[:2]
    x0, y0 = np.clip(np.floor(low).astype(int), 0, (width, height))
    x1, y1 = np.clip(np.ceil(high).astype(int) + 1, 0, (width, height))
    canvas[y0:y1, x0:x1] = rng.uniform(0, 255, 3)
    covered = np.all((keypoints >= (x0 - 0.5, y0 - 0.5)) & (keypoints <= (x1 - 0.5, y1 - 0.5)), axis=1)
    return visible & ~covered


def _region(canvas: np.ndarray, left: float, top: float, right: float, bottom: float):
    """Pixel-centre grids (1, w) and (h, 1) of the part of ``canvas`` within the given bounds, or None if empty."""
    height, width = canvas.shape[:2]
    x0, y0 = max(math.floor(left), 0), max(math.floor(top), 0)
    x1, y1 = min(math.ceil(right) + 1, width), min(math.ceil(bottom) + 1, height)
    if x0 >= x1 or y0 >= y1:
        return None
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    return (slice(y0, y1), slice(x0, x1)), xs, ys


def _blend(canvas: np.ndarray, window, coverage: np.ndarray, colour: np.ndarray) -> None:
    """Alpha-blend ``colour`` where ``coverage`` (the signed distance into the shape + 0.5) is positive."""
    alpha = np.minimum(np.maximum(coverage, 0.0, out=coverage), 1.0, out=coverage)[..., None]
    patch = canvas[window]
    patch += alpha * (colour.astype(np.float32) - patch)


def _draw_capsule(canvas: np.ndarray, start: np.ndarray, end: np.ndarray, radius: float, colour: np.ndarray) -> None:
    """Anti-aliased thick segment with round caps; a disc when start == end."""
    # Python floats keep the float32 pixel grids in float32 (numpy scalars would promote to float64).
    (start_x, start_y), (end_x, end_y), radius = start.tolist(), end.tolist(), float(radius)
    reach = radius + 1.0
    region = _region(
        canvas, min(start_x, end_x) - reach, min(start_y, end_y) - reach, max(start_x, end_x) + reach,
        max(start_y, end_y) + reach,
    )
    if region is None:
        return
    window, xs, ys = region
    along_x, along_y = end_x - start_x, end_y - start_y
    length_sq = max(along_x * along_x + along_y * along_y, 1e-12)
    dx, dy = xs - start_x, ys - start_y
    t = dx * (along_x / length_sq) + dy * (along_y / length_sq)
    t = np.minimum(np.maximum(t, 0.0, out=t), 1.0, out=t)
    distance = np.hypot(dx - t * along_x, dy - t * along_y)
    _blend(canvas, window, (radius + 0.5) - distance, colour)


def _draw_polygon(canvas: np.ndarray, corners: np.ndarray, grow: float, colour: np.ndarray) -> None:
    """Anti-aliased convex polygon, its edges pushed out by ``grow`` pixels."""
    (left, top), (right, bottom) = corners.min(0) - grow - 1, corners.max(0) + grow + 1
    region = _region(canvas, left, top, right, bottom)
    if region is None:
        return
    window, xs, ys = region
    following = np.roll(corners, -1, axis=0)
    edges = following - corners
    # The shoelace sign tells the winding, which decides which side of each edge is inside.
    orientation = np.sign(np.sum(corners[:, 0] * following[:, 1] - following[:, 0] * corners[:, 1]))
    normals = orientation * np.stack([-edges[:, 1], edges[:, 0]], axis=1)
    normals /= np.maximum(np.hypot(normals[:, 0], normals[:, 1]), 1e-12)[:, None]
    offsets = np.sum(normals * corners, axis=1)
    inside = None
    for (normal_x, normal_y), offset in zip(normals.tolist(), offsets.tolist()):
        distance = xs * normal_x + ys * normal_y - offset
        inside = distance if inside is None else np.minimum(inside, distance, out=inside)
    _blend(canvas, window, inside + (grow + 0.5), colour)


def _interpolation_matrix(size: int, grid: int) -> np.ndarray:
    """(size, grid) linear-interpolation weights from ``grid`` evenly spaced samples to ``size`` pixels."""
    position = np.linspace(0, grid - 1, size)
    weights = np.maximum(0.0, 1.0 - np.abs(position[:, None] - np.arange(grid)[None, :]))
    return weights.astype(np.float32)
