"""`posecore config import`: MMPose configs read without running them, against MMEngine's own reading
(tests/golden/mmpose_configs.json, made by tests/golden/make_mmpose_configs.py), and translated to posecore TOML,
against the hand-written examples/mmpose/ and the imported ones there. None of this needs MMEngine."""

from __future__ import annotations

import json
import re

import pytest
from helpers import REPO

from posecore.cli import _run
from posecore.compose import config_changes
from posecore.config import loads
from posecore.errors import ConfigError
from posecore.mmpose_import import import_config
from posecore.plugins import load_config
from posecore.pyconfig import read_config

GOLDEN = REPO / "tests" / "golden"
TOPDOWN = GOLDEN / "mmpose_configs" / "body_2d_keypoint" / "topdown_heatmap" / "coco"
RES50 = TOPDOWN / "td-hm_res50_8xb64-210e_coco-256x192.py"
HRNET = TOPDOWN / "td-hm_hrnet-w32_8xb64-210e_coco-256x192.py"
RTMPOSE = GOLDEN / "mmpose_configs" / "body_2d_keypoint" / "rtmpose" / "coco"
RTMPOSE_M = RTMPOSE / "rtmpose-m_8xb256-420e_coco-256x192.py"
COCO_TRAIN_PERSONS = 149813  # COCO train2017's persons with keypoints, as the examples count an epoch
UNTRANSLATED = [
    "custom_hooks[0] = dict(type='SyncBuffersHook')",
    "env_cfg.mp_cfg.mp_start_method = 'fork'",
    "log_processor = dict(type='LogProcessor', window_size=50, by_epoch=True, num_digits=6)",
]
"""What posecore has no key for in both MMPose configs (the same runtime base and augmentation)."""


@pytest.mark.parametrize("name", sorted(json.loads((GOLDEN / "mmpose_configs.json").read_text())))
def test_reader_gives_what_mmengine_gives(name):
    golden = json.loads((GOLDEN / "mmpose_configs.json").read_text())[name]
    assert json.loads(json.dumps(read_config(GOLDEN / name))) == golden


REFUSED = [
    ("import os\n", 1, "an import"),
    ("x = 1\nfor i in range(3):\n    x = i\n", 2, "a for loop"),
    ("x = __import__('os').system('true')\n", 1, "calls __import__('os').system()"),
    ("x = open('f')\n", 1, "calls open() (only dict, list, tuple and range are read)"),
    ("x = []\nx.append(1)\n", 2, "a statement calling x.append()"),
    ("x = 1 if True else 2\n", 1, "a conditional expression"),
    ("x = [i for i in range(3) if i]\n", 1, "a comprehension with a condition"),
    ("x = {{_base_.y}}\n", 1, "a set display"),
    ("x = '{{ fileDirname }}/data'\n", 1, "MMEngine's {{...}} text substitution"),
    ("x = 1\ny = z\n", 2, "'z' is not assigned before this line (a base's values are _base_.z)"),
    ("x = dict(a=1)\ny = x.b\n", 2, "x.b: no key 'b' in x"),
    ("x = (1, 2)\ny = x[5]\n", 2, "x[5]: IndexError"),
    ("x = 'a' + 1\n", 1, "'a' + 1: str + int"),
    ("x = 1 / 0\n", 1, "1 / 0: division by zero"),
    ("x = 'ab' * 10**6\n", 1, "'ab' * 10 ** 6: more than 100000 items"),
    ("x = 2 ** 5000\n", 1, "2 ** 5000: an exponent over 1000"),
    ("x = 1\nx += 1\n", 2, "a AugAssign"),
    ("x = [\n", 1, "invalid Python"),
]


@pytest.mark.parametrize("text, line, message", REFUSED)
def test_reader_refuses_anything_but_literals_naming_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "bad.py"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        read_config(path)
    assert str(error.value).startswith(f"{path}:{line}: {message}")
    assert "\n" not in str(error.value)


