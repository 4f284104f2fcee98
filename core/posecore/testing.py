"""Helpers for testing posecore plugins: a tiny CPU training run that records every hook call.

    from posecore.testing import TINY_CONFIG, run_training

    def test_my_plugin_counts(tmp_path):
        recording = run_training(tmp_path, plugins={"myplugin": my_plugin_module})
        assert recording.count("after_iter") == 4
        assert recording.calls_of("after_val")[0]["metrics"]["PCK"] >= 0
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from posecore.config import apply_overrides

TINY_CONFIG: dict[str, Any] = {
    "device": "cpu",
    "codec": {"input_size": [32, 32], "heatmap_size": [16, 16], "sigma": 1.5},
    "model": {"stage_channels": [8, 16], "stage_blocks": [1, 1], "deconv_channels": [8]},
    "train_dataloader": {"batch_size": 4, "num_workers": 0,
                         "dataset": {"num_samples": 24, "image_size": [48, 48]}},
    "val_dataloader": {"batch_size": 8, "dataset": {"num_samples": 8, "image_size": [48, 48]}},
    "scheduler": {"warmup_iters": 2},
    "train": {"max_iters": 4, "val_interval": 2, "log_interval": 2},
    "checkpoint": {"interval": 2},
}
"""A config that trains in about a second on a CPU: 4 iterations, validation and checkpoints every 2."""


@dataclass
class Recording:
    """The hook calls of a finished run, in order, as ``(hook name, keyword arguments)``."""

    run: Any
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def calls_of(self, hook: str) -> list[dict[str, Any]]:
        return [kwargs for name, kwargs in self.calls if name == hook]

    def count(self, hook: str) -> int:
        return len(self.calls_of(hook))


def run_training(work_dir: str | Path, plugins: Mapping[str, Any] | None = None,
                 config: Mapping[str, Any] | None = None, cfg_options: list[str] = (),
                 use_installed: bool = False) -> Recording:
    """Train :data:`TINY_CONFIG` (or ``config``) in ``work_dir`` with ``plugins`` ({name: module}) registered.

    Installed entry-point plugins are ignored unless ``use_installed``; the given plugins follow the
    usual activation rule, so name them in ``plugins = [...]`` (or use their section) to activate them.
    Raises what the run raises; the recording of a failed run is on the exception as ``recording``.
    """
    from posecore.plugins import discover, module_plugin, resolve
    from posecore.run import Run, train

    user = copy.deepcopy(dict(TINY_CONFIG if config is None else config))
    user["work_dir"] = str(work_dir)
    apply_overrides(user, list(cfg_options))
    extra = [module_plugin(name, module) for name, module in (plugins or {}).items()]
    settings, plugin_set = resolve(user, lambda key: "test config", installed=discover() if use_installed else [],
                                   extra=extra)
    run = Run(settings, plugin_set)
    recording = Recording(run)
    plugin_set.monitored = True
    plugin_set.pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: recording.calls.append((name, dict(kwargs))), lambda *args: None)
    try:
        train(run)
    except BaseException as err:
        err.recording = recording
        raise
    return recording
