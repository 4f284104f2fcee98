"""posecore-wandb against real W&B in offline mode (nothing leaves the machine): what a run sends is read back from
the ``.wandb`` files of its offline run folders."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import posecore, write_tiny_config as write_tiny
from interruptions import install_interrupter, interrupt_env


@pytest.fixture
def offline(tmp_path) -> dict[str, str]:
    """W&B offline and silent, its own folders in the test's, and a server address where none listens."""
    home = tmp_path / "wandb-home"
    return {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_ERROR_REPORTING": "false",
            "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_DIR": str(home), "WANDB_CONFIG_DIR": str(home),
            "WANDB_CACHE_DIR": str(home), "WANDB_DATA_DIR": str(home), "WANDB_ARTIFACT_DIR": str(home)}


def records(path: Path):
    """The records of a ``.wandb`` file: W&B's header, then LevelDB-log records of ``Record`` protobufs."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes() if path.exists() else b"", 32768
    if len(data) < 7:  # not written yet
        return
    assert data[:4] == b":W&B", path
    position, chunks = 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if position + 7 + length > len(data):  # being written
            return
        chunks += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a record in one piece, or its last piece
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


class OfflineRun:
    """One offline run folder (``offline-run-<time>-<id>``): what W&B wrote of one process's run."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.run_id = folder.name.rsplit("-", 1)[1]
        self.history: dict[int, dict] = {}
        self.config: dict = {}
        self.summary: dict = {}
        self.exit_code = None
        for record in records(folder / f"run-{self.run_id}.wandb"):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                       for item in record.history.item}
                assert record.history.step.num not in self.history, f"step {record.history.step.num} twice"
                self.history[record.history.step.num] = row
            elif kind in ("run", "config"):
                updates = record.run.config.update if kind == "run" else record.config.update
                self.config.update({item.key: json.loads(item.value_json) for item in updates})
            elif kind == "summary":
                self.summary.update({item.key: json.loads(item.value_json) for item in record.summary.update
                                     if item.key})
            elif kind == "exit":
                self.exit_code = record.exit.exit_code

    def series(self, key: str) -> list[tuple[int, float]]:
        return [(step, row[key]) for step, row in sorted(self.history.items()) if key in row]


def offline_runs(vis_dir: Path) -> list[OfflineRun]:
    """The offline runs in ``vis_dir``, oldest first: a resumed run adds one with the same id."""
    return [OfflineRun(folder) for folder in sorted((vis_dir / "wandb").glob("offline-run-*"))]


def logged(vis_dir: Path, key: str) -> list[tuple[int, float]]:
    lines = [json.loads(line) for line in (vis_dir / "scalars.json").read_text().splitlines()]
    return [(line["step"], line[key]) for line in lines if key in line]


def backends(**options) -> dict:
    return {"vis_backends": [{"type": "LocalVisBackend"}, {"type": "WandbVisBackend", **options}]}


def test_every_scalar_the_config_images_and_summary_reach_wandb(tmp_path, offline):
    work_dir = tmp_path / "wd"
    config = write_tiny(tmp_path, visualizer=backends(project="posecore-test", name="tiny"))
    result = posecore("train", str(config), "--work-dir", str(work_dir), env=offline)
    assert result.returncode == 0, result.stderr
    assert "plugins: wandb-0.1.0" in result.stderr
    (vis_dir,) = work_dir.glob("*/vis_data")
    (run,) = offline_runs(vis_dir)
    assert run.exit_code == 0
    assert sorted(run.history) == [2, 4]
    for key in ("loss", "lr", "grad_norm", "samples_per_s", "val/PCK"):
        assert run.series(key) == logged(vis_dir, key)

    from posecore.config import loads

    assert {k: v for k, v in run.config.items() if k in ("optim", "train", "codec")} == {
        k: v for k, v in loads((vis_dir / "config.toml").read_text()).items() if k in ("optim", "train", "codec")}
    seed = int(re.search(r"drew seed (\d+)", result.stderr).group(1))
    assert (run.config["seed"], run.config["max_iters"]) == (seed, 4)
    assert run.summary["hparam/PCK"] == logged(vis_dir, "val/PCK")[-1][1]

    from PIL import Image

    for step in (2, 4):
        row = run.history[step]  # an image's fields are nested keys: "val/predictions/path", ...
        with Image.open(run.folder / "files" / row["val/predictions/path"]) as png:
            assert png.size == (row["val/predictions/width"], row["val/predictions/height"]) == (4 * 32 + 3, 2 * 32 + 1)


