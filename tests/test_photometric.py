"""RTMPose's photometric augmentation (MMDetection's YOLOXHSVRandomAug, MMPose's Albumentation step) and the
augmentation switch of MMDetection's PipelineSwitchHook."""

from __future__ import annotations

import copy
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from interruptions import assert_same_checkpoint

from posecore.data import EpochSampler, build_loader
from posecore.errors import ConfigError
from posecore.plugins import resolve
from posecore.pose.photometric import draw_hsv_gains, hsv_jitter
from posecore.rng import init_worker
from posecore.run import Run
from posecore.testing import TINY_CONFIG, run_training

GOLDEN = Path(__file__).parent / "golden" / "hsv_jitter.npz"
DROPOUT = {"type": "CoarseDropout", "num_holes_range": [1, 1], "hole_height_range": [0.2, 0.4],
           "hole_width_range": [0.2, 0.4], "p": 1.0}
RTMPOSE = {"hsv_hue_delta": 5, "hsv_saturation_delta": 30, "hsv_value_delta": 30,
           "albumentations": [{"type": "Blur", "p": 0.1}, {"type": "MedianBlur", "p": 0.1}, DROPOUT]}
"""RTMPose's photometric steps, with MMDetection's default deltas."""
STAGE2 = {"shift_prob": 0.0, "rotate_factor": 60.0, "hsv_value_delta": 0,
          "albumentations": [{"type": "Blur", "blur_limit": [5, 5], "p": 1.0}]}


def config(augment: dict) -> dict:
    """TINY_CONFIG (24 samples: 6 batches an epoch) with ``augment``."""
    return {**copy.deepcopy(TINY_CONFIG), "augment": augment}


def validated(user: dict) -> tuple[dict, object]:
    return resolve(user, lambda key: "test config", installed=[])


def train_dataset(user: dict, seed: int = 3):
    """The training KeyedDataset that ``user`` describes, with data seed ``seed``."""
    run = Run(*validated({**user, "work_dir": "unused"}))  # never written: only its loader is built
    run.seed = seed
    return build_loader(run, "train_dataloader").dataset


def test_hsv_jitter_equals_mmdetections_formula():
    golden = np.load(GOLDEN)
    for gains, expected in zip(golden["gains"], golden["outputs"]):
        np.testing.assert_array_equal(hsv_jitter(golden["image"], gains), expected, err_msg=f"gains {gains}")


def test_hsv_gains_are_whole_numbers_within_the_deltas_each_kept_half_the_time():
    rng = np.random.default_rng(0)
    gains = np.stack([draw_hsv_gains((5, 30, 30), rng) for _ in range(2000)])
    assert gains.dtype == np.int16
    assert (np.abs(gains) <= [5, 30, 30]).all() and (np.abs(gains).max(axis=0) == [4, 29, 29]).all()  # truncated
    dropped = (gains == 0).mean(axis=0)
    assert (np.abs(dropped - [0.5 + 0.5 / 5, 0.5 + 0.5 / 30, 0.5 + 0.5 / 30]) < 0.04).all(), dropped


def crops(dataset, workers: int, global_seed: int) -> torch.Tensor:
    """Epoch 1's crops through a DataLoader of ``workers`` processes, the global generators seeded by
    ``global_seed``."""
    random.seed(global_seed)
    np.random.seed(global_seed)
    sampler = EpochSampler(len(dataset), 4, dataset.seed, shuffle=True)
    sampler.set_position(1, 0)
    dataset.set_epoch(1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=workers,
                                         worker_init_fn=init_worker if workers else None)
    return torch.cat([batch["img"] for batch in loader])


def test_photometric_crops_depend_only_on_seed_epoch_and_index():
    dataset = train_dataset(config(RTMPOSE))
    in_process, in_workers = crops(dataset, 0, 1), crops(dataset, 2, 2)
    assert torch.equal(in_process, in_workers)
    plain = crops(train_dataset(config({})), 0, 1)
    assert all(not torch.equal(*pair) for pair in zip(in_process, plain))  # every crop has its hole at least


