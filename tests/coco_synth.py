"""A small COCO-format keypoint data set generated from posecore's stick figures, so that COCO loading,
evaluation, ``posecore test`` and ``posecore predict`` are tested without outside files.

Each image is one or two panels side by side, each panel a ``SyntheticPoses`` scene with one figure
whose 17 COCO keypoints are known. Written to a folder: the JPEG images, ``annotations.json`` (images,
annotations, the COCO person category), ``detections.json`` (COCO person boxes: jittered, duplicated
and low-scoring ones), ``results.json`` (COCO keypoint results: the true poses with growing noise, a
duplicate and a false positive) and two broken image files. Deterministic per seed; takes about 20 ms.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from helpers import CocoFiles
from posecore.pose.skeleton import COCO17
from posecore.pose.synthetic import SyntheticPoses

IMAGES = (  # (persons side by side, panel (width, height)) per image
    (1, (96, 128)),
    (2, (96, 128)),
    (2, (80, 112)),
    (1, (160, 200)),  # a large person: COCO's APl counts persons over 96² px
)
IMAGE_IDS = (785, 1402, 2019, 3366)  # not the positions: loaders must map ids to files
EMPTY_PERSON_IMAGE = 2  # this image also has a labelled person without keypoints, as COCO has
EMPTY_PERSON_BOX = [128.0, 70.0, 14.0, 30.0]  # away from (0, 0): see test_gt_vs_gt_and_empty_person_pitfall
RESULT_NOISE = (0.0, 0.01, 0.03, 0.06, 0.1, 0.3)  # per person, in units of sqrt(area)
JPEG_QUALITY = 95
SEED = 4  # draws a person partly out of frame (v=0 labels), a covered keypoint (v=1) and a large person

PERSON_CATEGORY = {
    "supercategory": "person", "id": 1, "name": "person", "keypoints": list(COCO17.names),
    "skeleton": [[a + 1, b + 1] for a, b in COCO17.skeleton],  # 1-based in COCO files
}


@dataclass(frozen=True)
class SyntheticCoco(CocoFiles):
    """The generated files: a COCO data set, plus two image files that do not decode."""

    truncated_image: Path
    not_an_image: Path


def panels(seed: int = SEED) -> list[list[dict[str, np.ndarray]]]:
    """The rendered scenes of each image, in order: panel k of the data set is scene k of the renderer."""
    total = sum(persons for persons, _ in IMAGES)
    rendered, index = [], 0
    for persons, size in IMAGES:
        renderer = SyntheticPoses(num_samples=total, image_size=size, seed=seed)
        rendered.append([renderer.load(index + k) for k in range(persons)])
        index += persons
    return rendered


def write_synthetic_coco(folder: Path, seed: int = SEED) -> SyntheticCoco:
    """Write the data set into ``folder`` (created if needed) and return the paths of its files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations, detections, results = [], [], [], []
    for position, (image_id, scenes) in enumerate(zip(IMAGE_IDS, panels(seed))):
        picture = np.concatenate([scene["image"] for scene in scenes], axis=1)
        height, width = picture.shape[:2]
        file_name = f"figures_{position}.jpg"
        Image.fromarray(picture).save(folder / file_name, quality=JPEG_QUALITY)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        panel_width = width // len(scenes)
        for k, scene in enumerate(scenes):
            shift = np.array([k * panel_width, 0.0])
            annotation = _annotation(len(annotations) + 1, image_id, scene, shift)
            annotations.append(annotation)
            truth = scene["keypoints"] + shift  # also where the label is missing (out of frame)
            # Scores fall person by person, so a threshold between two cuts a known number of boxes.
            score = round(0.95 - 0.05 * len(detections), 2)
            detections.append(_detection(image_id, annotation["bbox"], width, height, score, rng, jitter=k % 2 == 1))
            noise = RESULT_NOISE[len(results)]
            results.append(_result(image_id, truth, annotation["area"], noise, round(1.0 - noise, 3), rng))
        if position == EMPTY_PERSON_IMAGE:
            annotations.append(_box_annotation(len(annotations) + 1, image_id, EMPTY_PERSON_BOX, [0.0] * 51))
    detections.append({**detections[0], "score": 0.55})  # the same box twice
    for score in (0.1, 0.2):  # clutter a detector is unsure about
        image = images[int(rng.integers(len(images)))]
        low = rng.uniform(0, 0.5, 2) * (image["width"], image["height"])
        size = rng.uniform(0.2, 0.5, 2) * (image["width"], image["height"])
        detections.append(_detection_entry(image["id"], [*low, *size], score))
    results.append({**results[1], "score": 0.35})  # a duplicate, scored lower: a false positive
    false_pose = np.column_stack([rng.uniform(0, images[0]["width"], 17), rng.uniform(0, images[0]["height"], 17)])
    results.append(_result(images[0]["id"], false_pose, 1000.0, 0.0, 0.5, rng))

    data = {"info": {"description": "posecore synthetic COCO keypoints", "seed": seed}, "images": images,
            "annotations": annotations, "categories": [PERSON_CATEGORY]}
    files = SyntheticCoco(ann_file=folder / "annotations.json", img_dir=folder, det_file=folder / "detections.json",
                          results_file=folder / "results.json", truncated_image=folder / "truncated.jpg",
                          not_an_image=folder / "not_an_image.jpg")
    files.ann_file.write_text(json.dumps(data), encoding="utf-8")
    files.det_file.write_text(json.dumps(detections), encoding="utf-8")
    files.results_file.write_text(json.dumps(results), encoding="utf-8")
    jpeg = (folder / images[0]["file_name"]).read_bytes()
    files.truncated_image.write_bytes(jpeg[: len(jpeg) // 2])
    files.not_an_image.write_text("this is not an image at all\n", encoding="utf-8")
    return files


def _annotation(ann_id: int, image_id: int, scene: dict[str, np.ndarray], shift: np.ndarray) -> dict:
    """The COCO annotation of one figure: v=2 visible, v=1 covered but in frame, v=0 (at 0, 0) out of frame."""
    height, width = scene["image"].shape[:2]
    points = scene["keypoints"]
    in_frame = (points >= 0).all(axis=1) & (points[:, 0] <= width - 1) & (points[:, 1] <= height - 1)
    flags = np.where(scene["visible"] > 0, 2, np.where(in_frame, 1, 0))
    triples = np.column_stack([np.where(flags[:, None] > 0, points + shift, 0.0), flags])
    box = scene["box"] + np.concatenate([shift, [0.0, 0.0]])
    return _box_annotation(ann_id, image_id, box, triples.reshape(-1).tolist())


def _box_annotation(ann_id: int, image_id: int, box, keypoints: list[float]) -> dict:
    x, y, w, h = (round(float(v), 2) for v in box)
    labelled = sum(1 for v in keypoints[2::3] if v > 0)
    # No masks here: the box stands in for the segmentation and its area for the mask's area.
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "bbox": [x, y, w, h],
            "area": round(w * h, 2), "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
            "num_keypoints": labelled, "keypoints": [round(float(v), 2) for v in keypoints]}


def _detection(image_id: int, box: list[float], width: int, height: int, score: float, rng: np.random.Generator,
               jitter: bool) -> dict:
    """A detected box: the person's box, or with ``jitter`` moved and resized by up to 10%, kept in the image."""
    x, y, w, h = box
    if jitter:
        dx, dy, dw, dh = rng.uniform(-0.1, 0.1, 4) * (w, h, w, h)
        x, y = max(x + dx, 0.0), max(y + dy, 0.0)
        w, h = min(w + dw, width - x), min(h + dh, height - y)
    return _detection_entry(image_id, [x, y, w, h], score)


def _detection_entry(image_id: int, box, score: float) -> dict:
    return {"image_id": image_id, "category_id": 1, "bbox": [round(float(v), 2) for v in box], "score": score}


def _result(image_id: int, truth: np.ndarray, area: float, noise: float, score: float,
            rng: np.random.Generator) -> dict:
    """A COCO keypoint result: ``truth`` moved by Gaussian noise of ``noise`` * sqrt(area) pixels."""
    points = truth + rng.normal(0, noise * np.sqrt(area), truth.shape)
    scores = rng.uniform(0.5, 1.0, (len(points), 1))
    return {"image_id": image_id, "category_id": 1, "keypoints": np.hstack([points, scores]).round(3).reshape(-1)
            .tolist(), "score": score}
