"""``posecore predict``: poses on your own images, drawn and written as JSON.

    posecore predict photo.jpg --config run.toml --checkpoint work_dirs/run/best_AP_iter_9000.pth
    posecore predict *.jpg --config run.toml --checkpoint ckpt.pth --boxes boxes.json --out poses/

``--boxes`` is a JSON object from image (its path as given, or its file name) to a list of person
boxes ``[x, y, w, h]`` in pixels, each optionally with a fifth value, the detector's score. Without
it, each whole image is one person box.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from posecore.data import build_transform
from posecore.errors import InputError
from posecore.pose.coco import read_image
from posecore.pose.coco_eval import rescore
from posecore.pose.draw import draw_pose
from posecore.run import Run

PALETTE = ((255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0), (200, 64, 255), (0, 220, 220))
"""Person colours, in turn."""


def predict_images(run: Run, images: Sequence[Path], weights: Path, boxes_file: Path | None,
                   out: Path | None, keypoint_thr: float) -> Path:
    """Predict every person in ``images``; write the drawn images and ``keypoints.json`` to ``out``.

    Returns the output folder (default: ``predictions`` in the run folder).
    """
    missing = [str(path) for path in images if not path.is_file()]
    if missing:
        raise InputError(f"image {missing[0]}: not found{f' (and {len(missing) - 1} more)' if missing[1:] else ''}")
    boxes = read_boxes(boxes_file, images) if boxes_file is not None else None
    with run.session():
        run.hook.before_build(run=run)
        run.build_model()
        run.load_weights(weights)
        run.open_run_dir()
        run.model.eval()
        out = out or run.run_dir / "predictions"
        out.mkdir(parents=True, exist_ok=True)
        transform = build_transform(run.config, run.layout.flip_pairs, train=False)
        forward = run.hook.forward_context(run=run) or contextlib.nullcontext()
        results, names = [], set()
        for path in images:
            image = read_image(path)
            height, width = image.shape[:2]
            people = boxes[str(path)] if boxes is not None else [[0.0, 0.0, float(width), float(height), 1.0]]
            persons = _predict_people(run, transform, image, people, forward)
            drawn = image
            line = max(1, round(max(width, height) / 320))
            for index, person in enumerate(persons):
                points = np.asarray(person["keypoints"])
                drawn = draw_pose(drawn, points[:, :2], points[:, 2] > keypoint_thr, run.layout.skeleton,
                                  PALETTE[index % len(PALETTE)], line)
            target = _save(drawn, out / _unique_name(path, names))
            results.append({"image": str(path), "drawn": target.name, "persons": persons})
            run.log.info("%s: %d person(s), drawn in %s", path, len(persons), target)
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
    coords, scores = run.predict(torch.from_numpy(np.stack([s["img"] for s in samples])),
                                 np.stack([s["center"] for s in samples]), np.stack([s["scale"] for s in samples]),
                                 forward)
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
