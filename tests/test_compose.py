"""Config composition: `extends` with `__replace__`, `${key}` references, `posecore config --explain`, the
packaged bases, and config_changes."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest

from helpers import REPO, posecore
from posecore.compose import PACKAGED, config_changes
from posecore.config import dumps, loads, read_toml
from posecore.testing import TINY_CONFIG

# examples/coco_sample.toml as it was before it extended the packaged bases: it must merge to the same config.
FLAT_COCO_SAMPLE = """
[codec]
input_size = [48, 64]
heatmap_size = [24, 32]
sigma = 1.5

[model]
preset = "small"

[train_dataloader]
batch_size = 12
num_workers = 0
dataset = {type = "CocoKeypoints", ann_file = "SHARED/data/coco/test_coco.json", img_dir = "SHARED/data/coco"}

[val_dataloader]
batch_size = 12
dataset = {type = "CocoKeypoints", ann_file = "SHARED/data/coco/test_coco.json", img_dir = "SHARED/data/coco"}

[val_evaluator]
type = "CocoMetric"

[augment]
flip_prob = 0.0
scale_prob = 0.0
rotate_prob = 0.0

[optim]
type = "AdamW"
lr = 5e-3
weight_decay = 0.0

[scheduler]
type = "cosine"
warmup_iters = 20

[train]
max_iters = 300
val_interval = 100
log_interval = 25

