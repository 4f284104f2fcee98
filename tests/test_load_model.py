"""``posecore.load_model``: the public Python entry point to a trained model."""

from __future__ import annotations


import pytest
import torch

import posecore
from helpers import posecore as run_posecore, write_tiny_config
from posecore.errors import InputError
from posecore.config import loads


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("load_model")
    config = write_tiny_config(folder)
    assert run_posecore("train", str(config), "--work-dir", str(folder / "wd")).returncode == 0
    return config, folder / "wd" / "iter_4.pth"


def test_the_model_of_a_config_with_a_checkpoints_weights_in_eval_mode(trained):
    config, weights = trained
    model = posecore.load_model(config, weights)
    saved = torch.load(weights, weights_only=True)["model"]
    assert not model.training
    assert all(torch.equal(value, saved[name]) for name, value in model.state_dict().items())
    crops = torch.randn(2, 3, 32, 32)  # the tiny config's codec.input_size
    with torch.no_grad():
        heatmaps = model(crops)
    assert heatmaps.shape == (2, 17, 16, 16)  # COCO-17 keypoints at codec.heatmap_size
    with torch.no_grad():
        assert torch.equal(model(crops), heatmaps)  # eval mode: no dropout, no BatchNorm updates


def test_a_config_table_as_posecore_config_prints_it_builds_the_same_model(trained):
    config, weights = trained
    printed = run_posecore("config", str(config))
    from_table = posecore.load_model(loads(printed.stdout), weights)
    from_file = posecore.load_model(config, weights)
    crops = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(from_table(crops), from_file(crops))
    assert [p.device.type for p in from_table.parameters()] == ["cpu"] * len(list(from_table.parameters()))


def test_without_a_checkpoint_the_model_is_fresh_and_bad_input_is_an_input_error(trained, tmp_path):
    config, _ = trained
    assert posecore.load_model(config).training is False
    with pytest.raises(InputError, match="checkpoint not found"):
        posecore.load_model(config, tmp_path / "missing.pth")
    with pytest.raises(InputError, match="unknown key 'modell'"):
        posecore.load_model({"modell": {}})
