"""Writes the MMPose model goldens that tests/test_mmpose_models.py compares posecore's TopdownPoseEstimator with.

Run it with a Python that has MMPose 1.3.2 (CPU is enough), from anywhere:

    /work/mmpose-ref/bin/python tests/golden/make_mmpose_models.py

It builds MMPose's model from each model-zoo config in ``CONFIGS`` and writes, beside this file:

- ``mmpose_<config>.json``: the config's parameter count and its ``state_dict`` keys with their shapes, in order;
- ``mmpose_outputs.npz``: an input crop batch and, for each model in ``OUTPUTS``, MMPose's output for it (eval
  mode) with every state_dict entry filled by :func:`fill` (which the test recomputes without MMPose), and
  ``KeypointMSELoss`` of fixed arrays under the ``LOSS_SETTINGS``.

:func:`fill` imports nothing but NumPy, so the test imports it from here.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
CONFIGS = ("td-hm_res50_8xb64-210e_coco-256x192", "td-hm_res101_8xb64-210e_coco-256x192",
           "td-hm_res152_8xb32-210e_coco-256x192", "td-hm_hrnet-w32_8xb64-210e_coco-256x192",
           "td-hm_hrnet-w48_8xb32-210e_coco-256x192")
OUTPUTS = {"res50": CONFIGS[0], "hrnet_w32": CONFIGS[3]}
INPUT_SHAPE = (1, 3, 128, 96)
LOSS_SETTINGS = {
    "weighted": dict(use_target_weight=True),
    "plain_half": dict(use_target_weight=False, loss_weight=0.5),
    "skip_empty_double": dict(use_target_weight=True, skip_empty_channel=True, loss_weight=2.0),
}
"""KeypointMSELoss options under which the loss of the same arrays is recorded (``loss_<name>`` in the npz)."""


def fill(key: str, shape: Sequence[int]) -> np.ndarray:
    """A deterministic value for the state_dict entry ``key`` of ``shape``: a sine of the element index, its
    phase from the key's CRC-32. Convolution weights are scaled by 1/sqrt of their fan (elements per output
    channel) so that activations keep their size through deep networks; BatchNorm scales and variances stay
    near 1; ``num_batches_tracked`` is 0."""
    if key.endswith("num_batches_tracked"):
        return np.zeros(shape, np.int64)
    count = int(np.prod(shape, dtype=np.int64))
    phase = zlib.crc32(key.encode()) / 2 ** 32 * 2 * np.pi
    wave = np.sin(0.37 * np.arange(count) + phase).reshape(shape)
    if len(shape) >= 2:
        value = wave * np.sqrt(3 * shape[0] / count)
    elif key.endswith("running_var"):
        value = 1 + 0.2 * wave
    elif key.endswith(".weight"):
        value = 1 + 0.1 * wave
    else:
        value = 0.1 * wave
    return value.astype(np.float32)


def main() -> None:
    import os

    import mmpose
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmpose.models.losses import KeypointMSELoss
    from mmpose.registry import MODELS

    init_default_scope("mmpose")
    zoo = Path(os.path.dirname(mmpose.__file__)) / ".mim/configs/body_2d_keypoint/topdown_heatmap/coco"
    rng = np.random.default_rng(0)
    crops = rng.standard_normal(INPUT_SHAPE).astype(np.float32)
    arrays: dict[str, np.ndarray] = {"input": crops}
    for name in CONFIGS:
        model = MODELS.build(Config.fromfile(str(zoo / f"{name}.py")).model)
        state = model.state_dict()
        record = {"mmpose": mmpose.__version__, "config": name,
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "state_dict": [[key, list(value.shape)] for key, value in state.items()]}
        (HERE / f"mmpose_{name}.json").write_text(json.dumps(record, separators=(",", ":")) + "\n")
        for short, config in OUTPUTS.items():
            if config != name:
                continue
            model.load_state_dict({key: torch.from_numpy(fill(key, value.shape)) for key, value in state.items()})
            with torch.no_grad():
                arrays[short] = model.eval()(torch.from_numpy(crops), None, mode="tensor").numpy()
    output = rng.standard_normal((2, 17, 16, 12)).astype(np.float32)
    target = np.abs(rng.standard_normal((2, 17, 16, 12))).astype(np.float32)
    target[0, 3] = target[1, 10] = 0  # empty channels, for skip_empty_channel
    weights = rng.choice(np.array([0.0, 0.5, 1.0], np.float32), size=(2, 17))
    arrays.update(loss_output=output, loss_target=target, loss_weights=weights)
    for setting, options in LOSS_SETTINGS.items():
        loss = KeypointMSELoss(**options)
        # HeatmapHead passes the keypoint weights; without use_target_weight they are left out here, as the
        # option says (MMPose 1.3.2 would apply weights that are passed whatever it says).
        given = torch.from_numpy(weights) if options["use_target_weight"] else None
        arrays[f"loss_{setting}"] = np.array(loss(torch.from_numpy(output), torch.from_numpy(target), given).item())
    np.savez_compressed(HERE / "mmpose_outputs.npz", **arrays)


if __name__ == "__main__":
    main()
