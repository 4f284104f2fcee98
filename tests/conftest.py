"""Fixtures shared by the core's and the plugins' tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from posecore.config import dumps
from posecore.testing import TINY_CONFIG


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    """A config file for a 4-iteration CPU run that takes about a second."""
    path = tmp_path / "tiny.toml"
    path.write_text(dumps(TINY_CONFIG), encoding="utf-8")
    return path
