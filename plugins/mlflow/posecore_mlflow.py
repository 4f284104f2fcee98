"""posecore-mlflow: ``MLflowVisBackend`` tracks a run in MLflow: every scalar at its step, the config (parameters
and ``config.toml``), validation image grids and, at the end, the run's main settings and final metrics.

    [[visualizer.vis_backends]]
    type = "MLflowVisBackend"
    tracking_uri = "http://127.0.0.1:5000"  # unset: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here
    exp_name = "pose"
    run_name = "small-256"
    tags = {team = "pose"}

Active when ``visualizer.vis_backends`` names ``MLflowVisBackend``, or with ``--plugin mlflow`` (which adds it with
its defaults).

One series across resumes: MLflow's metric history only grows, so a step that a killed run sent would repeat
when the resumed run logs it again. The backend therefore sends a step only once a checkpoint holding it is on
disk (the core says so: ``checkpointed``) and keeps it in memory until then: what MLflow
has ends at a checkpoint, the checkpoint keeps the MLflow run id, and ``--resume`` reopens that run and
goes on after the checkpoint's step. The price: MLflow shows the run as of its newest checkpoint
(``checkpoint.interval``), and what a failed run did after it is not sent (the log and ``scalars.json`` have
it; a resumed run logs those steps).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from posecore import hookimpl
from posecore.config import Dependency, Key, Section
from posecore.errors import ConfigError, StopRun


class MLflowVisBackend:
    """One MLflow run per posecore run, continued by ``--resume``; steps are sent once a checkpoint holds them."""

    options = Section({
        "tracking_uri": Key(str, None, "Where MLflow keeps runs: a server URL, `sqlite:///FILE`, `databricks`; unset: "
                                       "`$MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db` in the current directory."),
        "exp_name": Key(str, "Default", "MLflow experiment of the run; created when missing."),
        "run_name": Key(str, None, "Name of the MLflow run (unset: MLflow picks one)."),
        "tags": Key(dict, None, "Tags of the MLflow run, e.g. `{team = \"pose\"}`."),
        "num_images": Key(int, 8, "Validation crops drawn at each validation (0: none).", min=0),
    }, "MLflow tracking (posecore-mlflow).",
        requires=(Dependency("mlflow", "pip install mlflow-skinny sqlalchemy alembic (what posecore-mlflow needs)"),))

    def __init__(self, vis_dir: Path, resume_step: int | None = None, tracking_uri: str | None = None,
                 exp_name: str = "Default", run_name: str | None = None, tags: Mapping[str, Any] | None = None,
                 num_images: int = 8, resume_state: Mapping[str, Any] | None = None) -> None:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.num_images = num_images
        self.metrics: list[Any] = []  # mlflow Metric objects in step order, not sent yet
        self.images: list[tuple[int, int, str, Any]] = []  # (step, time in ms, key, image), not sent yet
        self.status = "FAILED"  # until after_train says how the run ended
        self.new = resume_state is None
        if self.new:
            experiment = self.client.get_experiment_by_name(exp_name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(exp_name)
            self.run_id = self.client.create_run(experiment_id, run_name=run_name,
                                                 tags={k: str(v) for k, v in (tags or {}).items()}).info.run_id
        else:
            self.run_id = resume_state["run_id"]
            try:
                self.client.update_run(self.run_id, status="RUNNING")
            except MlflowException as err:
                raise ConfigError(f"MLflowVisBackend: cannot reopen MLflow run {self.run_id}, which the checkpoint "
                                  f"continues, at {self.client.tracking_uri} ({str(err).strip().splitlines()[0]}); "
                                  f"set tracking_uri to the store that holds it") from None

    def add_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = _milliseconds()
        self.metrics += [Metric(key, float(value), now, step) for key, value in scalars.items()]

    def add_image(self, key: str, image: Any, step: int) -> None:
        self.images.append((step, _milliseconds(), key, image))

    def add_config(self, text: str) -> None:
        """``config.toml`` as an artifact, and its values as parameters of a new MLflow run (MLflow's parameters
        cannot change: a resumed run keeps the first values, its ``config.toml`` has the new ones)."""
        from mlflow.entities import Param

        from posecore.config import loads

        self.client.log_text(self.run_id, text, "config.toml")
        if self.new:
            self.client.log_batch(self.run_id, params=[Param(key, str(value)) for key, value in _flat(loads(text))])

    def checkpointed(self, through: int) -> None:
        """Send what was logged up to step ``through``, which a checkpoint on disk holds."""
        if self.metrics and self.metrics[0].step <= through:
            ready = [metric for metric in self.metrics if metric.step <= through]
            del self.metrics[:len(ready)]
            self.client.log_batch(self.run_id, metrics=ready)
        while self.images and self.images[0][0] <= through:
            step, when, key, image = self.images.pop(0)
            self.client.log_image(self.run_id, image, key=key, step=step, timestamp=when)

    def summarize(self, hparams: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
        """HParams-like: the final metrics as ``hparam/<name>`` at the last step, the main settings as tags (a
        resumed run's parameters are the first run's; these are the values it ended with)."""
        from mlflow.entities import Metric, RunTag

        now = _milliseconds()
        self.client.log_batch(self.run_id, metrics=[Metric(f"hparam/{name}", float(value), now, step)
                                                    for name, value in metrics.items()],
                              tags=[RunTag(key, str(value)) for key, value in hparams.items()])

    def flush(self) -> None:
        """Nothing to do: every MLflow call is written through, and steps go out when a checkpoint holds them."""

    def close(self) -> None:
        if self.metrics or self.images:
            steps = sorted({metric.step for metric in self.metrics} | {image[0] for image in self.images})
            logging.getLogger("posecore").info("MLflow: steps %d to %d come after the last checkpoint and are not "
                                               "sent; a resumed run logs them", steps[0], steps[-1])
        self.client.set_terminated(self.run_id, self.status)

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id}


def _milliseconds() -> int:
    return int(time.time() * 1000)


def _flat(table: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in table.items():
        if isinstance(value, Mapping):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


@hookimpl
def vis_backends() -> dict[str, type]:
    return {"MLflowVisBackend": MLflowVisBackend}


@hookimpl
def after_train(run: Any, error: BaseException | None) -> None:
    """How the MLflow run ended: FINISHED, KILLED (stopped, or Ctrl-C) or FAILED; ``close`` records it."""
    status = "FINISHED" if error is None else "KILLED" if isinstance(error, (StopRun, KeyboardInterrupt)) else "FAILED"
    for backend in run.backends:
        if isinstance(backend, MLflowVisBackend):
            backend.status = status
