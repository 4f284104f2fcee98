"""Reduced-scale JPEG decoding (``reduced_decode``): crops stay those of full decoding, up to area averaging."""

from __future__ import annotations

import numpy as np
from PIL import Image

from helpers import SHARED_COCO, require_shared_data
from posecore.pose.coco import CocoKeypoints, EncodedImage
from posecore.pose.transforms import affine_matrix, box_to_center_scale, warp_affine

SIZE = (192, 256)


def _area_averaged(image: EncodedImage, factor: int) -> Image.Image:
    """The full decode averaged over factor x factor blocks: what DCT scaling approximates, on its pixel grid."""
    full = np.asarray(image, dtype=np.float64)
    height, width = full.shape[0] // factor, full.shape[1] // factor
    blocks = full[:height * factor, :width * factor].reshape(height, factor, width, factor, 3).mean(axis=(1, 3))
    return Image.fromarray(np.round(blocks).astype(np.uint8))


def _compare(path, center, scale, rotation):
    """Mean absolute differences of the reduced-scale crop from full decoding's and from the area-averaged one's,
    and the factor used."""
    matrix = affine_matrix(center, scale, rotation, SIZE)
    full = EncodedImage(path)
    reduced = warp_affine(EncodedImage(path, reduced=True), matrix, SIZE).astype(np.float32)
    factor = EncodedImage(path, reduced=True).decode(int(1 / np.linalg.norm(matrix[:, :2], ord=2)))[1]
    offset = (factor - 1) / 2
    on_grid = np.concatenate([matrix[:, :2] * factor, (matrix[:, :2] @ [offset, offset] + matrix[:, 2])[:, None]],
                             axis=1)
    averaged = warp_affine(_area_averaged(full, factor), on_grid, SIZE).astype(np.float32)
    return np.abs(reduced - warp_affine(full, matrix, SIZE)).mean(), np.abs(reduced - averaged).mean(), factor


def test_generated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:600, :800]
    pixels = np.stack([x * 0.3, y * 0.4, 128 + 100 * np.sin(x / 23.0) * np.cos(y / 31.0)], axis=-1)
    pixels += rng.normal(0, 3, pixels.shape)
    path = tmp_path / "scene.jpg"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    for scale, rotation in (((500, 667), 0.0), ((400, 533), 30.0), ((780, 1040), -45.0)):
        from_full, from_averaged, factor = _compare(path, (400.0, 300.0), np.array(scale, float), rotation)
        assert factor >= 2
        assert from_full < 2.0, (scale, from_full)
        assert from_averaged < 1.0, (scale, from_averaged)


def test_unreduced_crop_equals_the_array_crop(tmp_path):
    path = tmp_path / "small.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 70, 3), dtype=np.uint8)).save(path)
    image = EncodedImage(path, reduced=True)
    matrix = affine_matrix((30.0, 50.0), (80.0, 107.0), 20.0, SIZE)  # larger in the crop: decoded in full
    assert np.array_equal(warp_affine(image, matrix, SIZE), warp_affine(np.asarray(image), matrix, SIZE))


def test_coco_sample():
    require_shared_data()
    source = CocoKeypoints(SHARED_COCO.ann_file, SHARED_COCO.img_dir)
    from_full, from_averaged = [], []
    for index in range(len(source)):
        record = source.load(index)
        center, scale = box_to_center_scale(record["box"], SIZE[0] / SIZE[1])
        for enlarged in (1.5, 2.0):
            full, averaged, factor = _compare(record["image"].path, center, scale * enlarged, 0.0)
            if factor > 1:
                from_full.append(full)
                from_averaged.append(averaged)
    assert len(from_full) >= 8
    assert np.mean(from_full) < 3.5 and max(from_full) < 6.0, from_full
    assert max(from_averaged) < 1.5, from_averaged
