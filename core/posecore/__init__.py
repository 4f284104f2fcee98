"""posecore: a small, fast and trustworthy training framework for top-down human-pose estimation."""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("posecore")
"""Marker for plugin hook implementations: ``@posecore.hookimpl``."""

__all__ = ["__version__", "hookimpl"]
