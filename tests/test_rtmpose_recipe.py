"""RTMPose end to end: an MMPose RTMPose checkpoint gives MMPose's SimCC outputs through ``posecore.load_model`` and
a COCO AP through ``posecore test``; MMPose's rtmpose-t recipe (examples/mmpose) trains on COCO-format data with
every augmentation, the EMA and the stage switch on, and resumes bitwise.

The checkpoint holds the weights of tests/golden/rtmpose_outputs.npz's small model (made with MMPose 1.3.2 by
tests/golden/make_rtmpose_models.py), saved as MMPose publishes checkpoints; the data set is tests/coco_synth.py's.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import posecore
from helpers import REPO, posecore as run_posecore, write_tiny_config
from interruptions import assert_same_checkpoint
from posecore.config import dumps, read_toml
from test_mmpose_checkpoints import mmengine_meta, save_as
from test_rtmpose_models import MAKER, SMALL, with_golden_weights

RTMPOSE_T = REPO / "examples" / "mmpose" / "rtmpose-t_8xb256-420e_coco-256x192.toml"
MAKER_COUNTS = {name: model["parameters"] for name, model in
                json.loads((Path(__file__).parent / "golden" / "rtmpose_models.json").read_text())["models"].items()}
"""MMPose's parameter count of each model (tests/golden/make_rtmpose_models.py)."""


@pytest.fixture(scope="module")
def golden():
    return np.load(Path(__file__).parent / "golden" / "rtmpose_outputs.npz")


def coco_dataset(files) -> dict:
    return {"type": "CocoKeypoints", "ann_file": str(files.ann_file), "img_dir": str(files.img_dir)}


def test_an_mmpose_rtmpose_checkpoint_gives_mmposes_outputs_and_an_ap(golden, synthetic_coco, tmp_path):
    backbone, head = SMALL["small"]
    width, height = MAKER.INPUT_SIZE
    config = write_tiny_config(
        tmp_path, codec={"type": "SimCCLabel", "input_size": [width, height], "sigma": [1.6, 1.9],
                         "simcc_split_ratio": head["simcc_split_ratio"], "normalize": False},
        model={"type": "TopdownPoseEstimator", "flip_test": True, "backbone": backbone, "head": head},
        train_dataloader={"batch_size": 2, "num_workers": 0, "dataset": coco_dataset(synthetic_coco)},
        val_dataloader={"batch_size": 4, "dataset": coco_dataset(synthetic_coco)},
        val_evaluator={"type": "CocoMetric"})
    weights = OrderedDict(with_golden_weights("small", golden).state_dict())
    path = save_as(tmp_path / "rtmpose_small.pth", {"meta": mmengine_meta(), "state_dict": weights})

    model = posecore.load_model(config, path)
    with torch.no_grad():
        pred_x, pred_y = model(torch.from_numpy(golden["input"].astype(np.float32)))
    np.testing.assert_allclose(pred_x.numpy(), golden["small:pred_x"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pred_y.numpy(), golden["small:pred_y"], rtol=1e-5, atol=1e-5)

    result = run_posecore("test", str(config), "--checkpoint", str(path), "--work-dir", str(tmp_path / "test"))
    assert result.returncode == 0, result.stderr
    assert f"loaded model weights from {path}" in result.stderr
    assert "AP: " in result.stderr.splitlines()[-1]


def rtmpose_t(folder: Path, files) -> Path:
    """examples/mmpose/rtmpose-t at a third of its input size, on ``files``, 2 crops a batch (3 an epoch), the
    stage switch at epoch 1, the EMA of the larger RTMPose recipes; no pretrained backbone (this machine may be
    offline)."""
    config = read_toml(RTMPOSE_T)
    config["codec"].update(input_size=[64, 96], sigma=[1.6, 1.9])
    config["model"]["backbone"].pop("init_from")
    config["model"]["head"].update(input_size=[64, 96], in_featuremap_size=[2, 3])
    config["model"]["head"]["gau_cfg"].update(hidden_dims=32, s=16)
    for loader in ("train_dataloader", "val_dataloader"):
        config[loader].update(batch_size=2, num_workers=0, persistent_workers=False, dataset=coco_dataset(files))
    config["augment"]["switch"]["epoch"] = 1
    # rtmpose-s/m/l's EMA (MMPose's rtmpose-t leaves it out), faster
    config["ema"] = {"ema_type": "ExpMomentumEMA", "momentum": 0.1, "update_buffers": True}
    config.update(device="cpu", work_dir=str(folder / "work"),
                  train={"max_iters": 8, "val_interval": 8, "log_interval": 1},
                  checkpoint={"interval": 4, "max_keep": 0, "save_best": "AP"},
                  visualizer={"vis_backends": [{"type": "LocalVisBackend"}]})
    path = folder / "rtmpose-t.toml"
    path.write_text(dumps(config), encoding="utf-8")
    return path


@pytest.mark.slow
def test_the_rtmpose_recipe_trains_with_every_augmentation_and_resumes_bitwise(synthetic_coco, tmp_path):
    config = rtmpose_t(tmp_path, synthetic_coco)
    straight = run_posecore("train", str(config))
    assert straight.returncode == 0, straight.stderr
    log = straight.stderr
    assert "model TopdownPoseEstimator: " in log and "augmentation switched at epoch 1" in log
    assert "ema: ExpMomentumEMA" in log
    work = tmp_path / "work"
    state = torch.load(work / "iter_8.pth", weights_only=False)
    assert set(state) >= {"model", "train_model"} and state["plugins"]["ema"]["steps"] == 8
    assert any(not torch.equal(state["model"][key], state["train_model"][key]) for key in state["model"])

    # iter_4 is after the switch (epoch 1 is iterations 3 to 5): the resumed run goes on with stage 2
    resumed = run_posecore("train", str(config), "--resume", str(work / "iter_4.pth"), "--work-dir",
                           str(tmp_path / "resumed"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr and "augmentation switched at epoch 1" in resumed.stderr
    assert_same_checkpoint(work / "iter_8.pth", tmp_path / "resumed" / "iter_8.pth")


@pytest.mark.parametrize("size", "tsml")
def test_the_rtmpose_examples_build_mmposes_networks(size):
    """Each examples/mmpose/rtmpose-* config builds MMPose's network: its parameter count, to the unit."""
    from posecore.plugins import load_config

    config, plugins = load_config(RTMPOSE_T.with_name(f"rtmpose-{size}_8xb256-420e_coco-256x192.toml"))
    with torch.device("meta"):
        model = plugins.build("model", config["model"], num_keypoints=17)
    assert sum(p.numel() for p in model.parameters()) == MAKER_COUNTS[f"rtmpose-{size}"]
