"""What a new user trips over: missing optional modules, install lines, checkpoints of another layout,
the drawn seed, which flag an error blames, how configs print, README references."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import click
import pluggy
import posecore_resume
import pytest

from helpers import REPO, coco_config, posecore, write_tiny_config
from posecore.errors import ConfigError
from posecore.plugins import load_config, resolve
from posecore.pose.skeleton import COCO17
from posecore.testing import run_training

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def _log(run) -> str:
    return (run.run_dir / f"{run.run_dir.name}.log").read_text()


def _blocking(folder: Path, *packages: str) -> Path:
    """A folder to put first on PYTHONPATH in which ``packages`` fail to import, as if not installed."""
    for package in packages:
        (folder / package).mkdir(parents=True)
        (folder / package / "__init__.py").write_text('raise ImportError("blocked by the test")\n')
    return folder


def test_a_missing_optional_module_is_bad_input_named_before_anything_is_built(tmp_path, synthetic_coco):
    blocked = _blocking(tmp_path / "blocked", "pycocotools", "tensorboard")
    coco = posecore("train", str(coco_config(tmp_path, synthetic_coco)), "--work-dir", str(tmp_path / "coco"),
                    pythonpath=[blocked])
    assert coco.returncode == 2, coco.stderr
    assert coco.stderr.count("\n") == 1, coco.stderr
    assert ('val_evaluator.type = "CocoMetric" needs pycocotools, which does not import here (ImportError: blocked '
            'by the test); pip install pycocotools') in coco.stderr
    board = posecore("train", str(write_tiny_config(tmp_path)), "--plugin", "tensorboard", "--work-dir",
                     str(tmp_path / "board"), pythonpath=[blocked])
    assert board.returncode == 2, board.stderr
    assert 'visualizer.vis_backends[1].type = "TensorboardVisBackend" needs tensorboard' in board.stderr
    assert board.stderr.rstrip().endswith("; pip install tensorboard")
    assert not (tmp_path / "coco").exists() and not (tmp_path / "board").exists()


def test_a_missing_first_party_plugin_is_installed_from_this_checkout():
    with pytest.raises(ConfigError) as error:
        resolve({"amp": {"enabled": True}, "train": {"max_iters": 1}}, lambda key: "run.toml", installed=[])
    line = re.search(r"pip install -e (\S+) \(posecore-amp, from this posecore checkout\)", str(error.value))
    assert line, error.value
    assert Path(line.group(1)) == REPO / "plugins" / "amp"
    assert 'name = "posecore-amp"' in (REPO / "plugins" / "amp" / "pyproject.toml").read_text()


@pytest.mark.slow
def test_make_dist_builds_wheels_that_install_into_a_fresh_venv(tmp_path):
    venv = Path(sys.prefix)
    made = subprocess.run(["make", "-C", str(REPO), "-o", f"{venv}/.installed", "dist", f"VENV={venv}",
                           f"DIST={tmp_path / 'dist'}"], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    wheels = sorted(p.name for p in (tmp_path / "dist").glob("*.whl"))
    assert wheels == [f"{name}-0.1.0-py3-none-any.whl" for name in
                      ("posecore", "posecore_amp", "posecore_ema", "posecore_mlflow", "posecore_resume",
                       "posecore_seed", "posecore_tensorboard", "posecore_wandb")]
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True)
    python = fresh / "bin" / "python"

    def install(*names: str) -> None:
        subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                        "--no-index", *(str(tmp_path / "dist" / name) for name in names)], check=True, timeout=120)

    # Only what `posecore plugins` imports comes from here (import-only links, no metadata): no torch needed.
    borrowed = tmp_path / "borrowed"
    borrowed.mkdir()
    for module in (pluggy, click, *([] if sys.version_info >= (3, 11) else [tomllib])):
        (borrowed / module.__name__).symlink_to(Path(module.__file__).parent)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "borrowed.pth").write_text(f"{borrowed}\n")

    install(wheels[0])
    alone = subprocess.run([str(fresh / "bin" / "posecore"), "plugins"], capture_output=True, text=True, cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.strip() == ("no plugins installed; the first-party ones: pip install posecore-amp "
                                    "posecore-resume posecore-seed posecore-tensorboard posecore-mlflow "
                                    "posecore-wandb posecore-ema (in a posecore checkout: pip install -e plugins/amp "
                                    "-e plugins/resume -e plugins/seed -e plugins/tensorboard -e plugins/mlflow -e "
                                    "plugins/wandb -e plugins/ema)")
    install(*wheels[1:])
    listed = subprocess.run([str(fresh / "bin" / "posecore"), "plugins", "--json"], capture_output=True, text=True,
                            cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert [(p["name"], p["distribution"]) for p in json.loads(listed.stdout)] == [
        (name, f"posecore-{name}") for name in ("amp", "ema", "mlflow", "resume", "seed", "tensorboard", "wandb")]
    where = subprocess.run([str(python), "-c", "import posecore, posecore_amp; print(posecore.__file__); "
                                               "print(posecore_amp.__file__)"], capture_output=True, text=True)
    assert all(Path(path).is_relative_to(fresh) for path in where.stdout.split()), where.stdout


def test_a_checkpoint_of_another_codec_or_layout_warns_with_the_differences(tmp_path, synthetic_coco):
    run_training(tmp_path / "a")
    weights = tmp_path / "a" / "iter_4.pth"
    same = posecore("test", str(write_tiny_config(tmp_path)), "--checkpoint", str(weights), "--work-dir",
                    str(tmp_path / "test"))
    assert same.returncode == 0, same.stderr
    assert "WARNING" not in same.stderr and "drew seed" not in same.stderr  # nor a data order to repeat

    names = list(COCO17.names)
    names[0], names[1] = names[1], names[0]  # same count: the weights load without an error
    dataset = {"type": "CocoKeypoints", "ann_file": str(synthetic_coco.ann_file),
               "img_dir": str(synthetic_coco.img_dir), "keypoint_names": names}
    (tmp_path / "swapped").mkdir()
    swapped = write_tiny_config(tmp_path / "swapped", train_dataloader={"batch_size": 4, "dataset": dataset},
                                val_dataloader={"batch_size": 8, "dataset": dataset})
    predicted = posecore("predict", str(synthetic_coco.img_dir / "figures_0.jpg"), "--config", str(swapped),
                         "--checkpoint", str(weights), "--out", str(tmp_path / "out"), "--work-dir",
                         str(tmp_path / "predict"))
    assert predicted.returncode == 0, predicted.stderr
    (warning,) = [line for line in predicted.stderr.splitlines() if "was trained for" in line]
    assert warning.endswith(f"WARNING - {weights} was trained for another model, codec or keypoint layout than this "
                            f"config: keypoints [nose, left_eye, right_eye, ... 17 in all] -> [left_eye, nose, "
                            f"right_eye, ... 17 in all]")

    resumed = run_training(tmp_path / "a", plugins={"resume": posecore_resume},
                           cfg_options=["resume=true", "train.max_iters=6", "codec.sigma=2.5"]).run
    assert (f"WARNING - {weights} was trained for another model, codec or keypoint layout than this config: "
            f"codec.sigma 1.5 -> 2.5\n") in _log(resumed)


def test_an_unseeded_run_without_the_seed_plugin_logs_the_seed_it_drew(tmp_path):
    first = run_training(tmp_path).run
    assert (f"seed not set: drew seed {first.seed}; set randomness.seed={first.seed} (posecore-seed) to repeat the "
            f"data order and augmentation") in _log(first)
    resumed = run_training(tmp_path, plugins={"resume": posecore_resume},
                           cfg_options=["resume=true", "train.max_iters=6"]).run
    assert resumed.seed == first.seed
    assert f"resume: continuing with the checkpoint's seed {first.seed}" in _log(resumed)


def test_a_blocked_plugin_error_blames_the_flag_that_was_typed(tiny_config):
    result = posecore("config", str(tiny_config), "--amp", "--plugin", "no:amp")
    assert result.returncode == 2
    assert result.stderr == "posecore: error: --amp: 'amp' belongs to plugin 'amp', which is blocked by no:amp\n"
    with pytest.raises(ConfigError, match="^--cfg-options: 'amp' belongs"):
        load_config(tiny_config, ["amp.enabled=true"], ["no:amp"])
    with pytest.raises(ConfigError, match="^--cfg-options and --amp: 'amp' belongs"):
        load_config(tiny_config, ["amp.dtype=float16", ("amp.enabled=true", "--amp")], ["no:amp"])


def test_config_prints_arrays_of_plain_values_on_one_line_and_round_trips(tmp_path):
    names = [f"k{i}" for i in range(13)] + ['a, "b"]', "[c", "d\\", "e,\n]"]  # 17, some TOML-unfriendly
    dataset = {"type": "CocoKeypoints", "ann_file": "a.json", "img_dir": "images", "keypoint_names": names,
               "flip_pairs": [[1, 2], [3, 4]]}
    config = write_tiny_config(tmp_path, val_dataloader={"batch_size": 8, "dataset": dataset},
                               train_dataloader={"batch_size": 4, "dataset": dataset})
    printed = posecore("config", str(config))
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert "input_size = [32, 32]" in lines and "stage_channels = [8, 16]" in lines
    assert 'keypoint_names = ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9", "k10", "k11", "k12", ' \
           '"a, \\"b\\"]", "[c", "d\\\\", "e,\\n]"]' in lines
    assert "    [1, 2]," in lines  # arrays of arrays: one inner array a line
    parsed = tomllib.loads(printed.stdout)["val_dataloader"]["dataset"]
    assert parsed["keypoint_names"] == names and parsed["flip_pairs"] == [[1, 2], [3, 4]]
    again = tmp_path / "again.toml"
    again.write_text(printed.stdout)
    assert posecore("config", str(again)).stdout == printed.stdout


def test_readme_sections_that_examples_refer_to_exist():
    headings = set(re.findall(r"^#+ (.+)$", (REPO / "README.md").read_text(), re.MULTILINE))
    mentions = [(path.name, line) for path in sorted((REPO / "examples").glob("*.toml"))
                for line in path.read_text().splitlines() if "README" in line]
    assert mentions
    for name, line in mentions:
        section = re.search(r'README "([^"]+)"', line)
        assert section and section.group(1) in headings, f"{name}: {line.strip()} (name a README section)"
