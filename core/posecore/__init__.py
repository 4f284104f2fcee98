"""posecore: a small, fast and trustworthy training framework for top-down human-pose estimation."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping

import pluggy

if TYPE_CHECKING:
    import torch

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("posecore")
"""Marker for plugin hook implementations: ``@posecore.hookimpl``."""


def load_model(config: str | os.PathLike[str] | Mapping[str, Any], checkpoint: str | os.PathLike[str] | None = None,
               device: str = "cpu") -> torch.nn.Module:
    """The model ``config`` describes (a TOML file, or a config table as ``posecore config`` prints it), with
    the weights of ``checkpoint`` (any file ``posecore test`` accepts) loaded, in eval mode on ``device``.

    Called on normalised crops ``(N, 3, H, W)`` (the codec's ``input_size``) it returns the raw head output:
    heatmaps ``(N, K, h, w)`` for the heatmap models, a tuple for heads with several outputs (whatever the model
    type's ``forward`` returns: :mod:`posecore.protocols`). Bad input raises :class:`posecore.errors.InputError`
    with a one-line message.
    """
    from posecore.run import load_model as load

    return load(config, checkpoint, device)


__all__ = ["__version__", "hookimpl", "load_model"]
