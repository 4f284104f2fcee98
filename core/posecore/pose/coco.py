"""Person-keypoint records from COCO-style annotation files (COCO, OCHuman, CrowdPose, ...).

``CocoKeypoints`` parses the annotation file once, at construction, into one instance per person
(or, given a detection results file, one per detected box) and decodes an image only when a record
is loaded. Every problem with the data raises ``DataError`` with a one-line message that names the
file, the record and what to do about it.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
from PIL import Image

from posecore.config import Key, Section
from posecore.errors import DataError
from posecore.pose.skeleton import LAYOUT_OPTIONS, keypoint_layout
from posecore.schema import RELATIVE

PathLike = Union[str, Path]


def _read_json(path: Path, what: str) -> Any:
    """Parse ``path``; a missing, unreadable or invalid file raises DataError."""
    if not path.is_file():
        problem = "is a directory, not a file" if path.is_dir() else "not found"
        raise DataError(f"{what} {path}: {problem}; check the path in the config")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{what} {path}: cannot be read ({error}); check the file and its permissions") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(
            f"{what} {path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}; "
            f"fix or regenerate the file"
        ) from None


def _box(value: Any) -> np.ndarray | None:
    """A float32 (x, y, w, h) from a JSON bbox, or None if it is not four finite numbers."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    try:
        box = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        return None
    return box if np.all(np.isfinite(box)) else None


def _clipped(box: np.ndarray, width: int | None, height: int | None) -> np.ndarray:
    """``box`` (x, y, w, h) with its corners clipped to the pixel centres of a ``width`` x ``height`` image, as
    MMPose's CocoDataset clips annotation boxes (as is where the file gives no image size)."""
    if width is None or height is None:
        return box
    low = np.zeros(2, dtype=np.float32)
    high = np.array([width - 1, height - 1], dtype=np.float32)
    corner = np.clip(box[:2], low, high)
    return np.concatenate([corner, np.clip(box[:2] + box[2:], low, high) - corner])


