"""Keypoint layouts: names, left/right pairs for flipping, drawing links, OKS sigmas and the upper body."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

from posecore.config import Key


@dataclass(frozen=True)
class KeypointInfo:
    """Everything a dataset says about its keypoints; indices are 0-based."""

    names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    skeleton: tuple[tuple[int, int], ...]
    sigmas: tuple[float, ...]
    upper_body: tuple[int, ...] | None = None
    """The upper body's keypoints (the rest are the lower body), for the half-body augmentation; None: unknown."""

    def __post_init__(self) -> None:
        count = len(self.names)
        if len(self.sigmas) != count:
            raise ValueError(f"{count} keypoint names but {len(self.sigmas)} sigmas")
        if self.upper_body is not None and not all(0 <= i < count for i in self.upper_body):
            raise ValueError(f"upper_body {list(self.upper_body)} is out of range for {count} keypoints")
        for name, pairs in (("flip_pairs", self.flip_pairs), ("skeleton", self.skeleton)):
            for a, b in pairs:
                if not (0 <= a < count and 0 <= b < count):
                    raise ValueError(f"{name} pair ({a}, {b}) is out of range for {count} keypoints")

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
    upper_body=tuple(range(11)),
)
"""The 17 COCO person keypoints with the official skeleton links and OKS sigmas; the upper body is the head, arms
and shoulders (MMPose's ``upper_body_ids``)."""

CROWDPOSE14 = KeypointInfo(
    names=(
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
        "head",
        "neck",
    ),
    flip_pairs=((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11)),
    skeleton=(
        (12, 13), (13, 0), (13, 1), (0, 2), (2, 4), (1, 3), (3, 5), (0, 6), (1, 7), (6, 7),
        (6, 8), (8, 10), (7, 9), (9, 11),
    ),
    sigmas=tuple(
        s / 10.0 for s in (0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89, 0.79, 0.79)
    ),
    upper_body=(0, 1, 2, 3, 4, 5, 12, 13),
)
"""The 14 CrowdPose keypoints (12 limb joints, then head and neck) with their OKS sigmas; the upper body is the
arms, head and neck (MMPose's ``upper_body_ids``)."""

LAYOUTS = {"coco17": COCO17, "crowdpose14": CROWDPOSE14}
"""The built-in layouts by their config name (``keypoints = "coco17"``)."""

LAYOUT_OPTIONS = {
    "keypoints": Key(str, "coco17", "Built-in keypoint layout (names, flip pairs, skeleton, OKS sigmas, upper "
                                    "body); the keys below replace its parts.", choices=tuple(LAYOUTS)),
    "keypoint_names": Key(list, None, "Keypoint names in the data's order (a layout of your own: set the next "
                                      "three keys too).", item=str),
    "flip_pairs": Key(list, None, "0-based [left, right] index pairs that a horizontal flip swaps.", item=list),
    "skeleton": Key(list, None, "0-based [a, b] index pairs linked when drawing poses.", item=list),
    "sigmas": Key(list, None, "OKS sigma of each keypoint (COCO keypoint AP).", item=float, min=0),
    "upper_body": Key(list, None, "0-based indices of the upper body's keypoints (the rest are the lower body), "
                                  "for `augment.half_body_prob`; the built-in layouts have MMPose's.", item=int, min=0),
}
"""A dataset type's options for its keypoint layout, read by :func:`keypoint_layout`."""

_CONFIG_FIELDS = (("keypoint_names", "names"), ("flip_pairs", "flip_pairs"), ("skeleton", "skeleton"),
                  ("sigmas", "sigmas"), ("upper_body", "upper_body"))


def keypoint_layout(options: Mapping[str, Any]) -> KeypointInfo:
    """The layout that validated dataset options describe: the built-in ``keypoints`` layout, with each of
    ``keypoint_names``, ``flip_pairs``, ``skeleton``, ``sigmas`` and ``upper_body`` that is set replacing that part
    (a layout of your own is the first four keys, and ``upper_body`` if known). Raises ValueError naming the key at
    fault."""
    parts: dict[str, Any] = {}
    for key, field in _CONFIG_FIELDS:
        if options.get(key) is None:
            continue
        value = options[key]
        if key in ("flip_pairs", "skeleton"):
            if not all(len(pair) == 2 and all(isinstance(i, int) and not isinstance(i, bool) for i in pair)
                       for pair in value):
                raise ValueError(f"{key} must be a list of [index, index] pairs, e.g. [[1, 2], [3, 4]]")
            value = [tuple(pair) for pair in value]
        parts[field] = tuple(value)
    if "names" in parts:
        parts.setdefault("upper_body", None)  # the built-in layout's upper body is not that of other keypoints
    built_in = LAYOUTS[options.get("keypoints", "coco17")]
    try:
        return replace(built_in, **parts) if parts else built_in
    except ValueError as err:
        raise ValueError(f"{err}; a layout of your own sets keypoint_names, sigmas, flip_pairs and skeleton "
                         f"together") from None
