"""posecore-resume: continue a run from its latest checkpoint, or from a given one.

``--resume`` (``resume = true``) continues from the latest valid checkpoint in the work dir, or
starts fresh when there is none; ``--resume PATH`` (``resume = true`` + ``load_from = PATH``)
continues from that file. ``load_from`` without ``resume`` is the core's: weights only.

Everything comes back: weights, optimizer, schedule and loop position (mid-epoch too: the sampler
skips indices, it loads nothing it skips), the data seed and every generator's state, the best
metric, and each plugin's state. The rest of the run is bitwise the run that was never stopped.

Preemption: on SIGTERM (or Ctrl-C) the core finishes the iteration, saves a checkpoint and exits
with 128 + the signal number: **143** for SIGTERM, **130** for SIGINT. ``--resume`` then loses nothing.
A checkpoint whose ``.xxh128`` checksum does not match, or that does not load, is skipped with a warning in
favour of the previous one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from posecore import hookimpl
from posecore.config import Key
from posecore.errors import CheckpointError


@hookimpl
def config_schema() -> dict[str, Any]:
    return {"resume": Key(bool, False, "Continue from `load_from`, or else from the latest checkpoint in "
                                       "the work dir (posecore-resume).")}


@hookimpl
def before_train(run: Any) -> None:
    from posecore import checkpoint  # torch: imported when a run starts, not when plugins are listed

    if not run.config.get("resume"):
        return
    source = run.config.get("load_from")
    if source is not None:
        run.restore(checkpoint.load(source), Path(source))
        return
    found = latest_checkpoint(run.work_dir, run.log)
    if found is None:
        run.log.info("resume: no checkpoint in %s; starting fresh", run.work_dir)
    else:
        run.restore(*found)


def latest_checkpoint(work_dir: Path, log: Any) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that loads: ``last_checkpoint``'s target, else the newest ``iter_*.pth``."""
    from posecore import checkpoint

    pointed = checkpoint.pointed_to(work_dir)
    candidates = [pointed] if pointed is not None else []
    candidates += sorted(work_dir.glob("iter_*.pth"), key=lambda p: checkpoint.iteration_of(p) or -1, reverse=True)
    for path in dict.fromkeys(candidates):
        try:
            return checkpoint.load(path), path
        except CheckpointError as err:
            log.warning("resume: skipping %s", err)
    return None
