"""Plugins: discovery through entry points, the activation rule, hook calls and their order."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import make_plugin_dist, posecore
from posecore import hookimpl
from posecore.config import Key, Section
from posecore.errors import ConfigError, PosecoreError
from posecore.plugins import module_plugin, resolve
from posecore.pose.model import TopDownHeatmapNet
from posecore.testing import TINY_CONFIG, run_training

COUNTER = """
from posecore import hookimpl
from posecore.config import Key, Section

@hookimpl
def config_schema():
    return {"counter": Section({"enabled": Key(bool, False, "on"), "every": Key(int, 1, "how often", min=1)})}

@hookimpl
def after_iter(run):
    run.plugin_data["counter"] = run.plugin_data.get("counter", 0) + 1

@hookimpl
def save_state(run):
    return {"count": run.plugin_data.get("counter", 0)}
"""


@pytest.fixture
def site(tmp_path):
    return make_plugin_dist(tmp_path / "site", "counter", COUNTER, dist="posecore-counter", version="1.2.3")


def test_installed_plugin_is_listed_with_its_hooks(site, tiny_config):
    result = posecore("plugins", "--json", pythonpath=[site])
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["counter"] == {"name": "counter", "distribution": "posecore-counter", "version": "1.2.3",
                               "hooks": ["after_iter", "config_schema", "save_state"], "types": {}, "active": None}
    table = posecore("plugins", "--config", str(tiny_config), "--plugin", "counter", pythonpath=[site])
    line = next(line for line in table.stdout.splitlines() if line.startswith("counter"))
    assert line.split()[:4] == ["counter", "posecore-counter", "1.2.3", "yes"]


def test_installed_is_not_active_until_named_or_used(site, tiny_config, tmp_path):
    def trained(*options):
        work_dir = tmp_path / f"wd{len(list(tmp_path.iterdir()))}"
        result = posecore("train", str(tiny_config), "--work-dir", str(work_dir), *options, pythonpath=[site])
        assert result.returncode == 0, result.stderr
        import torch
        return torch.load(work_dir / "iter_4.pth", weights_only=True), result.stderr

    state, log = trained()
    assert "counter" not in state["plugins"] and "plugins: none" in log
    state, log = trained("--plugin", "counter")
    assert state["plugins"]["counter"] == {"count": 4} and "plugins: counter-1.2.3" in log
    assert state["meta"]["plugins"]["counter"] == "1.2.3"
    state, _ = trained("--cfg-options", "counter.every=2")  # using its section activates it
    assert state["plugins"]["counter"] == {"count": 4}
    state, _ = trained("--cfg-options", "counter.enabled=false", "counter.every=2")
    assert "counter" not in state["plugins"]


def test_blocked_plugin_cannot_be_named_or_used(site, tiny_config):
    both = posecore("train", str(tiny_config), "--plugin", "counter", "--plugin", "no:counter", pythonpath=[site])
    assert both.returncode == 2 and "both named and blocked" in both.stderr
    listed = posecore("plugins", "--json", "--config", str(tiny_config), "--plugin", "no:counter", pythonpath=[site])
    assert {r["name"]: r["active"] for r in json.loads(listed.stdout)}["counter"] is False


def test_require_is_checked_against_installed_versions(site, tiny_config):
    ok = posecore("config", str(tiny_config), "--cfg-options", 'require=["posecore-counter>=1.2"]', pythonpath=[site])
    assert ok.returncode == 0, ok.stderr
    old = posecore("config", str(tiny_config), "--cfg-options", 'require=["posecore-counter>=2"]', pythonpath=[site])
    assert old.returncode == 2
    assert "require: posecore-counter>=2 but posecore-counter 1.2.3 is installed: pip install" in old.stderr


def test_plugin_that_fails_to_import_is_named(tmp_path, tiny_config):
    site = make_plugin_dist(tmp_path / "site", "broken", "raise ImportError('needs libfoo')\n")
    result = posecore("config", str(tiny_config), pythonpath=[site])
    assert result.returncode == 1
    assert "plugin 'broken' (posecore-broken-test 0.1.0) failed to import: ImportError: needs libfoo" in result.stderr


class Misspelled:
    @hookimpl
    def after_iterr(self, run):
        pass


def test_misspelled_hook_implementation_is_caught():
    with pytest.raises(Exception, match="after_iterr"):
        resolve({"plugins": ["typo"], "train": {"max_iters": 1}}, lambda key: "run.toml", installed=[],
                extra=[module_plugin("typo", Misspelled())])


class Claims:
    @hookimpl
    def config_schema(self):
        return {"optim": Section({"x": Key(int, 1)})}


def test_two_plugins_claiming_one_key_is_an_error():
    with pytest.raises(PosecoreError, match="config key 'optim' is claimed by plugins 'core' and 'claims'"):
        resolve({"train": {"max_iters": 1}}, lambda key: "run.toml", installed=[],
                extra=[module_plugin("claims", Claims())])


class Validating:
    @hookimpl
    def config_schema(self):
        return {"ema": Section({"momentum": Key(float, 0.999, "EMA momentum", min=0, max=1)})}

    @hookimpl
    def configure(self, config):
        if config["ema"]["momentum"] == 0:
            raise ConfigError("ema.momentum 0 keeps no average; use a value in (0, 1]")


def test_plugin_validates_its_own_section():
    extra = [module_plugin("ema", Validating())]
    with pytest.raises(ConfigError, match="run.toml: 'ema.momentum' is 2.0, must be <= 1"):
        resolve({"ema": {"momentum": 2}, "train": {"max_iters": 1}}, lambda key: "run.toml", installed=[], extra=extra)
    with pytest.raises(ConfigError, match="keeps no average"):
        resolve({"ema": {"momentum": 0}, "train": {"max_iters": 1}}, lambda key: "run.toml", installed=[], extra=extra)
    config, plugin_set = resolve({"train": {"max_iters": 1}, "plugins": ["ema"]}, lambda key: "run.toml",
                                 installed=[], extra=extra)
    assert config["ema"] == {"momentum": 0.999} and [p.name for p in plugin_set.active] == ["core", "ema"]


class Recorder:
    @hookimpl
    def after_iter(self, run, loss):
        assert loss.requires_grad

    @hookimpl
    def after_val(self, metrics):
        assert set(metrics) == {"PCK"}


def test_hooks_are_called_in_the_documented_order(tmp_path):
    recording = run_training(tmp_path, plugins={"recorder": Recorder()},
                             config={**TINY_CONFIG, "plugins": ["recorder"]})
    # eval_model is asked at each validation and save, as save_state is
    names = [n for n in recording.names() if n not in ("save_state", "collect_scalars", "eval_model")]
    assert names == (["before_build", "before_train", "forward_context"]
                     + ["backward_step", "after_iter"] * 2 + ["after_val"]
                     + ["backward_step", "after_iter"] * 2 + ["after_val", "after_train"])
    assert recording.count("after_iter") == 4
    assert recording.calls_of("after_train")[0]["error"] is None
    assert sorted(p.name for p in tmp_path.glob("iter_*.pth")) == ["iter_2.pth", "iter_4.pth"]
    assert recording.run.iteration == 4


def test_help_and_plugins_list_without_importing_torch():
    """`posecore --help` and `posecore plugins` stay instant: neither imports torch or numpy (the plugins' too)."""
    code = ("import sys; from posecore.cli import main; main(['plugins', '--json']); "
            "heavy = sorted(m for m in ('torch', 'numpy') if m in sys.modules); print('HEAVY', heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "HEAVY []"
    assert {row["name"] for row in json.loads(result.stdout[:result.stdout.rindex("HEAVY")])} >= {"amp", "seed"}
    code = ("import sys\nfrom posecore.cli import main\ntry:\n    main(['train', '--help'])\nfinally:\n"
            "    print('HEAVY', 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "HEAVY False"


class _MeanPixelError:
    """A metric type of a test plugin: the mean keypoint error in pixels over visible keypoints."""

    options = Section({"scale": Key(float, 1.0, "Multiplies the error.")}, "Mean pixel error.")

    def __init__(self, layout, dataset, scale: float = 1.0) -> None:
        self.scale, self.count = scale, layout.num_keypoints

    def __call__(self, predictions):
        assert predictions["pred"].shape[1:] == (self.count, 2) and "index" in predictions
        visible = predictions["visible"] > 0
        error = (predictions["pred"] - predictions["keypoints"]).norm(dim=-1)[visible].mean()
        return {"pixel_error": float(error) * self.scale}, None


class _ScaledNet(TopDownHeatmapNet):
    """A model type of a test plugin: a small core network whose loss is scaled (and its calls counted)."""

    options = Section({"loss_scale": Key(float, 1.0, "Multiplies the loss.", min=0)}, "A scaled heatmap net.")

    def __init__(self, num_keypoints: int, loss_scale: float = 1.0) -> None:
        super().__init__(num_keypoints, stage_channels=[8, 16], stage_blocks=[1, 1], deconv_channels=[8])
        self.loss_scale, self.losses = loss_scale, 0

    def loss(self, output, batch):
        self.losses += 1
        return super().loss(output, batch) * self.loss_scale


class _TypesPlugin:
    @hookimpl
    def model_types(self):
        return {"ScaledNet": _ScaledNet}

    @hookimpl
    def metric_types(self):
        return {"MeanPixelError": "test_plugins:_MeanPixelError"}  # a reference, imported when used


def test_a_plugin_type_is_selected_by_name_trained_and_scored(tmp_path):
    config = {**TINY_CONFIG, "model": {"type": "ScaledNet", "loss_scale": 2.0},
              "val_evaluator": {"type": "MeanPixelError", "scale": 0.5},
              "checkpoint": {"interval": 2, "save_best": "pixel_error", "rule": "less"}}
    recording = run_training(tmp_path, plugins={"types": _TypesPlugin()}, config=config)
    run = recording.run
    assert [p.name for p in run.plugins.active] == ["core", "types"]  # naming its types activated it
    assert run.model.losses == 4 and run.config["model"] == {"type": "ScaledNet", "norm": "batch",
                                                              "flip_test": False, "channels_last": False,
                                                              "compile": False, "loss_scale": 2.0}
    (metrics,) = [call["metrics"] for call in recording.calls_of("after_val")][-1:]
    assert set(metrics) == {"pixel_error"} and 0 < metrics["pixel_error"] < 100
    assert list(tmp_path.glob("best_pixel_error_iter_*.pth"))


def test_a_type_nobody_provides_lists_the_installed_ones_and_two_providers_of_one_name_are_an_error(tiny_config):
    result = posecore("config", str(tiny_config), "--cfg-options", "model.type=HRNet")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "posecore: error: --cfg-options: unknown model.type 'HRNet'; installed: TopDownHeatmapNet (core), "
        "TopdownPoseEstimator (core)"]
    with pytest.raises(PosecoreError, match="model type 'ScaledNet' is provided by plugins 'a' and 'b'; uninstall one"):
        resolve(dict(TINY_CONFIG, work_dir="wd"), lambda key: "test", installed=[],
                extra=[module_plugin("a", _TypesPlugin()), module_plugin("b", _TypesPlugin())])
