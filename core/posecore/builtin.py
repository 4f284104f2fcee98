"""The core's own hook implementations, registered like any plugin (under the name ``core``).

They run last (``trylast``), so a plugin's implementation of a first-result-wins hook replaces them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from posecore import hookimpl
from posecore.errors import ConfigError
from posecore.pose.skeleton import keypoint_layout
from posecore.schema import CORE_SCHEMA
from posecore.vis import LocalVisBackend

if TYPE_CHECKING:
    import torch

    from posecore.run import Run


@hookimpl
def config_schema() -> dict[str, Any]:
    return CORE_SCHEMA


@hookimpl
def vis_backends() -> dict[str, type]:
    return {"LocalVisBackend": LocalVisBackend}


@hookimpl(trylast=True)
def configure(config: dict[str, Any]) -> None:
    train = config["train"]
    if ("max_iters" in train) == ("max_epochs" in train):
        raise ConfigError("set exactly one of train.max_iters and train.max_epochs")
    layouts = []
    for section in ("train_dataloader", "val_dataloader"):
        dataset = config[section]["dataset"]
        missing = [k for k in ("ann_file", "img_dir") if dataset["type"] == "CocoKeypoints" and k not in dataset]
        if missing:
            raise ConfigError(f"{section}.dataset of type CocoKeypoints needs {' and '.join(missing)}")
        try:
            layouts.append(keypoint_layout(dataset).num_keypoints)
        except ValueError as err:
            raise ConfigError(f"{section}.dataset: {err}") from None
    if layouts[0] != layouts[1]:
        raise ConfigError(f"train_dataloader.dataset has {layouts[0]} keypoints but val_dataloader.dataset has "
                          f"{layouts[1]}; one model predicts one layout")
    if config["val_evaluator"]["type"] == "CocoMetric" and config["val_dataloader"]["dataset"]["type"] != \
            "CocoKeypoints":
        raise ConfigError("val_evaluator.type CocoMetric needs a CocoKeypoints val_dataloader.dataset")
    codec = config["codec"]
    if any(i % h for i, h in zip(codec["input_size"], codec["heatmap_size"])):
        raise ConfigError(f"codec.input_size {codec['input_size']} must be a multiple of codec.heatmap_size "
                          f"{codec['heatmap_size']}")


@hookimpl(trylast=True)
def before_train(run: Run) -> None:
    """Unless resumed: ``load_from`` (weights only, iteration 0), else ``model.init_weights``."""
    init_weights = run.config["model"].get("init_weights")
    if run.resumed_from is not None:
        if init_weights:
            run.log.info("model.init_weights not applied: resumed from %s, which started from them",
                         run.resumed_from)
    elif run.config.get("load_from"):
        run.load_weights(run.config["load_from"])
    elif init_weights:
        run.load_weights(init_weights)


@hookimpl(trylast=True)
def backward_step(run: Run, loss: torch.Tensor) -> bool:
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.clip_gradients()
    run.optimizer.step()
    run.optimizer_steps += 1
    return True
