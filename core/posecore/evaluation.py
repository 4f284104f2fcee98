"""Prediction and validation for any model, codec and metric that follow :mod:`posecore.protocols`."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch

from posecore import data, dist
from posecore.pose.transforms import flip_order

if TYPE_CHECKING:
    from posecore.protocols import Output
    from posecore.run import Run


@torch.no_grad()
def predict(run: Run, images: torch.Tensor, center: Any, scale: Any,
            forward: Any = contextlib.nullcontext()) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints (N, K, 2) in image coordinates and their scores (N, K) for network inputs (N, 3, H, W) cropped
    around ``center`` (N, 2) at ``scale`` (N, 2). With ``model.flip_test``, the output for the mirrored inputs,
    mirrored back by the codec, is averaged in. Call with the model in eval mode.
    """
    images, model = images.to(run.device), run.eval_model
    with forward:
        output = model(images)
        if run.config["model"]["flip_test"]:
            order = flip_order(run.layout.num_keypoints, run.layout.flip_pairs)
            output = _average(output, run.codec.flip_back(model(images.flip(-1)), order))
    return run.codec.decode(output, center, scale)


def _average(output: Output, other: Output) -> Output:
    if isinstance(output, torch.Tensor):
        return (output.float() + other.float()) / 2
    return type(output)(_average(a, b) for a, b in zip(output, other))


def score(run: Run, forward: Any = contextlib.nullcontext()) -> tuple[dict[str, float], list[Any] | None]:
    """Predict on the validation data and score it with the run's metric: the metrics (on every rank), and the
    metric's results to write (rank 0; None if it gives none)."""
    model = run.eval_model
    model.eval()
    batches = []
    for batch in data.iterate(run.val_loader):
        # The crops are not kept (not even the last batch's): all of COCO's at 256x192 would be gigabytes.
        pred, pred_score = predict(run, batch.pop("img"), batch["center"], batch["scale"], forward)
        batches.append({**batch, "pred": pred, "pred_score": pred_score})
    model.train()
    val = {key: torch.cat([b[key] for b in batches]) for key in batches[0]}
    if run.world_size == 1:
        return run.metric(val)
    # Each rank predicted a share of the validation set: put the whole set together on rank 0.
    parts = dist.gather(val)
    if run.rank != 0:
        return dist.broadcast(None), None
    val = {key: torch.cat([part[key] for part in parts]) for key in val}
    order = torch.argsort(val["index"])
    metrics, results = run.metric({key: value[order] for key, value in val.items()})
    return dist.broadcast(metrics), results
