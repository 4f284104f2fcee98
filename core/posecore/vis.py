"""Vis backends: where logged scalars go. ``LocalVisBackend`` is the core's; plugins add more."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from posecore.config import Section


class LocalVisBackend:
    """Appends one JSON object per logging step to ``vis_data/scalars.json`` (MMEngine's format)."""

    options = Section({}, "No options.")

    def __init__(self, vis_dir: Path) -> None:
        self.file = open(vis_dir / "scalars.json", "a", encoding="utf-8")

    def add_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        self.file.write(json.dumps({**scalars, "step": step}) + "\n")
        self.file.flush()

    def add_config(self, text: str) -> None:
        """The config is already dumped to ``vis_data/config.toml`` by the core."""

    def close(self) -> None:
        self.file.close()
