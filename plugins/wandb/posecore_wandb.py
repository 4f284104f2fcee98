"""posecore-wandb: ``WandbVisBackend`` tracks a run in Weights & Biases: every scalar at its step, the config,
validation image grids and, at the end, the run's main settings and final metrics (the run's summary).

    [[visualizer.vis_backends]]
    type = "WandbVisBackend"
    project = "pose"
    name = "small-256"
    init_kwargs = {entity = "my-team", tags = ["baseline"]}  # more arguments of wandb.init

Active when ``visualizer.vis_backends`` names ``WandbVisBackend``, or with ``--plugin wandb`` (which adds it with its
defaults). W&B's files go to the run's ``vis_data/wandb`` (``init_kwargs = {dir = ...}`` puts them elsewhere); with
``WANDB_MODE=offline`` nothing leaves the machine until ``wandb sync``.

One series across resumes: W&B drops a step lower than the last one it has, so a step that a killed run sent
would stand instead of the resumed run's, and offline both would be in the files. The backend therefore sends a
step only once a checkpoint holding it is on disk (the core says so: ``checkpointed``) and keeps it in memory
until then: what W&B has ends at a checkpoint, the checkpoint keeps the W&B run id, and ``--resume`` continues
that run (offline: a second ``offline-run-*-ID`` folder, which ``wandb sync`` uploads after the first) after the
checkpoint's step. The price: W&B shows the run as of its newest checkpoint
(``checkpoint.interval``), and what a failed run did after it is not sent (a resumed run logs those steps).
W&B itself writes its files every 15 s and at the end: a hard kill (SIGKILL) loses what it had not written yet
(``init_kwargs = {settings = {x_transaction_log_flush_interval = 1}}`` writes every second).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from posecore import hookimpl
from posecore.config import Dependency, Key, Section


class WandbVisBackend:
    """One W&B run per posecore run, continued by ``--resume``; steps are sent once a checkpoint holds them."""

    options = Section({
        "project": Key(str, None, "W&B project of the run (unset: `$WANDB_PROJECT`, else W&B's default)."),
        "name": Key(str, None, "Name of the W&B run (unset: W&B picks one)."),
        "init_kwargs": Key(dict, None, "More arguments of `wandb.init`, e.g. `{entity = \"team\", tags = [\"a\"]}`."),
        "num_images": Key(int, 8, "Validation crops drawn at each validation (0: none).", min=0),
    }, "Weights & Biases tracking (posecore-wandb).",
        requires=(Dependency("wandb", "pip install wandb (what posecore-wandb needs)"),))

    def __init__(self, vis_dir: Path, resume_step: int | None = None, project: str | None = None,
                 name: str | None = None, init_kwargs: Mapping[str, Any] | None = None, num_images: int = 8,
                 resume_state: Mapping[str, Any] | None = None) -> None:
        import wandb

        resumed = {} if resume_state is None else {"id": resume_state["run_id"], "resume": "allow"}
        self.run = wandb.init(**{"dir": str(vis_dir), "project": project, "name": name, **resumed,
                                 **(init_kwargs or {})})
        self.num_images = num_images
        self.rows: dict[int, dict[str, Any]] = {}  # step -> what was logged at it, in step order, not sent yet
        self.exit_code = 1  # until after_train says how the run ended

    def add_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        self.rows.setdefault(step, {}).update(scalars)

    def add_image(self, key: str, image: Any, step: int) -> None:
        import wandb

        self.rows.setdefault(step, {})[key] = wandb.Image(image)

    def add_config(self, text: str) -> None:
        from posecore.config import loads

        self.run.config.update(loads(text), allow_val_change=True)  # a resumed run may change values

    def checkpointed(self, through: int) -> None:
        """Send what was logged up to step ``through``, which a checkpoint on disk holds."""
        while self.rows and (step := next(iter(self.rows))) <= through:
            self.run.log(self.rows.pop(step), step=step, commit=True)  # commit: written now, not with the next step

    def summarize(self, hparams: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
        """HParams-like: the final metrics in the run's summary as ``hparam/<name>``, the main settings in its
        config (``seed``, ``max_iters``: the values the run ended with)."""
        self.run.summary.update({f"hparam/{name}": value for name, value in metrics.items()})
        self.run.config.update(dict(hparams), allow_val_change=True)

    def flush(self) -> None:
        """Nothing to do: W&B writes on its own, and steps go out when a checkpoint holds them."""

    def close(self) -> None:
        if self.rows:
            steps = list(self.rows)
            logging.getLogger("posecore").info("W&B: steps %d to %d come after the last checkpoint and are not "
                                               "sent; a resumed run logs them", steps[0], steps[-1])
        self.run.finish(exit_code=self.exit_code)

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run.id}


@hookimpl
def vis_backends() -> dict[str, type]:
    return {"WandbVisBackend": WandbVisBackend}


@hookimpl
def after_train(run: Any, error: BaseException | None) -> None:
    """The W&B run's exit code: 0, or the error's (e.g. 143 for SIGTERM), else 1; ``close`` records it."""
    exit_code = 0 if error is None else getattr(error, "exit_code", 1)
    for backend in run.backends:
        if isinstance(backend, WandbVisBackend):
            backend.exit_code = exit_code
