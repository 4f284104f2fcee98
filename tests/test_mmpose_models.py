"""TopdownPoseEstimator against MMPose 1.3.2's: state_dict keys and shapes, parameter counts, outputs and loss, from
the goldens that tests/golden/make_mmpose_models.py wrote with MMPose (these tests do not need it); training,
init_from, MMPose-format weight files, the reference and the example configs."""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from posecore.checkpoint import load_model_weights, read_weights
from posecore.cli import main
from posecore.errors import ConfigError
from posecore.pose.mmpose_models import KeypointMSELoss, TopdownPoseEstimator
from posecore.testing import TINY_CONFIG, run_training

GOLDEN = Path(__file__).resolve().parent / "golden"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "mmpose"
_spec = importlib.util.spec_from_file_location("make_mmpose_models", GOLDEN / "make_mmpose_models.py")
MAKER = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(MAKER)

HRNET_HEAD = {"deconv_out_channels": []}
ARCHS = {
    "td-hm_res50_8xb64-210e_coco-256x192": ({"type": "ResNet", "depth": 50}, {}),
    "td-hm_res101_8xb64-210e_coco-256x192": ({"type": "ResNet", "depth": 101}, {}),
    "td-hm_res152_8xb32-210e_coco-256x192": ({"type": "ResNet", "depth": 152}, {}),
    "td-hm_hrnet-w32_8xb64-210e_coco-256x192": ({"type": "HRNet", "arch": "w32"}, HRNET_HEAD),
    "td-hm_hrnet-w48_8xb32-210e_coco-256x192": ({"type": "HRNet", "arch": "w48"}, HRNET_HEAD),
}
"""The posecore options of each MMPose config in the goldens (17 COCO keypoints)."""
SMALL = ({"depth": 18}, {"deconv_out_channels": [16, 16, 16]})
"""ResNet-18 with a narrow head: output stride 4, as SimpleBaseline's."""


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a machine whose cores other processes share, two threads that wait on each other
    spin for many times the work (this file takes 9 s with one, over 20 s with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def filled(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The golden's deterministic weights for ``model``'s state_dict (the keys are MMPose's)."""
    return {key: torch.from_numpy(MAKER.fill(key, tuple(value.shape))) for key, value in model.state_dict().items()}


def test_the_goldens_cover_the_configs():
    assert set(MAKER.CONFIGS) == set(ARCHS)


@pytest.mark.parametrize("config", sorted(ARCHS))
def test_state_dict_keys_shapes_and_parameter_count_are_mmposes(config):
    golden = json.loads((GOLDEN / f"mmpose_{config}.json").read_text())
    with torch.device("meta"):
        model = TopdownPoseEstimator(17, *ARCHS[config])
    assert [[key, list(value.shape)] for key, value in model.state_dict().items()] == golden["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == golden["parameters"]


@pytest.mark.parametrize("name", sorted(MAKER.OUTPUTS))
def test_outputs_are_mmposes_for_the_same_weights(name):
    golden = np.load(GOLDEN / "mmpose_outputs.npz")
    with torch.device("meta"):
        model = TopdownPoseEstimator(17, *ARCHS[MAKER.OUTPUTS[name]])
    model.load_state_dict(filled(model), assign=True)
    with torch.no_grad():
        output = model.eval()(torch.from_numpy(golden["input"])).numpy()
    expected = golden[name]
    # Float rounding only: the same operations in the same order are bit-identical on one machine.
    np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("setting", sorted(MAKER.LOSS_SETTINGS))
def test_loss_is_mmposes_keypoint_mse_loss(setting):
    golden = np.load(GOLDEN / "mmpose_outputs.npz")
    output, target, weights = (torch.from_numpy(golden[f"loss_{part}"]) for part in ("output", "target", "weights"))
    loss = KeypointMSELoss(**MAKER.LOSS_SETTINGS[setting])(output, target, weights)
    assert loss.item() == pytest.approx(float(golden[f"loss_{setting}"]), rel=1e-6)


def test_the_model_loss_is_the_heads():
    golden = np.load(GOLDEN / "mmpose_outputs.npz")
    with torch.device("meta"):
        model = TopdownPoseEstimator(17, head={"loss": {"loss_weight": 0.5}})
    batch = {"heatmaps": torch.from_numpy(golden["loss_target"]), "weights": torch.from_numpy(golden["loss_weights"])}
    loss = model.loss(torch.from_numpy(golden["loss_output"]), batch)
    assert loss.item() == pytest.approx(0.5 * float(golden["loss_weighted"]), rel=1e-6)


def test_init_from_loads_a_torchvision_style_backbone_file_when_a_run_starts_from_scratch(tmp_path, caplog):
    with torch.device("meta"):
        source = TopdownPoseEstimator(17, *SMALL).backbone
    weights = {**filled(source), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save(weights, tmp_path / "resnet18.pth")
    # Building the model reads nothing (posecore test, predict and load_model load all weights anyway) ...
    model = TopdownPoseEstimator(17, {**SMALL[0], "init_from": str(tmp_path / "missing.pth")}, SMALL[1])
    model = TopdownPoseEstimator(17, {**SMALL[0], "init_from": str(tmp_path / "resnet18.pth")}, SMALL[1])
    with caplog.at_level(logging.INFO, logger="posecore"):
        model.load_pretrained(logging.getLogger("posecore"))
    assert all(torch.equal(value, weights[key]) for key, value in model.backbone.state_dict().items())
    assert "fc.weight" in caplog.text
    # ... and a training run from scratch loads it (before its first step).
    config = copy.deepcopy(TINY_CONFIG)
    config["codec"]["heatmap_size"] = [8, 8]
    config["model"] = {"type": "TopdownPoseEstimator", "head": SMALL[1],
                       "backbone": {**SMALL[0], "init_from": str(tmp_path / "resnet18.pth")}}
    config["train"] = {"max_iters": 1, "val_interval": 0, "log_interval": 1}
    run = run_training(tmp_path / "work", config=config).run
    log = (run.run_dir / f"{run.run_dir.name}.log").read_text()
    assert f"initialised ResNet from {tmp_path / 'resnet18.pth'}" in log


def test_trains_end_to_end_from_an_mmpose_checkpoint(tmp_path):
    with torch.device("meta"):
        model = TopdownPoseEstimator(17, *SMALL)
    weights = filled(model)
    torch.save({"meta": {"mmpose_version": "1.3.2"}, "state_dict": weights}, tmp_path / "mmpose.pth")
    loaded, _ = read_weights(tmp_path / "mmpose.pth")
    load_model_weights(TopdownPoseEstimator(17, *SMALL), loaded, tmp_path / "mmpose.pth")  # strict: every key fits
    config = copy.deepcopy(TINY_CONFIG)
    config["codec"]["heatmap_size"] = [8, 8]  # a 32 x 32 crop at output stride 4
    config["model"] = {"type": "TopdownPoseEstimator", "backbone": SMALL[0], "head": SMALL[1],
                       "init_weights": str(tmp_path / "mmpose.pth")}
    config["checkpoint"] = {"interval": 4}
    run = run_training(tmp_path / "work", config=config).run
    assert run.iteration == 4
    scalars = [json.loads(line) for line in (run.vis_dir / "scalars.json").read_text().splitlines()]
    assert [s["step"] for s in scalars if "loss" in s] == [2, 4] and all(np.isfinite(s["loss"]) for s in scalars
                                                                         if "loss" in s)
    assert [s["step"] for s in scalars if "val/PCK" in s] == [2, 4]
    saved, _ = read_weights(tmp_path / "work" / "iter_4.pth")
    assert list(saved) == list(weights)


@pytest.mark.parametrize("backbone, head, message", [
    ({"type": "HRNet", "extra": {"stage3": {"num_branches": 2}}}, HRNET_HEAD,
     r"^model\.backbone\.extra\.stage3: num_branches is 2 but num_blocks has 3 items and num_channels 3; give one "),
    ({"type": "HRNet", "extra": {"stage1": {"num_branches": 2, "num_blocks": [4, 4], "num_channels": [64, 64]}}},
     HRNET_HEAD, r"^model\.backbone\.extra\.stage1\.num_branches is 2; stage 1 has one branch$"),
    ({}, {"deconv_kernel_sizes": [4, 4]},
     r"^model\.head\.deconv_kernel_sizes \[4, 4\] needs one kernel size for each of model\.head\.deconv_out_channels"),
    ({"depth": 51}, {}, r"'model\.backbone\.depth' is 51; choose one of 18, 34, 50, 101, 152$"),
])
def test_inconsistent_options_are_one_line_errors_naming_the_key(backbone, head, message):
    with torch.device("meta"), pytest.raises(ConfigError, match=message):
        TopdownPoseEstimator(17, backbone, head)


def test_hrnet_extra_changes_single_keys_of_the_arch():
    with torch.device("meta"):
        model = TopdownPoseEstimator(17, {"type": "HRNet", "arch": "w18",
                                          "extra": {"stage4": {"num_modules": 1}}}, HRNET_HEAD)
    assert len(model.backbone.stage4) == 1 and len(model.backbone.stage3) == 4
    assert model.head.final_layer.in_channels == 18


def test_the_reference_documents_the_options(capsys):
    main(["config", "--reference"])
    reference = capsys.readouterr().out
    for row in ("`TopdownPoseEstimator` (core)", "(TopdownPoseEstimator) `backbone.type` | string | `\"ResNet\"`",
                "(ResNet) `depth` | int | `50`", "(ResNet) `init_from`", "(HRNet) `arch` | string | `\"w32\"`",
                "(HRNet) `extra.stage4.num_channels` | array of int", "(HRNet) `init_from`",
                "(HeatmapHead) `deconv_out_channels` | array of int | `[256, 256, 256]`",
                "(HeatmapHead) `final_layer.kernel_size`",
                "(KeypointMSELoss) `use_target_weight` | bool | `true`", "(KeypointMSELoss) `loss_weight`"):
        assert row in reference


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.toml")))
def test_the_examples_validate(example, capsys):
    main(["config", str(EXAMPLES / example)])
    assert 'type = "TopdownPoseEstimator"' in capsys.readouterr().out
