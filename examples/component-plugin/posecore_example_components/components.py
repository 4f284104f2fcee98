"""The example's types: a model on a Hugging Face transformers backbone, a dataset of images with a JSON file of
keypoints each, and a keypoint-error metric (each follows its protocol in :mod:`posecore.protocols`).

``KeypointFolder`` reads a folder such as::

    data/train/img_0000.jpg  data/train/img_0000.json  data/train/img_0001.png  data/train/img_0001.json  ...

Each image (``.jpg``, ``.jpeg`` or ``.png``) has a JSON file of the same stem beside it that holds its persons:
``{"keypoints": [[x, y, v], ...], "box": [x, y, w, h]}`` for one, a list of such objects for several, ``[]`` for
none. There is one ``[x, y, v]`` per keypoint of the layout, in its order: ``x, y`` in pixels with ``0, 0`` the
centre of the top-left pixel, ``v`` COCO's flag (0: not labelled, 1: labelled but hidden, 2: visible; every
labelled keypoint is learnt and scored). ``box`` is optional: without it, the box is the extent of the person's
labelled keypoints enlarged by ``box_padding`` of its longer side on every side.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from posecore.config import Key, Section
from posecore.errors import ConfigError, DataError, InputError
from posecore.pose.coco import read_image
from posecore.pose.model import heatmap_loss
from posecore.pose.skeleton import LAYOUT_OPTIONS, KeypointInfo, keypoint_layout
from posecore.schema import RELATIVE

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class TransformersHeatmapNet(nn.Module):
    """Crops (N, 3, H, W) to heatmaps (N, K, h, w) for the ``GaussianHeatmap`` codec: the last feature map of a
    transformers backbone (ResNet or ConvNeXt), upsampled by 4x4 transposed convolutions that each double its
    resolution, then a 1x1 convolution to the K heatmaps (SimpleBaseline's head).

    Both backbones reduce the input 4x in their stem and 2x in every stage after the first, so the output
    stride is 4 * 2 ** (stages - 1) / 2 ** (upsampling steps): 2 by default (a [48, 64] input gives [24, 32]
    heatmaps). transformers is imported only here, when a model is built: it takes seconds to load.
    """

    options = Section({
        "backbone": Key(str, "resnet", "The transformers backbone: `resnet` (of basic blocks) or `convnext`, of the "
                                       "sizes below and random weights, or `pretrained`.",
                        choices=("resnet", "convnext")),
        "hidden_sizes": Key(list, [16, 32], "Channels of each backbone stage.", item=int, min=1),
        "depths": Key(list, [1, 1], "Blocks in each backbone stage.", item=int, min=1),
        "pretrained": Key(str, None, "A Hugging Face Hub model id (e.g. `microsoft/resnet-18`, fetched once into "
                                     "the Hub's cache) or a folder saved by `save_pretrained`, of the `backbone` "
                                     "kind: its architecture and weights replace the sizes above."),
        "deconv_channels": Key(list, [32, 32], "Channels of each upsampling step of the head (each doubles the "
                                               "resolution).", item=int, min=1),
    }, "A Hugging Face transformers backbone and a deconvolution heatmap head (posecore-example-components).")

    def __init__(self, num_keypoints: int, backbone: str = "resnet", hidden_sizes: Sequence[int] = (16, 32),
                 depths: Sequence[int] = (1, 1), pretrained: str | None = None,
                 deconv_channels: Sequence[int] = (32, 32)) -> None:
        super().__init__()
        import transformers

        if backbone == "resnet":
            kind, config = transformers.ResNetBackbone, dict(embedding_size=hidden_sizes[0], layer_type="basic")
        else:
            kind, config = transformers.ConvNextBackbone, dict(num_stages=len(hidden_sizes))
        if pretrained is not None:
            try:
                self.backbone = kind.from_pretrained(pretrained)
            except OSError as err:
                reason = str(err).strip().splitlines()[0]
                raise InputError(f"model.pretrained {pretrained!r} cannot be loaded ({reason}); check the model id "
                                 f"or folder, and the network") from None
        elif len(hidden_sizes) != len(depths):
            raise ConfigError(f"model.hidden_sizes {list(hidden_sizes)} and model.depths {list(depths)} must have "
                              f"the same length: one entry per stage")
        else:
            self.backbone = kind(kind.config_class(hidden_sizes=list(hidden_sizes), depths=list(depths), **config))
        layers: list[nn.Module] = []
        channels = self.backbone.channels[-1]
        for width in deconv_channels:
            layers += [nn.ConvTranspose2d(channels, width, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            channels = width
        self.head = nn.Sequential(*layers)
        self.final = nn.Conv2d(channels, num_keypoints, 1)
        # Near-empty heatmaps at the start, as SimpleBaseline does: the targets are mostly zeros.
        nn.init.normal_(self.final.weight, std=0.001)
        nn.init.zeros_(self.final.bias)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.final(self.head(self.backbone(crops).feature_maps[-1]))

    def loss(self, output: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return heatmap_loss(output, batch["heatmaps"], batch["weights"])


class KeypointFolder:
    """One record per person of a folder of images with a JSON file each (the format: see the module docstring).

    The JSON files are read when it is built (a bad one is an error naming it), an image when its record is
    loaded; ``image_id`` is the image's position in the folder, sorted by name. For training, persons without a
    labelled keypoint are left out.
    """

    options = Section({
        "folder": Key(str, None, "Folder of images, each with a JSON file of its persons' keypoints." + RELATIVE,
                      input_path=True, required=True),
        **LAYOUT_OPTIONS,
        "box_padding": Key(float, 0.1, "A person without a `box`: its keypoints' extent grows by this fraction of "
                                       "its longer side on every side.", min=0),
    }, "A folder of images, each with a JSON file of its persons' keypoints (posecore-example-components).")

    layout = staticmethod(keypoint_layout)

    def __init__(self, folder: str | Path, box_padding: float = 0.1, train: bool = True, **layout: Any) -> None:
        self.folder = Path(folder)
        self.box_padding = box_padding
        count = keypoint_layout(layout).num_keypoints
        images = sorted(p for p in self.folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"dataset folder {self.folder}: no {', '.join(IMAGE_SUFFIXES)} images; check the folder")
        stems = {p.stem for p in images}
        stray = sorted(p for p in self.folder.glob("*.json") if p.stem not in stems)
        if stray:
            raise DataError(f"{stray[0]}: no image of that name beside it ({', '.join(IMAGE_SUFFIXES)}); add the "
                            f"image or remove the file")
        self.persons: list[tuple[Path, int, np.ndarray, np.ndarray, np.ndarray]] = []
        for image_id, image in enumerate(images):
            labels = image.with_suffix(".json")
            for keypoints, visible, box in self._read(labels, count):
                if visible.any() or not train:
                    self.persons.append((image, image_id, keypoints, visible, box))

    def __len__(self) -> int:
        return len(self.persons)

    def load(self, index: int) -> dict[str, Any]:
        image, image_id, keypoints, visible, box = self.persons[index]
        return {"image": read_image(image), "keypoints": keypoints.copy(), "visible": visible.copy(),
                "box": box.copy(), "image_id": image_id}

    def _read(self, path: Path, count: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The persons of JSON file ``path``: keypoints (K, 2), visible (K,) and box (4,), float32."""
        if not path.is_file():
            raise DataError(f"{path}: not found; each image needs a JSON file of its persons beside it ([] for none)")
        try:
            persons = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: cannot be read ({err}); check the file") from None
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}; fix the "
                            f"file") from None
        return [self._person(entry, f"{path}: person {n}", count)
                for n, entry in enumerate(persons if isinstance(persons, list) else [persons])]

    def _person(self, entry: Any, where: str, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        triples = _numbers(entry.get("keypoints") if isinstance(entry, dict) else None, (count, 3))
        if triples is None:
            raise DataError(f"{where}: needs 'keypoints', {count} [x, y, v] number triples (one per keypoint of the "
                            f"layout); fix the file, or set the dataset's keypoints (or keypoint_names) to match")
        keypoints, visible = triples[:, :2].copy(), (triples[:, 2] > 0).astype(np.float32)
        if entry.get("box") is not None:
            box = _numbers(entry["box"], (4,))
            if box is None or not (box[2] > 0 and box[3] > 0):
                raise DataError(f"{where}: 'box' must be [x, y, w, h] with w and h above 0; fix the file")
            return keypoints, visible, box
        if not visible.any():
            raise DataError(f"{where}: no 'box' and no labelled keypoint (v > 0) to take one from; add a box")
        low, high = keypoints[visible > 0].min(0), keypoints[visible > 0].max(0)
        padding = self.box_padding * (high - low).max()
        return keypoints, visible, np.concatenate([low - padding, np.maximum(high - low + 2 * padding, 1.0)])


def _numbers(value: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """``value`` as a finite float32 array of ``shape``, or None if it is not one."""
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        return None
    return array if array.shape == shape and np.isfinite(array).all() else None


class KeypointError:
    """Mean distance of the predicted keypoints from the labelled ones, as a fraction of each person's size (the
    square root of its box's area), logged as ``NME`` (lower is better). Its results, which ``posecore test``
    writes, give each person's predicted keypoints ``[x, y, score]`` and error (null: nothing labelled)."""

    options = Section({
        "per_keypoint": Key(bool, False, "Also log each keypoint's error, as `NME_<keypoint name>`."),
    }, "Normalised mean keypoint error, logged as `NME` (posecore-example-components).")

    def __init__(self, layout: KeypointInfo, dataset: Mapping[str, Any], per_keypoint: bool = False) -> None:
        self.names = layout.names if per_keypoint else ()

    def __call__(self, predictions: Mapping[str, torch.Tensor]) -> tuple[dict[str, float], list[dict[str, Any]]]:
        pred, truth, visible, box = (predictions[key].double().cpu().numpy()
                                     for key in ("pred", "keypoints", "visible", "box"))
        errors = np.linalg.norm(pred - truth, axis=-1) / np.sqrt(box[:, 2:3] * box[:, 3:4])
        labelled = visible > 0
        metrics = {"NME": _mean(errors, labelled)}
        metrics.update({f"NME_{name}": _mean(errors[:, k], labelled[:, k]) for k, name in enumerate(self.names)})
        scores = predictions["pred_score"].tolist()
        results = [{"keypoints": [[round(x, 2), round(y, 2), round(s, 4)] for (x, y), s in zip(points, scores[n])],
                    "error": _mean(errors[n], labelled[n]) if labelled[n].any() else None}
                   for n, points in enumerate(pred.tolist())]
        if "image_id" in predictions:
            for result, image_id in zip(results, predictions["image_id"].tolist()):
                result["image_id"] = image_id
        return metrics, results


def _mean(values: np.ndarray, mask: np.ndarray) -> float:
    """The mean of ``values`` where ``mask`` is set; NaN where nothing is labelled to score."""
    return float(values[mask].mean()) if mask.any() else math.nan
