"""MMPose's top-down heatmap codecs, ``MSRAHeatmap`` and ``UDPHeatmap``, giving MMPose 1.3.2's numbers.

Targets, decoding (with MMPose's conversion of decoded keypoints to image coordinates), crop matrices and the flip
test equal MMPose's up to float rounding (tests/test_mmpose_codecs.py compares them with MMPose's own output), so
that a model trained in either framework validates the same in both. The conventions differ from posecore's own
(:mod:`posecore.pose.heatmap`, integer pixel centres throughout):

- ``MSRAHeatmap``: the crop maps the box centre to (w / 2, h / 2), half an input pixel right of and below
  posecore's, both axes scaled by w / box width, and heatmap pixel u stands for input pixel ``u * stride``;
  decoding inverts exactly that. Mirroring the crop (x to w - 1 - x) and its heatmap (u to W - 1 - u) then
  disagree by (stride - 1) / stride heatmap pixels: a mirrored-back heatmap lies that much left of the plain one,
  which is why MMPose shifts it one pixel right in the flip test (``shift_heatmap``).
- ``UDPHeatmap`` (Huang et al., 2020): the crop maps the centre to ((w - 1) / 2, (h - 1) / 2), scaled by
  (w - 1) / box width, and heatmap pixel u stands for input pixel ``u * (w - 1) / (W - 1)``: integer pixel
  centres in image, input and heatmap alike, so mirroring needs no shift. MMPose turns its rotation the other way
  than ``MSRAHeatmap``'s; ``crop_matrix`` follows it.

The warp is OpenCV's ``warpAffine`` as in MMPose's TopdownAffine (:func:`posecore.pose.transforms.warp_affine`):
with the same matrix the crops are MMPose's to the grey level, along the image's border too (tests/test_augment.py
and tests/test_mmpose_codecs.py compare them with its output).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from posecore.config import Key, Section
from posecore.errors import ConfigError
from posecore.pose.heatmap import check_heatmap_output
from posecore.pose.transforms import affine_matrix

# OpenCV's GaussianBlur with sigma 0 takes these fixed kernels for sizes up to 9, and a sampled Gaussian of
# sigma 0.3 * ((size - 1) / 2 - 1) + 0.8 beyond: MMPose's DARK and UDP decoders blur with it.
_OPENCV_SMALL_KERNELS = {
    3: [0.25, 0.5, 0.25],
    5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
    7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
    9: [0.015625, 0.05078125, 0.1171875, 0.19921875, 0.234375, 0.19921875, 0.1171875, 0.05078125, 0.015625],
}


def warp_matrix(center: np.ndarray, scale: np.ndarray, rotation_deg: float,
                output_size: tuple[int, int]) -> np.ndarray:
    """MMPose's ``get_warp_matrix`` (its crop without UDP, a codec's ``crop_matrix``): the box centre to
    (w / 2, h / 2), both axes scaled by w / box width."""
    width, height = output_size
    box_width = float(scale[0])
    matrix = affine_matrix(center, (box_width, box_width * height / width), rotation_deg, output_size)
    matrix[:, 2] += 0.5
    return matrix


def _size_keys(sigma: float) -> dict[str, Key]:
    return {
        "input_size": Key(list, [192, 256], "Network input [width, height] in pixels (MMPose's COCO configs: "
                                            "[192, 256] or [288, 384]).", item=int, length=2, min=8),
        "heatmap_size": Key(list, [48, 64], "Heatmap [width, height]: input_size over the head's stride (MMPose's "
                                            "COCO configs: a quarter of input_size).", item=int, length=2, min=2),
        "sigma": Key(float, sigma, "Gaussian sigma of the targets, in heatmap pixels (MMPose's COCO configs: 2 for "
                                   "48x64 heatmaps, 3 for 72x96).", min=0.1),
    }


def _blur_key(help: str) -> Key:
    return Key(int, 11, help + " Odd; OpenCV's Gaussian of that size (sigma 0.3 * ((size - 1) / 2 - 1) + 0.8).",
               min=3)


class _MMPoseHeatmap:
    """What both codecs share: options, MMPose's image coordinates, the flip test and the output check."""

    def __init__(self, input_size: Sequence[int], heatmap_size: Sequence[int], sigma: float, blur_kernel_size: int,
                 shift_heatmap: bool) -> None:
        if blur_kernel_size % 2 == 0:
            raise ConfigError(f"codec.blur_kernel_size is {blur_kernel_size}; set an odd size (MMPose's default: 11)")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.heatmap_size = (int(heatmap_size[0]), int(heatmap_size[1]))
        self.sigma = float(sigma)
        self.blur_kernel_size = int(blur_kernel_size)
        self.shift_heatmap = bool(shift_heatmap)

    def decode(self, output: torch.Tensor, center: Any, scale: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Keypoints (N, K, 2) in image coordinates and scores (N, K), as MMPose's codec and TopdownPoseEstimator
        give them: the decoded input pixels p become ``p / input_size * scale + center - scale / 2``."""
        maps = output.detach().float().cpu().numpy()
        # An all-zero heatmap blurs to 0 / 0, as in MMPose (UDP then decodes it to NaN): no warning for it.
        with np.errstate(divide="ignore", invalid="ignore"):
            keypoints, scores = self._decode_input(maps)
        return to_image(keypoints, self.input_size, center, scale), torch.from_numpy(scores)

    def flip_back(self, output: torch.Tensor, flip_indices: Sequence[int]) -> torch.Tensor:
        flipped = output.flip(-1)[:, flip_indices]
        if self.shift_heatmap:
            # MMPose's shift_heatmap: column u takes column u - 1; the first column stays.
            flipped = torch.cat([flipped[..., :1], flipped[..., :-1]], dim=-1)
        return flipped

    def check_output(self, output: torch.Tensor) -> None:
        check_heatmap_output(self, output)


class MSRAHeatmap(_MMPoseHeatmap):
    """MMPose's ``MSRAHeatmap``: SimpleBaseline's Gaussian targets and decoding, or DARK's with ``unbiased``.

    Targets: Gaussians of ``sigma`` heatmap pixels peaking at 1, cut to a window of 3 sigma around the keypoint
    rounded to a pixel (``unbiased``: whole, at the exact position); a keypoint whose window misses the heatmap
    gets weight 0. Decoding: the argmax moved a quarter pixel towards the higher neighbour (``unbiased``: one
    Newton step on the log of the heatmap blurred with ``blur_kernel_size``).
    """

    options = Section({
        **_size_keys(2.0),
        "unbiased": Key(bool, False, "DARK (Zhang et al., 2020): targets at the exact sub-pixel keypoint and "
                                     "decoding by a Newton step on the blurred log heatmap; false: targets at the "
                                     "rounded keypoint and decoding by the argmax plus a quarter pixel."),
        "blur_kernel_size": _blur_key("With unbiased: the blur before DARK's Newton step."),
        "shift_heatmap": Key(bool, True, "Flip test: shift the mirrored-back heatmaps one pixel right (MMPose's "
                                         "test_cfg.shift_heatmap, true in its MSRAHeatmap configs)."),
    }, "MMPose's MSRAHeatmap (SimpleBaseline; DARK with unbiased = true): its targets, decoding, crop and flip "
       "test, with MMPose's numbers.")

    def __init__(self, input_size: Sequence[int] = (192, 256), heatmap_size: Sequence[int] = (48, 64),
                 sigma: float = 2.0, unbiased: bool = False, blur_kernel_size: int = 11,
                 shift_heatmap: bool = True) -> None:
        super().__init__(input_size, heatmap_size, sigma, blur_kernel_size, shift_heatmap)
        self.unbiased = bool(unbiased)
        self._stride = (np.array(self.input_size) / np.array(self.heatmap_size)).astype(np.float32)

    def encode(self, keypoints: np.ndarray, visible: np.ndarray) -> dict[str, np.ndarray]:
        """``heatmaps`` float32 (K, h, w) and ``weights`` float32 (K,) for keypoints (K, 2) in input pixels."""
        points = np.asarray(keypoints, dtype=np.float32) / self._stride
        draw = _exact_gaussians if self.unbiased else _window_gaussians
        heatmaps, weights = draw(points, np.asarray(visible, dtype=np.float32), self.heatmap_size, self.sigma)
        return {"heatmaps": heatmaps, "weights": weights}

    crop_matrix = staticmethod(warp_matrix)

    def _decode_input(self, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        locations, scores = _maxima(maps)
        if self.unbiased:
            locations = _dark_step(locations, maps, self.blur_kernel_size)
        else:
            locations = _quarter_step(locations, maps)
        return locations * self._stride, scores


class UDPHeatmap(_MMPoseHeatmap):
    """MMPose's ``UDPHeatmap`` (``heatmap_type = "gaussian"``): Unbiased Data Processing (Huang et al., 2020).

    Targets: Gaussians of ``sigma`` heatmap pixels peaking at 1 on the exact keypoint, cut to a window of 3 sigma
    around it rounded to a pixel; a keypoint whose window misses the heatmap gets weight 0. Decoding: one Newton
    step from the argmax on the log of the heatmap blurred with ``blur_kernel_size``.
    """

    options = Section({
        **_size_keys(2.0),
        "heatmap_type": Key(str, "gaussian", "`gaussian` (MMPose's `combined` offset maps are not provided).",
                            choices=("gaussian",)),
        "blur_kernel_size": _blur_key("The blur before the Newton step."),
        "shift_heatmap": Key(bool, False, "Flip test: shift the mirrored-back heatmaps one pixel right (MMPose's "
                                          "test_cfg.shift_heatmap, false in its UDPHeatmap configs: UDP needs none)."),
    }, "MMPose's UDPHeatmap (unbiased data processing): its targets, decoding, crop and flip test, with MMPose's "
       "numbers.")

    def __init__(self, input_size: Sequence[int] = (192, 256), heatmap_size: Sequence[int] = (48, 64),
                 sigma: float = 2.0, heatmap_type: str = "gaussian", blur_kernel_size: int = 11,
                 shift_heatmap: bool = False) -> None:
        super().__init__(input_size, heatmap_size, sigma, blur_kernel_size, shift_heatmap)
        self.heatmap_type = heatmap_type
        self._stride = ((np.array(self.input_size) - 1) / (np.array(self.heatmap_size) - 1)).astype(np.float32)

    def encode(self, keypoints: np.ndarray, visible: np.ndarray) -> dict[str, np.ndarray]:
        """``heatmaps`` float32 (K, h, w) and ``weights`` float32 (K,) for keypoints (K, 2) in input pixels."""
        points = np.asarray(keypoints, dtype=np.float32) / self._stride
        heatmaps, weights = _window_gaussians(points, np.asarray(visible, dtype=np.float32), self.heatmap_size,
                                              self.sigma, exact=True)
        return {"heatmaps": heatmaps, "weights": weights}

    def crop_matrix(self, center: np.ndarray, scale: np.ndarray, rotation_deg: float,
                    output_size: tuple[int, int]) -> np.ndarray:
        """MMPose's ``get_udp_warp_matrix``: the box centre to ((w - 1) / 2, (h - 1) / 2), scaled by
        (size - 1) / box size, turned the other way than ``get_warp_matrix``."""
        size = np.asarray(output_size, dtype=np.float64)
        return affine_matrix(center, np.asarray(scale, dtype=np.float64) * size / (size - 1), -rotation_deg,
                             output_size)

    def _decode_input(self, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        locations, scores = _maxima(maps)
        locations = _udp_step(locations, maps, self.blur_kernel_size)
        width, height = self.heatmap_size
        # MMPose multiplies by input_size here, not input_size - 1; its conversion to image coordinates divides
        # by input_size again, so UDP's keypoints come out right in the image.
        return locations / [width - 1, height - 1] * np.array(self.input_size), scores


def to_image(keypoints: np.ndarray, input_size: Sequence[int], center: Any, scale: Any) -> torch.Tensor:
    """Decoded keypoints (N, K, 2) in input pixels p as MMPose's TopdownPoseEstimator puts them in the image:
    ``p / input_size * scale + center - scale / 2`` for crops of ``scale`` (N, 2) around ``center`` (N, 2)."""
    center = torch.as_tensor(center).cpu().numpy().astype(np.float64)[:, None]
    scale = torch.as_tensor(scale).cpu().numpy().astype(np.float64)[:, None]
    image = keypoints.astype(np.float64) / np.asarray(input_size) * scale + center - 0.5 * scale
    return torch.from_numpy(image.astype(np.float32))


def _window_gaussians(points: np.ndarray, visible: np.ndarray, heatmap_size: tuple[int, int], sigma: float,
                      exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """MMPose's windowed targets for points (K, 2) in heatmap pixels: heatmaps (K, h, w) and weights (K,).

    The window spans ``int(p + 0.5) - 3 sigma`` to ``int(p + 0.5) + 3 sigma + 1`` (each end truncated towards
    zero, as MMPose's integer casts do) and the peak sits ``(6 sigma + 1) // 2`` pixels into it; ``exact`` (UDP)
    moves the peak by the rounding, onto the exact point.
    """
    width, height = heatmap_size
    radius = 3 * sigma
    rounded = (points + np.float32(0.5)).astype(np.int64)
    low, high = (rounded - radius).astype(np.int64), (rounded + radius + 1).astype(np.int64)
    drawn = visible >= 0.5
    missed = drawn & ((low >= [width, height]).any(axis=1) | (high < 0).any(axis=1))
    peak = np.full(points.shape, (2 * radius + 1) // 2)
    if exact:
        peak = peak + (points - rounded)
    peak = peak.astype(np.float32)

    # Only the windows are computed (not whole heatmaps), each within n x n steps from its low corner.
    steps = np.arange(int(2 * radius) + 2)

    def along(axis: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pixels = low[:, axis:axis + 1] + steps  # the heatmap pixel of each window step
        inside = (pixels >= 0) & (pixels < length) & (pixels < high[:, axis:axis + 1])
        return steps.astype(np.float32) - peak[:, axis:axis + 1], pixels, inside

    offset_x, column, inside_x = along(0, width)
    offset_y, row, inside_y = along(1, height)
    gaussian = np.exp(-(offset_x[:, None, :] ** 2 + offset_y[:, :, None] ** 2) / (2 * sigma**2))
    keep = inside_y[:, :, None] & inside_x[:, None, :] & (drawn & ~missed)[:, None, None]
    which, down, across = np.nonzero(keep)
    heatmaps = np.zeros((len(points), height, width), dtype=np.float32)
    heatmaps[which, row[which, down], column[which, across]] = gaussian[which, down, across]
    return heatmaps, np.where(missed, np.float32(0), visible)


def _exact_gaussians(points: np.ndarray, visible: np.ndarray, heatmap_size: tuple[int, int],
                     sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """DARK's targets for points (K, 2) in heatmap pixels: whole Gaussians on the exact points, weight 0 where the
    3-sigma window (as MMPose bounds it) misses the heatmap."""
    width, height = heatmap_size
    radius = 3 * sigma
    drawn = visible >= 0.5
    missed = drawn & ((points - radius >= [width, height]).any(axis=1) | (points + radius + 1 < 0).any(axis=1))
    offset_x = np.arange(width, dtype=np.float32) - points[:, :1]
    offset_y = np.arange(height, dtype=np.float32) - points[:, 1:]
    gaussian = np.exp(-(offset_x[:, None, :] ** 2 + offset_y[:, :, None] ** 2) / (2 * sigma**2))
    keep = (drawn & ~missed)[:, None, None]
    return np.where(keep, gaussian, np.float32(0)), np.where(missed, np.float32(0), visible)


def _maxima(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Argmax (x, y) float32 (N, K, 2) and maximum (N, K) of heatmaps (N, K, h, w); (-1, -1) where the maximum
    is not positive."""
    batch, count, height, width = maps.shape
    flat = maps.reshape(batch, count, height * width)
    index, scores = flat.argmax(axis=2), flat.max(axis=2)
    locations = np.stack([index % width, index // width], axis=-1).astype(np.float32)
    locations[scores <= 0] = -1
    return locations, scores


def _sampler(maps: np.ndarray, locations: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray]:
    """``at(dx, dy)``: each heatmap's value (N, K) at its location moved by (dx, dy), and the integer locations
    x, y. Indices are clamped into the map; the callers drop the locations where that matters."""
    height, width = maps.shape[-2:]
    x, y = locations[..., 0].astype(np.int64), locations[..., 1].astype(np.int64)
    batch, keypoint = np.indices(x.shape)

    def at(dx: int, dy: int) -> np.ndarray:
        return maps[batch, keypoint, np.clip(y + dy, 0, height - 1), np.clip(x + dx, 0, width - 1)]

    return at, x, y


def _quarter_step(locations: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """SimpleBaseline's refinement, with MMPose's bounds: a quarter pixel towards the higher neighbour in x and
    in y (in x only for 1 < x < w - 1 and y > 0, in y only for 1 < y < h - 1 and x > 0)."""
    height, width = maps.shape[-2:]
    at, x, y = _sampler(maps, locations)
    step_x = np.where((1 < x) & (x < width - 1) & (0 < y) & (y < height), at(1, 0) - at(-1, 0), 0)
    step_y = np.where((1 < y) & (y < height - 1) & (0 < x) & (x < width), at(0, 1) - at(0, -1), 0)
    return locations + np.sign(np.stack([step_x, step_y], axis=-1)).astype(np.float32) * np.float32(0.25)


def _dark_step(locations: np.ndarray, maps: np.ndarray, kernel_size: int) -> np.ndarray:
    """DARK's refinement as MMPose does it: one Newton step on the log of the blurred heatmap (floored at 1e-10),
    with second differences over two pixels, where 1 < x < w - 2 and 1 < y < h - 2 and the Hessian is regular."""
    height, width = maps.shape[-2:]
    at, x, y = _sampler(np.log(np.maximum(_blur(maps, kernel_size), np.float32(1e-10))), locations)
    gx, gy = 0.5 * (at(1, 0) - at(-1, 0)), 0.5 * (at(0, 1) - at(0, -1))
    gxx = 0.25 * (at(2, 0) - 2 * at(0, 0) + at(-2, 0))
    gyy = 0.25 * (at(0, 2) - 2 * at(0, 0) + at(0, -2))
    gxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    determinant = gxx * gyy - gxy**2
    refine = (1 < x) & (x < width - 2) & (1 < y) & (y < height - 2) & (determinant != 0)
    determinant = np.where(refine, determinant, 1).astype(np.float64)
    step = np.stack([gyy * gx - gxy * gy, gxx * gy - gxy * gx], axis=-1) / determinant[..., None]
    return np.where(refine[..., None], locations - step, locations).astype(np.float32)


def _udp_step(locations: np.ndarray, maps: np.ndarray, kernel_size: int) -> np.ndarray:
    """UDP's refinement as MMPose does it: one Newton step on the log of the blurred heatmap (clipped to
    [1e-3, 50]), edge-padded by a pixel, with first differences and eps added to the Hessian's diagonal.

    MMPose reads the neighbours from all of a crop's padded heatmaps laid end to end, so those of a location
    of (-1, -1) (a heatmap without a positive value) wrap into the previous heatmap, or from the first into the
    last; this does the same.
    """
    batch, count, height, width = maps.shape
    logs = np.log(np.clip(_blur(maps, kernel_size), np.float32(1e-3), np.float32(50)))
    padded = np.pad(logs, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge").reshape(batch, -1)
    row = width + 2
    index = (locations[..., 0].astype(np.int64) + 1 + (locations[..., 1].astype(np.int64) + 1) * row
             + np.arange(count) * row * (height + 2))

    def at(offset: int) -> np.ndarray:
        return np.take_along_axis(padded, (index + offset) % padded.shape[1], axis=1)

    centre, right, left, down, up = at(0), at(1), at(-1), at(row), at(-row)
    gx, gy = 0.5 * (right - left), 0.5 * (down - up)
    gxx, gyy = right - 2 * centre + left, down - 2 * centre + up
    gxy = 0.5 * (at(row + 1) - right - down + 2 * centre - left - up + at(-row - 1))
    eps = float(np.finfo(np.float32).eps)
    hxx, hyy, hxy = gxx.astype(np.float64) + eps, gyy.astype(np.float64) + eps, gxy.astype(np.float64)
    determinant = hxx * hyy - hxy**2
    step = np.stack([hyy * gx - hxy * gy, hxx * gy - hxy * gx], axis=-1) / determinant[..., None]
    return (locations - step).astype(np.float32)


def _opencv_kernel(size: int) -> np.ndarray:
    if size in _OPENCV_SMALL_KERNELS:
        return np.array(_OPENCV_SMALL_KERNELS[size], dtype=np.float32)
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    kernel = np.exp(-((np.arange(size) - (size - 1) / 2) ** 2) / (2 * sigma**2))
    return (kernel / kernel.sum()).astype(np.float32)


def _blur(maps: np.ndarray, size: int, axes: Sequence[int] = (-1, -2)) -> np.ndarray:
    """MMPose's modulation of heatmaps (and, with ``axes=(-1,)``, of SimCC vectors): each map blurred along
    ``axes``, in that order, by OpenCV's Gaussian of ``size`` with zeros outside, then scaled back to its maximum."""
    kernel = _opencv_kernel(size)
    radius = size // 2
    axes = tuple(axis % maps.ndim for axis in axes)
    blurred = np.pad(maps, [(radius, radius) if axis in axes else (0, 0) for axis in range(maps.ndim)])
    for axis in axes:
        blurred = sliding_window_view(blurred, size, axis=axis) @ kernel
    return blurred * (maps.max(axis=axes, keepdims=True) / blurred.max(axis=axes, keepdims=True))
