"""posecore-ema: the average follows MMEngine's rule, is what validation scores and checkpoints keep as ``model``,
resumes exactly, and is read by a run without the plugin (which resumes from ``train_model``)."""

from __future__ import annotations

import json
import math
import signal
import types
from pathlib import Path
from typing import Any

import posecore_ema
import pytest
import torch

import posecore
from helpers import make_plugin_dist, posecore as posecore_cli, write_tiny_config
from interruptions import assert_same_run, install_interrupter, interrupt_env
from posecore import checkpoint, hookimpl
from posecore.config import read_toml
from posecore.plugins import module_plugin, resolve
from posecore.run import Run
from posecore.run import evaluate as evaluate_weights
from posecore.testing import TINY_CONFIG, Recording, run_training

MEAN_SCORE = '''
"""A validation metric that moves with any change of the weights: the mean predicted keypoint score."""
from posecore import hookimpl
from posecore.config import Section


class MeanScore:
    options = Section({}, "The mean keypoint score.")
    results_file = "mean_score.json"

    def __init__(self, layout, dataset):
        pass

    def __call__(self, predictions):
        value = float(predictions["pred_score"].double().mean())
        return {"score": value}, [value]


@hookimpl
def metric_types():
    return {"MeanScore": MeanScore}
'''

# The warm-up (gamma 2), interval and begin_iter all act within six iterations; lr 0.01 moves the weights enough
# that the average visibly lags them.
EXP_OPTIONS = {"ema_type": "ExpMomentumEMA", "momentum": 0.1, "gamma": 2, "interval": 2, "update_buffers": True,
               "begin_iter": 2}
PLAIN_OPTIONS = {"ema_type": "ExponentialMovingAverage", "momentum": 0.3, "update_buffers": False}
CONFIG = {**TINY_CONFIG, "optim": {"lr": 0.01}, "val_evaluator": {"type": "MeanScore"},
          "train": {"max_iters": 6, "val_interval": 2, "log_interval": 2},
          "checkpoint": {"interval": 2, "max_keep": 0, "save_best": "score"}}


def evaluate(config: Path, weights: Path) -> dict[str, float]:
    """``posecore test`` in this process, with the MeanScore metric and without posecore-ema."""
    settings, plugin_set = resolve(read_toml(config), lambda key: "test config", installed=[],
                                   extra=[module_plugin("mean_score", mean_score_module())])
    return evaluate_weights(Run({**settings, "work_dir": str(config.parent / "eval")}, plugin_set), weights)


def mean_score_module() -> types.ModuleType:
    module = types.ModuleType("mean_score")
    exec(MEAN_SCORE, module.__dict__)
    return module


class TrainedWeights:
    """Keeps the trained weights after each iteration."""

    def __init__(self) -> None:
        self.after: list[dict[str, torch.Tensor]] = []
        self.parameter_names: set[str] = set()

    @hookimpl
    def after_iter(self, run) -> None:
        self.after.append({key: value.clone() for key, value in run.model.state_dict().items()})
        self.parameter_names = {name for name, _ in run.model.named_parameters()}


def train_with_ema(work_dir: Path, options: dict[str, Any]) -> tuple[Recording, TrainedWeights]:
    weights = TrainedWeights()
    recording = run_training(work_dir, config={**CONFIG, "ema": options},
                             plugins={"ema": posecore_ema, "mean_score": mean_score_module(), "weights": weights},
                             cfg_options=["plugins=['weights']"])
    return recording, weights


@pytest.fixture(scope="module")
def exp_run(tmp_path_factory) -> tuple[Recording, TrainedWeights]:
    return train_with_ema(tmp_path_factory.mktemp("exp"), EXP_OPTIONS)


