"""The PCK metric."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from posecore.config import Key, Section


def pck(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    visible: np.ndarray | torch.Tensor,
    box_size: np.ndarray | torch.Tensor,
    threshold: float,
) -> float:
    """Fraction of visible keypoints within ``threshold`` of the ground truth, per axis in box widths/heights.

    The distance of (N, K, 2) predictions is measured after dividing x by the box width and y by the box
    height (MMPose's PCKAccuracy with bbox normalisation), but pooled over all visible keypoints rather
    than averaged per keypoint type. Returns 0.0 when no keypoint is visible.
    """
    pred, gt, visible, box_size = (_as_numpy(a).astype(np.float64) for a in (pred, gt, visible, box_size))
    distance = np.linalg.norm((pred - gt) / box_size[:, None, :], axis=-1)
    mask = visible > 0
    if not mask.any():
        return 0.0
    return float((distance[mask] < threshold).mean())


def _as_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


class PCKAccuracy:
    """PCK at ``thr`` of the box size over the validation set, logged as ``PCK`` (see :func:`pck`)."""

    options = Section({
        "thr": Key(float, 0.05, "Threshold, as a fraction of the box width/height.", min=0, max=1),
    }, "Percentage of correct keypoints (MMPose's PCKAccuracy with box normalisation), logged as `PCK`.")

    def __init__(self, layout: Any, dataset: Mapping[str, Any], thr: float = 0.05) -> None:
        self.thr = thr

    def __call__(self, predictions: Mapping[str, torch.Tensor]) -> tuple[dict[str, float], None]:
        return {"PCK": pck(predictions["pred"], predictions["keypoints"], predictions["visible"],
                           predictions["box"][:, 2:], self.thr)}, None
