"""Learning-rate schedules and per-parameter weight decay, against MMEngine's own numbers.

tests/golden/mmengine_schedules.json holds the learning rates MMEngine's schedulers give each optimizer step for
MMPose's two schedule shapes (made by tests/golden/make_mmengine_schedules.py in the MMPose reference venv).
"""

import json
from pathlib import Path

import pytest
import torch

from helpers import posecore, write_tiny_config
from posecore.run import _build_optimizer, lr_factor

GOLDEN = json.loads((Path(__file__).parent / "golden" / "mmengine_schedules.json").read_text())
OPTIM = {"type": "AdamW", "lr": 1.0, "weight_decay": 0.05, "momentum": 0.9}


def schedule(**settings):
    return {"type": "cosine", "by_epoch": False, "begin": 0, "warmup_iters": 0, "warmup_ratio": 0.001,
            "min_lr_ratio": 0.0, "milestones": [], "gamma": 0.1, **settings}


@pytest.mark.parametrize("case, settings", [
    ("step", schedule(type="step", by_epoch=True, milestones=[5, 8], warmup_iters=7, warmup_ratio=0.001)),
    ("flat_cosine", schedule(type="cosine", by_epoch=True, begin=5, warmup_iters=6, warmup_ratio=1e-5,
                             min_lr_ratio=0.05)),
])
def test_schedules_give_mmengines_learning_rates(case, settings):
    golden = GOLDEN[case]
    total = golden["epochs"] * golden["per_epoch"]
    rates = [GOLDEN["base_lr"] * lr_factor(settings, step, total, golden["per_epoch"]) for step in range(total)]
    assert rates == pytest.approx(golden["lr"], rel=1e-9, abs=1e-15)


def test_milestones_count_iterations_unless_by_epoch():
    settings = schedule(type="step", milestones=[3])
    assert [lr_factor(settings, step, 10, per_epoch=4) for step in (2, 3)] == [1.0, pytest.approx(0.1)]
    settings["by_epoch"] = True
    assert [lr_factor(settings, step, 20, per_epoch=4) for step in (11, 12)] == [1.0, pytest.approx(0.1)]


def test_paramwise_decay_spares_norms_and_biases_as_mmengine():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1, bias=False),
                                torch.nn.LayerNorm(2), torch.nn.Linear(2, 2))
    decay = {id(p): g["weight_decay"] for g in _build_optimizer(
        {**OPTIM, "paramwise": {"norm_decay_mult": 0.0, "bias_decay_mult": 0.5}}, model, 1.0).param_groups
        for p in g["params"]}
    expected = {"0.weight": 0.05, "0.bias": 0.025, "1.weight": 0.0, "1.bias": 0.0, "2.weight": 0.05,
                "3.weight": 0.0, "3.bias": 0.0, "4.weight": 0.05, "4.bias": 0.025}
    assert {name: decay[id(p)] for name, p in model.named_parameters()} == pytest.approx(expected)
    plain = _build_optimizer({**OPTIM, "paramwise": {"norm_decay_mult": 1.0, "bias_decay_mult": 1.0}}, model, 1.0)
    assert len(plain.param_groups) == 1  # the optimizer state keeps the layout it had before paramwise existed


def test_a_run_logs_the_flat_then_cosine_rates(tmp_path):
    """Through the CLI: warm-up, flat, then cosine from epoch `begin`, in iterations of this run's epochs."""
    settings = schedule(by_epoch=True, begin=3, warmup_iters=3, warmup_ratio=0.1, min_lr_ratio=0.05)
    config = write_tiny_config(
        tmp_path, train_dataloader={"batch_size": 4, "num_workers": 0, "dataset": {"num_samples": 8,
                                                                                   "image_size": [48, 48]}},
        train={"max_epochs": 6, "log_interval": 1, "val_interval": 0}, checkpoint={"interval": 100},
        optim={"lr": 0.01, "paramwise": {"norm_decay_mult": 0.0, "bias_decay_mult": 0.0}}, scheduler=settings)
    result = posecore("train", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    scalars = [json.loads(line) for line in
               next(tmp_path.glob("work_dirs/tiny/*/vis_data/scalars.json")).read_text().splitlines()]
    lr = [s["lr"] for s in scalars if "lr" in s]
    assert lr == pytest.approx([0.01 * lr_factor(settings, step, 12, 2) for step in range(12)])
    assert lr[2:7] == pytest.approx([0.01] * 5) and lr[7] < 0.01


def test_resuming_with_other_paramwise_groups_names_the_key(tmp_path):
    config = write_tiny_config(tmp_path)
    assert posecore("train", str(config), cwd=tmp_path).returncode == 0
    result = posecore("train", str(config), "--resume", "--cfg-options", "train.max_iters=6",
                      "optim.paramwise.norm_decay_mult=0", cwd=tmp_path)
    assert result.returncode == 2
    assert "optim.paramwise decides the groups" in result.stderr.splitlines()[-1]
