"""posecore-amp: --amp trains under autocast (bfloat16 on a CPU); float16 adds a loss scaler that is checkpointed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import posecore_amp
import pytest
import torch

from helpers import posecore, write_tiny_config as write_tiny
from posecore import checkpoint, hookimpl
from posecore.errors import PosecoreError
from posecore.testing import Recording, run_training




def test_amp_flag_trains_in_bfloat16_on_cpu_end_to_end(tmp_path):
    work_dir = tmp_path / "wd"
    result = posecore("train", str(write_tiny(tmp_path)), "--work-dir", str(work_dir), "--amp")
    assert result.returncode == 0, result.stderr
    assert re.search(r"plugins: amp-0\.1\.0$", result.stderr, re.MULTILINE)  # the run header: amp alone
    assert "amp: autocast to bfloat16 on cpu\n" in result.stderr  # no loss scaling with bfloat16
    assert "loss_scale" not in result.stderr
    state = torch.load(work_dir / "iter_4.pth", weights_only=True)
    assert state["loop"]["iteration"] == 4 and state["loop"]["optimizer_steps"] == 4
    assert state["plugins"]["amp"] == {"scaler": {}, "skipped": 0, "in_a_row": 0}  # a disabled scaler: {}
    assert state["meta"]["plugins"]["amp"] == "0.1.0"
    assert all(t.dtype == torch.float32 for t in state["model"].values() if t.is_floating_point())


def test_an_amp_section_with_enabled_false_does_not_activate_it(tmp_path):
    config = write_tiny(tmp_path, amp={"enabled": False, "dtype": "bfloat16"})
    result = posecore("plugins", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    active = {row["name"]: row["active"] for row in json.loads(result.stdout)}
    assert active["amp"] is False


def test_float32_is_not_an_amp_dtype(tmp_path):
    result = posecore("train", str(write_tiny(tmp_path)), "--work-dir", str(tmp_path / "wd"),
                      "--cfg-options", 'amp.dtype="float32"')
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "posecore: error: --cfg-options: 'amp.dtype' is 'float32'; choose one of 'auto', 'float16', 'bfloat16'"]
    assert not (tmp_path / "wd").exists()


@pytest.fixture(scope="module")
def float16_run(tmp_path_factory) -> Recording:
    """One float16 run (a loss scaler is enabled on the CPU too), shared by the tests below."""
    return run_training(tmp_path_factory.mktemp("float16"), plugins={"amp": posecore_amp},
                        cfg_options=["amp.dtype=float16"])


def test_float16_checkpoints_the_loss_scaler_and_logs_its_scale(float16_run):
    recording = float16_run
    scaler = recording.run.plugin_data["amp"].scaler
    assert scaler.is_enabled()
    saved = torch.load(recording.run.work_dir / "iter_4.pth", weights_only=True)["plugins"]["amp"]["scaler"]
    assert saved == scaler.state_dict()
    assert saved["scale"] == 2.0**16 and saved["_growth_tracker"] == 4  # four finite steps, no back-off
    assert recording.count("collect_scalars") == 2
    scalars = [json.loads(line) for line in (recording.run.vis_dir / "scalars.json").read_text().splitlines()]
    assert [line["amp/loss_scale"] for line in scalars if "loss" in line] == [2.0**16, 2.0**16]
    assert [line["amp/skipped_steps"] for line in scalars if "loss" in line] == [0, 0]


class ResumeFrom:
    """A stand-in for posecore-resume: restore a checkpoint in before_train."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @hookimpl
    def before_train(self, run) -> None:
        run.restore(checkpoint.load(self.path), self.path)


@pytest.mark.parametrize("order", [
    pytest.param(("restore", "amp"), id="amp-before_train-runs-first"),
    pytest.param(("amp", "restore"), id="restore-runs-first"),
])
def test_resume_restores_the_loss_scaler(float16_run, tmp_path, order):
    modules = {"amp": posecore_amp, "restore": ResumeFrom(float16_run.run.work_dir / "iter_2.pth")}
    recording = run_training(tmp_path, plugins={name: modules[name] for name in order},
                             cfg_options=["amp.dtype=float16", "plugins=['restore']"])
    assert recording.count("load_state") == 1
    assert recording.count("backward_step") == 2
    # The growth tracker counts finite steps since the last scale change: 2 restored + 2 more.
    assert recording.run.plugin_data["amp"].scaler.state_dict()["_growth_tracker"] == 4


@pytest.mark.parametrize("activation", [["--amp"], ["--plugin", "amp"], ["--cfg-options", "plugins=['amp']"],
                                        ["--cfg-options", "amp.enabled=true"]])
def test_every_activation_form_turns_it_on(tmp_path, activation):
    result = posecore("config", str(write_tiny(tmp_path)), *activation)
    assert result.returncode == 0, result.stderr
    assert "[amp]\nenabled = true\n" in result.stdout


