"""Test helpers: run the real ``posecore`` command in a fresh process, write configs and throwaway plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from posecore.config import dumps, read_toml
from posecore.testing import TINY_CONFIG

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("POSECORE_SHARED_DATA") or REPO.parent / "shared" / "data")
"""The real sample data (shared/data/README.md); POSECORE_SHARED_DATA points elsewhere, e.g. to test without it."""
COCO = SHARED_DATA / "coco"


@dataclass(frozen=True)
class CocoFiles:
    """A COCO keypoint data set on disk: annotations, their images, person detections and keypoint results."""

    ann_file: Path
    img_dir: Path
    det_file: Path
    results_file: Path


SHARED_COCO = CocoFiles(ann_file=COCO / "test_coco.json", img_dir=COCO, det_file=COCO / "test_coco_det_AP_H_56.json",
                        results_file=SHARED_DATA / "xtcocoapi_examples" / "annotations" / "example_coco_preds.json")
"""The 4-image COCO val2017 slice (12 persons with keypoints, 2 without), a detector's boxes and a model's results."""


def require_shared_data() -> Path:
    """SHARED_DATA if it is there; otherwise skip the calling test, or fail it under CI=true, where a skip
    would silently drop what only the real data tests."""
    if SHARED_COCO.ann_file.is_file():
        return SHARED_DATA
    message = f"shared sample data not found at {SHARED_DATA} (see shared/data/README.md; POSECORE_SHARED_DATA " \
              f"sets another place)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI=true requires it", pytrace=False)
    pytest.skip(message)


def write_tiny_config(folder: Path, **sections: object) -> Path:
    """TINY_CONFIG (a run of about a second), with whole sections replaced by ``sections``, as ``folder/tiny.toml``."""
    path = folder / "tiny.toml"
    path.write_text(dumps({**TINY_CONFIG, **sections}), encoding="utf-8")
    return path


def coco_config(folder: Path, files: CocoFiles = SHARED_COCO, **det_options: float) -> Path:
    """A tiny run training on the GT boxes of ``files`` (the shared COCO sample by default), validated by
    COCO AP on its detected boxes."""
    dataset = {"type": "CocoKeypoints", "ann_file": str(files.ann_file), "img_dir": str(files.img_dir)}
    detected = {**dataset, "det_file": str(files.det_file), **det_options}
    return write_tiny_config(folder, train_dataloader={"batch_size": 2, "num_workers": 0, "dataset": dataset},
                             val_dataloader={"batch_size": 8, "dataset": detected},
                             val_evaluator={"type": "CocoMetric"})


def coco_sample_config(folder: Path, files: CocoFiles) -> Path:
    """examples/coco_sample.toml (overfit and score by COCO AP on the same persons, all of them in each
    batch) on ``files``, as ``folder/coco_sample.toml``."""
    config = read_toml(REPO / "examples" / "coco_sample.toml")
    annotations = json.loads(files.ann_file.read_text(encoding="utf-8"))["annotations"]
    persons = sum(1 for ann in annotations if any(v > 0 for v in ann["keypoints"][2::3]))
    dataset = {"type": "CocoKeypoints", "ann_file": str(files.ann_file), "img_dir": str(files.img_dir)}
    for loader in ("train_dataloader", "val_dataloader"):
        config[loader].update(dataset=dataset, batch_size=persons)
    path = folder / "coco_sample.toml"
    path.write_text(dumps(config), encoding="utf-8")
    return path


def posecore(*args: str, cwd: Path | None = None, pythonpath: list[Path] = (), timeout: float = 300,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m posecore ARGS`` in a fresh process and capture its output."""
    return subprocess.run([sys.executable, "-m", "posecore", *args], cwd=cwd, env=_environment(pythonpath, env),
                          capture_output=True, text=True, timeout=timeout)


def _environment(pythonpath: list[Path], env: dict[str, str] | None) -> dict[str, str]:
    """This process's environment plus ``env``, without POSECORE_DEBUG, with ``pythonpath`` as PYTHONPATH."""
    environment = {**os.environ, **(env or {})}
    environment.pop("POSECORE_DEBUG", None)
    if pythonpath:
        environment["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    return environment


def torchrun(*args: str, nproc: int = 2, pythonpath: list[Path] = (), timeout: float = 300,
             env: dict[str, str] | None = None, popen: bool = False, cwd: Path | None = None,
             new_session: bool = False) -> subprocess.CompletedProcess | subprocess.Popen:
    """Run ``torchrun --standalone --nproc_per_node=NPROC -m posecore ARGS`` (started, not waited for, if
    ``popen``; in a process group of its own, as a batch job is, if ``new_session``)."""
    environment = _environment(pythonpath, {"OMP_NUM_THREADS": "1", **(env or {})})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "posecore", *args]
    if popen:
        return subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=cwd, start_new_session=new_session)
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def make_plugin_dist(root: Path, name: str, source: str, dist: str | None = None, version: str = "0.1.0") -> Path:
    """Install a throwaway plugin distribution into ``root`` (a folder to put on PYTHONPATH).

    It is a real installed distribution as importlib.metadata sees one: a module plus a
    ``.dist-info`` folder whose ``entry_points.txt`` registers it in the ``posecore`` group.
    """
    dist = dist or f"posecore-{name}-test"
    module = f"{dist.replace('-', '_')}"
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(source, encoding="utf-8")
    info = root / f"{module}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[posecore]\n{name} = {module}\n", encoding="utf-8")
    return root
