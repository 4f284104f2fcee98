"""``posecore predict``: poses on your own images, drawn and written as JSON.

    posecore predict photo.jpg --config run.toml --checkpoint work_dirs/run/best_AP_iter_9000.pth \\
        --detector fasterrcnn_mobilenet_v3_large_fpn
    posecore predict *.jpg --config run.toml --checkpoint ckpt.pth --boxes boxes.json --out poses/

Top-down pose needs person boxes. ``--detector NAME`` finds them with a torchvision detection model (COCO's
person class), its COCO weights taken from torch.hub's cache; ``--detector NAME=PATH`` uses a state_dict of
that model saved to PATH instead. ``--boxes`` is a JSON object from image (its path as given, or its file
name) to a list of person boxes ``[x, y, w, h]`` in pixels, each optionally with a fifth value, the
detector's score. Without either, each whole image is one person box.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import numpy as np
import torch

from posecore import checkpoint
from posecore.config import did_you_mean
from posecore.data import build_transform
from posecore.errors import CheckpointError, InputError
from posecore.evaluation import predict
from posecore.pose.coco import read_image
from posecore.pose.coco_eval import rescore
from posecore.pose.draw import draw_pose
from posecore.run import Run

PALETTE = ((255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0), (200, 64, 255), (0, 220, 220))
"""Person colours, in turn."""

DETECTORS = (
    "fasterrcnn_mobilenet_v3_large_fpn",  # COCO box AP 32.8, 74 MB: fast on a CPU, the one suggested
    "fasterrcnn_mobilenet_v3_large_320_fpn",  # AP 22.8, 74 MB: the fastest (images scaled to 320 px)
    "fasterrcnn_resnet50_fpn_v2",  # AP 46.7, 167 MB: the most accurate
    "retinanet_resnet50_fpn_v2",  # AP 41.5, 146 MB: single stage
)
"""The torchvision detection builders ``--detector`` accepts: those that, built without weights, compute what
torchvision's COCO model computes once its weights are loaded (fasterrcnn_resnet50_fpn does not: its COCO
weights need BatchNorm with eps 0, which torchvision sets only when it loads them itself)."""
COCO_CLASSES = 91
"""torchvision's COCO label space (with background and unused ids); the person is label 1."""
PERSON_LABEL = 1


@dataclass(frozen=True)
class DetectorChoice:
    """``--detector``: a torchvision detection builder, and the local file of its weights if one was given."""

    name: str
    weights: Path | None = None
    """None: torchvision's COCO weights, through torch.hub's cache."""

    def __str__(self) -> str:
        return f"--detector {self.name}" + (f"={self.weights}" if self.weights is not None else "")


def parse_detector(value: str) -> DetectorChoice:
    """``NAME`` or ``NAME=PATH``; an unknown NAME or a bare PATH is an InputError that lists the names."""
    name, has_path, path = value.partition("=")
    names = f"NAME is one of {', '.join(DETECTORS)}"
    if name not in DETECTORS:
        if not has_path and (Path(value).suffix in (".pth", ".pt") or Path(value).is_file()):
            raise InputError(f"--detector {value}: name the architecture the weights are for, --detector "
                             f"NAME={value}; {names}")
        raise InputError(f"--detector {value}: unknown detector{did_you_mean(name, list(DETECTORS))}; {names} "
                         f"(NAME=PATH: your own weights for it)")
    if has_path and not path:
        raise InputError(f"--detector {value}: no weights file after '='; give NAME=PATH, or NAME alone for "
                         f"torchvision's COCO weights")
    return DetectorChoice(name, Path(path) if has_path else None)


def build_detector(choice: DetectorChoice, log: logging.Logger) -> torch.nn.Module:
    """The detection model ``choice`` names, with its weights, in eval mode.

    Every failure (torchvision missing or not loading, weights not in the cache and not downloadable, a file
    that does not load or does not fit) is an InputError naming the option or file and what to do.
    """
    torchvision = _import_torchvision(choice)
    path = choice.weights or _coco_weights_file(torchvision, choice.name, log)
    how_made = (f"; {choice.name}=PATH takes torch.save(model.state_dict(), PATH) of "
                f"torchvision.models.detection.{choice.name}(num_classes={COCO_CLASSES})" if choice.weights else
                "; delete it from torch.hub's cache to download it again")
    try:
        weights, _ = checkpoint.read_weights(path)
    except CheckpointError as err:
        raise InputError(f"--detector {choice.name}: {err}{how_made}") from None
    model = torchvision.models.get_model(choice.name, weights=None, weights_backbone=None, num_classes=COCO_CLASSES)
    # A missing num_batches_tracked is fine: torchvision's COCO files come from frozen BatchNorm, which has none,
    # and BatchNorm counts only in training.
    left_out = [key for key in checkpoint.load_model_weights(model, weights, path, strict=False)
                if key in weights or not key.endswith(".num_batches_tracked")]
    if left_out:
        raise InputError(f"--detector {choice.name}: {path}: weights do not fit {choice.name} ({len(left_out)} "
                         f"missing, unexpected or of another shape: {', '.join(left_out[:3])}"
                         f"{' ...' if len(left_out) > 3 else ''}){how_made}")
    log.info("detector %s with weights %s", choice.name, path)
    return model.eval()


