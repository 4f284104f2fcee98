"""Randomness: generators mixed from several integers, and the global generators' state for checkpoints.

Every random choice of the data is a function of (seed, epoch, index); what remains global (Python's
``random``, NumPy's legacy generator, torch on CPU and CUDA: dropout, a plugin's own draws) is saved
in every checkpoint and restored on resume, so a resumed run continues the same streams.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch


def mixed_rng(*entropy: int) -> np.random.Generator:
    """A generator seeded from several integers through SeedSequence (so (s, 1) and (s+1, 0) differ)."""
    return np.random.default_rng(np.random.SeedSequence([int(e) for e in entropy]))


def seed_globals(*entropy: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (every CUDA device too) from mixed integers."""
    words = np.random.SeedSequence([int(e) for e in entropy]).generate_state(2, np.uint64)
    random.seed(int(words[0]))
    np.random.seed(int(words[0]) % 2**32)
    torch.manual_seed(int(words[1]) % 2**63)


def capture() -> dict[str, Any]:
    """The global generators' states as tensors and plain values (loadable with weights_only=True)."""
    version, python_state, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": torch.tensor(python_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore(state: dict[str, Any]) -> None:
    """Put back what :func:`capture` returned."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def init_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed the worker's globals from (seed, epoch, rank, worker id); ignore
    SIGINT and SIGTERM, which :func:`posecore.data.iterate` held back while the worker started.

    Augmentation does not use these (it draws from (seed, epoch, index)); they are seeded so that
    anything else drawing in a worker is reproducible too (torch's default is base seed + worker id).
    Persistent workers keep the seeding of the epoch they started in.
    """
    import signal

    # Ctrl-C and SIGTERM often reach the whole process group; the main process saves while the workers
    # go on serving it, then ends them. Ignored before unblocked: one that arrived meanwhile is dropped.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    dataset = torch.utils.data.get_worker_info().dataset
    seed_globals(dataset.seed, dataset.epoch, int(os.environ.get("RANK", 0)), worker_id)
