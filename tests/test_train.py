"""Training end to end through the CLI in a fresh process: files written, logs, stops, failures."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import REPO, make_plugin_dist, posecore
from interruptions import install_interrupter, interrupt_env
from posecore.config import loads
from posecore.plugins import load_config
from posecore.run import Run
from posecore.testing import run_training


def run_dir_of(work_dir: Path) -> Path:
    (run_dir,) = [p for p in work_dir.iterdir() if p.is_dir()]
    return run_dir


def test_tiny_run_writes_the_documented_files(tiny_config, tmp_path):
    work_dir = tmp_path / "wd"
    result = posecore("train", str(tiny_config), "--work-dir", str(work_dir),
                      "--cfg-options", "checkpoint.max_keep=1", "checkpoint.save_best=PCK")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in work_dir.glob("iter_*.pth")) == ["iter_4.pth"]  # max_keep=1 pruned iter_2
    assert (work_dir / "last_checkpoint").read_text() == str((work_dir / "iter_4.pth").resolve())
    assert (work_dir / "latest.pth").resolve() == (work_dir / "iter_4.pth").resolve()
    assert len(list(work_dir.glob("best_PCK_iter_*.pth"))) == 1

    run_dir = run_dir_of(work_dir)
    assert re.fullmatch(r"\d{8}_\d{6}", run_dir.name)
    log = (run_dir / f"{run_dir.name}.log").read_text()
    assert "posecore 0.1.0" in log and "plugins: none" in log
    assert "Iter(train) [4/4]" in log and "Iter(val) [4]" in log
    lines = [json.loads(line) for line in (run_dir / "vis_data" / "scalars.json").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == [2, 4]
    assert [line["step"] for line in lines if "val/PCK" in line] == [2, 4]
    assert all(0.0 <= line["val/PCK"] <= 1.0 for line in lines if "val/PCK" in line)
    dumped = loads((run_dir / "vis_data" / "config.toml").read_text())
    assert dumped["checkpoint"]["max_keep"] == 1 and dumped["work_dir"] == str(work_dir)

    state = torch.load(work_dir / "iter_4.pth", weights_only=True)
    assert state["loop"] == {"iteration": 4, "epoch": 0, "epoch_batch": 4, "global_batch": 4, "optimizer_steps": 4,
                             "max_iters": 4}
    config, plugin_set = load_config(tiny_config)
    fresh = Run(config, plugin_set)
    fresh.build_model()
    assert {k: v.shape for k, v in state["model"].items()} == {k: v.shape for k, v in fresh.model.state_dict().items()}
    assert state["meta"]["posecore"] == "0.1.0" and state["meta"]["plugins"] == {"core": "0.1.0"}
    assert loads(state["config"])["train"]["max_iters"] == 4


def test_default_work_dir_is_work_dirs_config_stem(tiny_config, tmp_path):
    result = posecore("train", str(tiny_config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "work_dirs" / "tiny" / "iter_4.pth").is_file()


def test_max_epochs_counts_whole_batches(tiny_config, tmp_path):
    result = posecore("train", str(tiny_config), "--work-dir", str(tmp_path / "wd"), "--cfg-options",
                      "train.max_iters=None", "train.max_epochs=2", "checkpoint.interval=100")
    assert result.returncode == 0, result.stderr
    state = torch.load(tmp_path / "wd" / "iter_12.pth", weights_only=True)  # 24 samples / batch 4, two epochs
    assert state["loop"]["epoch"] == 1 and state["loop"]["epoch_batch"] == 6


def test_python_dash_m_and_help_do_not_import_torch():
    code = ("import sys; from posecore.cli import main\n"
            "try:\n    main(['train', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "assert 'torch' not in sys.modules, 'help imported torch'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--cfg-options KEY=VALUE ..." in result.stdout and "Examples:" in result.stdout
    assert posecore("--help").returncode == 0


def test_non_tty_output_has_no_progress_bar_frames(tiny_config, tmp_path):
    result = posecore("train", str(tiny_config), "--work-dir", str(tmp_path / "wd"))
    assert result.returncode == 0
    assert "\r" not in result.stderr and "\033[K" not in result.stderr
    assert result.stderr.count("Iter(train)") == 2


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_cleanly_after_saving(tiny_config, tmp_path, sig, code):
    """The signal arrives in iteration 3 of 8: the run finishes it, saves it (not a checkpoint iteration) and stops."""
    work_dir = tmp_path / "wd"
    result = posecore("train", str(tiny_config), "--work-dir", str(work_dir), "--plugin", "interrupt",
                      "--cfg-options", "train.max_iters=8", "train.val_interval=0", "train.log_interval=1",
                      "checkpoint.interval=100", pythonpath=[install_interrupter(tmp_path / "site")],
                      env=interrupt_env(3, signal.Signals(sig).name))
    assert result.returncode == code, result.stderr
    assert f"stopped by {signal.Signals(sig).name} at iteration 3; saved {work_dir / 'iter_3.pth'}" in result.stderr
    assert "Traceback" not in result.stderr
    assert [p.name for p in work_dir.glob("iter_*.pth")] == ["iter_3.pth"]
    assert torch.load(work_dir / "iter_3.pth", weights_only=True)["loop"]["iteration"] == 3


def test_plugin_that_raises_is_named_with_its_hook(tiny_config, tmp_path):
    site = make_plugin_dist(tmp_path / "site", "boom", (
        "from posecore import hookimpl\n\n"
        "@hookimpl\ndef after_iter(run):\n    if run.iteration == 2:\n        raise RuntimeError('kaput')\n"))
    result = posecore("train", str(tiny_config), "--work-dir", str(tmp_path / "wd"), "--plugin", "boom",
                      pythonpath=[site])
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("posecore: error: plugin 'boom' failed in hook 'after_iter': RuntimeError: kaput")
    run_dir = run_dir_of(tmp_path / "wd")
    assert "Traceback" in (run_dir / f"{run_dir.name}.log").read_text()
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_quickstart_shortened_trains_and_learns(tmp_path):
    result = posecore("train", str(REPO / "examples" / "quickstart.toml"), "--work-dir", str(tmp_path / "wd"),
                      "--cfg-options", "train.max_iters=60", "train.val_interval=60", "train.log_interval=20",
                      "val_dataloader.dataset.num_samples=64")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in next((tmp_path / "wd").glob("*/vis_data/scalars.json")).read_text()
             .splitlines()]
    losses = [line["loss"] for line in lines if "loss" in line]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert (tmp_path / "wd" / "iter_60.pth").is_file()


def test_terminal_gets_a_refreshing_progress_line(tiny_config, tmp_path):
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "posecore", "train", str(tiny_config), "--work-dir",
                             str(tmp_path / "wd"), "--cfg-options", "train.log_interval=1"],
                            stdin=follower, stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closes when the process exits
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    text = output.decode()
    assert "\r\033[K[" in text and "it/s  ETA" in text  # the status line, redrawn in place
    assert "Iter(train) [4/4]" in text  # log lines still reach the terminal


def test_auto_scale_lr_follows_the_total_batch(tmp_path):
    plain = run_training(tmp_path / "plain").run
    scaled = run_training(tmp_path / "scaled", cfg_options=["auto_scale_lr.enable=true",
                                                            "auto_scale_lr.base_batch_size=16"]).run
    base = plain.config["optim"]["lr"]
    assert plain.optimizer.param_groups[0]["initial_lr"] == base
    assert scaled.optimizer.param_groups[0]["initial_lr"] == pytest.approx(base * 4 / 16)  # batch 4, 1 process