@pytest.mark.parametrize("option, message", [
    ("amp.loss_scale=\"static\"", "amp.loss_scale is 'static'; use \"dynamic\" or a number > 0"),
    ("amp.loss_scale=0", "amp.loss_scale is 0.0; use \"dynamic\" or a number > 0"),
    ("amp.growth_interval=0", "'amp.growth_interval' is 0, must be >= 1"),
    ("amp.max_consecutive_skips=true", "'amp.max_consecutive_skips' must be int, got bool"),
])
def test_bad_amp_options_are_exit_2(tmp_path, option, message):
    result = posecore("config", str(write_tiny(tmp_path)), "--amp", "--cfg-options", option)
    assert result.returncode == 2 and message in result.stderr
    assert result.stderr.count("\n") == 1


class InfAt:
    """Makes the model's output (so the loss and every gradient) infinite at chosen iterations."""

    def __init__(self, *iterations: int) -> None:
        self.iterations = set(iterations)

    @hookimpl
    def before_train(self, run) -> None:
        run.model.register_forward_hook(
            lambda module, args, output: output * float("inf")
            if module.training and run.iteration + 1 in self.iterations else None)


def test_a_forced_inf_gradient_is_skipped_counted_and_logged(tmp_path):
    recording = run_training(tmp_path, plugins={"amp": posecore_amp, "inf": InfAt(3)},
                             cfg_options=["amp.dtype=float16", "plugins=['inf']"])
    state = recording.run.plugin_data["amp"]
    assert state.skipped == 1 and state.in_a_row == 0
    assert recording.run.optimizer_steps == 3  # the schedule did not advance on the skipped step
    assert state.scaler.get_scale() == 2.0**15  # backed off once
    scalars = [json.loads(line) for line in (recording.run.vis_dir / "scalars.json").read_text().splitlines()]
    assert [line["amp/skipped_steps"] for line in scalars if "loss" in line] == [0, 1]
    weights = torch.load(tmp_path / "iter_4.pth", weights_only=True)["model"]
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def test_a_fixed_loss_scale_stays_fixed_and_still_skips(tmp_path):
    recording = run_training(tmp_path, plugins={"amp": posecore_amp, "inf": InfAt(2)},
                             cfg_options=["amp.dtype=float16", "amp.loss_scale=512", "plugins=['inf']"])
    state = recording.run.plugin_data["amp"]
    assert state.scaler.get_scale() == 512.0 and state.skipped == 1


def test_too_many_skipped_steps_in_a_row_stop_the_run(tmp_path):
    with pytest.raises(PosecoreError, match=r"amp: 2 optimizer steps in a row had inf/NaN gradients and were "
                                            r"skipped \(up to iteration 3\)"):
        run_training(tmp_path, plugins={"amp": posecore_amp, "inf": InfAt(2, 3)},
                     cfg_options=["amp.dtype=float16", "amp.max_consecutive_skips=2", "plugins=['inf']"])


def test_non_finite_loss_without_amp_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(PosecoreError, match=r"loss is (nan|inf) at iteration 4 and the weights are no longer "
                                            rf"finite; stopping. The last good checkpoint is {tmp_path / 'iter_2.pth'}"):
        run_training(tmp_path, plugins={"inf": InfAt(3)}, cfg_options=["plugins=['inf']"])
    assert sorted(p.name for p in tmp_path.glob("iter_*.pth")) == ["iter_2.pth"]


def test_bfloat16_run_learns_on_cpu_through_the_cli(tmp_path):
    work_dir = tmp_path / "wd"
    config = write_tiny(tmp_path, train={"max_iters": 40, "val_interval": 40, "log_interval": 10})
    result = posecore("train", str(config), "--work-dir", str(work_dir), "--amp", "--cfg-options",
                      "randomness.seed=3", "checkpoint.interval=40", "optim.lr=0.01", "augment.flip_prob=0",
                      "augment.rotate_prob=0", "augment.scale_prob=0", "train_dataloader.batch_size=8")
    assert result.returncode == 0, result.stderr
    losses = [json.loads(line)["loss"] for line in next(work_dir.glob("*/vis_data/scalars.json")).read_text()
              .splitlines() if "loss" in line]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0]  # measured: 0.0175 -> 0.0127


def test_resuming_a_non_amp_checkpoint_with_amp_says_so(tmp_path):
    config = write_tiny(tmp_path)
    first = posecore("train", str(config), "--work-dir", str(tmp_path / "wd"), "--cfg-options", "train.max_iters=2")
    assert first.returncode == 0, first.stderr
    amp_on = posecore("train", str(config), "--work-dir", str(tmp_path / "wd"), "--resume", "--amp")
    assert amp_on.returncode == 0, amp_on.stderr
    assert "resume: plugins amp have no state in the checkpoint; they start fresh" in amp_on.stderr
    amp_off = posecore("train", str(config), "--work-dir", str(tmp_path / "wd"), "--resume", "--cfg-options",
                       "train.max_iters=6")
    assert amp_off.returncode == 0, amp_off.stderr
    assert "resume: plugins amp are not active now; their saved state is left out" in amp_off.stderr
