"""Data pipeline throughput: posecore's top-down pipeline against the practical limit, and DataLoader workers.

    .venv/bin/python bench/data.py                 # about a minute; needs ../shared/data (COCO sample)
    .venv/bin/python bench/data.py --seconds 5 --batch 32

1. Per worker (one process, no DataLoader), samples per second on the 12 annotated persons of the COCO
   val2017 sample at MMPose's 192x256 input (48x64 heatmaps), cycled:
   * bare: Pillow decode (``Image.open(...).convert("RGB")``) and one Pillow bilinear affine crop to
     192x256 -- the least any top-down pipeline must do, so the practical limit;
   * posecore: ``CocoKeypoints.load`` (Pillow decode) + ``TopDownTransform`` with training
     augmentation (random scale/rotation/flip, bilinear warp, normalisation, 17 Gaussian heatmaps),
     through ``KeyedDataset`` as training uses it.
   The same for the quickstart's synthetic figures (drawn, not decoded) at 48x64.
2. A DataLoader over the posecore pipeline (COCO, batch ``--batch``) with num_workers 0, 1 and 2,
   persistent workers, pinned memory when CUDA is present: samples per second after the first batch
   (worker start-up excluded), so you can tell how many workers keep a GPU busy.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from posecore.data import KeyedDataset
from posecore.pose.coco import CocoKeypoints
from posecore.pose.heatmap import GaussianHeatmap
from posecore.pose.synthetic import SyntheticPoses
from posecore.pose.transforms import TopDownTransform, affine_matrix, box_to_center_scale, invert_affine

COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco"
SIZE, HEATMAP = (192, 256), (48, 64)


def rate(step, seconds: float) -> float:
    """Calls of ``step`` per second, over at least ``seconds`` (after one warm-up call)."""
    step()
    count, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < seconds:
        step()
        count += 1
    return count / (time.perf_counter() - begin)


def bare_step(source: CocoKeypoints) -> callable:
    """Pillow decode + Pillow affine crop of each person box, cycling through the sample."""
    jobs = []
    for index in range(len(source)):
        image_id = source._image_ids[index]
        center, scale = box_to_center_scale(source._boxes[index], SIZE[0] / SIZE[1])
        inverse = invert_affine(affine_matrix(center, scale, 0.0, SIZE))  # output pixel -> image pixel
        jobs.append((source.img_dir / source._images[image_id][0], tuple(inverse.ravel())))
    cycle = itertools.cycle(jobs)

    def step() -> None:
        path, coefficients = next(cycle)
        with Image.open(path) as image:
            crop = image.convert("RGB").transform(SIZE, Image.AFFINE, coefficients, resample=Image.BILINEAR)
        np.asarray(crop)

    return step


def pipeline_step(dataset: KeyedDataset) -> callable:
    keys = itertools.cycle((epoch, index) for epoch in range(10**6) for index in range(len(dataset)))
    return lambda: dataset[next(keys)]


def loader_rate(dataset: KeyedDataset, workers: int, batch: int, seconds: float) -> float:
    keys = [(epoch, index) for epoch in range(2000) for index in range(len(dataset))]
    loader = DataLoader(dataset, batch_size=batch, sampler=keys, num_workers=workers,
                        persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())
    batches = iter(loader)
    next(batches)  # workers started and warm
    count, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < seconds:
        next(batches)
        count += batch
    return count / (time.perf_counter() - begin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per figure")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    if not (COCO / "test_coco.json").is_file():
        sys.exit(f"COCO sample not found at {COCO} (see ../shared/data/README.md)")
    torch.set_num_threads(1)  # a DataLoader worker's setting
    source = CocoKeypoints(COCO / "test_coco.json", COCO)
    coco = KeyedDataset(source, TopDownTransform(GaussianHeatmap(SIZE, HEATMAP, sigma=2.0)), seed=0)
    synthetic = KeyedDataset(SyntheticPoses(10_000, (128, 128), 0),
                             TopDownTransform(GaussianHeatmap((48, 64), (24, 32), sigma=1.5)), seed=0)
    bare = rate(bare_step(source), args.seconds)
    ours = rate(pipeline_step(coco), args.seconds)
    drawn = rate(pipeline_step(synthetic), args.seconds)
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"CUDA {'yes' if torch.cuda.is_available() else 'no'}; {args.seconds:g} s per figure")
    print("\nper worker (one process)                              samples/s")
    print(f"bare: Pillow decode + Pillow affine crop, COCO 192x256 {bare:9.1f}")
    print(f"posecore pipeline, COCO 192x256, augmented            {ours:9.1f}   ({ours / bare:.2f} of bare)")
    print(f"posecore pipeline, synthetic 48x64 (quickstart)       {drawn:9.1f}")
    print(f"\nDataLoader, COCO 192x256, batch {args.batch}, persistent workers"
          f"{', pinned memory' if torch.cuda.is_available() else ''}")
    print("num_workers  samples/s")
    for workers in (0, 1, 2):
        print(f"{workers:11d}  {loader_rate(coco, workers, args.batch, args.seconds):9.1f}")


if __name__ == "__main__":
    main()
