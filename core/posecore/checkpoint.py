"""Checkpoint files: atomic writes, safe loading, the ``last_checkpoint``/``latest.pth`` pointers, pruning.

A checkpoint is a plain dict of tensors and plain values, loaded with ``torch.load(weights_only=True)``
so that opening an untrusted file cannot run code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from posecore.errors import CheckpointError

FORMAT = "posecore-checkpoint-1"
LAST_CHECKPOINT = "last_checkpoint"
LATEST = "latest.pth"
_ITER_FILE = re.compile(r"^iter_(\d+)\.pth$")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A crash at any point leaves either the old file or the complete new one under ``path``.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def save(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically."""
    atomic_write(path, lambda file: torch.save({"format": FORMAT, **state}, file))


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint; anything that is not a complete posecore checkpoint is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            reason = "it contains pickled Python objects, which posecore refuses to load (they could run code)"
        raise CheckpointError(f"{path}: not a loadable checkpoint: {reason}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a posecore checkpoint (no 'model' entry)")
    return state


def load_model_weights(model: torch.nn.Module, weights: dict[str, Any], path: str | Path) -> None:
    """Load a state_dict strictly; mismatched keys or shapes are a CheckpointError listing the first few."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    wrong = [k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    problems = [f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", wrong))
                if keys]
    if problems:
        raise CheckpointError(f"{path}: weights do not fit this model ({'; '.join(problems)}); "
                              f"check [model] and [codec] against the run that saved it")
    model.load_state_dict(weights)


def iteration_of(path: Path) -> int | None:
    match = _ITER_FILE.match(path.name)
    return int(match.group(1)) if match else None


def update_pointers(work_dir: Path, checkpoint: Path) -> None:
    """Point ``last_checkpoint`` (a text file holding the path) and ``latest.pth`` at ``checkpoint``."""
    atomic_write(work_dir / LAST_CHECKPOINT, lambda file: file.write(str(checkpoint.resolve()).encode()))
    link = work_dir / LATEST
    tmp = work_dir / f".{LATEST}.tmp{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        tmp.symlink_to(checkpoint.name)
    except OSError:  # no symlinks here (some Windows or network filesystems): keep a hard link instead
        os.link(checkpoint, tmp)
    os.replace(tmp, link)


def prune(work_dir: Path, max_keep: int) -> None:
    """Delete all but the ``max_keep`` newest ``iter_*.pth`` (0 keeps all)."""
    if max_keep <= 0:
        return
    files = sorted((p for p in work_dir.glob("iter_*.pth") if iteration_of(p) is not None), key=iteration_of)
    for old in files[:-max_keep]:
        old.unlink(missing_ok=True)
