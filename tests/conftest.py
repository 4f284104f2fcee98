"""Fixtures shared by the core's and the plugins' tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import write_tiny_config


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    """A config file for a 4-iteration CPU run that takes about a second."""
    return write_tiny_config(tmp_path)