def _popen_train(config: Path, work_dir: Path, args: list[str], site: Path, env: dict[str, str]) -> subprocess.Popen:
    environment = {**os.environ, **env, "PYTHONPATH": str(site)}
    environment.pop("POSECORE_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "posecore", "train", str(config), "--work-dir", str(work_dir),
                             *args], env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_stopped_then_killed_run_resumes_into_one_wandb_run_with_each_step_once(tmp_path, offline):
    """SIGTERM at iteration 3 (saved there), SIGKILL at 6 (newest checkpoint 4), then the run to its end.

    W&B writes its file every ``x_transaction_log_flush_interval`` seconds: the killed run waits in iteration 6
    until what W&B got is on disk (the steps up to checkpoint 4, and any later step it was wrongly sent)."""
    work_dir, site, markers = tmp_path / "wd", install_interrupter(tmp_path / "site"), tmp_path / "markers"
    markers.mkdir()
    config = write_tiny(tmp_path, visualizer=backends(
        project="posecore-test", init_kwargs={"settings": {"x_transaction_log_flush_interval": 0.1}}))
    args = ["--plugin", "interrupt", "--cfg-options", "train.max_iters=10", "train.log_interval=1",
            "train.val_interval=4", "checkpoint.interval=4"]

    def train(*more: str, env: dict[str, str] | None = None):
        return posecore("train", str(config), "--work-dir", str(work_dir), *more, *args, pythonpath=[site],
                        env={**offline, **(env or {})})

    stopped = train(env=interrupt_env(3, "SIGTERM"))
    assert stopped.returncode == 143, stopped.stderr
    (vis_dir,) = work_dir.glob("*/vis_data")
    (first,) = offline_runs(vis_dir)
    assert (sorted(first.history), first.exit_code) == ([1, 2, 3], 143)

    paused = _popen_train(config, work_dir, ["--resume", *args], site,
                          {**offline, **interrupt_env(6, "pause", markers=markers)})
    try:
        deadline = time.monotonic() + 120
        while not (markers / "rank0").exists() or len(offline_runs(vis_dir)) < 2 or \
                4 not in offline_runs(vis_dir)[1].history:
            assert paused.poll() is None and time.monotonic() < deadline, paused.communicate()[1]
            time.sleep(0.1)
        time.sleep(1)  # ten flush intervals: a step sent too early would be in the file now
    finally:
        paused.kill()
        paused.communicate()
    second = offline_runs(vis_dir)[1]
    # Step 5 was logged, but no checkpoint holds it: W&B ends at checkpoint 4.
    assert (second.run_id, sorted(second.history), second.exit_code) == (first.run_id, [4], None)

    finished = train("--resume")
    assert finished.returncode == 0, finished.stderr
    assert "resumed from" in finished.stderr and "at iteration 4" in finished.stderr
    runs = offline_runs(vis_dir)
    assert [run.run_id for run in runs] == [first.run_id] * 3
    assert [sorted(run.history) for run in runs] == [[1, 2, 3], [4], list(range(5, 11))]
    for key in ("loss", "lr", "grad_norm", "val/PCK"):
        assert [item for run in runs for item in run.series(key)] == logged(vis_dir, key)
    assert [step for run in runs for step, row in sorted(run.history.items()) if "val/predictions/path" in row] == \
        [4, 8, 10]
    assert (runs[2].exit_code, runs[2].summary["hparam/PCK"]) == (0, logged(vis_dir, "val/PCK")[-1][1])


def test_the_plugin_flag_adds_the_backend_with_its_defaults(tmp_path):
    result = posecore("config", str(write_tiny(tmp_path)), "--plugin", "wandb")
    assert result.returncode == 0, result.stderr
    assert '{ type = "WandbVisBackend", num_images = 8 }' in result.stdout


@pytest.mark.parametrize("options, blocked, message", [
    ({"init_kwargs": "dir"}, False, "'visualizer.vis_backends[0].init_kwargs' must be table, got string"),
    ({}, True, "needs wandb, which does not import here (ImportError: blocked by the test); pip install wandb "
               "(what posecore-wandb needs)"),
])
def test_a_bad_option_or_missing_wandb_is_one_line_and_exit_2(tmp_path, options, blocked, message):
    site = tmp_path / "site"
    if blocked:
        (site / "wandb").mkdir(parents=True)
        (site / "wandb" / "__init__.py").write_text('raise ImportError("blocked by the test")\n')
    config = write_tiny(tmp_path, visualizer={"vis_backends": [{"type": "WandbVisBackend", **options}]})
    result = posecore("config", str(config), pythonpath=[site] if blocked else [])
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("posecore: error: ") and line.endswith(message)
