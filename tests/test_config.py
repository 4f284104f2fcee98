"""Config: TOML reading, --cfg-options, validation errors (one line, exit 2), `posecore config`."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import REPO, posecore
from posecore.config import apply_overrides, loads, parse_override, read_toml
from posecore.errors import ConfigError
from posecore.plugins import load_config, resolve


@pytest.mark.parametrize("text, path, value", [
    ("randomness.seed=2023", ["randomness", "seed"], 2023),
    ("randomness.diff_rank_seed=True", ["randomness", "diff_rank_seed"], True),
    ("randomness.deterministic=false", ["randomness", "deterministic"], False),
    ("load_from=None", ["load_from"], None),
    ("optim.lr=1e-3", ["optim", "lr"], 1e-3),
    ("codec.input_size=[96, 128]", ["codec", "input_size"], [96, 128]),
    ('work_dir="a b/c"', ["work_dir"], "a b/c"),
    ("work_dir=runs/x", ["work_dir"], "runs/x"),
])
def test_override_values_parse_as_toml_or_python_literals(text, path, value):
    assert parse_override(text) == (path, value)


def test_none_override_removes_a_key_and_nested_keys_are_created():
    config = {"load_from": "a.pth"}
    touched = apply_overrides(config, ["load_from=None", "randomness.seed=7"])
    assert config == {"randomness": {"seed": 7}}
    assert touched == {"load_from", "randomness.seed"}


def test_several_pairs_after_one_flag(tiny_config):
    result = posecore("config", str(tiny_config), "--cfg-options", "randomness.seed=2023",
                      "randomness.diff_rank_seed=True", "train.max_iters=500", "--plugin", "seed")
    assert result.returncode == 0, result.stderr
    merged = loads(result.stdout)
    assert merged["randomness"]["seed"] == 2023
    assert merged["randomness"]["diff_rank_seed"] is True
    assert merged["train"]["max_iters"] == 500


def test_config_prints_every_default_and_round_trips(tiny_config, tmp_path):
    first = posecore("config", str(tiny_config))
    assert first.returncode == 0, first.stderr
    merged = loads(first.stdout)
    assert merged["optim"]["type"] == "AdamW" and merged["checkpoint"]["max_keep"] == 3
    assert merged["visualizer"]["vis_backends"] == [{"type": "LocalVisBackend"}]
    again = tmp_path / "again.toml"
    again.write_text(first.stdout)
    second = posecore("config", str(again))
    assert second.stdout == first.stdout


BAD_CONFIGS = [
    ("[train]\nmax_iter = 5\n", "unknown key 'train.max_iter' (did you mean 'train.max_iters'?)"),
    ("[optim]\nlr = \"fast\"\n", "'optim.lr' must be float, got string"),
    ("[train]\nmax_iters = 0\n", "'train.max_iters' is 0, must be >= 1"),
    ("[optim]\ntype = \"Adamm\"\n", "'optim.type' is 'Adamm'; choose one of"),
    ("[train]\nmax_iters = 5\nmax_epochs = 2\n", "set exactly one of train.max_iters and train.max_epochs"),
    ("[train]\nmax_iters = 5\n[train_dataloader]\nbatch_size = true\n",
     "'train_dataloader.batch_size' must be int, got bool"),
    ("[train\nmax_iters = 5\n", "invalid TOML: Expected ']' at the end of a table declaration (at line 1, column 7)"),
    ("[train]\nmax_iters = 5\n[visualizer]\nvis_backends = [{type = \"WandbBackend\"}]\n",
     "unknown visualizer.vis_backends[0].type 'WandbBackend'"),
    ("plugins = [\"nosuch\"]\n[train]\nmax_iters = 5\n",
     "plugin 'nosuch' is not installed: pip install the distribution that provides the posecore plugin 'nosuch'"),
    ("require = [\"posecore-amp>=99\"]\n[train]\nmax_iters = 5\n",
     "require: posecore-amp>=99 but posecore-amp 0.1.0 is installed"),
    ("require = [\"posecore-nosuch\"]\n[train]\nmax_iters = 5\n", "require: posecore-nosuch is not installed"),
]


@pytest.mark.parametrize("text, message", BAD_CONFIGS)
def test_bad_config_is_one_line_and_exit_2(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = posecore("train", str(path), cwd=tmp_path)  # where the default work dir would go
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "work_dirs").exists()


def test_error_names_the_file_or_the_override(tiny_config):
    from_file = posecore("config", str(tiny_config), "--cfg-options", "train.max_iters=0")
    assert from_file.returncode == 2 and from_file.stderr.startswith("posecore: error: --cfg-options:")
    missing = posecore("train", str(tiny_config.parent / "nope.toml"))
    assert missing.returncode == 2
    assert f"{tiny_config.parent / 'nope.toml'}: config file not found" in missing.stderr


def test_bad_cli_usage_exits_2(tiny_config):
    result = posecore("train", str(tiny_config), "--no-such-flag")
    assert result.returncode == 2
    assert "No such option" in result.stderr


def test_section_of_a_plugin_that_is_not_installed_names_the_distribution():
    # the core runs from this checkout here, so the line installs from it (test_new_user checks the other case)
    with pytest.raises(ConfigError, match=r"'amp' needs the plugin 'amp', which is not installed: pip install "
                                          r"-e \S+/plugins/amp \(posecore-amp, from this posecore checkout\)"):
        resolve({"amp": {"enabled": True}, "train": {"max_iters": 1}}, lambda key: "run.toml", installed=[])
    with pytest.raises(ConfigError, match=r"needs the plugin 'tensorboard'.*pip install -e \S+/plugins/tensorboard "
                                          r"\(posecore-tensorboard"):
        resolve({"visualizer": {"vis_backends": [{"type": "TensorboardVisBackend"}]}, "train": {"max_iters": 1}},
                lambda key: "run.toml", installed=[])


def test_blocked_plugin_section_is_an_error(tiny_config):
    result = posecore("train", str(tiny_config), "--amp", "--plugin", "no:amp")
    assert result.returncode == 2
    assert "'amp' belongs to plugin 'amp', which is blocked by no:amp" in result.stderr


def test_every_example_config_is_valid():
    examples = sorted([*(REPO / "examples").glob("*.toml"), *(REPO / "examples" / "mmpose").glob("*.toml")])
    assert examples
    for example in examples:
        config, _ = load_config(example)
        assert config["train"]


def test_reference_page_is_generated_from_the_schema():
    result = posecore("config", "--reference")
    assert result.returncode == 0, result.stderr
    assert "| `randomness.seed` |" in result.stdout and "| `train.max_iters` |" in result.stdout
    committed = (REPO / "docs" / "config.md").read_text()
    assert committed == result.stdout, "docs/config.md is stale: run `make reference`"


def test_read_toml_never_runs_code(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the command would touch its file
    path = tmp_path / "evil.toml"
    path.write_text('work_dir = "__import__(\'os\').system(\'touch pwned\')"\n')
    assert read_toml(path) == {"work_dir": "__import__('os').system('touch pwned')"}
    assert not (tmp_path / "pwned").exists()
