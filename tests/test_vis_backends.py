"""The vis backend contract's optional methods (``add_image``, ``checkpointed``, ``summarize``) as the core calls
them, and ``--plugin NAME`` adding a plugin's backends with their defaults."""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytest

from posecore import hookimpl
from posecore.config import Key, Section
from posecore.plugins import module_plugin, resolve
from posecore.testing import TINY_CONFIG, run_training


class RecordingVisBackend:
    """Records every call the core makes, with what a test checks at the time of the call."""

    options = Section({"num_images": Key(int, 2, "Validation crops per grid.", min=0),
                       "label": Key(str, None, "Unused; unset by default.")}, "Records the core's calls (a test's).")

    def __init__(self, vis_dir: Path, resume_step: int | None = None, num_images: int = 2,
                 label: str | None = None) -> None:
        self.work_dir = vis_dir.parent.parent  # <work_dir>/<run folder>/vis_data
        self.num_images = num_images
        self.calls: list[tuple[Any, ...]] = []

    def add_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        self.calls.append(("add_scalars", step))

    def add_config(self, text: str) -> None:
        self.calls.append(("add_config",))

    def add_image(self, tag: str, image: Any, step: int) -> None:
        self.calls.append(("add_image", tag, image, step))

    def checkpointed(self, step: int) -> None:
        on_disk = (self.work_dir / f"iter_{step}.pth").is_file()
        self.calls.append(("checkpointed", step, on_disk, threading.current_thread() is threading.main_thread()))

    def summarize(self, hparams: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
        self.calls.append(("summarize", dict(hparams), dict(metrics), step))

    def flush(self) -> None:
        self.calls.append(("flush",))

    def close(self) -> None:
        self.calls.append(("close",))

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [call[1:] for call in self.calls if call[0] == name]

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]


class Recorder:
    """A plugin that provides ``RecordingVisBackend`` and nothing else."""

    @staticmethod
    @hookimpl
    def vis_backends() -> dict[str, type]:
        return {"RecordingVisBackend": RecordingVisBackend}


class Slow:
    """Iterations that outlast a background write, so that the loop sees each one finish before the next."""

    @staticmethod
    @hookimpl
    def after_iter(run: Any, loss: Any) -> None:
        time.sleep(0.3)


class FailsAtThree:
    """A plugin that breaks the run in iteration 3, after the validation and checkpoint of iteration 2."""

    @staticmethod
    @hookimpl
    def after_iter(run: Any, loss: Any) -> None:
        if run.iteration == 3:
            raise RuntimeError("broken at iteration 3")


PLUGINS = {"recorder": Recorder, "slow": Slow, "fails": FailsAtThree}


def train(tmp_path: Path, *cfg_options: str, backends: list[dict[str, Any]] | None = None) -> Any:
    """Train the tiny config with ``backends`` (one RecordingVisBackend unless given); the recording."""
    config = copy.deepcopy(TINY_CONFIG)
    config["visualizer"] = {"vis_backends": backends or [{"type": "RecordingVisBackend"}]}
    return run_training(tmp_path / "wd", plugins=PLUGINS, config=config, cfg_options=list(cfg_options))


@pytest.mark.parametrize("background", [False, True])
def test_checkpointed_gets_each_saved_iteration_once_on_disk_and_before_close(tmp_path, background):
    options = ["checkpoint.async=true", "plugins=['slow']"] if background else []
    recording = train(tmp_path, *options)
    (backend,) = recording.run.backends
    assert backend.of("checkpointed") == [(2, True, True), (4, True, True)]  # step, on disk, on the main thread
    # Iteration 2's checkpoint is told before iteration 4 validates: right after the save, or (async) when the
    # loop next sees the write done.
    assert [name for name in backend.names() if name in ("add_image", "checkpointed")] == [
        "add_image", "checkpointed", "add_image", "checkpointed"]
    names = backend.names()
    assert names[-1] == "close" and names.count("close") == 1
    assert max(i for i, name in enumerate(names) if name == "checkpointed") < names.index("close")


def test_add_image_gets_one_uint8_grid_per_size_at_each_validation(tmp_path):
    recording = train(tmp_path, backends=[{"type": "RecordingVisBackend"}, {"type": "RecordingVisBackend"},
                                          {"type": "RecordingVisBackend", "num_images": 0}])
    first, second, none = recording.run.backends
    assert [(tag, step) for tag, _, step in first.of("add_image")] == [("val/predictions", 2), ("val/predictions", 4)]
    for _, image, _ in first.of("add_image"):
        assert isinstance(image, np.ndarray) and image.dtype == np.uint8
        assert image.shape == (32, 2 * 32 + 1, 3)  # 2 crops of 32x32 side by side
    # The same size is drawn once for both backends; num_images = 0 gets none.
    assert all(a[1] is b[1] for a, b in zip(first.of("add_image"), second.of("add_image")))
    assert none.of("add_image") == []


def test_summarize_gets_the_settings_and_last_metrics_once_at_a_successful_end(tmp_path):
    recording = train(tmp_path)
    run, (backend,) = recording.run, recording.run.backends
    ((hparams, metrics, step),) = backend.of("summarize")
    assert hparams == {"optim.type": run.config["optim"]["type"], "optim.lr": run.config["optim"]["lr"],
                       "optim.weight_decay": run.config["optim"]["weight_decay"],
                       "model.type": run.config["model"]["type"], "batch_size": 4, "max_iters": 4, "seed": run.seed,
                       "codec.type": run.config["codec"]["type"], "input_size": "[32, 32]"}
    assert metrics == recording.calls_of("after_val")[-1]["metrics"] == run.last_metrics
    assert step == 4
    assert backend.names()[-2:] == ["summarize", "close"]


def test_a_failed_run_is_not_summarized_but_told_its_last_checkpoint(tmp_path):
    with pytest.raises(RuntimeError, match="broken at iteration 3") as failure:
        train(tmp_path, "plugins=['fails']")
    (backend,) = failure.value.recording.run.backends
    assert backend.of("summarize") == []
    assert backend.of("checkpointed") == [(2, True, True)]
    assert backend.names()[-1] == "close"


def resolved_backends(cli_plugins: list[str], backends: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """``visualizer.vis_backends`` as resolved with the recorder plugin installed and ``cli_plugins`` named."""
    user = copy.deepcopy(TINY_CONFIG)
    if backends is not None:
        user["visualizer"] = {"vis_backends": backends}
    config, _ = resolve(user, lambda key: "test config", cli_plugins, installed=[],
                        extra=[module_plugin("recorder", Recorder)])
    return config["visualizer"]["vis_backends"]


def test_naming_a_plugin_adds_its_backends_with_their_defaults_unless_the_config_lists_one():
    assert resolved_backends(["recorder"]) == [{"type": "LocalVisBackend"},
                                               {"type": "RecordingVisBackend", "num_images": 2}]
    listed = [{"type": "RecordingVisBackend", "num_images": 5}]
    assert resolved_backends(["recorder"], listed) == listed
    assert resolved_backends([], listed) == listed  # activated by its type, not named: nothing added
    assert resolved_backends([]) == [{"type": "LocalVisBackend"}]  # neither: the plugin is not active
