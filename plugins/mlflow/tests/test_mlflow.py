"""posecore-mlflow against real MLflow, offline: runs go to a SQLite store in the test's folder and are read back
through ``MlflowClient``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import posecore, write_tiny_config as write_tiny
from interruptions import install_interrupter, interrupt_env

# MLflow's SQLite store with SQLAlchemy 2.1, when this process reads it back.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning")


@dataclass(frozen=True)
class Store:
    """One SQLite store for the module (creating one takes seconds); each test uses an experiment of its own."""

    folder: Path  # the runs' current directory: MLflow puts their artifacts in its mlruns/
    uri: str

    @property
    def env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.uri}

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)

    def runs(self, experiment: str) -> list:
        client = self.client()
        found = client.get_experiment_by_name(experiment)
        return client.search_runs([found.experiment_id]) if found else []


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    folder = tmp_path_factory.mktemp("mlflow")
    return Store(folder, f"sqlite:///{folder / 'mlflow.db'}")


def backends(experiment: str, **options) -> dict:
    """The visualizer section: scalars.json (to compare with) and MLflow."""
    return {"vis_backends": [{"type": "LocalVisBackend"},
                             {"type": "MLflowVisBackend", "exp_name": experiment, **options}]}


def history(store: Store, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((metric.step, metric.value) for metric in store.client().get_metric_history(run_id, key))


def logged(work_dir: Path, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of ``key`` in the run's scalars.json."""
    (path,) = work_dir.glob("*/vis_data/scalars.json")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [(record["step"], record[key]) for record in records if key in record]


def image_steps(store: Store, run_id: str) -> list[int]:
    names = [Path(a.path).name for a in store.client().list_artifacts(run_id, "images")]
    return sorted(int(re.search(r"\+step\+(\d+)\+", name).group(1)) for name in names
                  if name.startswith("val~predictions+") and name.endswith(".png"))


def test_every_scalar_the_config_images_and_summary_reach_mlflow(tmp_path, store):
    work_dir = tmp_path / "wd"
    config = write_tiny(tmp_path, visualizer=backends("contract", run_name="tiny", tags={"team": "pose"}))
    result = posecore("train", str(config), "--work-dir", str(work_dir), env=store.env, cwd=store.folder)
    assert result.returncode == 0, result.stderr
    assert "plugins: mlflow-0.1.0" in result.stderr
    (run,) = store.runs("contract")
    assert (run.info.status, run.info.run_name, run.data.tags["team"]) == ("FINISHED", "tiny", "pose")
    run_id = run.info.run_id
    for key in ("loss", "lr", "grad_norm", "samples_per_s", "val/PCK"):
        assert history(store, run_id, key) == logged(work_dir, key)
        assert [step for step, _ in history(store, run_id, key)] == [2, 4]

    (vis_dir,) = work_dir.glob("*/vis_data")
    config_text = (vis_dir / "config.toml").read_text()
    assert Path(store.client().download_artifacts(run_id, "config.toml", str(tmp_path))).read_text() == config_text
    params = run.data.params
    assert (params["train.max_iters"], params["codec.input_size"], params["optim.lr"]) == ("4", "[32, 32]", "0.002")

    from PIL import Image

    assert image_steps(store, run_id) == [2, 4]
    (path,) = [a.path for a in store.client().list_artifacts(run_id, "images")
               if "+step+4+" in a.path and a.path.endswith(".png")]
    with Image.open(store.client().download_artifacts(run_id, path, str(tmp_path))) as image:
        assert image.size == (4 * 32 + 3, 2 * 32 + 1)  # 8 crops of 32x32, 4 per row

    assert history(store, run_id, "hparam/PCK") == logged(work_dir, "val/PCK")[-1:]
    seed = re.search(r"drew seed (\d+)", result.stderr).group(1)
    assert (run.data.tags["seed"], run.data.tags["max_iters"]) == (seed, "4")


