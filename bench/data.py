"""Data pipeline throughput at MMPose's settings: posecore's top-down pipeline beside MMPose's own, the decode + crop
limit, the levers, and DataLoader workers.

    .venv/bin/python bench/data.py                     # about 3 minutes; needs ../shared/data (COCO sample)
    .venv/bin/python bench/data.py --seconds 2 --rounds 3
    PYTHONPATH=/path/to/albumentations .venv/bin/python bench/data.py   # adds RTMPose's photometric steps

Images: the 12 annotated persons of the COCO val2017 sample, cycled through (epoch, index) keys; one process, torch
at one thread (a DataLoader worker's setting).

1. Per process, samples/s, in ``--rounds`` rounds that alternate between the rows (so all see the same machine);
   the median round is shown:
   * limit: OpenCV decode + one OpenCV bilinear warp to 192x256 (what MMPose's LoadImage and TopdownAffine call),
     the least a top-down pipeline must do; beside it Pillow's decode + bilinear affine transform;
   * HRNet-W32 (examples/mmpose/td-hm_hrnet-w32_8xb64-210e_coco-256x192.toml): flip, half body, shift, scale and
     rotation at MMPose's values, MSRAHeatmap 48x64 targets, through ``KeyedDataset`` as training uses it; with
     ``reduced_decode`` off (the default) and on;
   * RTMPose stage 1 (examples/mmpose/rtmpose-m_8xb256-420e_coco-256x192.toml): the same geometry (scale 0.6-1.4),
     HSV jitter, albumentations Blur/MedianBlur/CoarseDropout (when importable; else HSV only) and SimCCLabel;
   * MMPose's own HRNet-W32 training pipeline (LoadImage, GetBBoxCenterScale, RandomFlip, RandomHalfBody,
     RandomBBoxTransform, TopdownAffine, GenerateTarget with MSRAHeatmap, PackPoseInputs) on the same records, in a
     process of the reference venv (``--mmpose-python``, default /work/mmpose-ref/bin/python) that measures when
     asked, interleaved with posecore's rows.
2. The levers, each measured against the pipeline without it: reduced-scale decoding, and the share of target
   generation (``codec.encode`` alone). (Levers measured against earlier commits are in bench/README.md.)
3. A DataLoader over the HRNet pipeline (batch ``--batch``) with 0, 1 and 2 workers, persistent workers: samples/s
   after the first batch (worker start-up excluded).
4. Where a sample's time goes: ms per call of each step of the HRNet pipeline, alone (each on already decoded
   records, except the whole sample, the record's load and the decode), and the collation of a batch.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
COCO = REPO.parent / "shared" / "data" / "coco"
SIZE = (192, 256)
HRNET = REPO / "examples" / "mmpose" / "td-hm_hrnet-w32_8xb64-210e_coco-256x192.toml"
RTMPOSE = REPO / "examples" / "mmpose" / "rtmpose-m_8xb256-420e_coco-256x192.toml"


def rate(step, seconds: float) -> float:
    """Calls of ``step`` per second, over at least ``seconds`` (after one warm-up call)."""
    step()
    count, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < seconds:
        step()
        count += 1
    return count / (time.perf_counter() - begin)


# ---------------------------------------------------------------- MMPose's pipeline (run by the reference python)

def mmpose_server() -> None:
    """Build MMPose's HRNet-W32 training pipeline on the sample's records; for each line ``SECONDS`` on stdin,
    print its samples/s over that time."""
    from mmengine.registry import init_default_scope
    from mmpose.datasets.datasets.utils import parse_pose_metainfo
    from mmpose.datasets.transforms import (GenerateTarget, GetBBoxCenterScale, LoadImage, PackPoseInputs,
                                            RandomBBoxTransform, RandomFlip, RandomHalfBody, TopdownAffine)

    import mmpose
    init_default_scope("mmpose")
    meta = parse_pose_metainfo(dict(from_file=str(Path(mmpose.__file__).parent / ".mim/configs/_base_/datasets/"
                                                                                  "coco.py")))
    steps = [LoadImage(), GetBBoxCenterScale(), RandomFlip(direction="horizontal"), RandomHalfBody(),
             RandomBBoxTransform(), TopdownAffine(input_size=SIZE),
             GenerateTarget(encoder=dict(type="MSRAHeatmap", input_size=SIZE, heatmap_size=(48, 64), sigma=2)),
             PackPoseInputs()]
    data = json.loads((COCO / "test_coco.json").read_text())
    files = {image["id"]: image["file_name"] for image in data["images"]}
    records = []
    for ann in data["annotations"]:
        triples = np.array(ann["keypoints"], dtype=np.float32).reshape(1, -1, 3)
        if ann.get("iscrowd") or not (triples[..., 2] > 0).any():
            continue
        x, y, w, h = ann["bbox"]
        records.append(dict(img_path=str(COCO / files[ann["image_id"]]), bbox=np.array([[x, y, x + w, y + h]],
                            dtype=np.float32), bbox_score=np.ones(1, dtype=np.float32), keypoints=triples[..., :2],
                            keypoints_visible=np.minimum(1, triples[..., 2]), flip_indices=meta["flip_indices"],
                            upper_body_ids=meta["upper_body_ids"], lower_body_ids=meta["lower_body_ids"],
                            dataset_keypoint_weights=meta["dataset_keypoint_weights"]))
    cycle = itertools.cycle(records)

    def step() -> None:
        results = dict(next(cycle))
        for transform in steps:
            results = transform(results)

    print(json.dumps({"persons": len(records)}), flush=True)
    for line in sys.stdin:
        print(json.dumps({"rate": rate(step, float(line))}), flush=True)


class MMPose:
    """The reference venv's process running :func:`mmpose_server`, or None where that python has no mmpose."""

    def __init__(self, python: str) -> None:
        self.process = subprocess.Popen([python, __file__, "--mmpose-server"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.persons = json.loads(self.process.stdout.readline())["persons"]

    def __call__(self, seconds: float) -> float:
        self.process.stdin.write(f"{seconds}\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())["rate"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


# ---------------------------------------------------------------- posecore's pipelines

def pipeline(config: Path, reduced_decode: bool = False, photometric: bool = True):
    """posecore's training dataset for ``config``'s codec and ``[augment]`` (without its switch) on the sample."""
    import tomllib
    from types import SimpleNamespace

    from posecore.data import KeyedDataset, build_transform
    from posecore.pose import mmpose_codecs, simcc
    from posecore.pose.coco import CocoKeypoints

    table = tomllib.loads(config.read_text())
    codec_options = dict(table["codec"])
    kind = codec_options.pop("type")
    codec = getattr(mmpose_codecs, kind, None) or getattr(simcc, kind)
    augment = {key: value for key, value in table["augment"].items() if key != "switch"}
    if not photometric:
        augment = {key: value for key, value in augment.items() if not key.startswith(("hsv_", "albumentations"))}
    source = CocoKeypoints(COCO / "test_coco.json", COCO, reduced_decode=reduced_decode)
    run = SimpleNamespace(config={"augment": augment}, codec=codec(**codec_options))
    return KeyedDataset(source, build_transform(run, CocoKeypoints.layout({"keypoints": "coco17"}), True), seed=0)


def pipeline_step(dataset):
    keys = itertools.cycle((epoch, index) for epoch in range(10**6) for index in range(len(dataset)))
    return lambda: dataset[next(keys)]


def limit_step(library: str):
    """Decode + one bilinear crop of each person box, cycling through the sample: with ``library`` "opencv"
    (``imdecode`` + ``warpAffine``) or "pillow" (``Image.open`` + ``load`` + affine ``transform``)."""
    import cv2
    from PIL import Image

    from posecore.pose.coco import CocoKeypoints
    from posecore.pose.transforms import affine_matrix, box_to_center_scale, invert_affine

    source = CocoKeypoints(COCO / "test_coco.json", COCO)
    jobs = []
    for index in range(len(source)):
        record = source.load(index)
        center, scale = box_to_center_scale(record["box"], SIZE[0] / SIZE[1])
        matrix = affine_matrix(center, scale, 0.0, SIZE)  # image pixel -> output pixel
        jobs.append((record["image"].path, matrix, tuple(invert_affine(matrix).ravel())))
    cycle = itertools.cycle(jobs)
    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION

    def opencv() -> None:
        path, matrix, _ = next(cycle)
        cv2.warpAffine(cv2.imdecode(np.fromfile(path, dtype=np.uint8), flags), matrix, SIZE, flags=cv2.INTER_LINEAR)

    def pillow() -> None:
        path, _, coefficients = next(cycle)
        with Image.open(path) as image:
            np.asarray(image.convert("RGB").transform(SIZE, Image.AFFINE, coefficients, resample=Image.BILINEAR))

    return {"opencv": opencv, "pillow": pillow}[library]


def encode_step(dataset):
    """The codec's ``encode`` alone, on the sample's keypoints placed in the crop."""
    transform, source = dataset.transform, dataset.source
    cases = itertools.cycle([(source.load(i)["keypoints"] * 0.5, source.load(i)["visible"]) for i in range(len(source))])
    return lambda: transform.codec.encode(*next(cases))


def step_times(dataset, batch: int, seconds: float) -> dict[str, float]:
    """Milliseconds per call of each step (see the module docstring, item 4)."""
    import cv2
    from torch.utils.data import default_collate

    from posecore.pose.transforms import normalise, warp_affine

    source, transform = dataset.source, dataset.transform
    count = len(source)
    turn = itertools.count()
    records = [source.load(index) for index in range(count)]
    paths = [record["image"].path for record in records]
    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
    generator = np.random.default_rng(0)
    matrix = np.array([[0.8, 0.1, -100.0], [-0.1, 0.8, -50.0]])
    crop = warp_affine(records[0]["image"], matrix, SIZE)
    samples = [dataset[(0, index % count)] for index in range(batch)]
    steps = {
        "whole sample (KeyedDataset[(epoch, index)])": lambda: dataset[(0, next(turn) % count)],
        "  the record's load (with its decode)": lambda: source.load(next(turn) % count),
        "  np.fromfile + cv2.imdecode": lambda: cv2.imdecode(np.fromfile(paths[next(turn) % count], np.uint8), flags),
        "  transform of a decoded record": lambda: transform(records[next(turn) % count], generator),
        "    warp_affine": lambda: warp_affine(records[next(turn) % count]["image"], matrix, SIZE),
        "    normalise": lambda: normalise(crop),
        "    codec.encode": encode_step(dataset),
        f"collate {batch} samples": lambda: default_collate(samples),
    }
    return {name: 1000 / rate(step, seconds) for name, step in steps.items()}


def loader_rate(dataset, workers: int, batch: int, seconds: float) -> float:
    import torch
    from torch.utils.data import DataLoader

    keys = [(epoch, index) for epoch in range(5000) for index in range(len(dataset))]
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
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per row and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--mmpose-python", default="/work/mmpose-ref/bin/python")
    parser.add_argument("--mmpose-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mmpose_server:
        return mmpose_server()
    if not (COCO / "test_coco.json").is_file():
        sys.exit(f"COCO sample not found at {COCO} (see ../shared/data/README.md)")
    import torch

    torch.set_num_threads(1)
    rtm_photometric = importlib.util.find_spec("albumentations") is not None
    rtm_label = ("RTMPose stage 1: HSV + albumentations, SimCC" if rtm_photometric else
                 "RTMPose stage 1: geometry only (no albumentations), SimCC")
    hrnet = pipeline(HRNET)
    rows = {
        "limit: OpenCV decode + warpAffine crop 192x256": limit_step("opencv"),
        "  Pillow decode + affine transform crop 192x256": limit_step("pillow"),
        "posecore HRNet-W32 pipeline": pipeline_step(hrnet),
        "  with reduced_decode = true": pipeline_step(pipeline(HRNET, reduced_decode=True)),
        f"posecore {rtm_label}": pipeline_step(pipeline(RTMPOSE, photometric=rtm_photometric)),
        "  MSRAHeatmap encode alone (targets)": encode_step(hrnet),
    }
    mmpose = None
    if args.mmpose_python and Path(args.mmpose_python).exists():
        mmpose = MMPose(args.mmpose_python)
        rows["MMPose HRNet-W32 pipeline (reference venv)"] = mmpose
    rounds = {name: [] for name in rows}
    for _ in range(args.rounds):
        for name, step in rows.items():
            rounds[name].append(step(args.seconds) if step is mmpose else rate(step, args.seconds))
    if mmpose is not None:
        mmpose.close()
    median = {name: statistics.median(values) for name, values in rounds.items()}
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; {args.rounds} rounds of {args.seconds:g} s per row, interleaved")
    print(f"\n{'per process':58s} {'samples/s':>10s}  {'rounds':s}")
    for name, value in median.items():
        print(f"{name:58s} {value:10.1f}  {' '.join(f'{v:.0f}' for v in rounds[name])}")
    ours, limit = median["posecore HRNet-W32 pipeline"], median["limit: OpenCV decode + warpAffine crop 192x256"]
    print(f"\nposecore HRNet / limit: {ours / limit:.2f} (limit / posecore {limit / ours:.2f})")
    if mmpose is not None:
        print(f"posecore HRNet / MMPose HRNet: {ours / median['MMPose HRNet-W32 pipeline (reference venv)']:.2f}")
    print(f"\nDataLoader, HRNet-W32 pipeline, batch {args.batch}, persistent workers")
    print("num_workers  samples/s")
    for workers in (0, 1, 2):
        print(f"{workers:11d}  {loader_rate(hrnet, workers, args.batch, args.seconds):9.1f}")
    print("\nWhere the time goes (HRNet-W32 pipeline)     ms per call")
    for name, milliseconds in step_times(hrnet, args.batch, args.seconds).items():
        print(f"{name:46s} {milliseconds:8.3f}")


if __name__ == "__main__":
    main()