def test_switch_uses_the_merged_options_from_its_epoch_on():
    switched = train_dataset(config({**RTMPOSE, "switch": {"epoch": 2, **STAGE2}}))
    first, second = train_dataset(config(RTMPOSE)), train_dataset(config({**RTMPOSE, **STAGE2}))
    for epoch, expected, other in ((1, first, second), (2, second, first), (3, second, first)):
        for index in (0, 5):
            image = switched[(epoch, index)]["img"]
            np.testing.assert_array_equal(image, expected[(epoch, index)]["img"])
            assert not np.array_equal(image, other[(epoch, index)]["img"])
    assert [switched.set_epoch(epoch) for epoch in (1, 2, 3)] == [False, True, False]


@pytest.mark.parametrize("augment, message", [
    ({"albumentations": [{"type": "Blurr"}]},
     "augment.albumentations[0]: albumentations has no transform 'Blurr' (did you mean 'Blur'?)"),
    ({"albumentations": [{"p": 0.5}]}, "augment.albumentations[0]: needs a 'type'"),
    ({"albumentations": [{"type": "Blur"}, {"type": "HorizontalFlip"}]},
     "augment.albumentations[1]: HorizontalFlip is a spatial transform"),
    ({"albumentations": [{"type": "Blur", "blur_limt": 3}]},
     "augment.albumentations[0]: Blur has no argument 'blur_limt' (did you mean 'blur_limit'?); it takes "
     "blur_limit, p"),
    ({"albumentations": [{"type": "Blur", "p": 2}]},
     "augment.albumentations[0]: Blur: p: Input should be less than or equal to 1"),
    ({"switch": {"epoch": 1, "albumentations": [{"type": "Rotate"}]}},
     "augment.switch.albumentations[0]: Rotate is a spatial transform"),
    ({"switch": {"epoch": 1, "shift_prb": 0.0}}, "unknown key 'augment.switch.shift_prb' (did you mean "
                                                  "'augment.switch.shift_prob'?)"),
    ({"switch": {"epoch": 1, "rotate_factor": "60"}}, "'augment.switch.rotate_factor' must be float"),
    ({"switch": {"shift_prob": 0.0}}, "augment.switch.epoch is required with [augment.switch]"),
    ({"hsv_hue_delta": -1}, "'augment.hsv_hue_delta' is -1, must be >= 0"),
])
def test_config_errors_name_the_key(augment, message):
    with pytest.raises(ConfigError) as caught:
        validated(config(augment))
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("augment, key", [
    ({"albumentations": [{"type": "Blur"}]}, "augment.albumentations"),
    ({"switch": {"epoch": 1, "albumentations": [{"type": "Blur"}]}}, "augment.switch.albumentations"),
])
def test_a_missing_albumentations_is_a_config_error_with_the_pip_line(monkeypatch, augment, key):
    monkeypatch.setitem(sys.modules, "albumentations", None)  # its import fails
    with pytest.raises(ConfigError, match=f"^{key} needs albumentations, which does not import here .*; pip install "):
        validated(config(augment))


def test_training_resumed_before_the_switch_continues_as_the_run_never_stopped(tmp_path, capfd):
    """8 iterations, the switch at epoch 1 (iteration 7); resumed from iteration 4, it ends bitwise the same."""
    options = ["randomness.seed=3", "train.max_iters=8", "train.val_interval=0", "checkpoint.interval=4",
               "model.dropout=0.2"]
    user = config({**RTMPOSE, "half_body_prob": 0.3, "shift_prob": 0.3, "switch": {"epoch": 1, **STAGE2}})
    run_training(tmp_path / "straight", config=user, cfg_options=options, use_installed=True)
    assert capfd.readouterr().err.count("augmentation switched at epoch 1") == 1
    start = tmp_path / "straight" / "iter_4.pth"
    run_training(tmp_path / "resumed", config=user, use_installed=True,
                 cfg_options=[*options, "resume=true", f"load_from={start}"])
    assert f"resumed from {start} at iteration 4" in capfd.readouterr().err
    assert_same_checkpoint(tmp_path / "straight" / "iter_8.pth", tmp_path / "resumed" / "iter_8.pth")