def _import_torchvision(choice: DetectorChoice) -> ModuleType:
    try:
        import torchvision
        import torchvision.models.detection  # noqa: F401  (registers the detection builders)
    except ImportError:
        raise InputError(f"{choice}: needs torchvision: pip install 'posecore[detect]' (a torchvision built for "
                         f"torch {torch.__version__})") from None
    except Exception as err:  # installed, but built for another torch (e.g. a CUDA build beside a CPU torch)
        raise InputError(f"{choice}: torchvision does not load with torch {torch.__version__} "
                         f"({checkpoint.first_line(err)}); install the torchvision built for this torch (for a CPU "
                         f"torch: pip install torchvision --index-url https://download.pytorch.org/whl/cpu)") from None
    return torchvision


def _coco_weights_file(torchvision: ModuleType, name: str, log: logging.Logger) -> Path:
    """torchvision's COCO weights of ``name`` in torch.hub's cache, downloaded there first if missing."""
    return checkpoint.hub_file(torchvision.models.get_model_weights(name).DEFAULT.url, f"--detector {name}", log,
                               f", or pass a local file: --detector {name}=PATH")


@torch.inference_mode()
def detect_people(detector: torch.nn.Module, image: np.ndarray, score_thr: float) -> list[list[float]]:
    """Person boxes ``[x, y, w, h, score]`` in ``image`` (uint8 RGB) scoring above ``score_thr``, best first."""
    device = next(detector.parameters()).device
    found = detector([torch.from_numpy(image).to(device).permute(2, 0, 1).float() / 255])[0]
    kept = (found["labels"] == PERSON_LABEL) & (found["scores"] > score_thr)
    return [[x1, y1, x2 - x1, y2 - y1, round(score, 4)]
            for (x1, y1, x2, y2), score in zip(found["boxes"][kept].tolist(), found["scores"][kept].tolist())
            if x2 > x1 and y2 > y1]


def predict_images(run: Run, images: Sequence[Path], weights: Path, boxes_file: Path | None,
                   out: Path | None, keypoint_thr: float, detector: str | None = None,
                   det_score_thr: float = 0.5) -> Path:
    """Predict every person in ``images``; write the drawn images and ``keypoints.json`` to ``out``.

    The persons are the boxes of ``boxes_file``, or those ``detector`` (``NAME`` or ``NAME=PATH``, see
    :func:`parse_detector`) finds above ``det_score_thr``, or else each whole image. Returns the output
    folder (default: ``predictions`` in the run folder).
    """
    if boxes_file is not None and detector is not None:
        raise InputError("--boxes and --detector exclude each other: give the person boxes, or a detector to find "
                         "them")
    missing = [str(path) for path in images if not path.is_file()]
    if missing:
        raise InputError(f"image {missing[0]}: not found{f' (and {len(missing) - 1} more)' if missing[1:] else ''}")
    choice = parse_detector(detector) if detector is not None else None
    boxes = read_boxes(boxes_file, images) if boxes_file is not None else None
    with run.session():
        if boxes is None and choice is None:
            run.log.warning("no --detector or --boxes: each whole image is taken as one person, so a person who "
                            "fills only part of an image is found poorly or not at all; give --detector %s (or "
                            "another) or --boxes JSON", DETECTORS[0])
        run.hook.before_build(run=run)
        run.build_model()
        run.load_weights(weights)
        finder = build_detector(choice, run.log).to(run.device) if choice is not None else None
        run.open_run_dir()
        run.model.eval()
        out = out or run.run_dir / "predictions"
        out.mkdir(parents=True, exist_ok=True)
        transform = build_transform(run, run.layout, train=False)
        forward = run.hook.forward_context(run=run) or contextlib.nullcontext()
        results, names = [], set()
        for path in images:
            image = read_image(path)
            height, width = image.shape[:2]
            if boxes is not None:
                people = boxes[str(path)]
            elif finder is not None:
                people = detect_people(finder, image, det_score_thr)
            else:
                people = [[0.0, 0.0, float(width), float(height), 1.0]]
            persons = _predict_people(run, transform, image, people, forward)
            drawn, shown = image, 0
            line = max(1, round(max(width, height) / 320))
            for index, person in enumerate(persons):
                points = np.asarray(person["keypoints"])
                visible = points[:, 2] > keypoint_thr
                shown += int(visible.sum())
                drawn = draw_pose(drawn, points[:, :2], visible, run.layout.skeleton, PALETTE[index % len(PALETTE)],
                                  line)
            target = _save(drawn, out / _unique_name(path, names))
            results.append({"image": str(path), "drawn": target.name, "persons": persons})
            run.log.info("%s: %d person(s), %d keypoint(s) above --kpt-thr %g, drawn in %s", path, len(persons),
                         shown, keypoint_thr, target)
        summary = {"keypoint_names": list(run.layout.names), "skeleton": [list(p) for p in run.layout.skeleton],
                   "checkpoint": str(weights), "images": results}
        (out / "keypoints.json").write_text(json.dumps(summary), encoding="utf-8")
        run.log.info("keypoints written to %s", out / "keypoints.json")
    return out


