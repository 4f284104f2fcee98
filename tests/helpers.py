"""Test helpers: run the real ``posecore`` command in a fresh process, write configs and throwaway plugins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from posecore.config import dumps
from posecore.testing import TINY_CONFIG

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
COCO = SHARED_DATA / "coco"


def write_tiny_config(folder: Path, **sections: object) -> Path:
    """TINY_CONFIG (a run of about a second), with whole sections replaced by ``sections``, as ``folder/tiny.toml``."""
    path = folder / "tiny.toml"
    path.write_text(dumps({**TINY_CONFIG, **sections}), encoding="utf-8")
    return path


def coco_config(folder: Path, **det_options: float) -> Path:
    """A tiny run training on the COCO sample's GT boxes, validated by COCO AP on its detected boxes."""
    dataset = {"type": "CocoKeypoints", "ann_file": str(COCO / "test_coco.json"), "img_dir": str(COCO)}
    detected = {**dataset, "det_file": str(COCO / "test_coco_det_AP_H_56.json"), **det_options}
    return write_tiny_config(folder, train_dataloader={"batch_size": 2, "num_workers": 0, "dataset": dataset},
                             val_dataloader={"batch_size": 8, "dataset": detected},
                             val_evaluator={"type": "CocoMetric"})


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
             env: dict[str, str] | None = None, popen: bool = False,
             cwd: Path | None = None) -> subprocess.CompletedProcess | subprocess.Popen:
    """Run ``torchrun --standalone --nproc_per_node=NPROC -m posecore ARGS`` (started, not waited for, if ``popen``)."""
    environment = _environment(pythonpath, {"OMP_NUM_THREADS": "1", **(env or {})})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "posecore", *args]
    if popen:
        return subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=cwd)
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
