"""Fixtures shared by the core's and the plugins' tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coco_synth import SyntheticCoco, write_synthetic_coco
from helpers import SHARED_COCO, CocoFiles, require_shared_data, write_tiny_config


if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several test processes share the cores: one thread each (and in the runs they start) instead of every
    # process's torch taking all the cores, which made the suite slower than one process alone.
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    """A config file for a 4-iteration CPU run that takes about a second."""
    return write_tiny_config(tmp_path)


@pytest.fixture(scope="session")
def synthetic_coco(tmp_path_factory: pytest.TempPathFactory) -> SyntheticCoco:
    """The generated COCO keypoint data set (tests/coco_synth.py), written once per session."""
    return write_synthetic_coco(tmp_path_factory.mktemp("synthetic_coco"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample data folder; without it the test skips, or under CI=true fails."""
    return require_shared_data()


@pytest.fixture(scope="module", params=["synthetic", "shared"])
def coco_files(request: pytest.FixtureRequest) -> CocoFiles:
    """Each COCO data set: the generated one always, the shared real sample where present (under CI=true: must be)."""
    if request.param == "synthetic":
        return request.getfixturevalue("synthetic_coco")
    request.getfixturevalue("shared_data")
    return SHARED_COCO
