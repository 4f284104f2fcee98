"""posecore-tensorboard: ``TensorboardVisBackend`` writes event files into the run's ``vis_data`` folder.

Active when ``visualizer.vis_backends`` names ``TensorboardVisBackend``, or with ``--plugin tensorboard``
(the core then adds the backend with its defaults, without editing the config). Scalars share one step
axis, the global iteration; a resumed run continues the same event files (``purge_step`` drops what a
crash left after the checkpoint). At each validation it adds a grid of validation crops with the ground
truth (green) and the prediction (red) drawn; at the end the run's hyper-parameters with its final
metrics (HParams).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from posecore import hookimpl
from posecore.config import Dependency, Key, Section


class TensorboardVisBackend:
    """Scalars, the config, images and HParams as TensorBoard events: ``tensorboard --logdir <vis_data>``."""

    options = Section({
        "flush_secs": Key(int, 30, "Seconds between flushes to disk (and at each validation and at exit).", min=1),
        "num_images": Key(int, 8, "Validation crops drawn at each validation (0: none).", min=0),
    }, "TensorBoard event files (posecore-tensorboard).",
        requires=(Dependency("tensorboard.compat.proto.summary_pb2", "pip install tensorboard"),))

    def __init__(self, vis_dir: Path, resume_step: int | None = None, flush_secs: int = 30,
                 num_images: int = 8) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(log_dir=str(vis_dir), purge_step=purge, flush_secs=flush_secs)
        self.num_images = num_images

    def add_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        # One event holding every scalar of the step: a sixth of the cost of one add_scalar call each.
        values = [Summary.Value(tag=tag, simple_value=float(value)) for tag, value in scalars.items()]
        self.writer.file_writer.add_summary(Summary(value=values), step)

    def add_image(self, tag: str, image: Any, step: int) -> None:
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def add_config(self, text: str) -> None:
        self.writer.add_text("config", "```toml\n" + text + "\n```")

    def flush(self) -> None:
        self.writer.flush()

    def summarize(self, hparams: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
        """HParams: the run's main settings beside its final metrics, so runs compare side by side."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        for summary in hparams_summary(dict(hparams), {f"hparam/{k}": v for k, v in metrics.items()}):
            self.writer.file_writer.add_summary(summary, step)
        for name, value in metrics.items():
            self.writer.add_scalar(f"hparam/{name}", value, step)

    def close(self) -> None:
        self.writer.close()


@hookimpl
def vis_backends() -> dict[str, type]:
    return {"TensorboardVisBackend": TensorboardVisBackend}
