"""RTMPose in TopdownPoseEstimator (CSPNeXt, RTMCCHead, KLDiscretLoss) against MMPose 1.3.2's: state_dict keys,
shapes, order and parameter counts of rtmpose-t/s/m/l and of small variants, outputs of the small models for
the same weights, and the loss, from the goldens that tests/golden/make_rtmpose_models.py wrote with MMPose (these
tests do not need it); a training step, the options' errors and the reference."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from posecore.cli import main
from posecore.errors import ConfigError
from posecore.pose.mmpose_models import TopdownPoseEstimator
from posecore.pose.rtmpose import KLDiscretLoss

GOLDEN = Path(__file__).resolve().parent / "golden"
_spec = importlib.util.spec_from_file_location("make_rtmpose_models", GOLDEN / "make_rtmpose_models.py")
MAKER = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(MAKER)

RTMPOSE_HEAD = {"type": "RTMCCHead", "input_size": [192, 256], "in_featuremap_size": [6, 8],
                "final_layer_kernel_size": 7, "gau_cfg": {"act_fn": "SiLU"},
                "loss": {"beta": 10.0, "label_softmax": True}}
SYNC_BN = {"momentum": 0.1, "eps": 1e-5}
"""The RTMPose configs' ``norm_cfg = dict(type='SyncBN')``: PyTorch's BatchNorm settings."""
FULL = {f"rtmpose-{size}": ({"type": "CSPNeXt", "deepen_factor": deepen, "widen_factor": widen, "out_indices": [4],
                             "norm_cfg": SYNC_BN}, RTMPOSE_HEAD)
        for size, deepen, widen in (("t", 0.167, 0.375), ("s", 0.33, 0.5), ("m", 0.67, 0.75), ("l", 1.0, 1.0))}
"""The posecore options of each MMPose config in the goldens (17 COCO keypoints)."""
SMALL = {name: ({"type": "CSPNeXt", **options["backbone"]}, {"type": "RTMCCHead", **options["head"]})
         for name, options in MAKER.SMALL.items()}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread, as in test_mmpose_models.py: on shared cores the training step takes 20 times as long
    with two threads that wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN / "rtmpose_outputs.npz")


def mmposes(name: str) -> dict:
    return json.loads((GOLDEN / "rtmpose_models.json").read_text())["models"][name]


def test_the_goldens_cover_the_configs():
    assert set(MAKER.CONFIGS) == set(FULL)


@pytest.mark.parametrize("name", [*sorted(FULL), *sorted(SMALL)])
def test_state_dict_keys_shapes_order_and_parameter_count_are_mmposes(name):
    with torch.device("meta"):
        model = TopdownPoseEstimator(17, *{**FULL, **SMALL}[name])
    expected = mmposes(name)
    assert [[key, list(value.shape)] for key, value in model.state_dict().items()] == expected["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == expected["parameters"]


def with_golden_weights(name: str, golden) -> TopdownPoseEstimator:
    """The small model ``name`` with the golden's weights, in eval mode."""
    with torch.device("meta"):
        model = TopdownPoseEstimator(17, *SMALL[name])
    values = torch.from_numpy(golden[f"{name}:state"].astype(np.float32))
    state, start = {}, 0
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
            continue
        state[key] = values[start:start + value.numel()].reshape(value.shape)
        start += value.numel()
    assert start == values.numel()
    model.load_state_dict(state, assign=True)
    return model.eval()


