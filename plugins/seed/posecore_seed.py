"""posecore-seed: seed every random generator before anything is built, and keep their states in checkpoints.

``[randomness]`` keys: ``seed`` (drawn, logged and recorded when unset), ``diff_rank_seed``
(seed + rank on each distributed rank), ``deterministic`` (deterministic cuDNN and algorithms).
"""

from __future__ import annotations

import os
import random
import secrets
from typing import Any

import numpy as np

from posecore import hookimpl
from posecore.config import Key, Section


@hookimpl
def config_schema() -> dict[str, Any]:
    return {"randomness": Section({
        "seed": Key(int, None, "Seed of every generator and of the data order/augmentation (unset: drawn, "
                               "logged and stored in checkpoints).", min=0, max=2**63 - 1),
        "diff_rank_seed": Key(bool, False, "Use seed + rank on each distributed rank."),
        "deterministic": Key(bool, False, "Deterministic cuDNN (benchmark off) and "
                                          "torch.use_deterministic_algorithms(True); sets CUBLAS_WORKSPACE_CONFIG."),
    }, "Seeding (posecore-seed).")}


@hookimpl
def before_build(run: Any) -> None:
    import torch

    options = run.config.get("randomness", {})
    seed = options.get("seed")
    if seed is None:
        seed = secrets.randbits(31)
        run.log.info("randomness.seed not set: drew seed %d", seed)
    if options.get("diff_rank_seed") and torch.distributed.is_available() and torch.distributed.is_initialized():
        seed += torch.distributed.get_rank()
    options["seed"] = run.seed = seed
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
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


@hookimpl
def save_state(run: Any) -> dict[str, Any]:
    import torch

    version, python_state, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "seed": run.seed,
        "python": {"version": version, "state": torch.tensor(python_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


@hookimpl
def load_state(run: Any, state: dict[str, Any]) -> None:
    import torch

    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    run.config.setdefault("randomness", {})["seed"] = run.seed = state["seed"]
    run.log.info("randomness: continuing with the checkpoint's seed %d", run.seed)
