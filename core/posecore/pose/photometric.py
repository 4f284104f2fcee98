"""Photometric augmentation of training crops, after the warp: MMDetection's YOLOXHSVRandomAug (the HSV jitter of
RTMPose's configs) and albumentations' pixel-level transforms (MMPose's ``Albumentation`` step).

Both draw only from the sample's own generator, so a crop is a function of (seed, epoch, index) whatever the
worker processes and the global random state. albumentations is optional: imported only when used.
"""

from __future__ import annotations

import random
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from posecore.config import Dependency, did_you_mean
from posecore.errors import ConfigError

HSV_KEYS = ("hsv_hue_delta", "hsv_saturation_delta", "hsv_value_delta")
KEYS = (*HSV_KEYS, "albumentations")
"""The ``[augment]`` keys that this module reads (the rest are the crop's geometry)."""

ALBUMENTATIONS = Dependency("albumentations", "pip install 'albumentations>=2.0,<3' (the posecore[augment] extra)")


def draw_hsv_gains(deltas: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """YOLOXHSVRandomAug's gains (hue, saturation, value): each uniform in +-delta, kept with probability 1/2,
    truncated to int16."""
    gains = rng.uniform(-1, 1, 3) * np.asarray(deltas, dtype=np.float64)
    gains *= rng.integers(0, 2, 3)
    return gains.astype(np.int16)


def hsv_jitter(crop: np.ndarray, gains: Sequence[int]) -> np.ndarray:
    """The uint8 RGB ``crop`` with integer ``gains`` added to OpenCV's uint8 HSV: hue modulo 180, saturation and
    value clipped to [0, 255], as YOLOXHSVRandomAug does to its BGR image."""
    import cv2

    hsv = cv2.cvtColor(crop, cv2.COLOR_RGB2HSV).astype(np.int16)
    hue, saturation, value = (int(g) for g in gains)
    hsv[..., 0] = (hsv[..., 0] + hue) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] + saturation, 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] + value, 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


class PhotometricAugmentation:
    """The ``photometric`` step of :class:`~posecore.pose.transforms.TopDownTransform`: HSV jitter with the
    ``hsv_deltas`` (hue, saturation, value; zeros: none), then the albumentations transforms that
    ``albumentations`` lists (tables of a class name as ``type`` and its arguments), in MMPose's order.

    The albumentations pipeline is built at its first use in each process (a worker builds its own; pickling
    leaves it out) and is seeded before each crop from the crop's generator.
    """

    def __init__(self, hsv_deltas: Sequence[float] = (0, 0, 0),
                 albumentations: Sequence[Mapping[str, Any]] = ()) -> None:
        self.hsv_deltas = tuple(float(d) for d in hsv_deltas)
        self.albumentations = [dict(spec) for spec in albumentations]
        self._compose: Any = None

    @classmethod
    def from_options(cls, augment: Mapping[str, Any]) -> PhotometricAugmentation | None:
        """The step that ``[augment]`` options describe, or None where they turn nothing on."""
        deltas = [augment.get(key, 0) for key in HSV_KEYS]
        specs = augment.get("albumentations", [])
        return cls(deltas, specs) if any(deltas) or specs else None

    def __call__(self, crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The augmented copy of a uint8 (h, w, 3) RGB crop, drawn from ``rng``."""
        # Always the same draws in the same order: turning one part off leaves the other's numbers as they were.
        gains = draw_hsv_gains(self.hsv_deltas, rng)
        numpy_seed, python_seed = (int(s) for s in rng.integers(0, 2**63, 2))
        if gains.any():
            crop = hsv_jitter(crop, gains)
        if self.albumentations:
            if self._compose is None:
                self._compose = build_albumentations(self.albumentations)
            self._compose.set_random_state(np.random.default_rng(numpy_seed), random.Random(python_seed))
            crop = self._compose(image=crop)["image"]
        return crop

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_compose": None}


def build_albumentations(specs: Sequence[Mapping[str, Any]], where: str = "augment.albumentations") -> Any:
    """An ``albumentations.Compose`` of ``specs``; a ConfigError naming ``where[i]`` for an unknown transform, one
    that would move pixels (and so the keypoints), or arguments albumentations refuses."""
    import albumentations

    transforms = []
    for i, spec in enumerate(specs):
        at = f"{where}[{i}]"
        name = spec.get("type")
        kind = getattr(albumentations, name, None) if isinstance(name, str) else None
        if not (isinstance(kind, type) and issubclass(kind, albumentations.BasicTransform)):
            if not isinstance(name, str):
                raise ConfigError(f"{at}: needs a 'type', an albumentations transform's name, e.g. \"Blur\"")
            raise ConfigError(f"{at}: albumentations has no transform '{name}'"
                              f"{did_you_mean(name, sorted(_pixel_level_names(albumentations)))}")
        if not _is_pixel_level(kind, albumentations):
            raise ConfigError(f"{at}: {name} is a spatial transform: it would move the image under the keypoints; "
                              f"only pixel-level transforms and dropouts apply to the crop")
        arguments = {k: v for k, v in spec.items() if k != "type"}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # it only warns of arguments it does not take: refused just below
                transform = kind(**arguments)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{at}: {name}: {_one_line(err)}") from None
        if transform.invalid_args:
            takes = sorted(set(kind.InitSchema.model_fields) - {"strict"})
            unknown = transform.invalid_args[0]
            raise ConfigError(f"{at}: {name} has no argument '{unknown}'{did_you_mean(unknown, takes)}; it takes "
                              f"{', '.join(takes)}")
        transforms.append(transform)
    return albumentations.Compose(transforms)


def check_augment(augment: Mapping[str, Any]) -> None:
    """What the schema cannot check in ``[augment]``: ``[augment.switch]`` names its ``epoch``, and each stage's
    photometric steps can be built here (their modules import, the albumentations tables are valid)."""
    switch = augment.get("switch", {})
    if switch and "epoch" not in switch:
        raise ConfigError("augment.switch.epoch is required with [augment.switch]: the first (0-based) epoch whose "
                          "samples use the switched augmentation")
    for prefix, options in (("augment.", augment), ("augment.switch.", switch)):
        if options.get("albumentations"):
            _require(ALBUMENTATIONS, prefix + "albumentations")
            build_albumentations(options["albumentations"], prefix + "albumentations")


def _require(dependency: Dependency, key: str) -> None:
    problem = dependency.problem()
    if problem is not None:
        raise ConfigError(f"{key} needs {dependency.module}, which does not import here ({problem}); "
                          f"{dependency.install}")


def _is_pixel_level(kind: type, albumentations: Any) -> bool:
    from albumentations.augmentations.dropout.transforms import BaseDropout

    return issubclass(kind, (albumentations.ImageOnlyTransform, BaseDropout, albumentations.PixelDropout))


def _pixel_level_names(albumentations: Any) -> list[str]:
    return [name for name, kind in vars(albumentations).items()
            if isinstance(kind, type) and issubclass(kind, albumentations.BasicTransform)
            and _is_pixel_level(kind, albumentations)]


def _one_line(err: Exception) -> str:
    """albumentations' message on one line (pydantic lists each problem on lines of its own)."""
    errors = getattr(err, "errors", None)
    if callable(errors):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors())
    if err.__cause__ is not None:  # albumentations raises its schema's ValidationError as the cause of a ValueError
        return _one_line(err.__cause__)
    return " ".join(str(err).split())
