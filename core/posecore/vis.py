"""Vis backends: where logged scalars go. ``LocalVisBackend`` is the core's; plugins add more, under the contract
in :func:`posecore.hookspecs.vis_backends`, whose optional methods the run serves with the helpers here."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

from posecore.checkpoint import atomic_write
from posecore.config import Section


class LocalVisBackend:
    """Appends one JSON object per logging step to ``vis_data/scalars.json`` (MMEngine's format)."""

    options = Section({}, "Appends each logging step's scalars to `vis_data/scalars.json` (MMEngine's format); "
                          "no options.")

    def __init__(self, vis_dir: Path, resume_step: int | None = None) -> None:
        path = vis_dir / "scalars.json"
        if resume_step is not None and path.exists():
            # Drop what a crash left after the checkpoint we continue from (steps must not repeat), and a
            # line it tore mid-write.
            records = [_record(line) for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
                       if line.strip()]
            kept = [record for record in records if record is not None and record["step"] <= resume_step]
            torn = records.count(None)
            if torn:
                logging.getLogger("posecore").warning("%s: dropped %d unreadable line(s), as a crash during a write "
                                                      "leaves them", path, torn)
            text = "".join(json.dumps(record) + "\n" for record in kept)
            atomic_write(path, lambda file: file.write(text.encode()))
        self.file = open(path, "a", encoding="utf-8", buffering=1)  # line-buffered: readable while training

    def add_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        self.file.write(json.dumps({**scalars, "step": step}) + "\n")

    def add_config(self, text: str) -> None:
        """The config is already dumped to ``vis_data/config.toml`` by the core."""

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _record(line: str) -> dict[str, Any] | None:
    """One ``scalars.json`` line as written, or None for a torn or foreign one."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def prediction_grid(run: Any, count: int) -> Any:
    """The first ``count`` validation crops, ground truth (green) and prediction (red) drawn, as one (H, W, 3)
    uint8 image; the model predicts in eval mode and is put back as it was."""
    import numpy as np
    import torch

    from posecore.evaluation import predict
    from posecore.pose.draw import draw_pose, grid, to_uint8
    from posecore.pose.transforms import transform_points

    dataset = run.val_loader.dataset
    samples = [dataset[(0, i)] for i in range(min(count, len(dataset)))]
    center, scale = np.stack([s["center"] for s in samples]), np.stack([s["scale"] for s in samples])
    model = run.eval_model
    was_training = model.training
    model.eval()
    predicted, _ = predict(run, torch.from_numpy(np.stack([s["img"] for s in samples])), center, scale)
    model.train(was_training)
    input_size = run.codec.input_size
    tiles = []
    for sample, keypoints in zip(samples, predicted.numpy()):
        to_crop = dataset.transform.crop_matrix(sample["center"], sample["scale"], 0.0, input_size)
        image = draw_pose(to_uint8(sample["img"]), transform_points(sample["keypoints"], to_crop), sample["visible"],
                          run.layout.skeleton, _GROUND_TRUTH)
        tiles.append(draw_pose(image, transform_points(keypoints, to_crop), np.ones(len(keypoints)),
                               run.layout.skeleton, _PREDICTED))
    return grid(tiles, columns=min(4, len(tiles)))


def add_predictions(run: Any) -> None:
    """Hand each backend with ``add_image`` and ``num_images`` > 0 the :func:`prediction_grid` of that many crops,
    at ``run.iteration``; each size is drawn once."""
    grids: dict[int, Any] = {}
    for backend in run.backends:
        count = getattr(backend, "num_images", 0)
        if count > 0 and hasattr(backend, "add_image"):
            if count not in grids:
                grids[count] = prediction_grid(run, count)
            backend.add_image("val/predictions", grids[count], run.iteration)


def hparams(run: Any) -> dict[str, Any]:
    """The run's main settings, as a backend's ``summarize`` gets them (e.g. TensorBoard's HParams), so that runs
    compare side by side."""
    config = run.config
    return {"optim.type": config["optim"]["type"], "optim.lr": config["optim"]["lr"],
            "optim.weight_decay": config["optim"]["weight_decay"], "model.type": config["model"]["type"],
            "batch_size": config["train_dataloader"]["batch_size"], "max_iters": run.max_iters, "seed": run.seed,
            "codec.type": config["codec"]["type"], "input_size": str(list(run.codec.input_size))}


_GROUND_TRUTH, _PREDICTED = (60, 220, 60), (235, 50, 50)