[checkpoint]
interval = 100
max_keep = 1
save_best = "AP"
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def config(*args: str, cwd: Path) -> str:
    """``posecore config ARGS`` run in ``cwd``; its output, which must be a success."""
    result = posecore("config", *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def explained(stdout: str) -> dict[str, str]:
    """``--explain`` output as {dotted key: where its value came from}."""
    return dict(re.fullmatch(r"(\S+) = .*?  # (.*)", line).groups() for line in stdout.splitlines())


@pytest.fixture
def layered(tmp_path: Path) -> Path:
    """run.toml on two bases, the first with a base of its own in its folder; and flat/run.toml, the same
    config in one file."""
    write(tmp_path, "_base_/schedule.toml", "[optim]\nlr = 0.1\nweight_decay = 0.5\n\n[scheduler]\nmilestones = [\n"
                                            "    1,\n    2,\n]\ngamma = 0.5\n")
    write(tmp_path, "_base_/runtime.toml", 'extends = "schedule.toml"\n[train]\nmax_iters = 10\nlog_interval = 7\n'
                                           "[checkpoint]\ninterval = 3\nmax_keep = 9\n")
    write(tmp_path, "_base_/other.toml", "[optim]\nlr = 0.2\n\n[scheduler]\ngamma = 0.25\n")
    write(tmp_path, "flat/run.toml", "[train]\nmax_iters = 5\nlog_interval = 7\n[optim]\nlr = 0.2\nweight_decay = 0.5\n"
                                     "[scheduler]\nmilestones = [4]\ngamma = 0.25\n[checkpoint]\ninterval = 2\n")
    return write(tmp_path, "run.toml", 'extends = ["_base_/runtime.toml", "_base_/other.toml"]\n\n[train]\n'
                                       "max_iters = 5\n\n[scheduler]\nmilestones = [4]\n\n[checkpoint]\n"
                                       "__replace__ = true\ninterval = 2\n")


def test_bases_merge_table_by_table_in_order_and_the_output_is_one_flat_file(layered, tmp_path):
    printed = config("run.toml", cwd=tmp_path)
    # Tables merge key by key, a later base over an earlier one, the file last; arrays replace; the
    # __replace__ table drops the base's checkpoint.max_keep back to its default.
    assert printed == config("run.toml", cwd=tmp_path / "flat")
    assert "extends" not in printed and "__replace__" not in printed
    write(tmp_path, "again/run.toml", printed)
    assert config("run.toml", cwd=tmp_path / "again") == printed


@pytest.mark.parametrize("files, message", [
    ({"run.toml": 'extends = "_base_/a.toml"\n', "_base_/a.toml": 'extends = "b.toml"\n'},
     "run.toml -> _base_/a.toml -> _base_/b.toml: config file not found"),
    ({"run.toml": 'extends = ["_base_/a.toml"]\n', "_base_/a.toml": 'extends = "../run.toml"\n'},
     "run.toml -> _base_/a.toml -> run.toml: extends cycle; remove one of these extends"),
    ({"run.toml": 'extends = "_base_/a.toml"\ntrain = 5\n', "_base_/a.toml": "[train]\nmax_iters = 5\n"},
     "run.toml -> _base_/a.toml: 'train' is a table there but not in run.toml; write a table in run.toml (its keys "
     "merge into the base's) or a ${...} reference"),
    ({"run.toml": 'extends = "_base_/a.toml"\n[model]\npreset = "small"\n', "_base_/a.toml": 'model = "small"\n'},
     "run.toml -> _base_/a.toml: 'model' is not a table there but a table in run.toml; add __replace__ = true to "
     "the table in run.toml to replace the base's value"),
    ({"run.toml": "extends = 5\n"}, "run.toml: 'extends' must be a file name or an array of them, e.g. extends = "
                                    "[\"posecore:runtime.toml\", \"_base_/data.toml\"]"),
    ({"run.toml": 'extends = "posecore:nope.toml"\n'}, "run.toml: extends 'posecore:nope.toml', which posecore does "
     "not ship; it ships posecore:coco.toml, posecore:runtime.toml, posecore:schedule.toml"),
    ({"run.toml": '[train]\n__replace__ = "yes"\nmax_iters = 5\n'},
     "run.toml: 'train.__replace__' must be true or false"),
    ({"run.toml": '[train]\nmax_iters = 5\n[checkpoint]\ninterval = "${train.nope}"\n'},
     "run.toml: 'checkpoint.interval' refers to '${train.nope}', which is not set; a reference names a key set in a "
     "config file or --cfg-options (not a default)"),
    ({"run.toml": '[train]\nmax_iters = 5\n[checkpoint]\ninterval = "${checkpoint.max_keep}"\n'
                  'max_keep = "${checkpoint.interval}"\n'},
     "run.toml: reference cycle checkpoint.interval -> checkpoint.max_keep -> checkpoint.interval; set one of them "
     "to a value"),
    ({"run.toml": 'extends = "_base_/a.toml"\n[train]\nmax_iters = 5\n', "_base_/a.toml": '[optim]\nlr = "fast"\n'},
     "_base_/a.toml: 'optim.lr' must be float, got string"),
])
def test_a_composition_error_is_one_line_naming_the_files_or_key(tmp_path, files, message):
    for name, text in files.items():
        write(tmp_path, name, text)
    result = posecore("config", "run.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"posecore: error: {message}\n"


def test_paths_are_relative_to_the_file_that_wrote_them_and_references_resolve_after_cfg_options(tmp_path):
    dataset = '{type = "CocoKeypoints", ann_file = "../data/a.json", img_dir = "../data"}'
    write(tmp_path, "configs/_base_/data.toml", f"[train_dataloader]\nbatch_size = 2\ndataset = {dataset}\n")
    write(tmp_path, "configs/run.toml",
          'extends = "_base_/data.toml"\nwork_dir = "runs/${train.max_iters}"\n[train]\nmax_iters = 5\n'
          '[checkpoint]\ninterval = "${train.max_iters}"\n[val_dataloader]\ndataset = "${train_dataloader.dataset}"\n'
          '[train_dataloader.dataset]\nimg_dir = "images"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    merged = loads(config(str(tmp_path / "configs" / "run.toml"), "--cfg-options", "train.max_iters=9", cwd=elsewhere))
    train = merged["train_dataloader"]["dataset"]
    assert train["ann_file"] == str(tmp_path / "configs" / "data" / "a.json")  # from _base_/, where it is written
    assert train["img_dir"] == str(tmp_path / "configs" / "images")
    assert merged["val_dataloader"]["dataset"] == train  # a table reference; its paths keep their files
    assert merged["checkpoint"]["interval"] == 9  # resolved after --cfg-options, with its type
    assert merged["work_dir"] == "runs/${train.max_iters}"  # only a whole string is a reference


def test_explain_names_the_file_and_line_base_flag_reference_or_default_of_each_key(layered, tmp_path):
    write(tmp_path, "run.toml", layered.read_text() + '\n[val_dataloader]\nbatch_size = "${train_dataloader.'
                                                      'batch_size}"\n')
    printed = config("run.toml", "--explain", "--cfg-options", "train_dataloader.batch_size=3", cwd=tmp_path)
    sources = explained(printed)
    assert sources["train.max_iters"] == "run.toml:4"
    assert sources["train.log_interval"] == "_base_/runtime.toml:4 (base of run.toml)"
    assert sources["optim.weight_decay"] == "_base_/schedule.toml:3 (base of _base_/runtime.toml)"
    assert sources["optim.lr"] == "_base_/other.toml:2 (base of run.toml)"
    assert sources["scheduler.milestones"] == "run.toml:7"
    assert sources["checkpoint.interval"] == "run.toml:11"
    assert sources["checkpoint.max_keep"] == "default"  # the base's value was replaced
    assert sources["train_dataloader.batch_size"] == "--cfg-options"
    assert sources["val_dataloader.batch_size"] == "${train_dataloader.batch_size} at run.toml:14 <- --cfg-options"
    assert sources["work_dir"] == "default"
    assert loads(printed) == loads(config("run.toml", "--cfg-options", "train_dataloader.batch_size=3", cwd=tmp_path))

    write(tmp_path, "run.toml", 'extends = "_base_/schedule.toml"\n[train]\nmax_iters = 5\n')
    assert explained(config("run.toml", "--explain", cwd=tmp_path))["scheduler.milestones"] == \
        "_base_/schedule.toml:6 (base of run.toml)"  # where the array starts, over lines 6 to 9


def test_coco_sample_merges_to_what_it_was_as_one_flat_file(tmp_path):
    flat = write(tmp_path, "coco_sample.toml", FLAT_COCO_SAMPLE.replace("SHARED", str(REPO.parent / "shared")))
    assert config(str(REPO / "examples" / "coco_sample.toml"), cwd=tmp_path) == config(str(flat), cwd=tmp_path)
    assert "extends" in read_toml(REPO / "examples" / "coco_sample.toml")  # still the composed one


def test_the_packaged_bases_are_package_data_and_make_a_config_together(tmp_path):
    globs = read_toml(REPO / "pyproject.toml")["tool"]["setuptools"]["package-data"]["posecore"]
    shipped = sorted(PACKAGED.glob("*.toml"))
    assert [p.name for p in shipped] == ["coco.toml", "runtime.toml", "schedule.toml"]
    for path in shipped:
        assert any(fnmatch.fnmatch(path.relative_to(PACKAGED.parent).as_posix(), glob) for glob in globs), path
    dataset = '{ann_file = "a.json", img_dir = "images"}'
    write(tmp_path, "run.toml", 'extends = ["posecore:runtime.toml", "posecore:schedule.toml", "posecore:coco.toml"]\n'
                                f"[train]\nmax_iters = 100\n[train_dataloader]\ndataset = {dataset}\n"
                                f"[val_dataloader]\ndataset = {dataset}\n")
    merged = loads(config("run.toml", cwd=tmp_path))
    assert merged["val_evaluator"]["type"] == "CocoMetric" and merged["checkpoint"]["save_best"] == "AP"
    assert merged["optim"]["lr"] == 5e-4 and merged["train"]["log_interval"] == 50
    assert merged["train_dataloader"]["dataset"]["type"] == "CocoKeypoints"


def test_a_run_writes_its_config_flat_and_does_not_need_its_bases_later(tmp_path):
    write(tmp_path, "_base_/tiny.toml", dumps(TINY_CONFIG))
    write(tmp_path, "run.toml", 'extends = "_base_/tiny.toml"\n[checkpoint]\ninterval = "${train.max_iters}"\n')
    trained = posecore("train", "run.toml", "--work-dir", "work", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    (written,) = (tmp_path / "work").glob("*/vis_data/config.toml")
    (tmp_path / "_base_" / "tiny.toml").unlink()
    assert "extends" not in written.read_text()
    assert loads(config(str(written), cwd=tmp_path))["checkpoint"]["interval"] == TINY_CONFIG["train"]["max_iters"]


def test_config_changes_lists_each_differing_value_by_dotted_key():
    old = {"train": {"max_iters": 100}, "optim": {"lr": 0.1, "type": "AdamW"}, "model": {"preset": "small"},
           "load_from": "a.pth", "visualizer": {"vis_backends": [{"type": "LocalVisBackend"}]}}
    new = {"train": {"max_iters": 200}, "optim": {"lr": 0.1, "type": "AdamW"}, "model": {"preset": "resnet50"},
           "visualizer": {"vis_backends": []}, "randomness": {"seed": 1}}
    assert config_changes(old, new) == [
        ("train.max_iters", 100, 200), ("model.preset", "small", "resnet50"), ("load_from", "a.pth", None),
        ("visualizer.vis_backends", [{"type": "LocalVisBackend"}], []), ("randomness.seed", None, 1)]
    assert config_changes(new, new) == []
