"""Vis backends: where logged scalars go. ``LocalVisBackend`` is the core's; plugins add more."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from posecore.checkpoint import atomic_write
from posecore.config import Section


class LocalVisBackend:
    """Appends one JSON object per logging step to ``vis_data/scalars.json`` (MMEngine's format)."""

    options = Section({}, "No options.")

    def __init__(self, vis_dir: Path, resume_step: int | None = None) -> None:
        path = vis_dir / "scalars.json"
        if resume_step is not None and path.exists():
            # Drop what a crash left after the checkpoint we continue from: steps must not repeat.
            kept = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            atomic_write(path, lambda file: file.write("".join(kept).encode()))
        self.file = open(path, "a", encoding="utf-8", buffering=1)  # line-buffered: readable while training

    def add_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        self.file.write(json.dumps({**scalars, "step": step}) + "\n")

    def add_config(self, text: str) -> None:
        """The config is already dumped to ``vis_data/config.toml`` by the core."""

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()
