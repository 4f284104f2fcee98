"""MMPose's ``SimCCLabel`` codec (SimCC, Li et al., 2022; RTMPose), giving MMPose 1.3.2's numbers.

Each keypoint is two 1-D classification targets over ``simcc_split_ratio`` bins per input pixel: bin b stands for
input pixel ``b / simcc_split_ratio``. Targets, decoding (with MMPose's conversion of decoded keypoints to image
coordinates), the crop and the flip test equal MMPose's up to float rounding (tests/test_simcc.py compares them with
MMPose's own output). The crop is MMPose's ``get_warp_matrix``, as RTMPose's ``TopdownAffine`` (without UDP) and
``MSRAHeatmap`` use it.

The flip test mirrors the x vectors as MMPose's ``flip_vectors`` does, without a shift: with that crop, the
mirrored-back x vector peaks ``simcc_split_ratio - 1`` bins right of the plain one (half an input pixel at ratio 2),
and MMPose averages them as they are.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from posecore.config import Key, Section
from posecore.errors import ConfigError
from posecore.pose.heatmap import _shape
from posecore.pose.mmpose_codecs import _blur, to_image, warp_matrix


class SimCCLabel:
    """MMPose's ``SimCCLabel``: per-axis 1-D targets, decoded by the argmax of each axis.

    Targets (``smoothing_type = "gaussian"``): a Gaussian of ``sigma`` bins on the keypoint's rounded bin
    (divided by ``sigma * sqrt(2 pi)`` with ``normalize``); a keypoint whose 3-sigma window misses the vectors gets
    weight 0. ``"standard"``: a one-hot vector, ``label_smooth_weight`` spread over the other bins. Decoding: the
    argmax of each axis, its score the smaller maximum; ``use_dark``: one Newton step on the log of the blurred
    vector.
    """

    options = Section({
        "input_size": Key(list, [192, 256], "Network input [width, height] in pixels (RTMPose's COCO configs: "
                                            "[192, 256] or [288, 384]).", item=int, length=2, min=8),
        "smoothing_type": Key(str, "gaussian", "`gaussian`: Gaussian targets; `standard`: one-hot targets with "
                                               "label_smooth_weight spread over the other bins.",
                              choices=("gaussian", "standard")),
        "sigma": Key((float, list), 6.0, "Gaussian sigma of the targets in SimCC bins: one value, or [x, y] "
                                         "(RTMPose's COCO configs: [4.9, 5.66] at 256x192, [6.0, 6.93] at 384x288). "
                                         "With use_dark it also sets the blur.", item=float, length=2, min=0.5),
        "simcc_split_ratio": Key(float, 2.0, "SimCC bins per input pixel: the vectors are input_size times it "
                                             "long (round to nearest).", min=0.5),
        "label_smooth_weight": Key(float, 0.0, "smoothing_type `standard` only: the share of each target spread "
                                               "evenly over the other bins.", min=0.0, max=1.0),
        "normalize": Key(bool, True, "Divide the Gaussian targets by sigma * sqrt(2 pi) (RTMPose's configs: "
                                     "false)."),
        "use_dark": Key(bool, False, "Refine the argmax by DARK's Newton step on the log of each vector blurred "
                                     "with OpenCV's Gaussian of size (20 sigma - 7) // 3, made odd downwards."),
        "decode_visibility": Key(bool, False, "MMPose's visibility decoding (true) is not provided: decoding gives "
                                              "keypoints and scores.", choices=(False,)),
    }, "MMPose's SimCCLabel (SimCC, RTMPose): its targets, decoding, crop and flip test, with MMPose's numbers.")

    crop_matrix = staticmethod(warp_matrix)

    def __init__(self, input_size: Sequence[int] = (192, 256), smoothing_type: str = "gaussian",
                 sigma: float | Sequence[float] = 6.0, simcc_split_ratio: float = 2.0,
                 label_smooth_weight: float = 0.0, normalize: bool = True, use_dark: bool = False,
                 decode_visibility: bool = False) -> None:
        if smoothing_type == "gaussian" and label_smooth_weight > 0:
            raise ConfigError(f"codec.label_smooth_weight is {label_smooth_weight} but only smoothing_type "
                              f"\"standard\" uses it; set codec.label_smooth_weight = 0 or codec.smoothing_type = "
                              f"\"standard\"")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.smoothing_type = smoothing_type
        self.sigma = np.array(sigma if isinstance(sigma, (list, tuple)) else [sigma, sigma], dtype=np.float64)
        self.simcc_split_ratio = float(simcc_split_ratio)
        self.label_smooth_weight = float(label_smooth_weight)
        self.normalize = bool(normalize)
        self.use_dark = bool(use_dark)
        self.label_size = tuple(int(np.around(size * self.simcc_split_ratio)) for size in self.input_size)
        """The lengths (x, y) of the SimCC vectors."""
        blur = (self.sigma * 20 - 7) // 3
        self._blur_sizes = tuple(int(size) - int(size % 2 == 0) for size in blur)

    def encode(self, keypoints: np.ndarray, visible: np.ndarray) -> dict[str, np.ndarray]:
        """``keypoint_x_labels`` float32 (K, Wx), ``keypoint_y_labels`` (K, Wy) and ``keypoint_weights`` (K,) for
        keypoints (K, 2) in input pixels; Wx, Wy: ``label_size``."""
        bins = np.around(np.asarray(keypoints, dtype=np.float32) * self.simcc_split_ratio).astype(np.int64)
        visible = np.asarray(visible, dtype=np.float32)
        drawn = visible >= 0.5
        if self.smoothing_type == "gaussian":
            low, high = bins - 3 * self.sigma, bins + 3 * self.sigma + 1
        else:
            low, high = bins, bins
        missed = drawn & ((low >= self.label_size).any(axis=1) | (high < 0).any(axis=1))
        labelled = (drawn & ~missed)[:, None]
        x_labels, y_labels = (np.where(labelled, self._labels(bins[:, axis], axis), np.float32(0)) for axis in (0, 1))
        weights = np.where(missed, np.float32(0), visible)
        return {"keypoint_x_labels": x_labels, "keypoint_y_labels": y_labels, "keypoint_weights": weights}

    def decode(self, output: Sequence[torch.Tensor], center: Any, scale: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Keypoints (N, K, 2) in image coordinates and scores (N, K) from SimCC vectors ``(x (N, K, Wx),
        y (N, K, Wy))``, as MMPose's codec and TopdownPoseEstimator give them: the decoded input pixels p become
        ``p / input_size * scale + center - scale / 2``."""
        simcc_x, simcc_y = (part.detach().float().cpu().numpy() for part in output)
        # An all-zero vector blurs to 0 / 0 in DARK, as in MMPose (it decodes to NaN): no warning for it.
        with np.errstate(divide="ignore", invalid="ignore"):
            keypoints, scores = self._decode_input(simcc_x, simcc_y)
        return to_image(keypoints, self.input_size, center, scale), torch.from_numpy(scores)

    def flip_back(self, output: Sequence[torch.Tensor], flip_indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """MMPose's ``flip_vectors``: keypoints swapped, the x vectors mirrored, nothing shifted."""
        simcc_x, simcc_y = output
        return simcc_x[:, flip_indices].flip(-1), simcc_y[:, flip_indices]

    def check_output(self, output: Any) -> None:
        """Raise a one-line ConfigError unless ``output`` is SimCC vectors (x (N, K, Wx), y (N, K, Wy)) of the
        lengths ``label_size`` gives."""
        pair = isinstance(output, (tuple, list)) and len(output) == 2 and all(
            isinstance(part, torch.Tensor) and part.dim() == 3 for part in output)
        if not pair or output[0].shape[:2] != output[1].shape[:2]:
            raise ConfigError(f"codec.type SimCCLabel decodes SimCC vectors ((N, K, Wx), (N, K, Wy)) but the model "
                              f"outputs {_shape(output)}; choose the codec the model's head was made for")
        lengths = [output[0].shape[-1], output[1].shape[-1]]
        if lengths != list(self.label_size):
            raise ConfigError(f"the model outputs SimCC vectors of lengths {lengths} but codec.input_size "
                              f"{list(self.input_size)} with codec.simcc_split_ratio {self.simcc_split_ratio:g} "
                              f"gives {list(self.label_size)}; set both as model.head.input_size and "
                              f"model.head.simcc_split_ratio are")

    def _labels(self, bins: np.ndarray, axis: int) -> np.ndarray:
        """Targets (K, length) of axis ``axis`` (0: x) for keypoints at integer ``bins`` (K,), before weighting."""
        length = self.label_size[axis]
        if self.smoothing_type == "standard":
            labels = np.full((len(bins), length), self.label_smooth_weight / (length - 1), dtype=np.float32)
            # Bins outside the vectors belong to keypoints that encode() leaves unlabelled: any index will do.
            labels[np.arange(len(bins)), np.clip(bins, 0, length - 1)] = 1 - self.label_smooth_weight
            return labels
        # float32 throughout, as MMPose computes it.
        offsets = np.arange(length, dtype=np.float32) - bins[:, None].astype(np.float32)
        labels = np.exp(-offsets**2 / np.float32(2 * self.sigma[axis] ** 2))
        if self.normalize:
            labels /= np.float32(self.sigma[axis] * np.sqrt(2 * np.pi))
        return labels

    def _decode_input(self, simcc_x: np.ndarray, simcc_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints (N, K, 2) in input pixels and scores (N, K): (-1, -1) / ratio where the score is not
        positive (then moved by DARK, as MMPose does)."""
        locations = np.stack([simcc_x.argmax(axis=-1), simcc_y.argmax(axis=-1)], axis=-1).astype(np.float32)
        scores = np.minimum(simcc_x.max(axis=-1), simcc_y.max(axis=-1))
        locations[scores <= 0] = -1
        if self.use_dark:
            for axis, vectors in enumerate((simcc_x, simcc_y)):
                locations[..., axis] = _dark_step(locations[..., axis], vectors, self._blur_sizes[axis])
        return locations / np.float32(self.simcc_split_ratio), scores


def _dark_step(locations: np.ndarray, vectors: np.ndarray, kernel_size: int) -> np.ndarray:
    """DARK's refinement of locations (N, K) on vectors (N, K, L) as MMPose's SimCC does it: one Newton step on the
    log of the blurred vector (clipped to [1e-3, 50]), edge-padded by two bins, with differences over two bins.

    A location of -1 (no positive value) reads its left neighbours from the end of the padded vector, as MMPose's
    negative indices do.
    """
    logs = np.log(np.clip(_blur(vectors, kernel_size, axes=(-1,)), np.float32(1e-3), np.float32(50)))
    padded = np.pad(logs, ((0, 0), (0, 0), (2, 2)), mode="edge")
    index = (locations + 2.5).astype(np.int64)

    def at(offset: int) -> np.ndarray:
        return np.take_along_axis(padded, ((index + offset) % padded.shape[-1])[..., None], axis=-1)[..., 0]

    gradient = 0.5 * (at(1) - at(-1))
    curvature = 1e-9 + 0.25 * (at(2) - 2 * at(0) + at(-2))
    return locations - gradient / curvature
