"""posecore-example-components: a model, a dataset and a metric from a plugin.

    [model]
    type = "TransformersHeatmapNet"   # a Hugging Face transformers backbone and a heatmap head
    [train_dataloader.dataset]
    type = "KeypointFolder"           # images, each with a JSON file of its persons' keypoints
    folder = "data/train"
    [val_evaluator]
    type = "KeypointError"            # mean keypoint error, as a fraction of the person's size

The hooks name the types as ``"module:attribute"`` references: listing the installed plugins imports this
file only, and the types' module (torch; transformers when a model is built) loads once a config uses one.
"""

from __future__ import annotations

from posecore import hookimpl

_COMPONENTS = "posecore_example_components.components"


@hookimpl
def model_types() -> dict[str, str]:
    return {"TransformersHeatmapNet": f"{_COMPONENTS}:TransformersHeatmapNet"}


@hookimpl
def dataset_types() -> dict[str, str]:
    return {"KeypointFolder": f"{_COMPONENTS}:KeypointFolder"}


@hookimpl
def metric_types() -> dict[str, str]:
    return {"KeypointError": f"{_COMPONENTS}:KeypointError"}
