"""MMPose's checkpoint files load where posecore reads weights, with ``weights_only`` still in force; pretrained
backbones from ImageNet files (``posecore.checkpoint.init_from``).

The files are made here as MMEngine writes them: ``{"meta": ..., "state_dict": ...}``, ``meta`` holding the
dataset metainfo of MMPose's COCO data set (numpy arrays among plain values), published by MMPose's
``publish_model.py`` in torch's legacy (non-zip) format, or, from a training run, with MMEngine's
``message_hub`` (HistoryBuffer objects and numpy scalars), optimizer and scheduler states.
"""

from __future__ import annotations

import logging
import re
import sys
import types
import urllib.error
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import posecore
from helpers import posecore as run_posecore, write_tiny_config
from posecore import checkpoint
from posecore.errors import CheckpointError, InputError
from posecore.plugins import load_config
from posecore.run import Run

NUMPY_MODULES = (b"numpy.core.multiarray", b"numpy._core.multiarray")
"""Where numpy 1.x and 2.x pickle their arrays and scalars from (``_reconstruct``, ``scalar``)."""


def coco_dataset_meta() -> dict:
    """MMPose 1.3's ``CocoDataset.metainfo`` (``parse_pose_metainfo`` of configs/_base_/datasets/coco.py), which
    MMEngine saves as ``meta['dataset_meta']``: its colours, keypoint weights and sigmas are numpy arrays."""
    names = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
             "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
             "right_knee", "left_ankle", "right_ankle"]
    flip = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
    links = [(15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9),
             (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6)]
    blue, green, orange = [51, 153, 255], [0, 255, 0], [255, 128, 0]
    return {
        "dataset_name": "coco", "num_keypoints": 17,
        "keypoint_id2name": dict(enumerate(names)), "keypoint_name2id": {name: i for i, name in enumerate(names)},
        "upper_body_ids": list(range(11)), "lower_body_ids": list(range(11, 17)),
        "flip_indices": flip, "flip_pairs": [pair for i in range(1, 17, 2) for pair in ((i + 1, i), (i, i + 1))],
        "keypoint_colors": np.array([blue] * 5 + [green, orange] * 6, dtype=np.uint8),
        "num_skeleton_links": len(links), "skeleton_links": links,
        "skeleton_link_colors": np.array([green, green, orange, orange] + [blue] * 4 + [green, orange, green, orange]
                                         + [blue] * 7, dtype=np.uint8),
        "dataset_keypoint_weights": np.array([1.0] * 7 + [1.2, 1.2, 1.5, 1.5, 1.0, 1.0, 1.2, 1.2, 1.5, 1.5],
                                             dtype=np.float32),
        "sigmas": np.array([0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107,
                            0.107, 0.087, 0.087, 0.089, 0.089], dtype=np.float32),
    }


def mmengine_meta() -> dict:
    """``meta`` as MMEngine's ``Runner.save_checkpoint`` writes it."""
    return {"epoch": 210, "iter": 195930, "cfg": "model = dict(type='TopdownPoseEstimator', ...)\n", "seed": 0,
            "experiment_name": "td-hm_hrnet-w32_8xb64-210e_coco-256x192", "time": "20220909_030135",
            "mmengine_version": "0.10.7", "dataset_meta": coco_dataset_meta()}


class HistoryBuffer:
    """Pickles as MMEngine's ``mmengine.logging.history_buffer.HistoryBuffer`` does (see ``message_hub``)."""

    def __init__(self) -> None:
        self.max_length = 1000000
        self._log_history, self._count_history = np.array([0.5, 0.25]), np.array([1, 1])
        # MMEngine's __getstate__ keeps these functions, which protocol 2 pickles as getattr(HistoryBuffer, name)
        self.statistics_methods = {"min": HistoryBuffer.min, "max": HistoryBuffer.max}

    def min(self) -> np.ndarray:
        return self._log_history.min()

    def max(self) -> np.ndarray:
        return self._log_history.max()


@pytest.fixture
def mmengine_module(monkeypatch):
    """HistoryBuffer under MMEngine's module name, for pickling (MMEngine itself is not needed)."""
    for name in ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer"):
        module = types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, module)
    module.HistoryBuffer = HistoryBuffer
    for obj in (HistoryBuffer, HistoryBuffer.min, HistoryBuffer.max):
        monkeypatch.setattr(obj, "__module__", module.__name__)


