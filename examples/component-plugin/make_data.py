"""Write a small data set in KeypointFolder's format: posecore's synthetic stick figures as JPEG images, each with
a JSON file of its figure's keypoints and box.

    python make_data.py    # data/train (512 images) and data/val (64 images), beside this file
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from posecore.pose.synthetic import SyntheticPoses


def write_folder(folder: Path, count: int, size: int, seed: int) -> None:
    """``count`` scenes of ``size`` x ``size`` pixels (figures of ``seed``) as ``img_NNNN.jpg`` + ``.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    figures = SyntheticPoses(num_samples=count, image_size=(size, size), seed=seed)
    for index in range(count):
        record = figures.load(index)
        Image.fromarray(record["image"]).save(folder / f"img_{index:04d}.jpg", quality=95)
        keypoints = [[round(x, 2), round(y, 2), 2 if v else 0]
                     for (x, y), v in zip(record["keypoints"].tolist(), record["visible"].tolist())]
        person = {"keypoints": keypoints, "box": [round(v, 2) for v in record["box"].tolist()]}
        (folder / f"img_{index:04d}.json").write_text(json.dumps(person), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data",
                        help="where train/ and val/ go (default: data/ beside this file)")
    parser.add_argument("--train", type=int, default=512, help="training images")
    parser.add_argument("--val", type=int, default=64, help="validation images")
    parser.add_argument("--size", type=int, default=96, help="image width and height in pixels")
    args = parser.parse_args()
    write_folder(args.out / "train", args.train, args.size, seed=0)
    write_folder(args.out / "val", args.val, args.size, seed=1)
    print(f"wrote {args.train} training and {args.val} validation images to {args.out}")


if __name__ == "__main__":
    main()
