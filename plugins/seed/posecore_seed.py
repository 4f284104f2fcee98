"""posecore-seed: seed every random generator before anything is built.

``[randomness]`` keys: ``seed`` (drawn on rank 0, logged and recorded when unset), ``diff_rank_seed``
(augmentation and global generators use seed + rank on each torchrun rank; the data order is shared),
``deterministic`` (deterministic cuDNN and algorithms).
The seed becomes the run's data seed (sampler order and augmentation are functions of seed, epoch and
index); the core saves every global generator's state in checkpoints and restores it on resume.
"""

from __future__ import annotations

import os
import random
import secrets
from typing import Any

from posecore import hookimpl
from posecore.config import Key, Section


@hookimpl
def config_schema() -> dict[str, Any]:
    return {"randomness": Section({
        "seed": Key(int, None, "Seed of every generator and of the data order/augmentation (unset: drawn, "
                               "logged and stored in checkpoints).", min=0, max=2**63 - 1),
        "diff_rank_seed": Key(bool, False, "Under torchrun: augmentation and dropout use seed + rank on each "
                                           "rank (false: the same seed everywhere); the data order is shared."),
        "deterministic": Key(bool, False, "Deterministic cuDNN (benchmark off) and "
                                          "torch.use_deterministic_algorithms(True); sets CUBLAS_WORKSPACE_CONFIG."),
    }, "Seeding (posecore-seed).")}


@hookimpl
def before_build(run: Any) -> None:
    import numpy as np
    import torch

    from posecore import dist

    options = run.config.get("randomness", {})
    seed = options.get("seed")
    if seed is None:
        seed = dist.broadcast(secrets.randbits(31))  # rank 0's draw: one seed for the whole job
        run.log.info("randomness.seed not set: drew seed %d", seed)
    options["seed"] = run.seed = seed
    # The sampler's order always uses the shared seed (the ranks split one order); with diff_rank_seed
    # augmentation and the global generators (dropout) use seed + rank.
    run.rank_seeds = bool(options.get("diff_rank_seed"))
    own = seed + run.rank if run.rank_seeds else seed
    random.seed(own)
    np.random.seed(own % 2**32)
    torch.manual_seed(own)  # also seeds every CUDA device
    if options.get("deterministic"):
        # Put back at the end, so later runs in the same process (tests, notebooks) are unaffected.
        run.plugin_data["seed"] = (os.environ.get("CUBLAS_WORKSPACE_CONFIG"), torch.backends.cudnn.deterministic,
                                   torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
        # cuBLAS needs this before its first call to be deterministic (see PyTorch's reproducibility notes).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        _set_determinism(True, False, True)


def _set_determinism(cudnn_deterministic: bool, cudnn_benchmark: bool, algorithms: bool) -> None:
    import torch

    torch.backends.cudnn.deterministic = cudnn_deterministic
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.use_deterministic_algorithms(algorithms)


@hookimpl
def after_train(run: Any) -> None:
    if "seed" not in run.plugin_data:
        return
    workspace, *flags = run.plugin_data.pop("seed")
    _set_determinism(*flags)
    if workspace is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


@hookimpl(trylast=True)
def before_train(run: Any) -> None:
    """A resumed run continues with the checkpoint's seed (restored by the core): record that one."""
    if run.resumed_from is not None:
        run.config.setdefault("randomness", {})["seed"] = run.seed
        run.log.info("randomness: continuing with the checkpoint's seed %d", run.seed)
