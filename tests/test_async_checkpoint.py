"""checkpoint.async: background writes that keep every guarantee of synchronous ones."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from interruptions import IGNORED, assert_same_checkpoint
from posecore import checkpoint
from posecore.errors import CheckpointError
from posecore.run import Run
from posecore.testing import run_training

ASYNC = ["checkpoint.async=true", "checkpoint.interval=1", "checkpoint.max_keep=0"]
BACKGROUND_OR_NOT = IGNORED | {("config", "checkpoint", "async")}  # the checkpoints must not differ otherwise


def pointer(work_dir: Path) -> str | None:
    path = work_dir / checkpoint.LAST_CHECKPOINT
    return Path(path.read_text()).name if path.exists() else None


SEEDED = ["checkpoint.interval=1", "checkpoint.max_keep=0", "model.dropout=0.3", "randomness.seed=3",
          "plugins=['pace']"]
WRITE_SECONDS = 0.2


class Pace:
    """Iterations that outlast a slow write, so that a save never waits for the previous write."""

    from posecore import hookimpl

    @staticmethod
    @hookimpl
    def after_iter(run, loss) -> None:
        time.sleep(1.5 * WRITE_SECONDS)


def test_async_writes_one_at_a_time_same_contents_pointers_after_and_the_run_waits(tmp_path, monkeypatch):
    real_save, real_run_save, in_flight, seen, stalls = checkpoint.save, Run.save, [], [], []

    def slow_save(path: Path, state: dict) -> None:
        in_flight.append(path)
        seen.append((len(in_flight), threading.current_thread().name, pointer(path.parent), path.name))
        time.sleep(WRITE_SECONDS)
        real_save(path, state)
        in_flight.remove(path)

    def timed_save(run: Run) -> Path:
        started = time.perf_counter()
        try:
            return real_run_save(run)
        finally:
            stalls.append(time.perf_counter() - started)

    run_training(tmp_path / "sync", plugins={"pace": Pace}, cfg_options=SEEDED, use_installed=True)
    monkeypatch.setattr(checkpoint, "save", slow_save)
    monkeypatch.setattr(Run, "save", timed_save)
    run_training(tmp_path / "async", plugins={"pace": Pace}, cfg_options=[*SEEDED, "checkpoint.async=true"],
                 use_installed=True)
    # The loop waited only for the snapshots: all four saves took under a quarter of the four writes' time,
    # which a synchronous writer spends inside save().
    assert len(stalls) == 4 and sum(stalls) < WRITE_SECONDS, stalls
    assert [concurrent for concurrent, *_ in seen] == [1, 1, 1, 1]
    assert all(thread == "posecore-checkpoint-writer" for _, thread, *_ in seen)
    # While iter_N is being written, the pointer still names the previous, complete checkpoint.
    assert [(before, name) for *_, before, name in seen] == [
        (None, "iter_1.pth"), ("iter_1.pth", "iter_2.pth"), ("iter_2.pth", "iter_3.pth"), ("iter_3.pth", "iter_4.pth")]
    assert pointer(tmp_path / "async") == "iter_4.pth"  # the run returned only after the last write
    # Training went on during each write: a snapshot sharing memory with the live weights or optimizer
    # state would have saved later values than the synchronous run did.
    for name in [f"iter_{i}.pth" for i in range(1, 5)]:
        assert_same_checkpoint(tmp_path / "sync" / name, tmp_path / "async" / name, BACKGROUND_OR_NOT)


def test_a_failed_background_write_stops_the_run_at_the_next_iteration(tmp_path, monkeypatch):
    real_save = checkpoint.save

    def failing_save(path: Path, state: dict) -> None:
        if path.name == "iter_2.pth":
            raise OSError(28, "No space left on device")
        real_save(path, state)

    monkeypatch.setattr(checkpoint, "save", failing_save)
    with pytest.raises(CheckpointError) as failure:
        run_training(tmp_path, cfg_options=ASYNC)
    message = str(failure.value)
    assert "background write of checkpoint iter_2.pth failed (OSError: [Errno 28] No space left on device)" in message
    assert "the previous checkpoint is still the latest" in message
    assert failure.value.recording.run.iteration in (2, 3)  # raised at the next iteration boundary
    assert pointer(tmp_path) == "iter_1.pth" and not (tmp_path / "iter_2.pth").exists()


class StopAtTwo:
    """A plugin that asks the run to stop after iteration 2, as a preemption signal would."""

    from posecore import hookimpl

    @staticmethod
    @hookimpl
    def after_iter(run, loss) -> None:
        if run.iteration == 2:
            run.request_stop("stop requested by the test")


def test_a_stopped_run_waits_for_its_background_write(tmp_path, monkeypatch):
    real_save = checkpoint.save

    def slow_save(path: Path, state: dict) -> None:
        time.sleep(0.3)
        real_save(path, state)

    monkeypatch.setattr(checkpoint, "save", slow_save)
    recording = run_training(tmp_path, plugins={"stopper": StopAtTwo}, cfg_options=[
        "checkpoint.async=true", "checkpoint.interval=100", "plugins=['stopper']"])
    assert recording.run.iteration == 2
    assert pointer(tmp_path) == "iter_2.pth"  # written in the background, complete before the run returned
    checkpoint.verify(tmp_path / "iter_2.pth")
