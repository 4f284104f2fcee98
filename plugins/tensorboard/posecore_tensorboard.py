"""posecore-tensorboard: ``TensorboardVisBackend`` writes event files to ``<run folder>/vis_data``.

``--plugin tensorboard`` adds the backend without editing the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from posecore import hookimpl
from posecore.config import Key, Section


class TensorboardVisBackend:
    """Scalars and the config as TensorBoard events, readable by ``tensorboard --logdir <vis_data>``."""

    options = Section({"flush_secs": Key(int, 30, "Seconds between flushes to disk.", min=1)},
                      "TensorBoard event files (posecore-tensorboard).")

    def __init__(self, vis_dir: Path, flush_secs: int = 30) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(vis_dir), flush_secs=flush_secs)

    def add_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def add_config(self, text: str) -> None:
        self.writer.add_text("config", "```toml\n" + text + "\n```")

    def close(self) -> None:
        self.writer.close()


@hookimpl
def vis_backends() -> dict[str, type]:
    return {"TensorboardVisBackend": TensorboardVisBackend}


@hookimpl
def configure(config: dict[str, Any]) -> None:
    backends = config["visualizer"]["vis_backends"]
    if not any(entry["type"] == "TensorboardVisBackend" for entry in backends):
        defaults = {name: key.default for name, key in TensorboardVisBackend.options.keys.items()}
        backends.append({"type": "TensorboardVisBackend", **defaults})
