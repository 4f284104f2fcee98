"""Write hsv_jitter.npz: MMDetection 3.x's YOLOXHSVRandomAug arithmetic on fixed gains, done with OpenCV.

Run with an environment that has OpenCV (``/work/mmpose-ref/bin/python tests/golden/make_hsv_jitter.py``; MMDetection
itself is not needed: its transform draws random gains, so the formula is applied here to given ones). The
formula: OpenCV's uint8 HSV of the BGR image as int16, hue + gain modulo 180, saturation and value + gain clipped
to [0, 255], back to uint8 BGR. tests/test_photometric.py compares posecore.pose.photometric.hsv_jitter (which
takes RGB crops) with the file. The image and gains are fixed numbers, so rerunning rewrites the same file.

Arrays: ``image`` (16, 12, 3) uint8 RGB (random colours, greys, black, white, saturated primaries); ``gains``
(G, 3) int16 (hue, saturation, value), with hue wrapping both ways and clipping at both ends; ``outputs``
(G, 16, 12, 3) uint8 RGB.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

OUT = Path(__file__).with_name("hsv_jitter.npz")
GAINS = np.array([[3, -20, 25], [-5, 30, -30], [0, 0, 17], [-4, -30, 0], [5, 0, 0], [0, 29, 0]], dtype=np.int16)


def source_image() -> np.ndarray:
    image = np.random.default_rng(0).integers(0, 256, (16, 12, 3), dtype=np.uint8)
    image[0, :6] = [[0, 0, 0], [255, 255, 255], [128, 128, 128], [255, 0, 0], [0, 255, 0], [0, 0, 255]]
    image[1, :3] = [[250, 10, 5], [3, 3, 250], [200, 200, 10]]  # hues near 0 and 179, to wrap
    return image


def yolox_hsv(image_bgr: np.ndarray, gains: np.ndarray) -> np.ndarray:
    hsv = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2HSV).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + gains[0]) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] + gains[1], 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] + gains[2], 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)


def main() -> None:
    image = source_image()
    outputs = np.stack([yolox_hsv(image[..., ::-1].copy(), gains)[..., ::-1] for gains in GAINS])
    np.savez_compressed(OUT, image=image, gains=GAINS, outputs=outputs)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
