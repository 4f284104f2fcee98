"""Writes the MMPose RTMPose goldens that tests/test_rtmpose_models.py compares posecore's CSPNeXt, RTMCCHead and
KLDiscretLoss with.

Run it with a Python that has MMPose 1.3.2 (CPU is enough), from anywhere:

    /work/mmpose-ref/bin/python tests/golden/make_rtmpose_models.py

It writes, beside this file:

- ``rtmpose_models.json``: for each model-zoo config in ``CONFIGS`` (built from the mmpose package's .mim
  folder) and each small model in ``SMALL``, MMPose's parameter count and ``state_dict`` keys with their shapes,
  in order;
- ``rtmpose_outputs.npz``: an input crop (``input``), and for each model in ``OUTPUTS`` its random weights and
  random BatchNorm statistics (``<model>:state``: every floating-point state_dict entry flattened, in order, one
  after the other, as float16 values, which MMPose got as float32; ``num_batches_tracked`` is 0) and MMPose's
  eval-mode output for them (``<model>:pred_x``, ``<model>:pred_y``); and ``KLDiscretLoss`` of random logits and
  Gaussian targets (``loss_pred_x`` ...) under each of ``LOSS_SETTINGS`` (``loss:<setting>``).

The small models are given with posecore's options (the same names as MMPose's, ``norm_cfg`` without its
``type``); only this module's constants are imported by the test, which does not need MMPose.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
CONFIGS = {f"rtmpose-{size}": f"rtmpose-{size}_8xb256-420e_coco-256x192" for size in "tsml"}
"""posecore's name of each model-zoo config (COCO, 17 keypoints, 256x192)."""
INPUT_SIZE = (64, 96)
"""The small models' input (width, height)."""
_GAU = dict(hidden_dims=32, s=16, expansion_factor=2, dropout_rate=0.0, drop_path=0.0, act_fn="SiLU",
            use_rel_bias=False, pos_enc=False)
_HEAD = dict(input_size=list(INPUT_SIZE), in_featuremap_size=[2, 3], simcc_split_ratio=2.0,
             final_layer_kernel_size=7, gau_cfg=_GAU)
_BACKBONE = dict(arch="P5", deepen_factor=0.167, widen_factor=0.04, expand_ratio=0.5, out_indices=[4],
                 channel_attention=True, norm_cfg=dict(momentum=0.1, eps=1e-5))
SMALL: dict[str, dict[str, dict[str, Any]]] = {
    # RTMPose's structure at a 25th of rtmpose-l's width (odd channel counts) and one block per stage.
    "small": dict(backbone=_BACKBONE, head=_HEAD),
    # The other attention options, MMPose's default BatchNorm settings and a 3x3 final layer.
    "small_rel_bias_rope": dict(
        backbone={**_BACKBONE, "widen_factor": 0.03125, "norm_cfg": dict(momentum=0.03, eps=0.001)},
        head={**_HEAD, "final_layer_kernel_size": 3, "simcc_split_ratio": 1.5,
              "gau_cfg": {**_GAU, "act_fn": "ReLU", "use_rel_bias": True, "pos_enc": True, "expansion_factor": 3,
                                "hidden_dims": 16, "s": 8}}),
    # P6 with depthwise convolutions, no channel attention, other pooling kernels, the head on stage 3
    # (output stride 16: MMPose still runs stages 4 and 5).
    "small_p6_depthwise": dict(
        backbone=dict(arch="P6", deepen_factor=0.33, widen_factor=0.03125, expand_ratio=0.75, out_indices=[1, 3],
                      use_depthwise=True, channel_attention=False, spp_kernel_sizes=[3, 5],
                      norm_cfg=dict(momentum=0.1, eps=1e-5)),
        head={**_HEAD, "in_featuremap_size": [4, 6], "final_layer_kernel_size": 5,
                   "gau_cfg": {**_GAU, "hidden_dims": 16, "s": 8}}),
}
OUTPUTS = tuple(SMALL)
LOSS_SETTINGS = {
    "rtmpose": dict(beta=10.0, label_softmax=True, use_target_weight=True),
    "no_label_softmax": dict(beta=1.0, label_softmax=False, use_target_weight=True),
    "masked_unweighted": dict(beta=10.0, label_softmax=True, label_beta=5.0, use_target_weight=False, mask=[1, 3],
                              mask_weight=2.0),
}
"""KLDiscretLoss options under which the loss of the same arrays is recorded."""
NUM_KEYPOINTS = 17
_STAGE_WIDTHS = {"P5": (64, 128, 256, 512, 1024), "P6": (64, 128, 256, 512, 768, 1024)}
"""Output channels of the stem and each stage before ``widen_factor``: the head's ``in_channels``."""