def save_as(path: Path, state: dict, numpy_module: bytes = NUMPY_MODULES[0], legacy: bool = True) -> Path:
    """``torch.save(state)``, in torch's legacy format as MMPose's ``publish_model.py`` writes (or in the zip format
    of MMEngine's runner), its numpy globals named as ``numpy_module``'s numpy writes them."""
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    if legacy:  # a legacy file is the pickle stream itself: its GLOBAL names can be rewritten in place
        data = path.read_bytes()
        for module in NUMPY_MODULES:
            data = data.replace(b"c" + module + b"\n", b"c" + numpy_module + b"\n")
        path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, OrderedDict]:
    """The tiny config and a state_dict of its model (the core's TopDownHeatmapNet), as MMEngine's
    ``weights_to_cpu`` gives it: an OrderedDict."""
    folder = tmp_path_factory.mktemp("tiny")
    config = write_tiny_config(folder)
    run = Run(*load_config(config))
    run.build_model()
    torch.manual_seed(0)
    return config, OrderedDict((name, torch.randn_like(value) if value.is_floating_point() else value)
                               for name, value in run.model.state_dict().items())


def test_a_published_mmpose_checkpoint_loads_through_posecore_test(tiny, tmp_path):
    config, weights = tiny
    path = save_as(tmp_path / "published.pth", {"meta": mmengine_meta(), "state_dict": weights})
    result = run_posecore("test", str(config), "--checkpoint", str(path), "--work-dir", str(tmp_path / "wd"))
    assert result.returncode == 0, result.stderr
    assert f"loaded model weights from {path}" in result.stderr


@pytest.mark.parametrize("numpy_module, legacy", [(NUMPY_MODULES[0], True), (NUMPY_MODULES[1], True),
                                                  (NUMPY_MODULES[0], False)], ids=["numpy1", "numpy2", "zip"])
def test_mmpose_checkpoints_load_through_load_model(numpy_module, legacy, tiny, tmp_path):
    """Published (legacy format) as written by numpy 1.x or 2.x, or saved by MMEngine's runner (zip format)."""
    config, weights = tiny
    path = save_as(tmp_path / "epoch_210.pth", {"meta": mmengine_meta(), "state_dict": weights}, numpy_module,
                   legacy)
    assert not legacy or numpy_module + b"\n_reconstruct" in path.read_bytes()
    model = posecore.load_model(config, path)
    assert all(torch.equal(value, weights[name]) for name, value in model.state_dict().items())


def test_an_mmengine_training_checkpoint_loads_without_its_training_state(mmengine_module, tiny, tmp_path):
    """MMEngine's message_hub, optimizer and scheduler states are not weights: the HistoryBuffer objects (and
    the getattr calls in their pickle) are read as stand-ins, never imported; the weights load."""
    config, weights = tiny
    message_hub = {"log_scalars": OrderedDict([("train/loss", HistoryBuffer())]),
                   "runtime_info": OrderedDict([("epoch", 210), ("eta", np.float64(0.0)),
                                                ("dataset_meta", coco_dataset_meta())]),
                   "resumed_keys": OrderedDict([("train/loss", True)])}
    optimizer = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
                 "param_groups": [{"lr": 0.0005, "params": [0]}]}
    schedulers = [{"milestones": Counter({170: 1, 200: 1}), "gamma": 0.1, "last_step": 210}]
    path = save_as(tmp_path / "best_coco_AP_epoch_210.pth",
                   {"meta": mmengine_meta(), "state_dict": weights, "message_hub": message_hub,
                    "optimizer": optimizer, "param_schedulers": schedulers}, legacy=False)
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    assert {"mmengine.logging.history_buffer.HistoryBuffer", "builtins.getattr"} <= set(unsafe)
    loaded, recorded = checkpoint.read_weights(path)
    assert recorded is None and loaded.keys() == weights.keys()
    model = posecore.load_model(config, path)
    assert all(torch.equal(value, weights[name]) for name, value in model.state_dict().items())


class Custom:
    """A class of the writer's own: unpickling it would import and build it."""


class StateDict(OrderedDict):
    """A state_dict container of the writer's own."""


@pytest.mark.parametrize("where", ["meta", "state_dict"])
def test_a_file_holding_any_other_global_is_refused_by_name(where, tiny, tmp_path):
    config, weights = tiny
    state = {"meta": {**mmengine_meta(), "extra": Custom()}, "state_dict": weights} if where == "meta" else \
        {"meta": mmengine_meta(), "state_dict": StateDict(weights)}
    path = save_as(tmp_path / "foreign.pth", state)
    name = f"{__name__}.{'Custom' if where == 'meta' else 'StateDict'}"
    with pytest.raises(CheckpointError) as caught:
        checkpoint.read_weights(path)
    assert str(caught.value) == f"{path}: not a loadable checkpoint: it contains pickled Python objects, which " \
                                f"posecore refuses to load (they could run code): {name}"
    with pytest.raises(InputError, match=f"^{re.escape(str(caught.value))}$"):
        posecore.load_model(config, path)


class Backbone(torch.nn.Module):
    """A small ResNet-like backbone: torchvision's and MMPose's names (conv1, bn1, layer1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3)
        self.bn1 = torch.nn.BatchNorm2d(4)
        self.layer1 = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1), torch.nn.BatchNorm2d(4))


def imagenet_weights() -> dict[str, torch.Tensor]:
    """Backbone's weights as an ImageNet classifier has them, ``fc.*`` included."""
    torch.manual_seed(1)
    return {**{name: torch.randn_like(value) if value.is_floating_point() else value
               for name, value in Backbone().state_dict().items()},
            "fc.weight": torch.randn(10, 4), "fc.bias": torch.randn(10)}