def test_bases_errors_name_the_chain(tmp_path):
    files = {"cycle.py": "_base_ = ['loop.py']\n", "loop.py": "_base_ = './cycle.py'\n",
             "missing.py": "_base_ = ['nope.py']\n", "deep.py": "_base_ = ['bad.py']\n", "bad.py": "import os\n",
             "twice.py": "_base_ = ['one.py', 'two.py']\n", "one.py": "x = 1\n", "two.py": "x = 2\n",
             "clash.py": "_base_ = ['nested.py']\nx = dict(a=dict(b=1))\n", "nested.py": "x = dict(a=1)\n",
             "package.py": "_base_ = ['mmpose::x.py']\n", "reserved.py": "filename = 'x'\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    expected = {
        "cycle.py": f"-> {tmp_path / 'loop.py'} -> {tmp_path / 'cycle.py'}: _base_ cycle; remove one of these",
        "missing.py": f"-> {tmp_path / 'nope.py'}: config file not found",
        "deep.py": f"-> {tmp_path / 'bad.py'}:1: an import",
        "twice.py": f": 'x' is set by two bases, {tmp_path / 'one.py'} and {tmp_path / 'two.py'}",
        "clash.py": ": 'x.a' is a dict here but not in its base; add _delete_=True",
        "package.py": ": _base_ 'mmpose::x.py' is in another package",
        "reserved.py": ": 'filename' is a reserved name in MMEngine configs",
    }
    for name, message in expected.items():
        with pytest.raises(ConfigError) as error:
            read_config(tmp_path / name)
        assert str(error.value).startswith(f"{tmp_path / name} {message}".replace(" :", ":")), name