def mmpose_model(options: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """MMPose's model config for posecore's ``backbone`` and ``head`` options of a small model."""
    backbone = {**options["backbone"], "type": "CSPNeXt", "act_cfg": dict(type="SiLU"),
                "norm_cfg": dict(type="BN", **options["backbone"]["norm_cfg"])}
    widths = _STAGE_WIDTHS[backbone["arch"]][max(backbone["out_indices"])]
    in_channels = int(widths * backbone["widen_factor"])
    head = {**options["head"], "type": "RTMCCHead", "in_channels": in_channels, "out_channels": NUM_KEYPOINTS,
            "loss": dict(type="KLDiscretLoss", use_target_weight=True)}
    return dict(type="TopdownPoseEstimator", backbone=backbone, head=head)


def random_state(state: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random values for every state_dict entry, exact in float16: weights scaled by 1/sqrt(fan-in); BatchNorm
    variances from 0.001 to 1.6 (so that a wrong epsilon shows) with the scales near their square roots (so that
    activations keep their size); the attention unit's scales near 1 (``num_batches_tracked`` stays 0)."""
    values = {}
    for key, tensor in state.items():
        shape = tuple(tensor.shape)
        if key.endswith("num_batches_tracked"):
            values[key] = np.zeros(shape, np.int64)
            continue
        noise = rng.standard_normal(shape)
        if len(shape) >= 2:
            value = noise / np.sqrt(np.prod(shape[1:]))
        elif key.endswith("running_var"):
            value = 10 ** rng.uniform(-3, 0.2, shape)
            scale = key[:-len("running_var")] + "weight"
            values[scale] = (values[scale] * np.sqrt(value)).astype(np.float16)
        elif key.endswith(("bn.weight", ".g", ".scale")):
            value = 1 + 0.1 * noise
        else:
            value = 0.1 * noise
        values[key] = value.astype(np.float16)
    return values


def main() -> None:
    import os

    import mmpose
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmpose.models.losses import KLDiscretLoss
    from mmpose.registry import MODELS

    init_default_scope("mmpose")
    zoo = Path(os.path.dirname(mmpose.__file__)) / ".mim/configs/body_2d_keypoint/rtmpose/coco"
    rng = np.random.default_rng(0)
    width, height = INPUT_SIZE
    crops = rng.standard_normal((1, 3, height, width)).astype(np.float16)
    arrays: dict[str, np.ndarray] = {"input": crops}
    models = {name: Config.fromfile(str(zoo / f"{config}.py")).model for name, config in CONFIGS.items()}
    models.update({name: mmpose_model(options) for name, options in SMALL.items()})
    record: dict[str, Any] = {"mmpose": mmpose.__version__, "configs": CONFIGS, "models": {}}
    for name, config in models.items():
        model = MODELS.build(config)
        state = model.state_dict()
        record["models"][name] = {"parameters": sum(p.numel() for p in model.parameters()),
                                  "state_dict": [[key, list(value.shape)] for key, value in state.items()]}
        if name not in OUTPUTS:
            continue
        values = random_state(state, rng)
        model.load_state_dict({key: torch.from_numpy(value.astype(np.float32) if value.dtype == np.float16
                                                     else value) for key, value in values.items()})
        with torch.no_grad():
            pred_x, pred_y = model.eval()(torch.from_numpy(crops.astype(np.float32)), None, mode="tensor")
        arrays[f"{name}:state"] = np.concatenate([value.ravel() for value in values.values()
                                                   if value.dtype == np.float16])
        arrays.update({f"{name}:pred_x": pred_x.numpy(), f"{name}:pred_y": pred_y.numpy()})
    (HERE / "rtmpose_models.json").write_text(json.dumps(record, separators=(",", ":")) + "\n")

    # SimCC targets as SimCCLabel (normalize=False) makes them: Gaussians peaking at 1 around each keypoint.
    logits = [rng.standard_normal((2, 5, bins)).astype(np.float32) for bins in (24, 32)]
    targets = [np.exp(-(np.arange(bins) - rng.uniform(0, bins, (2, 5, 1))) ** 2 / (2 * 2.0 ** 2)).astype(np.float32)
               for bins in (24, 32)]
    weights = rng.choice(np.array([0.0, 0.5, 1.0], np.float32), size=(2, 5))
    arrays.update(loss_pred_x=logits[0], loss_pred_y=logits[1], loss_target_x=targets[0], loss_target_y=targets[1],
                  loss_weights=weights)
    for setting, options in LOSS_SETTINGS.items():
        loss = KLDiscretLoss(**options)([torch.from_numpy(a) for a in logits], [torch.from_numpy(a) for a in targets],
                                        torch.from_numpy(weights))
        arrays[f"loss:{setting}"] = np.array(loss.item())
    np.savez_compressed(HERE / "rtmpose_outputs.npz", **arrays)


if __name__ == "__main__":
    main()
