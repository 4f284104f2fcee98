"""posecore-tensorboard: event files beside scalars.json, with the same scalars; activated by name or backend type."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from helpers import posecore, write_tiny_config as write_tiny
from interruptions import install_interrupter, interrupt_env




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


def test_validation_images_hparams_and_amp_scalars_are_written(tmp_path):
    work_dir = tmp_path / "wd"
    result = posecore("train", str(write_tiny(tmp_path)), "--work-dir", str(work_dir), "--plugin", "tensorboard",
                      "--amp", "--cfg-options", "amp.dtype=float16")
    assert result.returncode == 0, result.stderr
    (vis_dir,) = work_dir.glob("*/vis_data")
    written = events(vis_dir)
    images = written.Images("val/predictions")
    assert [image.step for image in images] == [2, 4]
    assert images[0].width == 4 * 32 + 3 and images[0].height == 2 * 32 + 1  # 8 crops of 32x32, 4 per row
    assert [e.step for e in written.Scalars("amp/loss_scale")] == [2, 4]
    assert [e.step for e in written.Scalars("amp/skipped_steps")] == [2, 4]
    assert [e.step for e in written.Scalars("hparam/PCK")] == [4]
    assert set(written.PluginTagToContent("hparams")) == {
        "_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}


def test_a_resumed_run_continues_the_same_series_without_repeated_steps(tmp_path):
    config, work_dir = write_tiny(tmp_path), tmp_path / "wd"
    first = posecore("train", str(config), "--work-dir", str(work_dir), "--plugin", "tensorboard",
                     "--cfg-options", "train.max_iters=8", "checkpoint.interval=4", "train.log_interval=1")
    assert first.returncode == 0, first.stderr
    # As if the run had crashed after iteration 8 but its newest checkpoint were iteration 4.
    for name in ("iter_8.pth", "iter_8.pth.xxh128", "last_checkpoint", "latest.pth"):
        (work_dir / name).unlink()
    resumed = posecore("train", str(config), "--work-dir", str(work_dir), "--plugin", "tensorboard", "--resume",
                       "--cfg-options", "train.max_iters=10", "checkpoint.interval=4", "train.log_interval=1")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr and "at iteration 4" in resumed.stderr
    vis_dirs = list(work_dir.glob("*/vis_data"))
    assert len(vis_dirs) == 1  # the resumed run wrote into the first run's vis_data
    steps = [event.step for event in events(vis_dirs[0]).Scalars("loss")]
    assert steps == list(range(1, 11))
    json_steps = [json.loads(line)["step"] for line in (vis_dirs[0] / "scalars.json").read_text().splitlines()
                  if "loss" in line]
    assert json_steps == list(range(1, 11))


def serve(log_dir: Path, output: Path) -> tuple[subprocess.Popen, str]:
    """Start a TensorBoard server on a port the OS picks; the server and its URL, read from what it prints."""
    with output.open("w") as printed:
        server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(log_dir), "--host",
                                   "127.0.0.1", "--port", "0", "--load_fast", "false"],
                                  stdout=subprocess.DEVNULL, stderr=printed)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        found = re.search(r"TensorBoard \S+ at (http://\S+?)/? \(Press CTRL\+C to quit\)", output.read_text())
        if found:
            return server, found.group(1)
        time.sleep(0.2)
    server.kill()
    server.wait(timeout=30)
    raise AssertionError(f"TensorBoard did not start serving within 60 s (exit code {server.returncode}):\n"
                         f"{output.read_text()}")


def test_a_real_tensorboard_server_serves_the_run(tmp_path):
    work_dir = tmp_path / "wd"
    result = posecore("train", str(write_tiny(tmp_path)), "--work-dir", str(work_dir), "--plugin", "tensorboard")
    assert result.returncode == 0, result.stderr
    (vis_dir,) = work_dir.glob("*/vis_data")
    server, url = serve(vis_dir, tmp_path / "tensorboard.log")
    try:
        # The server loads event files in the background: the tags appear once it has read them.
        deadline, tags, failure = time.monotonic() + 60, {}, None
        while time.monotonic() < deadline and not tags.get(".") and server.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/data/plugin/scalars/tags", timeout=5) as reply:
                    tags = json.loads(reply.read())
            except OSError as err:
                failure = err
            time.sleep(0.5)
        assert tags.get("."), f"{url} served no scalars of the run within 60 s (tags {tags}, last error " \
                              f"{failure}, server exit code {server.poll()})"
        assert {"loss", "lr", "val/PCK"} <= set(tags["."])
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_sigterm_flushes_everything_logged(tmp_path):
    """SIGTERM in iteration 5 of 20, with a flush interval longer than the run: every step logged is in the events."""
    work_dir = tmp_path / "wd"
    result = posecore("train", str(write_tiny(tmp_path)), "--work-dir", str(work_dir), "--plugin", "tensorboard",
                      "--plugin", "interrupt", "--cfg-options", "train.max_iters=20", "train.log_interval=1",
                      "train.val_interval=0",
                      "visualizer.vis_backends=[{type = \"TensorboardVisBackend\", flush_secs = 3600}]",
                      pythonpath=[install_interrupter(tmp_path / "site")], env=interrupt_env(5, "SIGTERM"))
    assert result.returncode == 143, result.stderr
    assert "stopped by SIGTERM at iteration 5" in result.stderr
    (vis_dir,) = work_dir.glob("*/vis_data")
    assert [e.step for e in events(vis_dir).Scalars("loss")] == [1, 2, 3, 4, 5]