class CocoKeypoints:
    """A record source over a COCO person-keypoints annotation file.

    Without ``det_file``: one instance per annotation with ``iscrowd == 0``, a box of positive size and,
    when ``train``, at least one labelled keypoint (v > 0, counted from the keypoints, not from the
    ``num_keypoints`` field, which some datasets fill differently). With ``det_file`` (a COCO results
    list of person boxes): one instance per detection with ``score >= det_score_thr``, whose
    ground-truth keypoints are zeros with ``visible`` 0.

    ``load(index)`` returns ``image`` (an :class:`EncodedImage`: uint8 (H, W, 3) as an array, decoded at load,
    or with ``reduced_decode`` by the transform at the scale the crop needs), ``keypoints`` float32 (K, 2), ``visible``
    float32 (K,) (1 where v > 0), ``box`` float32 (x, y, w, h) (an annotation's clipped to the image as MMPose
    clips it, a detection's as detected), ``image_id`` int, ``score`` float
    (the detection score, or 1.0) and ``ann_id`` int (-1 for detections).
    """

    options = Section({
        "ann_file": Key(str, None, "COCO person-keypoints annotation JSON." + RELATIVE, input_path=True,
                        required=True),
        "img_dir": Key(str, None, "Folder holding the images named by `file_name`." + RELATIVE, input_path=True,
                       required=True),
        **LAYOUT_OPTIONS,
        "det_file": Key(str, None, "Detected person boxes (COCO results JSON) to use instead of the annotations' "
                                   "boxes." + RELATIVE, input_path=True),
        "det_score_thr": Key(float, 0.0, "Ignore detections scoring below this.", min=0, max=1),
        "reduced_decode": Key(bool, False, "Decode a JPEG at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) where the "
                                           "crop still gets a pixel per input pixel: faster for persons larger than "
                                           "the network input; such crops are area-averaged rather than sampled, "
                                           "about 3 grey levels from full decoding's on average, with no shift "
                                           "(bench/README.md)."),
    }, "COCO-format keypoint annotations and images (COCO, OCHuman, CrowdPose, your own data).")

    layout = staticmethod(keypoint_layout)

    def __init__(
        self,
        ann_file: PathLike,
        img_dir: PathLike,
        keypoints: str = "coco17",
        keypoint_names: Sequence[str] | None = None,
        flip_pairs: Sequence[Sequence[int]] | None = None,
        skeleton: Sequence[Sequence[int]] | None = None,
        sigmas: Sequence[float] | None = None,
        det_file: PathLike | None = None,
        det_score_thr: float = 0.0,
        reduced_decode: bool = False,
        train: bool = True,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.img_dir = Path(img_dir)
        self.keypoint_info = keypoint_layout({"keypoints": keypoints, "keypoint_names": keypoint_names,
                                              "flip_pairs": flip_pairs, "skeleton": skeleton, "sigmas": sigmas})
        self.det_file = None if det_file is None else Path(det_file)
        self.det_score_thr = float(det_score_thr)
        self.reduced_decode = bool(reduced_decode)
        self.train = train
        data = _read_json(self.ann_file, "annotation file")
        if not isinstance(data, dict):
            raise DataError(
                f"annotation file {self.ann_file}: expected a JSON object with 'images' and 'annotations', "
                f"got a {type(data).__name__}; is this a COCO keypoint file?"
            )
        for key in ("images", "annotations"):
            if not isinstance(data.get(key), list):
                problem = "has no" if key not in data else "has a non-list"
                raise DataError(
                    f"annotation file {self.ann_file}: {problem} '{key}' list; is this a COCO keypoint file?"
                )
        self._images = self._parse_images(data["images"])
        # Per instance: image id, annotation id, score, box, keypoints (K, 2), visible (K,).
        self._image_ids: list[int] = []
        self._ann_ids: list[int] = []
        self._scores: list[float] = []
        self._boxes: list[np.ndarray] = []
        self._keypoints: list[np.ndarray | None] = []
        self._visible: list[np.ndarray | None] = []
        if self.det_file is None:
            self._parse_annotations(data["annotations"])
        else:
            self._parse_detections()

    def __len__(self) -> int:
        return len(self._image_ids)

    def load(self, index: int) -> dict[str, Any]:
        """The record of instance ``index``; its image is decoded now (with ``reduced_decode``: only its header
        is read, and the transform decodes it)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} instances")
        image_id = self._image_ids[index]
        num_keypoints = self.keypoint_info.num_keypoints
        keypoints = self._keypoints[index]
        visible = self._visible[index]
        return {
            "image": self._decode(image_id),
            "keypoints": np.zeros((num_keypoints, 2), np.float32) if keypoints is None else keypoints.copy(),
            "visible": np.zeros(num_keypoints, np.float32) if visible is None else visible.copy(),
            "box": self._boxes[index].copy(),
            "image_id": image_id,
            "score": self._scores[index],
            "ann_id": self._ann_ids[index],
        }

    def _parse_images(self, images: list) -> dict[int, tuple[str, int | None, int | None]]:
        """Image id -> (file name, width, height), checking that each entry has an id and a file name."""
        parsed = {}
        for position, entry in enumerate(images):
            image_id = entry.get("id") if isinstance(entry, dict) else None
            if not isinstance(image_id, int) or isinstance(image_id, bool):
                raise DataError(
                    f"annotation file {self.ann_file}: images[{position}] has no integer 'id'; fix the 'images' list"
                )
            file_name = entry.get("file_name")
            if not isinstance(file_name, str) or not file_name:
                raise DataError(
                    f"annotation file {self.ann_file}: image id {image_id} has no 'file_name'; fix the 'images' list"
                )
            if image_id in parsed:
                raise DataError(
                    f"annotation file {self.ann_file}: image id {image_id} appears twice in 'images'; "
                    f"image ids must be unique"
                )
            width, height = entry.get("width"), entry.get("height")
            parsed[image_id] = (
                file_name,
                width if isinstance(width, int) else None,
                height if isinstance(height, int) else None,
            )
        return parsed

    def _parse_annotations(self, annotations: list) -> None:
        expected = self.keypoint_info.num_keypoints
        for position, ann in enumerate(annotations):
            if not isinstance(ann, dict):
                raise DataError(
                    f"annotation file {self.ann_file}: annotations[{position}] is not an object; fix the file"
                )
            ann_id = ann.get("id", -1)
            where = f"annotation file {self.ann_file}: annotation id {ann_id}"
            image_id = ann.get("image_id")
            if image_id not in self._images:
                raise DataError(f"{where} refers to image id {image_id}, which is not in 'images'; fix the file")
            if ann.get("iscrowd", 0):
                continue
            box = _box(ann.get("bbox"))
            if box is None:
                raise DataError(f"{where} (image id {image_id}): 'bbox' is not four numbers [x, y, w, h]; fix the file")
            box = _clipped(box, *self._images[image_id][1:])
            if not (box[2] > 0 and box[3] > 0):
                continue
            values = ann.get("keypoints")
            if not isinstance(values, list) or len(values) != 3 * expected:
                count = len(values) if isinstance(values, list) else 0
                raise DataError(
                    f"{where} (image id {image_id}): {count / 3:g} keypoints found ({count} values), expected "
                    f"{expected} ({3 * expected} values); set the dataset's keypoints (or keypoint_names, "
                    f"flip_pairs, skeleton and sigmas) to match the file"
                )
            try:
                triples = np.asarray(values, dtype=np.float32).reshape(expected, 3)
            except (TypeError, ValueError):
                raise DataError(f"{where} (image id {image_id}): 'keypoints' holds non-numbers; fix the file") from None
            visible = (triples[:, 2] > 0).astype(np.float32)
            if self.train and not visible.any():
                continue
            self._add(image_id, int(ann_id), 1.0, box, triples[:, :2].copy(), visible)

    def _parse_detections(self) -> None:
        detections = _read_json(self.det_file, "detection file")
        if not isinstance(detections, list):
            raise DataError(
                f"detection file {self.det_file}: expected a COCO results list of "
                f"{{'image_id', 'bbox', 'score'}}, got a {type(detections).__name__}; check the file"
            )
        for position, det in enumerate(detections):
            where = f"detection file {self.det_file}: detection {position}"
            if not isinstance(det, dict):
                raise DataError(f"{where} is not an object; check the file")
            image_id = det.get("image_id")
            if image_id not in self._images:
                raise DataError(
                    f"{where} refers to image id {image_id}, which is not in {self.ann_file}; "
                    f"use the detections made for this annotation file"
                )
            box = _box(det.get("bbox"))
            score = det.get("score")
            if box is None or not isinstance(score, (int, float)) or not math.isfinite(score):
                raise DataError(
                    f"{where} (image id {image_id}): needs 'bbox' [x, y, w, h] and a numeric 'score'; check the file"
                )
            if score < self.det_score_thr or not (box[2] > 0 and box[3] > 0):
                continue
            self._add(image_id, -1, float(score), box, None, None)

    def _add(self, image_id, ann_id, score, box, keypoints, visible) -> None:
        self._image_ids.append(image_id)
        self._ann_ids.append(ann_id)
        self._scores.append(score)
        self._boxes.append(box)
        self._keypoints.append(keypoints)
        self._visible.append(visible)

    def _decode(self, image_id: int) -> EncodedImage:
        file_name, width, height = self._images[image_id]
        path = self.img_dir / file_name
        where = f"image {path} (image id {image_id}, from {self.ann_file.name})"
        if not path.is_file():
            raise DataError(f"{where}: not found; check img_dir and the 'file_name' in the annotation file")
        image = EncodedImage(path, where, self.reduced_decode)
        if width is not None and height is not None and image.shape[:2] != (height, width):
            raise DataError(
                f"{where}: is {image.shape[1]}x{image.shape[0]} but the annotation file says {width}x{height}; "
                f"the image does not match its annotations"
            )
        return image


class EncodedImage:
    """An image file as a record's ``image``: uint8 RGB (H, W, 3) wherever an array is expected (``shape``,
    ``np.asarray``, indexing), decoded once by OpenCV (as MMPose's LoadImage decodes, EXIF orientation ignored), or
    with ``reduced``, by the top-down crop at the scale it needs (libjpeg's DCT scaling; other formats decode in
    full). What OpenCV cannot read, Pillow decodes or explains; a missing or undecodable file raises DataError naming
    it as ``where``."""

    dtype = np.dtype(np.uint8)

    def __init__(self, path: PathLike, where: str | None = None, reduced: bool = False) -> None:
        self.path = Path(path)
        self.where = where or f"image {path}"
        self.reduced = reduced
        self._full: np.ndarray | None = None
        try:
            self._encoded = self.path.read_bytes()  # read once: every decode and the header below use it
        except FileNotFoundError:
            raise DataError(f"{self.where}: not found; check the path") from None
        except OSError as error:
            raise self._undecodable(error) from None
        if reduced:  # the size from the header alone: the crop decides the scale
            with self._pillow_call(Image.open, io.BytesIO(self._encoded)) as opened:
                width, height = opened.size
                self._jpeg = opened.format == "JPEG"
            self.shape = (height, width, 3)
        else:
            self.shape = self.decode()[0].shape

    def decode(self, largest_factor: int = 1) -> tuple[np.ndarray, int]:
        """The RGB pixels decoded at 1 / factor of the image's size, and that factor: the largest of 1, 2, 4 and 8 up
        to ``largest_factor`` (1 unless ``reduced`` and a JPEG). Reduced pixel (i, j) covers full pixels
        [f i, f (i + 1)) x [f j, f (j + 1)): its centre is full pixel (f i + (f - 1) / 2, f j + (f - 1) / 2)."""
        import cv2

        factor = 1
        if self.reduced and self._jpeg:
            factor = max((f for f in (8, 4, 2) if f <= largest_factor), default=1)
        if factor == 1 and self._full is not None:
            return self._full, 1
        # With IMREAD_COLOR_RGB in the flags, OpenCV's reduced "grayscale" flags decode colour at that scale.
        reduced = {1: 0, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                   8: cv2.IMREAD_REDUCED_GRAYSCALE_8}[factor]
        flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION | reduced
        pixels = cv2.imdecode(np.frombuffer(self._encoded, dtype=np.uint8), flags) if self._encoded else None
        if pixels is None:  # a format OpenCV does not read, or a broken file: Pillow's decoding or its reason
            with self._pillow_call(Image.open, io.BytesIO(self._encoded)) as opened:
                pixels = np.array(self._pillow_call(opened.convert, "RGB"))  # writable, as OpenCV's
        if factor == 1:
            self._full = pixels
        return pixels, factor

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        pixels = self.decode()[0]
        if dtype is not None and np.dtype(dtype) != pixels.dtype:
            return pixels.astype(dtype)
        return pixels.copy() if copy else pixels

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.decode()[0][key]

    def _pillow_call(self, function: Any, *args: Any) -> Any:
        try:
            return function(*args)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise self._undecodable(error) from None

    def _undecodable(self, error: Exception) -> DataError:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return DataError(f"{self.where}: cannot be decoded ({reason}); replace the file with a valid image")


def read_image(path: PathLike, where: str | None = None) -> np.ndarray:
    """Decode an image file to uint8 RGB (H, W, 3); a missing or undecodable file raises DataError.

    ``where`` names the image in the message (default: ``image PATH``).
    """
    return EncodedImage(path, where).decode()[0]