def messages(caplog) -> list[str]:
    return [f"{record.levelname} {record.getMessage()}" for record in caplog.records]


def test_init_from_a_torchvision_file(tmp_path, caplog):
    """torchvision's files are plain state_dicts; older ones lack num_batches_tracked, which is not reported."""
    weights = {name: value for name, value in imagenet_weights().items() if "num_batches_tracked" not in name}
    torch.save(weights, tmp_path / "resnet.pth")
    backbone = Backbone()
    caplog.set_level(logging.INFO)
    checkpoint.init_from(backbone, str(tmp_path / "resnet.pth"), logging.getLogger("test"))
    assert all(torch.equal(value, weights[name]) for name, value in backbone.state_dict().items()
               if name in weights)
    assert messages(caplog) == [
        f"INFO initialised Backbone from {tmp_path / 'resnet.pth'}: 12 of its 14 tensors",
        f"INFO init_from {tmp_path / 'resnet.pth'}: 2 in the file but not in the module, ignored: fc.weight, fc.bias",
    ]


@pytest.mark.parametrize("prefix, part", [("backbone.", " (its backbone.* entries)"), ("module.", "")])
def test_init_from_an_mmpose_file_with_a_prefix(prefix, part, tmp_path, caplog):
    """MMPose's/MMEngine's ``{"state_dict": ...}``: of a whole model (or mmcls's) the ``backbone.*`` entries; a
    ``module.`` prefix (a wrapped model's) dropped. A missing tensor is a warning; the rest loads."""
    weights = {name: value for name, value in imagenet_weights().items() if name != "layer1.0.weight"}
    head = {"head.final_layer.weight": torch.randn(17, 4, 1, 1)} if prefix == "backbone." else {}
    path = tmp_path / "hrnet.pth"
    torch.save({"meta": mmengine_meta(), "state_dict": {**{prefix + k: v for k, v in weights.items()}, **head}},
               path)
    backbone = Backbone()
    before = backbone.layer1[0].weight.clone()
    caplog.set_level(logging.INFO)
    checkpoint.init_from(backbone, str(path), logging.getLogger("test"))
    assert torch.equal(backbone.conv1.weight, weights["conv1.weight"]) and torch.equal(backbone.layer1[0].weight,
                                                                                      before)
    assert messages(caplog) == [
        f"INFO initialised Backbone from {path}{part}: 13 of its 14 tensors",
        f"WARNING init_from {path}: 1 left as initialised, missing from the file: layer1.0.weight",
        f"INFO init_from {path}: 2 in the file but not in the module, ignored: fc.weight, fc.bias",
    ]


def test_init_from_a_file_for_another_architecture_is_an_error(tmp_path):
    torch.save({"features.0.weight": torch.zeros(4, 3, 3, 3)}, tmp_path / "vgg.pth")
    with pytest.raises(CheckpointError, match=f"^init_from {re.escape(str(tmp_path))}/vgg.pth: no weight of .* "
                                              f"fits Backbone \\(it has features.0.weight; the module conv1.weight"):
        checkpoint.init_from(Backbone(), str(tmp_path / "vgg.pth"), logging.getLogger("test"))


def test_init_from_a_name_uses_torch_hubs_cache_and_offline_says_where_to_put_the_file(tmp_path, monkeypatch,
                                                                                   caplog):
    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    log = logging.getLogger("test")
    url, cache = "https://download.pytorch.org/models/resnet50-0676ba61.pth", tmp_path / "torch_home" / "hub" / \
        "checkpoints"
    with pytest.raises(InputError) as caught:
        checkpoint.init_from(Backbone(), "torchvision://resnet50", log)
    assert str(caught.value) == (
        f"init_from torchvision://resnet50: resnet50-0676ba61.pth is not in torch.hub's cache and the download failed "
        f"(<urlopen error [Errno -3] Temporary failure in name resolution>): download {url} into {cache} (TORCH_HOME "
        f"moves the cache); or set init_from to the path of a local copy")

    cache.mkdir(parents=True, exist_ok=True)  # put there, the file is used without a download
    torch.save(imagenet_weights(), cache / "resnet18-f37072fd.pth")
    caplog.set_level(logging.INFO)
    checkpoint.init_from(Backbone(), "torchvision://resnet18", log)
    assert messages(caplog)[0] == "INFO initialised Backbone from torchvision://resnet18: 14 of its 14 tensors"

    with pytest.raises(InputError, match="^init_from torchvision://resnet51: unknown name; init_from takes a local "
                                         "file, an http\\(s\\) URL or one of torchvision://resnet18, "):
        checkpoint.init_from(Backbone(), "torchvision://resnet51", log)
