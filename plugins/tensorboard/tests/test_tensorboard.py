"""posecore-tensorboard: event files beside scalars.json, with the same scalars; activated by name or backend type."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from helpers import posecore
from posecore.config import dumps
from posecore.testing import TINY_CONFIG


def write_tiny(tmp_path: Path, **sections) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(dumps({**copy.deepcopy(TINY_CONFIG), **sections}), encoding="utf-8")
    return path


def events(vis_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(vis_dir))
    accumulator.Reload()
    return accumulator


def test_plugin_flag_writes_events_with_the_logged_scalars(tmp_path):
    work_dir = tmp_path / "wd"
    result = posecore("train", str(write_tiny(tmp_path)), "--work-dir", str(work_dir), "--plugin", "tensorboard")
    assert result.returncode == 0, result.stderr
    assert "plugins: tensorboard-0.1.0" in result.stderr
    (run_dir,) = [p for p in work_dir.iterdir() if p.is_dir()]
    vis_dir = run_dir / "vis_data"
    assert len(list(vis_dir.glob("events.out.tfevents.*"))) == 1

    logged = [json.loads(line) for line in (vis_dir / "scalars.json").read_text().splitlines()]
    written = events(vis_dir)
    for tag in ("loss", "lr", "grad_norm", "val/PCK"):
        expected = [(line["step"], line[tag]) for line in logged if tag in line]
        got = [(event.step, event.value) for event in written.Scalars(tag)]
        assert [step for step, _ in got] == [step for step, _ in expected] == [2, 4]
        # Event files hold 32-bit floats.
        assert [np.float32(value) for _, value in got] == [np.float32(value) for _, value in expected]
    (config_text,) = written.Tensors("config/text_summary")
    assert "max_iters = 4" in config_text.tensor_proto.string_val[0].decode()


def test_backend_in_the_config_activates_it_without_the_flag(tmp_path):
    work_dir = tmp_path / "wd"
    config = write_tiny(tmp_path, visualizer={"vis_backends": [{"type": "TensorboardVisBackend", "flush_secs": 5}]})
    result = posecore("train", str(config), "--work-dir", str(work_dir))
    assert result.returncode == 0, result.stderr
    assert "plugins: tensorboard-0.1.0" in result.stderr
    (vis_dir,) = work_dir.glob("*/vis_data")
    assert not (vis_dir / "scalars.json").exists()  # only the listed backend
    assert [event.step for event in events(vis_dir).Scalars("loss")] == [2, 4]


@pytest.mark.parametrize("args, message", [
    (["--plugin", "no:tensorboard"],
     "'TensorboardVisBackend' belongs to plugin 'tensorboard', which is blocked by no:tensorboard"),
    (["--cfg-options", "visualizer.vis_backends=[{type = \"TensorboardVisBackend\", flush_secs = 0}]"],
     "'visualizer.vis_backends[0].flush_secs' is 0, must be >= 1"),
])
def test_blocked_or_misconfigured_backend_is_one_line_and_exit_2(tmp_path, args, message):
    config = write_tiny(tmp_path, visualizer={"vis_backends": [{"type": "TensorboardVisBackend"}]})
    result = posecore("config", str(config), *args)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("posecore: error: ") and line.endswith(message)