def expected_average(trained: list[dict[str, torch.Tensor]], parameter_names: set[str],
                     options: dict[str, Any]) -> tuple[dict[str, torch.Tensor], int]:
    """MMEngine's EMAHook + ExpMomentumEMA/ExponentialMovingAverage, in float64, after ``len(trained)``
    iterations: the average and the number of updates."""
    options = {**posecore_ema.config_schema()["ema"].keys, **options}
    options = {key: getattr(value, "default", value) for key, value in options.items()}
    average: dict[str, torch.Tensor] = {}
    updates = 0
    for iteration, weights in enumerate(trained, 1):
        if iteration < options["begin_iter"]:
            average = {key: value.double() for key, value in weights.items()}
            continue
        momentum = options["momentum"]
        if options["ema_type"] == "ExpMomentumEMA":
            momentum = (1 - momentum) * math.exp(-(1 + updates) / options["gamma"]) + momentum
        for key, value in weights.items():
            if key not in parameter_names and not options["update_buffers"] or updates == 0:
                average[key] = value.double()
            elif updates % options["interval"] == 0 and value.is_floating_point():
                average[key] = (1 - momentum) * average[key] + momentum * value.double()
        updates += 1
    return average, updates


@pytest.mark.parametrize("options", [EXP_OPTIONS, PLAIN_OPTIONS], ids=["ExpMomentumEMA", "ExponentialMovingAverage"])
def test_the_checkpoints_model_is_mmengines_average_of_the_trained_weights(exp_run, tmp_path, options):
    recording, weights = exp_run if options is EXP_OPTIONS else train_with_ema(tmp_path, options)
    work_dir = recording.run.work_dir
    for iteration in (2, 4, 6):
        saved = checkpoint.load(work_dir / f"iter_{iteration}.pth")
        expected, updates = expected_average(weights.after[:iteration], weights.parameter_names, options)
        assert saved["plugins"]["ema"] == {"steps": updates}
        for key, trained in weights.after[iteration - 1].items():
            assert torch.equal(saved["train_model"][key], trained), key
            average = saved["model"][key]
            assert not average.requires_grad
            if average.is_floating_point():
                torch.testing.assert_close(average.double(), expected[key], rtol=1e-5, atol=1e-7, msg=key)
            else:
                assert torch.equal(average, expected[key].long()), key
        if iteration > 2:  # the average lags the trained weights
            assert not torch.allclose(saved["model"]["final.weight"], saved["train_model"]["final.weight"])
    if options["update_buffers"]:  # MMEngine keeps integer buffers from the first update (iteration begin_iter)
        counts = {k: v for k, v in checkpoint.load(work_dir / "iter_6.pth")["model"].items()
                  if k.endswith("num_batches_tracked")}
        assert counts and all(v == 2 for v in counts.values())


def test_start_line_is_logged(exp_run):
    log = next(exp_run[0].run.run_dir.glob("*.log")).read_text()
    assert "ema: ExpMomentumEMA, momentum 0.1, gamma 2, interval 2, update_buffers true, begin_iter 2\n" in log


def test_with_or_without_the_plugin_test_and_load_model_read_the_average(exp_run, tmp_path):
    """Validation and save_best scored the average: ``posecore test`` (without the plugin) on a checkpoint gives
    the metric logged at its validation, and differs on its trained weights; ``posecore.load_model`` loads it."""
    recording, _ = exp_run
    work_dir = recording.run.work_dir
    validations = recording.calls_of("after_val")
    assert len(validations) == 3
    logged = dict(zip((2, 4, 6), (call["metrics"]["score"] for call in validations)))
    best = recording.run.best
    assert best["value"] == max(logged.values()) == logged[best["iteration"]]
    best_model = checkpoint.load(work_dir / best["file"])["model"]
    assert all(torch.equal(v, checkpoint.load(work_dir / f"iter_{best['iteration']}.pth")["model"][k])
               for k, v in best_model.items())

    saved = checkpoint.load(work_dir / "iter_4.pth")
    torch.save(saved["train_model"], tmp_path / "trained.pth")
    metric_plugin = make_plugin_dist(tmp_path / "metric", "mean_score", MEAN_SCORE)
    config = write_tiny_config(tmp_path, val_evaluator={"type": "MeanScore"})

    (tmp_path / "cli").mkdir()
    result = posecore_cli("test", str(config), "--checkpoint", str(work_dir / "iter_4.pth"), cwd=tmp_path / "cli",
                          pythonpath=[metric_plugin])
    assert result.returncode == 0, result.stderr
    assert "ema" not in result.stderr.splitlines()[0]  # the run header: the plugin is not active
    (results,) = (tmp_path / "cli").glob("work_dirs/tiny/*/mean_score.json")
    assert json.loads(results.read_text())[0] == pytest.approx(logged[4], rel=1e-6)
    assert evaluate(config, tmp_path / "trained.pth")["score"] != pytest.approx(logged[4], rel=1e-4)

    model = posecore.load_model(write_tiny_config(tmp_path / "cli"), work_dir / "iter_4.pth")
    assert all(torch.equal(v, saved["model"][k]) for k, v in model.state_dict().items())


