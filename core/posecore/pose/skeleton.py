"""Keypoint layouts: names, left/right pairs for flipping, drawing links and OKS sigmas."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeypointInfo:
    """Everything a dataset says about its keypoints; indices are 0-based."""

    names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    skeleton: tuple[tuple[int, int], ...]
    sigmas: tuple[float, ...]

    def __post_init__(self) -> None:
        count = len(self.names)
        if len(self.sigmas) != count:
            raise ValueError(f"{count} keypoint names but {len(self.sigmas)} sigmas")
        for a, b in self.flip_pairs + self.skeleton:
            if not (0 <= a < count and 0 <= b < count):
                raise ValueError(f"keypoint pair ({a}, {b}) out of range for {count} keypoints")

    @property
    def num_keypoints(self) -> int:
        return len(self.names)


COCO17 = KeypointInfo(
    names=(
        "nose",
        "left_eye",
        "right_eye",
        "left_ear",
        "right_ear",
        "left_shoulder",
        "right_shoulder",
        "left_elbow",
        "right_elbow",
        "left_wrist",
        "right_wrist",
        "left_hip",
        "right_hip",
        "left_knee",
        "right_knee",
        "left_ankle",
        "right_ankle",
    ),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    skeleton=(
        (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
        (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
    ),
    sigmas=tuple(
        s / 10.0
        for s in (0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89)
    ),
)
"""The 17 COCO person keypoints with the official skeleton links and OKS sigmas."""