def _predict_people(run: Run, transform: Any, image: np.ndarray, people: list[list[float]],
                    forward: Any) -> list[dict[str, Any]]:
    if not people:
        return []
    count = run.layout.num_keypoints
    blank = {"image": image, "keypoints": np.zeros((count, 2), np.float32), "visible": np.zeros(count, np.float32)}
    samples = [transform({**blank, "box": box[:4]}) for box in people]
    coords, scores = predict(run, torch.from_numpy(np.stack([s["img"] for s in samples])),
                             np.stack([s["center"] for s in samples]), np.stack([s["scale"] for s in samples]), forward)
    persons = []
    for box, points, score in zip(people, coords.tolist(), scores.tolist()):
        box_score = box[4] if len(box) > 4 else 1.0
        persons.append({"bbox": [round(v, 2) for v in box[:4]], "bbox_score": box_score,
                        "score": round(rescore(np.asarray(score), box_score), 4),
                        "keypoints": [[round(x, 2), round(y, 2), round(s, 4)] for (x, y), s in zip(points, score)]})
    return persons


def read_boxes(path: Path, images: Sequence[Path]) -> dict[str, list[list[float]]]:
    """``--boxes``: person boxes of each image, keyed by the image path as given; errors name file and entry."""
    where = f"--boxes {path}"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{where}: not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{where}: cannot be read ({err})") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(data, dict):
        raise InputError(f'{where}: expected a JSON object {{"image.jpg": [[x, y, w, h], ...]}}, '
                         f"got a {type(data).__name__}")
    boxes = {}
    for image in images:
        key = str(image) if str(image) in data else image.name
        if key not in data:
            raise InputError(f"{where}: no entry for image {image} (keys are image paths or file names; "
                             f"give [] for an image without persons)")
        entries = data[key]
        if not isinstance(entries, list):
            raise InputError(f"{where}: '{key}' must be a list of boxes [x, y, w, h(, score)]")
        checked = []
        for position, box in enumerate(entries):
            numbers = isinstance(box, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    for v in box)
            if not numbers or len(box) not in (4, 5) or not all(map(math.isfinite, box)) or min(box[2:4]) <= 0:
                raise InputError(f"{where}: '{key}' box {position} is {json.dumps(box)}; expected [x, y, w, h] or "
                                 f"[x, y, w, h, score] with w, h > 0")
            checked.append([float(v) for v in box])
        boxes[str(image)] = checked
    return boxes


def _unique_name(path: Path, taken: set[str]) -> str:
    """The image's file name, numbered when two inputs share one (a/img.jpg, b/img.jpg)."""
    name, number = path.name, 1
    while name in taken:
        number += 1
        name = f"{path.stem}_{number}{path.suffix}"
    taken.add(name)
    return name


def _save(image: np.ndarray, target: Path) -> Path:
    from PIL import Image

    try:
        Image.fromarray(image).save(target, quality=95)
    except (KeyError, ValueError):  # an extension Pillow cannot write: keep the name, add .png
        target = target.with_name(target.name + ".png")
        Image.fromarray(image).save(target)
    return target