def test_a_stopped_then_killed_run_resumes_into_one_mlflow_run_with_each_step_once(tmp_path, store):
    """SIGTERM at iteration 3 (saved there), SIGKILL at 6 (newest checkpoint 4), then the run to its end."""
    work_dir, site = tmp_path / "wd", install_interrupter(tmp_path / "site")
    config = write_tiny(tmp_path, visualizer=backends("resumed"))

    def train(*args: str, env: dict[str, str] | None = None):
        return posecore("train", str(config), "--work-dir", str(work_dir), *args, "--plugin", "interrupt",
                        "--cfg-options", "train.max_iters=10", "train.log_interval=1", "train.val_interval=4",
                        "checkpoint.interval=4", pythonpath=[site], env={**store.env, **(env or {})},
                        cwd=store.folder)

    stopped = train(env=interrupt_env(3, "SIGTERM"))
    assert stopped.returncode == 143, stopped.stderr
    (run,) = store.runs("resumed")
    assert run.info.status == "KILLED"
    assert [step for step, _ in history(store, run.info.run_id, "loss")] == [1, 2, 3]

    killed = train("--resume", env=interrupt_env(6))
    assert killed.returncode == -9, killed.stderr
    (after_kill,) = store.runs("resumed")
    assert (after_kill.info.run_id, after_kill.info.status) == (run.info.run_id, "RUNNING")
    # Step 5 was logged, but no checkpoint holds it: MLflow ends at checkpoint 4.
    assert [step for step, _ in history(store, run.info.run_id, "loss")] == [1, 2, 3, 4]
    assert image_steps(store, run.info.run_id) == [4]

    finished = train("--resume")
    assert finished.returncode == 0, finished.stderr
    assert "resumed from" in finished.stderr and "at iteration 4" in finished.stderr
    (final,) = store.runs("resumed")
    assert (final.info.run_id, final.info.status) == (run.info.run_id, "FINISHED")
    assert [step for step, _ in history(store, run.info.run_id, "loss")] == list(range(1, 11))
    for key in ("loss", "lr", "grad_norm", "val/PCK"):
        assert history(store, run.info.run_id, key) == logged(work_dir, key)
    assert image_steps(store, run.info.run_id) == [4, 8, 10]
    assert history(store, run.info.run_id, "hparam/PCK") == logged(work_dir, "val/PCK")[-1:]


def _blocked_mlflow(folder: Path) -> Path:
    (folder / "mlflow").mkdir(parents=True)
    (folder / "mlflow" / "__init__.py").write_text('raise ImportError("blocked by the test")\n')
    return folder


def test_the_plugin_flag_adds_the_backend_with_its_defaults(tmp_path):
    result = posecore("config", str(write_tiny(tmp_path)), "--plugin", "mlflow")
    assert result.returncode == 0, result.stderr
    assert '{ type = "MLflowVisBackend", exp_name = "Default", num_images = 8 }' in result.stdout


@pytest.mark.parametrize("options, blocked, message", [
    ({"num_images": -1}, False, "'visualizer.vis_backends[0].num_images' is -1, must be >= 0"),
    ({}, True, "needs mlflow, which does not import here (ImportError: blocked by the test); pip install "
               "mlflow-skinny sqlalchemy alembic (what posecore-mlflow needs)"),
])
def test_a_bad_option_or_missing_mlflow_is_one_line_and_exit_2(tmp_path, options, blocked, message):
    config = write_tiny(tmp_path, visualizer={"vis_backends": [{"type": "MLflowVisBackend", **options}]})
    result = posecore("config", str(config), pythonpath=[_blocked_mlflow(tmp_path / "site")] if blocked else [])
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("posecore: error: ") and line.endswith(message)


def test_a_run_id_the_store_lacks_is_one_line_naming_the_store(tmp_path, store):
    from posecore.errors import ConfigError
    from posecore_mlflow import MLflowVisBackend

    with pytest.raises(ConfigError) as error:
        MLflowVisBackend(tmp_path, 4, tracking_uri=store.uri, resume_state={"run_id": "0123456789abcdef"})
    (line,) = str(error.value).splitlines()
    assert line.startswith("MLflowVisBackend: cannot reopen MLflow run 0123456789abcdef, which the checkpoint "
                           f"continues, at {store.uri} (")
    assert line.endswith("); set tracking_uri to the store that holds it")