class ResumeFrom:
    """A stand-in for posecore-resume that keeps the weights the run goes on from."""

    def __init__(self, path: Path) -> None:
        self.path, self.weights = path, {}

    @hookimpl
    def before_train(self, run) -> None:
        run.restore(checkpoint.load(self.path), self.path)
        self.weights = {key: value.clone() for key, value in run.model.state_dict().items()}


def resume(path: Path, work_dir: Path, ema: dict[str, Any] | None, max_iters: int) -> tuple[Recording, ResumeFrom]:
    resumer = ResumeFrom(path)
    config = {**CONFIG, "train": {**CONFIG["train"], "max_iters": max_iters}, **({"ema": ema} if ema else {})}
    recording = run_training(work_dir, config=config, plugins={
        "ema": posecore_ema, "mean_score": mean_score_module(), "restore": resumer}, cfg_options=["plugins=['restore']"])
    return recording, resumer


def test_resume_without_the_plugin_trains_on_from_train_model_and_back_with_it_starts_fresh(exp_run, tmp_path):
    saved = checkpoint.load(exp_run[0].run.work_dir / "iter_4.pth")
    plain, resumer = resume(exp_run[0].run.work_dir / "iter_4.pth", tmp_path / "plain", None, 6)
    assert all(torch.equal(v, saved["train_model"][k]) for k, v in resumer.weights.items())
    assert "resume: plugins ema are not active now; their saved state is left out" in \
           next(plain.run.run_dir.glob("*.log")).read_text()
    without = checkpoint.load(tmp_path / "plain" / "iter_6.pth")
    assert "train_model" not in without and "ema" not in without["plugins"]

    again, resumer = resume(tmp_path / "plain" / "iter_6.pth", tmp_path / "again", EXP_OPTIONS, 8)
    log = next(again.run.run_dir.glob("*.log")).read_text()
    assert f"ema: {tmp_path / 'plain' / 'iter_6.pth'} holds no average; it starts fresh from the trained weights" \
           in log and "resume: plugins ema have no state in the checkpoint; they start fresh" in log
    assert checkpoint.load(tmp_path / "again" / "iter_8.pth")["plugins"]["ema"] == {"steps": 2}


@pytest.mark.slow
def test_killed_and_resumed_equals_uninterrupted(tmp_path):
    """Killed after iteration 5, resumed from iter_3.pth (an odd number of updates: the interval's phase comes
    back too): every checkpoint entry (model, train_model, optimizer, plugins.ema, ...) bitwise as never stopped."""
    interrupter = install_interrupter(tmp_path / "interrupter")
    config = write_tiny_config(tmp_path, ema=EXP_OPTIONS, optim={"lr": 0.01})
    options = ["train.max_iters=8", "train.val_interval=4", "checkpoint.interval=3", "checkpoint.max_keep=0",
               "checkpoint.save_best=PCK", "randomness.seed=3"]

    def train(work_dir: Path, *flags: str, env: dict[str, str] | None = None, code: int = 0) -> str:
        result = posecore_cli("train", str(config), "--work-dir", str(work_dir), "--plugin", "interrupt", *flags,
                              "--cfg-options", *options, pythonpath=[interrupter], env=env)
        assert result.returncode == code, result.stderr
        return result.stderr

    train(tmp_path / "straight")
    train(tmp_path / "killed", env=interrupt_env(5), code=-signal.SIGKILL)
    resumed = train(tmp_path / "killed", "--resume")
    assert f"resumed from {tmp_path / 'killed' / 'iter_3.pth'} at iteration 3" in resumed
    assert "continuing after 2 updates" in resumed
    assert_same_run(tmp_path / "straight", tmp_path / "killed")
    saved = checkpoint.load(tmp_path / "killed" / "iter_8.pth")
    assert saved["plugins"]["ema"] == {"steps": 7}
    assert not torch.equal(saved["model"]["final.weight"], saved["train_model"]["final.weight"])