@pytest.mark.parametrize("name", MAKER.OUTPUTS)
def test_outputs_are_mmposes_for_the_same_weights(name, golden):
    model = with_golden_weights(name, golden)
    with torch.no_grad():
        pred_x, pred_y = model(torch.from_numpy(golden["input"].astype(np.float32)))
    for output, expected in ((pred_x, golden[f"{name}:pred_x"]), (pred_y, golden[f"{name}:pred_y"])):
        assert output.shape == expected.shape
        np.testing.assert_allclose(output.numpy(), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("setting", sorted(MAKER.LOSS_SETTINGS))
def test_loss_is_mmposes_kl_discret_loss(setting, golden):
    output = (torch.from_numpy(golden["loss_pred_x"]), torch.from_numpy(golden["loss_pred_y"]))
    target = (torch.from_numpy(golden["loss_target_x"]), torch.from_numpy(golden["loss_target_y"]))
    loss = KLDiscretLoss(**MAKER.LOSS_SETTINGS[setting])(output, target, torch.from_numpy(golden["loss_weights"]))
    assert loss.item() == pytest.approx(float(golden[f"loss:{setting}"]), rel=1e-6)


def test_one_training_step_through_the_estimator():
    torch.manual_seed(0)
    backbone, head = SMALL["small"]
    model = TopdownPoseEstimator(17, backbone, {**head, "loss": {"beta": 10.0, "label_softmax": True},
                                                "gau_cfg": {**head["gau_cfg"], "drop_path": 0.1,
                                                            "dropout_rate": 0.1}})
    width, height = MAKER.INPUT_SIZE
    output = model.train()(torch.randn(2, 3, height, width))
    assert [tuple(part.shape) for part in output] == [(2, 17, width * 2), (2, 17, height * 2)]
    bins = torch.arange(width * 2.0), torch.arange(height * 2.0)
    centres = torch.rand(2, 17, 2) * torch.tensor([width * 2.0, height * 2.0])
    x_labels, y_labels = (torch.exp(-(axis - centres[..., i, None]) ** 2 / 50) for i, axis in enumerate(bins))
    batch = {"keypoint_x_labels": x_labels, "keypoint_y_labels": y_labels, "keypoint_weights": torch.ones(2, 17)}
    loss = model.loss(output, batch)
    loss.backward()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    optimizer.step()
    assert torch.isfinite(loss) and loss.item() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.loss(model(torch.randn(2, 3, height, width)), batch).item() != loss.item()


def test_init_is_mmposes_where_it_differs_from_pytorchs():
    torch.manual_seed(0)
    model = TopdownPoseEstimator(17, *SMALL["small"])
    assert not model.backbone.stage1[1].attention.fc.bias.any()
    assert model.head.final_layer.weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert model.head.cls_x.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert model.backbone.stem[0].bn.eps == 1e-5 and model.backbone.stem[0].bn.momentum == 0.1


@pytest.mark.parametrize("backbone, head, message", [
    ({"out_indices": [2, 5]}, {}, r"^model\.backbone\.out_indices \[2, 5\]: give indices from 0 \(the stem\) to 4 "),
    ({"spp_kernel_sizes": [5, 8]}, {}, r"^model\.backbone\.spp_kernel_sizes \[5, 8\]: give odd kernel sizes"),
    ({"widen_factor": 0.01}, {}, r"^model\.backbone\.widen_factor 0\.01 with expand_ratio 0\.5 leaves layers "),
    ({}, {"gau_cfg": {"drop_path": 1.0}}, r"^model\.head\.gau_cfg\.drop_path is 1\.0; it must be below 1$"),
    ({}, {"loss": {"mask": [3, 17]}}, r"^model\.head\.loss\.mask \[3, 17\]: give keypoint indices below 17$"),
    ({}, {"simcc_split_ratio": 0.001}, r"^model\.head\.simcc_split_ratio 0\.001 gives no bins for input_size "),
    ({}, {"gau_cfg": {"act_fn": "GELU"}}, r"'model\.head\.gau_cfg\.act_fn' is 'GELU'; choose one of 'ReLU', 'SiLU'$"),
])
def test_bad_options_are_one_line_errors_naming_the_key(backbone, head, message):
    base_backbone, base_head = SMALL["small"]
    with torch.device("meta"), pytest.raises(ConfigError, match=message):
        TopdownPoseEstimator(17, {**base_backbone, **backbone}, {**base_head, **head})


def test_a_head_that_does_not_fit_the_backbones_output_says_which_key_to_set():
    backbone, head = SMALL["small"]
    model = TopdownPoseEstimator(17, backbone, {**head, "in_featuremap_size": [3, 2]})
    width, height = MAKER.INPUT_SIZE
    with pytest.raises(ConfigError, match=r"^model\.head\.in_featuremap_size is \[3, 2\] but the backbone gives "
                                          r"\[2, 3\] \(width, height\); set that$"):
        model.eval()(torch.zeros(1, 3, height, width))


def test_the_head_needs_the_input_size():
    with pytest.raises(ConfigError, match=r"'model\.head\.input_size' is required"):
        TopdownPoseEstimator(17, {"type": "CSPNeXt"}, {"type": "RTMCCHead"})


def test_the_reference_documents_the_options(capsys):
    main(["config", "--reference"])
    reference = capsys.readouterr().out
    for row in ("(TopdownPoseEstimator) `backbone.type`", "(CSPNeXt) `deepen_factor` | float | `1.0`",
                "(CSPNeXt) `out_indices` | array of int | `[2, 3, 4]`", "(CSPNeXt) `norm_cfg.momentum` | float | `0.03`",
                "(CSPNeXt) `init_from`", "(TopdownPoseEstimator) `head.type` | string | `\"HeatmapHead\"`",
                "(RTMCCHead) `input_size` | array of int | required", "(RTMCCHead) `gau_cfg.act_fn` | string | `\"ReLU\"`",
                "(KLDiscretLoss) `label_softmax` | bool | `false`"):
        assert row in reference