def test_reading_never_runs_code(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.py"
    path.write_text(f"x = dict(a=open({str(marker)!r}, 'w'))\n")
    with pytest.raises(ConfigError):
        read_config(path)
    assert not marker.exists()


def test_errors_are_one_line_with_exit_2(tmp_path, capsys):
    (tmp_path / "cycle.py").write_text("_base_ = 'cycle.py'\n")
    (tmp_path / "code.py").write_text("import os\n")
    for name, message in (("missing.py", "config file not found"), ("cycle.py", "_base_ cycle"),
                          ("code.py", ":1: an import")):
        assert _run(["config", "import", str(tmp_path / name)]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith("posecore: error: ") and message in error, error


@pytest.mark.parametrize("config", [RES50, HRNET], ids=lambda path: path.stem)
def test_import_gives_the_hand_written_example(config, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # MMPose's data/coco/ paths are relative to where it runs: the checkout, as in the examples
    out = tmp_path / f"{config.stem}.toml"  # the example's name, so the same default work_dir
    assert _run(["config", "import", str(config), "--out", str(out), "--train-samples", str(COCO_TRAIN_PERSONS)]) == 0
    assert capsys.readouterr().err == f"posecore: wrote {out}; 3 MMPose setting(s) not translated, listed at the top\n"
    printed = []
    for toml in (REPO / "examples" / "mmpose" / f"{config.stem}.toml", out):
        assert _run(["config", str(toml)]) == 0
        printed.append(loads(capsys.readouterr().out))
    assert config_changes(*printed) == []


@pytest.mark.parametrize("config", [RES50, HRNET], ids=lambda path: path.stem)
def test_untranslated_settings_are_listed_at_the_top(config, tmp_path):
    imported = import_config(config, tmp_path, train_samples=COCO_TRAIN_PERSONS, cwd=REPO)
    assert imported.untranslated == UNTRANSLATED
    text = imported.toml()
    header = text[:text.index("\n\n")].splitlines()
    assert all(line.startswith("#") for line in header)
    assert [line[4:] for line in header if line.startswith("#   ")] == UNTRANSLATED
    assert ("An epoch is 292 iterations: 149813 training persons (--train-samples) // a total batch of 512 "
            "(auto_scale_lr.base_batch_size).") in " ".join(line[2:] for line in header)
    assert loads(text) == imported.config


def test_epochs_are_listed_when_the_training_persons_are_unknown(tmp_path):
    imported = import_config(RES50, tmp_path, cwd=tmp_path)  # no annotation file there, no --train-samples
    why = ("  (epochs; posecore counts iterations, an epoch being (training persons // 512): rerun with "
           "--train-samples N)")
    assert sorted(imported.untranslated) == sorted(UNTRANSLATED + [
        f"default_hooks.checkpoint.interval = 10{why}", f"train_cfg.val_interval = 10{why}"])
    config = imported.config
    assert "val_interval" not in config["train"] and "interval" not in config["checkpoint"]
    assert config["scheduler"]["milestones"] == [170, 200]  # epochs, as posecore's by_epoch counts them


def test_epochs_are_counted_in_the_training_annotation_file(tmp_path):
    person = {"image_id": 1, "bbox": [10, 10, 50, 100], "keypoints": [20, 30, 2] + [0, 0, 0] * 16}
    annotations = [{**person, "id": i} for i in range(5)] + [
        {**person, "id": 5, "iscrowd": 1}, {**person, "id": 6, "keypoints": [0, 0, 0] * 17}]
    ann_file = tmp_path / "data" / "coco" / "annotations" / "person_keypoints_train2017.json"
    ann_file.parent.mkdir(parents=True)
    ann_file.write_text(json.dumps({"images": [{"id": 1, "file_name": "1.jpg"}], "annotations": annotations}))
    imported = import_config(RES50, tmp_path / "configs", total_batch=2, cwd=tmp_path)
    config = imported.config  # 5 persons // 2 = 2 iterations an epoch
    assert config["train"]["val_interval"] == config["checkpoint"]["interval"] == 20
    assert config["train_dataloader"]["dataset"]["ann_file"] == \
        "../data/coco/annotations/person_keypoints_train2017.json"
    assert f"5 training persons (in {ann_file}) // a total batch of 2 (--total-batch)" in " ".join(imported.notes)
    assert imported.untranslated == UNTRANSLATED


VARIANT = """
_base_ = [{base!r}]
codec = dict(type='UDPHeatmap', input_size=(192, 256), heatmap_size=(48, 64), sigma=2)
model = dict(backbone=dict(depth=101, frozen_stages=1), head=dict(decoder=codec), test_cfg=dict(_delete_=True,
             flip_test=True))
train_pipeline = [
    dict(type='LoadImage'),
    dict(type='GetBBoxCenterScale', padding=1.5),
    dict(type='RandomBBoxTransform', shift_prob=0, scale_factor=(0.7, 1.3), rotate_factor=60, rotate_prob=0.5),
    dict(type='TopdownAffine', input_size=codec['input_size'], use_udp=True),
    dict(type='PhotometricDistortion'),
    dict(type='GenerateTarget', encoder=codec),
    dict(type='PackPoseInputs'),
]
val_pipeline = [dict(type='LoadImage'), dict(type='GetBBoxCenterScale', padding=1.5),
                dict(type='TopdownAffine', input_size=codec['input_size'], use_udp=True), dict(type='PackPoseInputs')]
train_dataloader = dict(num_workers=4, persistent_workers=False, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=val_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=3000, val_interval=500)
optim_wrapper = dict(optimizer=dict(_delete_=True, type='SGD', lr=0.01), clip_grad=dict(max_norm=35, norm_type=2))
param_scheduler = [dict(type='MultiStepLR', by_epoch=False, milestones=[2000, 2500], gamma=0.5)]
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=1000, max_keep_ckpts=2, save_best='coco/AP .5'),
                     logger=dict(interval=10))
randomness = dict(seed=2023, deterministic=True)
"""


def test_import_translates_each_setting_posecore_has(tmp_path):
    path = tmp_path / "variant.py"
    path.write_text(VARIANT.format(base=str(RES50)))
    imported = import_config(path, tmp_path, cwd=REPO)
    config = imported.config
    assert config["codec"] == {"type": "UDPHeatmap", "input_size": [192, 256], "heatmap_size": [48, 64], "sigma": 2,
                               "shift_heatmap": False}  # MMPose's default without test_cfg.shift_heatmap
    assert config["model"]["backbone"] == {"type": "ResNet", "depth": 101, "init_from": "torchvision://resnet50"}
    assert config["augment"] == {"flip_prob": 0.0, "scale_factor": [0.7, 1.3], "scale_prob": 1.0,
                                 "rotate_factor": 60.0, "rotate_prob": 0.5, "padding": 1.5, "half_body_prob": 0.0,
                                 "shift_prob": 0.0, "shift_factor": 0.16}  # no RandomFlip, no RandomHalfBody: neither
    assert config["train_dataloader"]["num_workers"] == 4 and not config["train_dataloader"]["persistent_workers"]
    assert config["optim"] == {"type": "SGD", "lr": 0.01, "weight_decay": 0.0, "momentum": 0.0, "clip_grad_norm": 35}
    assert config["scheduler"] == {"type": "step", "warmup_iters": 0, "gamma": 0.5, "milestones": [2000, 2500]}
    assert config["train"] == {"max_iters": 3000, "val_interval": 500, "log_interval": 10}
    assert config["checkpoint"] == {"interval": 1000, "max_keep": 2, "save_best": "AP50", "rule": "greater"}
    assert config["randomness"] == {"seed": 2023, "deterministic": True}
    assert imported.untranslated == [
        "custom_hooks[0] = dict(type='SyncBuffersHook')", "env_cfg.mp_cfg.mp_start_method = 'fork'",
        "log_processor = dict(type='LogProcessor', window_size=50, by_epoch=True, num_digits=6)",
        "model.backbone.frozen_stages = 1", "train_dataloader.dataset.pipeline[4] = dict(type='PhotometricDistortion')"]
    assert not any("epoch" in note for note in imported.notes)  # nothing counted in epochs
    out = tmp_path / "variant.toml"
    out.write_text(imported.toml())
    load_config(out)


def test_an_unpublished_hrnet_is_written_as_its_stages(tmp_path):
    path = tmp_path / "hrnet.py"
    path.write_text(f"_base_ = [{str(HRNET)!r}]\nmodel = dict(backbone=dict(extra=dict(stage4=dict(num_modules=2))))\n")
    imported = import_config(path, tmp_path, train_samples=COCO_TRAIN_PERSONS, cwd=REPO)
    backbone = imported.config["model"]["backbone"]
    assert "arch" not in backbone and backbone["extra"]["stage4"] == {
        "num_modules": 2, "num_branches": 4, "block": "BASIC", "num_blocks": [4, 4, 4, 4],
        "num_channels": [32, 64, 128, 256]}
    assert imported.untranslated == UNTRANSLATED
    out = tmp_path / "hrnet.toml"
    out.write_text(imported.toml())
    assert load_config(out)[0]["model"]["backbone"]["extra"]["stage4"]["num_modules"] == 2


IMPORTED_EXAMPLES = [TOPDOWN / f"td-hm_{name}-210e_coco-256x192.py" for name in (
    "res101_8xb64", "res152_8xb32", "hrnet-w48_8xb32", "hrnet-w32_dark-8xb64", "hrnet-w32_udp-8xb64")] + [
    RTMPOSE / f"rtmpose-{size}_8xb256-420e_coco-256x192.py" for size in "tsml"]
"""MMPose's configs whose examples/mmpose/ TOML is the import (with --total-batch GPUs x batch, as named)."""


@pytest.mark.parametrize("config", IMPORTED_EXAMPLES, ids=lambda path: path.stem)
def test_imported_examples_are_the_import(config):
    gpus, batch = map(int, re.search(r"(\d+)xb(\d+)", config.stem).groups())
    example = REPO / "examples" / "mmpose" / f"{config.stem}.toml"
    imported = import_config(config, example.parent, train_samples=COCO_TRAIN_PERSONS, total_batch=gpus * batch,
                             cwd=REPO)
    text = example.read_text()
    assert loads(text) == imported.config
    assert [line[4:] for line in text.splitlines() if line.startswith("#   ")] == imported.untranslated


def test_rtmpose_translates_all_but_the_runtime(tmp_path):
    imported = import_config(RTMPOSE_M, tmp_path, train_samples=COCO_TRAIN_PERSONS, total_batch=2048, cwd=REPO)
    assert imported.untranslated == UNTRANSLATED[1:]  # its custom_hooks replace the base's SyncBuffersHook
    config = imported.config
    assert config["codec"] == {"type": "SimCCLabel", "input_size": [192, 256], "sigma": [4.9, 5.66],
                               "simcc_split_ratio": 2.0, "normalize": False, "use_dark": False}
    assert config["model"]["norm"] == "sync_batch"  # SyncBN: torch's BatchNorm defaults
    assert config["model"]["backbone"]["norm_cfg"] == {"momentum": 0.1, "eps": 1e-5}
    assert config["model"]["head"]["in_featuremap_size"] == [6, 8]
    dropout = {"type": "CoarseDropout", "num_holes_range": [1, 1], "hole_height_range": [0.2, 0.4],
               "hole_width_range": [0.2, 0.4]}
    augment = config["augment"]
    assert augment["albumentations"][2] == {**dropout, "p": 1.0}
    assert (augment["hsv_hue_delta"], augment["hsv_saturation_delta"], augment["hsv_value_delta"]) == (5, 30, 30)
    assert augment["switch"] == {"epoch": 390, "scale_factor": [0.75, 1.25], "rotate_factor": 60.0,
                                 "shift_factor": 0.0, "albumentations": [
                                     {"type": "Blur", "p": 0.1}, {"type": "MedianBlur", "p": 0.1}, {**dropout, "p": 0.5}]}
    assert config["ema"] == {"ema_type": "ExpMomentumEMA", "momentum": 0.0002, "update_buffers": True}
    assert config["optim"] == {"type": "AdamW", "lr": 0.004, "weight_decay": 0.05,
                               "paramwise": {"norm_decay_mult": 0, "bias_decay_mult": 0}}
    assert config["scheduler"] == {"type": "cosine", "warmup_iters": 1000, "warmup_ratio": 1e-5, "by_epoch": True,
                                   "begin": 210, "min_lr_ratio": 0.05}
    assert config["train"] == {"max_epochs": 420, "val_interval": 730, "log_interval": 50}  # 149813 // 2048 = 73
    assert config["checkpoint"] == {"interval": 730, "max_keep": 1, "save_best": "AP", "rule": "greater"}
    assert config["randomness"] == {"seed": 21}


LACKING = """
_base_ = [{base!r}]
model = dict(backbone=dict(_delete_=True, type='SwinTransformer', embed_dims=96))
custom_hooks = [dict(type='SyncBuffersHook'), dict(type='EMAHook', ema_type='StochasticWeightAverage')]
param_scheduler = [
    dict(type='LinearLR', start_factor=1.0e-5, by_epoch=False, begin=0, end=1000),
    dict(type='CosineAnnealingLR', eta_min=0, begin=0, end=420, T_max=420, by_epoch=True, convert_to_iter_based=True),
]
"""


def test_parts_posecore_lacks_are_listed_whole(tmp_path):
    path = tmp_path / "lacking.py"
    path.write_text(LACKING.format(base=str(RTMPOSE_M)))
    imported = import_config(path, tmp_path, train_samples=COCO_TRAIN_PERSONS, cwd=REPO)
    assert "backbone" not in imported.config["model"] and "ema" not in imported.config
    listed = [line.split(" = ")[0] for line in imported.untranslated]
    # a cosine decay from 0 runs during MMEngine's warm-up, not after it as posecore's
    for key in ("model.backbone", "model.head.in_channels", "custom_hooks[0]", "custom_hooks[1]",
                "param_scheduler[1]"):
        assert key in listed, key
    assert imported.untranslated[listed.index("model.backbone")] == \
        "model.backbone = dict(type='SwinTransformer', embed_dims=96)"


def test_import_prints_the_toml_without_out(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _run(["config", "import", str(RES50), "--train-samples", str(COCO_TRAIN_PERSONS)]) == 0
    captured = capsys.readouterr()
    assert captured.err == "posecore: 3 MMPose setting(s) not translated, listed at the top\n"
    config = loads(captured.out)
    assert config["train_dataloader"]["dataset"]["ann_file"] == "data/coco/annotations/person_keypoints_train2017.json"
    assert config["scheduler"] == {"type": "step", "warmup_iters": 500, "warmup_ratio": 0.001, "by_epoch": True,
                                   "gamma": 0.1, "milestones": [170, 200]}  # LinearLR end=500: warmup_iters 500
