"""docs/writing-a-plugin.md and its example: pip-install posecore-early-stop for real, drive it through the CLI,
and keep the guide's copies of the example's files, hook table and `posecore plugins` line true."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from packaging.version import Version

from helpers import REPO, posecore
from posecore import hookspecs
from posecore.config import dumps
from posecore.plugins import new_manager
from posecore.testing import TINY_CONFIG

EXAMPLE = REPO / "examples" / "plugin-example"
GUIDE = REPO / "docs" / "writing-a-plugin.md"
HOOKS = ["after_val", "before_build", "config_schema", "load_state", "save_state"]


@pytest.fixture(scope="module")
def early_stop_site(tmp_path_factory) -> Path:
    """The example distribution installed into a folder of its own, for PYTHONPATH."""
    root = tmp_path_factory.mktemp("early_stop")
    # pip builds in the source tree (build/, *.egg-info): build a copy, not the checkout.
    source = shutil.copytree(EXAMPLE, root / "source",
                             ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = root / "site"
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target)]
    if Version(importlib.metadata.version("setuptools")) >= Version("77"):
        command += ["--no-build-isolation", "--no-index"]
    # else pip sets up an isolated build with setuptools>=77 itself (needs an index or PIP_FIND_LINKS)
    result = subprocess.run(command + [str(source)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    return target


def train(config: Path, work_dir: Path, site: Path, *options: str) -> subprocess.CompletedProcess:
    return posecore("train", str(config), "--work-dir", str(work_dir), "--cfg-options", *options, pythonpath=[site])


def test_plugins_json_lists_the_installed_example(early_stop_site):
    result = posecore("plugins", "--json", pythonpath=[early_stop_site])
    assert result.returncode == 0, result.stderr
    (row,) = [row for row in json.loads(result.stdout) if row["name"] == "early_stop"]
    assert row == {"name": "early_stop", "distribution": "posecore-early-stop", "version": "0.1.0",
                   "hooks": HOOKS, "types": {}, "active": None}


def test_the_guide_shows_the_real_plugins_line(early_stop_site):
    result = posecore("plugins", pythonpath=[early_stop_site])
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("early_stop ")]
    assert line.split() == ["early_stop", "posecore-early-stop", "0.1.0", "-", "-", *(h + "," for h in HOOKS[:-1]),
                            HOOKS[-1]]
    # Column widths depend on what else is installed; the guide shows this checkout's set.
    shown = [" ".join(text.split()) for text in GUIDE.read_text(encoding="utf-8").splitlines()]
    assert " ".join(line.split()) in shown


# min_delta=10: PCK (at most 1) can never rise that much, so the second validation (iteration 4) stops the run.
STOP_EARLY = ["early_stop.enabled=true", "early_stop.patience=1", "early_stop.min_delta=10", "train.max_iters=12"]


@pytest.fixture(scope="module")
def stopped(early_stop_site, tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """A run that early_stop ends at iteration 4 of 12: (its config, its work dir, the finished process)."""
    root = tmp_path_factory.mktemp("stopped")
    config = root / "tiny.toml"
    config.write_text(dumps(TINY_CONFIG), encoding="utf-8")
    return config, root / "wd", train(config, root / "wd", early_stop_site, *STOP_EARLY)


def test_early_stop_ends_the_run_cleanly_and_says_why(stopped):
    _, work_dir, result = stopped
    assert result.returncode == 0, result.stderr
    assert re.search(r"plugins: early_stop-0\.1\.0$", result.stderr, re.MULTILINE)
    assert re.search(r"early_stop: PCK has not improved on \S+ by more than 10 in 1 validations; "
                     r"stopping at iteration 4 \(checkpoint \S*iter_4\.pth\)$", result.stderr, re.MULTILINE)
    (run_dir,) = [p for p in work_dir.iterdir() if p.is_dir()]
    assert "early_stop: PCK has not improved" in (run_dir / f"{run_dir.name}.log").read_text()
    assert sorted(p.name for p in work_dir.glob("iter_*.pth")) == ["iter_2.pth", "iter_4.pth"]
    state = torch.load(work_dir / "iter_4.pth", weights_only=True)
    assert state["loop"]["iteration"] == 4
    scalars = [json.loads(line) for line in (run_dir / "vis_data" / "scalars.json").read_text().splitlines()]
    first_pck = next(line["val/PCK"] for line in scalars if "val/PCK" in line)
    assert state["plugins"]["early_stop"] == {"best": first_pck, "waited": 1}


def test_a_resumed_run_goes_on_counting_from_the_checkpoint(stopped, early_stop_site):
    config, work_dir, _ = stopped
    # With the counter restored to 1, the next validation (iteration 6) makes 2 and stops the run again.
    resumed = train(config, work_dir, early_stop_site, *STOP_EARLY, "resume=true")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr and "in 2 validations; stopping at iteration 6" in resumed.stderr
    assert torch.load(work_dir / "iter_6.pth", weights_only=True)["plugins"]["early_stop"]["waited"] == 2


def test_invalid_patience_is_one_line_and_exit_2(early_stop_site, tiny_config, tmp_path):
    result = train(tiny_config, tmp_path / "wd", early_stop_site, "early_stop.enabled=true", "early_stop.patience=0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "posecore: error: --cfg-options: 'early_stop.patience' is 0, must be >= 1"]


def test_enabled_false_or_no_name_keeps_it_off(early_stop_site, tiny_config):
    result = posecore("plugins", "--config", str(tiny_config), "--json", "--cfg-options", "early_stop.enabled=false",
                      "early_stop.patience=5", pythonpath=[early_stop_site])
    assert result.returncode == 0, result.stderr
    assert {row["name"]: row["active"] for row in json.loads(result.stdout)}["early_stop"] is False
    blocked = posecore("config", str(tiny_config), "--plugin", "no:early_stop", "--cfg-options",
                       "early_stop.patience=5", pythonpath=[early_stop_site])
    assert blocked.returncode == 2
    assert "--cfg-options: 'early_stop' belongs to plugin 'early_stop', which is blocked by no:early_stop" in blocked.stderr


def load_module(name: str, path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def test_the_example_test_passes_with_the_installed_module(early_stop_site, tmp_path, monkeypatch):
    installed = load_module("posecore_early_stop", early_stop_site / "posecore_early_stop.py", monkeypatch)
    example = load_module("example_test_early_stop", EXAMPLE / "tests" / "test_early_stop.py", monkeypatch)
    assert example.posecore_early_stop is installed  # the example's own test runs against the installed copy
    example.test_counts_validations_without_improvement(tmp_path)  # its assertions are the test


def test_the_guide_holds_the_example_files_byte_for_byte():
    text = GUIDE.read_text(encoding="utf-8")
    copies = re.findall(r"<!-- file: (\S+) -->\n```[a-z]*\n(.*?)```\n", text, re.DOTALL)
    assert sorted(path for path, _ in copies) == ["examples/plugin-example/posecore_early_stop.py",
                                                  "examples/plugin-example/pyproject.toml",
                                                  "examples/plugin-example/tests/test_early_stop.py"]
    for path, copy in copies:
        assert copy == (REPO / path).read_text(encoding="utf-8"), f"the guide's copy of {path} differs from the file"


def test_the_guide_hook_table_matches_hookspecs():
    rows = re.findall(r"^\| `(\w+)\(([\w, ]*)\)` \|.*\| (yes|no) \|$", GUIDE.read_text(encoding="utf-8"), re.MULTILINE)
    specs = [(name, ", ".join(inspect.signature(spec).parameters), "yes" if spec.posecore_spec["firstresult"] else "no")
             for name, spec in vars(hookspecs).items() if hasattr(spec, "posecore_spec")]
    assert len(specs) == len(vars(new_manager().hook))
    assert rows == specs  # same hooks, arguments, first-result flags and order as hookspecs.py
