"""The core's own hook implementations, registered like any plugin (under the name ``core``).

They run last (``trylast``), so a plugin's implementation of a first-result-wins hook replaces them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from posecore import hookimpl
from posecore.errors import ConfigError
from posecore.pose.photometric import check_augment
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


# References, not classes: `posecore plugins` lists the types without importing torch.
@hookimpl
def model_types() -> dict[str, str]:
    return {"TopDownHeatmapNet": "posecore.pose.model:TopDownHeatmapNet",
            "TopdownPoseEstimator": "posecore.pose.mmpose_models:TopdownPoseEstimator"}


@hookimpl
def dataset_types() -> dict[str, str]:
    return {"SyntheticPoses": "posecore.pose.synthetic:SyntheticPoses",
            "CocoKeypoints": "posecore.pose.coco:CocoKeypoints"}


@hookimpl
def codec_types() -> dict[str, str]:
    return {"GaussianHeatmap": "posecore.pose.heatmap:GaussianHeatmap",
            "MSRAHeatmap": "posecore.pose.mmpose_codecs:MSRAHeatmap",
            "UDPHeatmap": "posecore.pose.mmpose_codecs:UDPHeatmap",
            "SimCCLabel": "posecore.pose.simcc:SimCCLabel"}


@hookimpl
def metric_types() -> dict[str, str]:
    return {"PCKAccuracy": "posecore.pose.metrics:PCKAccuracy", "CocoMetric": "posecore.pose.coco_eval:CocoMetric"}


@hookimpl(trylast=True)
def configure(config: dict[str, Any]) -> None:
    train = config["train"]
    if ("max_iters" in train) == ("max_epochs" in train):
        raise ConfigError("set exactly one of train.max_iters and train.max_epochs")
    if config["val_evaluator"]["type"] == "CocoMetric" and config["val_dataloader"]["dataset"]["type"] != \
            "CocoKeypoints":
        raise ConfigError("val_evaluator.type CocoMetric needs a CocoKeypoints val_dataloader.dataset")
    codec = config["codec"]
    if codec["type"] == "GaussianHeatmap" and any(i % h for i, h in zip(codec["input_size"], codec["heatmap_size"])):
        raise ConfigError(f"codec.input_size {codec['input_size']} must be a multiple of codec.heatmap_size "
                          f"{codec['heatmap_size']}")
    check_augment(config["augment"])


@hookimpl(trylast=True)
def before_train(run: Run) -> None:
    """Unless resumed: ``load_from`` (weights only, iteration 0), else ``model.init_weights``, else the model's
    own pretrained parts (``load_pretrained``, e.g. an ImageNet backbone)."""
    init_weights = run.config["model"].get("init_weights")
    if run.resumed_from is not None:
        if init_weights:
            run.log.info("model.init_weights not applied: resumed from %s, which started from them",
                         run.resumed_from)
    elif run.config.get("load_from"):
        run.load_weights(run.config["load_from"])
    elif init_weights:
        run.load_weights(init_weights)
    elif hasattr(run.model, "load_pretrained"):
        run.model.load_pretrained(run.log)


@hookimpl(trylast=True)
def backward_step(run: Run, loss: torch.Tensor) -> bool:
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.clip_gradients()
    run.optimizer.step()
    run.optimizer_steps += 1
    return True
