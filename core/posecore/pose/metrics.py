"""Heatmap decoding back to image coordinates, and the PCK metric."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def decode_heatmaps(heatmaps: torch.Tensor, blur_sigma: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-pixel keypoint locations (N, K, 2) in heatmap pixels (x, y), and peak scores (N, K).

    DARK decoding (Zhang et al., 2020): smooth each heatmap with a Gaussian of ``blur_sigma`` pixels (it
    makes a predicted peak closer to the Gaussian it was trained towards), then take one Newton step from
    the argmax on the log heatmap, whose second-order Taylor expansion is exact for a Gaussian. On the
    synthetic data it beat the classic quarter-pixel shift by about 1 PCK@0.05 point with stride-2
    heatmaps and by 5 to 7 points with stride 4. Within a pixel of the heatmap border the blur's edge
    replication biases the result by up to about 0.1 pixel; ``blur_sigma=0`` decodes a clean Gaussian
    exactly. Heatmaps must be at least 3x3.
    """
    batch, count, height, width = heatmaps.shape
    scores = heatmaps.detach().flatten(2).amax(dim=2)
    smooth = _gaussian_blur(heatmaps.detach().float().reshape(batch * count, 1, height, width), blur_sigma)
    peak = smooth.flatten(1).argmax(dim=1)
    peak_x, peak_y = peak % width, peak // width
    # Expand around a pixel one step inside the border so that every finite difference uses real pixels.
    x, y = peak_x.clamp(1, width - 2), peak_y.clamp(1, height - 2)
    log_map = smooth.clamp_min(1e-10).log().flatten(1)

    def at(dx: int, dy: int) -> torch.Tensor:
        return log_map.gather(1, ((y + dy) * width + x + dx)[:, None])[:, 0]

    centre = at(0, 0)
    gx, gy = (at(1, 0) - at(-1, 0)) / 2, (at(0, 1) - at(0, -1)) / 2
    gxx = at(1, 0) - 2 * centre + at(-1, 0)
    gyy = at(0, 1) - 2 * centre + at(0, -1)
    gxy = (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1)) / 4
    determinant = gxx * gyy - gxy**2
    # Refine only at a proper maximum; flat or saddle-shaped neighbourhoods keep the argmax.
    is_maximum = (determinant > 1e-6) & (gxx < 0)
    safe = torch.where(is_maximum, determinant, torch.ones_like(determinant))
    refined_x = x - (gyy * gx - gxy * gy) / safe
    refined_y = y - (gxx * gy - gxy * gx) / safe
    # A sampled peak lies within half a pixel of its argmax: a step further than a pixel is noise.
    coords_x = torch.where(is_maximum, refined_x.clamp(min=peak_x - 1, max=peak_x + 1), peak_x)
    coords_y = torch.where(is_maximum, refined_y.clamp(min=peak_y - 1, max=peak_y + 1), peak_y)
    coords = torch.stack([coords_x, coords_y], dim=1).float().reshape(batch, count, 2)
    return coords, scores


def _gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, h, w) maps with edge replication."""
    if sigma <= 0:
        return maps
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    padded = F.pad(maps, (radius, radius, radius, radius), mode="replicate")
    blurred = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1))


def heatmap_to_image(
    coords: torch.Tensor,
    center: np.ndarray | torch.Tensor,
    scale: np.ndarray | torch.Tensor,
    heatmap_size: tuple[int, int],
) -> torch.Tensor:
    """Heatmap pixel coords (N, K, 2) to image coords, undoing the unrotated crop of (center, scale) (N, 2)."""
    center = torch.as_tensor(center, dtype=coords.dtype, device=coords.device)[:, None, :]
    scale = torch.as_tensor(scale, dtype=coords.dtype, device=coords.device)[:, None, :]
    size = torch.tensor(heatmap_size, dtype=coords.dtype, device=coords.device)
    return center + (coords - (size - 1) / 2) * scale / size


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
