"""Drawing poses on images (TensorBoard's validation grid, ``posecore predict``), with Pillow."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from posecore.pose.transforms import IMAGENET_MEAN, IMAGENET_STD


def to_uint8(img: np.ndarray) -> np.ndarray:
    """A network input (3, H, W), normalised as TopDownTransform makes it, back to an (H, W, 3) uint8 image."""
    return np.clip(img.transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN, 0, 255).astype(np.uint8)


def draw_pose(image: np.ndarray, keypoints: np.ndarray, visible: np.ndarray,
              skeleton: Sequence[tuple[int, int]], colour: tuple[int, int, int], width: int = 1) -> np.ndarray:
    """A copy of ``image`` (H, W, 3 uint8) with the skeleton's links and the visible keypoints drawn."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(image)
    pen = ImageDraw.Draw(canvas)
    points = [tuple(map(float, p)) for p in keypoints]
    for a, b in skeleton:
        if visible[a] > 0 and visible[b] > 0:
            pen.line([points[a], points[b]], fill=colour, width=width)
    radius = width + 0.5
    for point, seen in zip(points, visible):
        if seen > 0:
            pen.ellipse([point[0] - radius, point[1] - radius, point[0] + radius, point[1] + radius], fill=colour)
    return np.asarray(canvas)


def grid(images: Sequence[np.ndarray], columns: int) -> np.ndarray:
    """Equal-sized (H, W, 3) images tiled row by row, with a one-pixel gap."""
    height, width, _ = images[0].shape
    rows = -(-len(images) // columns)
    out = np.zeros((rows * (height + 1) - 1, columns * (width + 1) - 1, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        top, left = i // columns * (height + 1), i % columns * (width + 1)
        out[top:top + height, left:left + width] = image
    return out
