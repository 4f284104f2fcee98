"""Faults that must not lose work: a SIGTERM to the whole process group, a rerun into a used work dir, torn
logs, errors in data workers, failed background writes, a second Ctrl-C; and the smaller promises around them."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from helpers import make_plugin_dist, posecore, torchrun, write_tiny_config
from interruptions import assert_same_checkpoint
from posecore import hookimpl
from posecore.testing import run_training

WORKERS = ["train_dataloader.num_workers=1", "val_dataloader.num_workers=1"]

GROUP_SIGTERM = '''
"""Before iteration KILL_AT, SIGTERM to every process of the job (as scancel, a container stop or timeout send
it), after writing the data workers' pids to KILL_REPORT; then a pause, so that the workers have it before the
iteration asks them for its batch."""
import json, os, signal, time
from pathlib import Path
from posecore import hookimpl

def _children(pid):
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]

@hookimpl
def before_build(run):
    if "RANK" not in os.environ:
        os.setpgid(0, 0)  # a job of its own, as under SLURM: the signal must not reach the test runner

@hookimpl
def before_iter(run):
    if run.iteration + 1 != int(os.environ["KILL_AT"]) or run.rank != 0:
        return
    report = Path(os.environ["KILL_REPORT"])
    if "RANK" not in os.environ:
        report.write_text(json.dumps(_children(os.getpid())))
        os.killpg(0, signal.SIGTERM)
        time.sleep(0.5)
        return
    # torchrun starts each rank in a session of its own: signal torchrun's group and every rank's.
    ranks = _children(os.getppid())
    report.write_text(json.dumps([c for rank in ranks for c in _children(rank)]))
    for pid in [os.getppid(), *ranks]:
        os.killpg(os.getpgid(pid), signal.SIGTERM)
    time.sleep(0.5)
'''


def _group_sigterm_plugin(tmp_path: Path) -> Path:
    return make_plugin_dist(tmp_path / "plugins", "groupkill", GROUP_SIGTERM)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to list the data workers")
def test_sigterm_to_the_process_group_with_workers_saves_and_resumes_exactly(tmp_path):
    """The workers get the SIGTERM too: they must keep serving until the main process has saved, then end."""
    config = write_tiny_config(tmp_path)
    options = ["--cfg-options", *WORKERS, "randomness.seed=3", "train.max_iters=16", "checkpoint.interval=8",
               "model.dropout=0.2",
               "train.val_interval=4"]
    report = tmp_path / "workers.json"
    killed = posecore("train", str(config), "--work-dir", str(tmp_path / "killed"), "--plugin", "groupkill", *options,
                      pythonpath=[_group_sigterm_plugin(tmp_path)], env={"KILL_AT": "11", "KILL_REPORT": str(report)})
    assert killed.returncode == 143, killed.stderr
    assert "DataLoader worker" not in killed.stderr and "Traceback" not in killed.stderr
    assert killed.stderr.strip().splitlines()[-1] == (
        f"posecore: stopped by SIGTERM at iteration 11; saved {tmp_path / 'killed' / 'iter_11.pth'}; continue with: "
        f"posecore train {config} --work-dir {tmp_path / 'killed'} --plugin groupkill --resume --cfg-options "
        + " ".join(options[1:]))
    workers = json.loads(report.read_text())
    assert len(workers) == 2  # the training and the (persistent) validation worker were running
    assert not [pid for pid in workers if _alive(pid)], "a data worker outlived the run"

    resumed = posecore("train", str(config), "--work-dir", str(tmp_path / "killed"), "--resume", *options)
    assert resumed.returncode == 0, resumed.stderr
    straight = posecore("train", str(config), "--work-dir", str(tmp_path / "straight"), *options)
    assert straight.returncode == 0, straight.stderr
    assert_same_checkpoint(tmp_path / "straight" / "iter_16.pth", tmp_path / "killed" / "iter_16.pth")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to find torchrun's ranks")
def test_sigterm_to_every_process_of_a_torchrun_job_with_workers_stops_every_rank_after_saving(tmp_path):
    config = write_tiny_config(tmp_path)
    report = tmp_path / "workers.json"
    work_dir = tmp_path / "wd"
    proc = torchrun("train", str(config), "--work-dir", str(work_dir), "--plugin", "groupkill", "--cfg-options",
                    *WORKERS, "train.max_iters=400", "checkpoint.interval=1000", "model.norm=group", popen=True,
                    pythonpath=[_group_sigterm_plugin(tmp_path)], new_session=True,
                    env={"KILL_AT": "7", "KILL_REPORT": str(report)})
    _, stderr = proc.communicate(timeout=180)
    # (torchrun itself prints a traceback of its SignalException; the ranks print none)
    assert "DataLoader worker" not in stderr and stderr.count("Traceback") == stderr.count("SignalException: "), stderr
    stops = [line for line in stderr.splitlines() if line.startswith("posecore: stopped by SIGTERM")]
    assert stops == [f"posecore: stopped by SIGTERM at iteration 7; saved {work_dir / 'iter_7.pth'}; continue with: "
                     f"the same torchrun command with: -m posecore train {config} --work-dir {work_dir} --plugin "
                     f"groupkill --resume --cfg-options {' '.join(WORKERS)} train.max_iters=400 "
                     f"checkpoint.interval=1000 model.norm=group"] * 2, stderr
    assert torch.load(work_dir / "iter_7.pth", weights_only=True)["loop"]["iteration"] == 7
    workers = json.loads(report.read_text())
    assert len(workers) >= 2
    assert not [pid for pid in workers if _alive(pid)], "a data worker outlived the job"


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _run_dirs(work_dir: Path) -> list[Path]:
    return sorted(p for p in work_dir.iterdir() if p.is_dir())


def test_a_fresh_run_into_a_used_work_dir_is_refused_and_touches_nothing(tmp_path):
    config = write_tiny_config(tmp_path)
    work_dir = tmp_path / "wd"
    first = posecore("train", str(config), "--work-dir", str(work_dir), "--cfg-options", "train.max_iters=20",
                     "checkpoint.interval=10", "train.val_interval=10", "checkpoint.save_best=PCK")
    assert first.returncode == 0, first.stderr
    before, folders = _digest(work_dir), _run_dirs(work_dir)
    assert {"iter_10.pth", "iter_20.pth", "last_checkpoint"} <= before.keys()

    second = posecore("train", str(config), "--work-dir", str(work_dir), "--cfg-options", "train.max_iters=10",
                      "checkpoint.interval=5")
    assert second.returncode == 2
    line = second.stderr.strip().splitlines()[-1]
    assert line.startswith(f"posecore: error: work dir {work_dir} holds checkpoints of an earlier run (")
    assert line.endswith("); continue it with --resume, train into another --work-dir, or move those files away")
    named = line[line.index("(") + 1:line.index(")")].split(", ")
    assert sorted(named) == sorted(p for p in before if p.endswith(".pth") and p != "latest.pth")  # best too
    # load_from alone is a fresh start too
    weights = posecore("train", str(config), "--work-dir", str(work_dir), "--cfg-options",
                       f"load_from={json.dumps(str(work_dir / 'iter_10.pth'))}")
    assert weights.returncode == 2 and "holds checkpoints of an earlier run" in weights.stderr
    assert _digest(work_dir) == before and _run_dirs(work_dir) == folders  # not even a run folder


def test_resume_continues_only_the_run_of_its_work_dir(tmp_path):
    config = write_tiny_config(tmp_path)
    work_dir, other = tmp_path / "wd", tmp_path / "other"
    for folder in (work_dir, other):
        done = posecore("train", str(config), "--work-dir", str(folder), "--cfg-options", "train.max_iters=8",
                        "checkpoint.interval=4")
        assert done.returncode == 0, done.stderr
    before, folders = _digest(work_dir), _run_dirs(work_dir)

    from_other = posecore("train", str(config), "--work-dir", str(work_dir), "--resume", str(other / "iter_4.pth"))
    assert from_other.returncode == 2
    assert f"holds checkpoints of another run than {other / 'iter_4.pth'} (iter_4.pth, iter_8.pth)" in from_other.stderr
    from_earlier = posecore("train", str(config), "--work-dir", str(work_dir), "--resume", str(work_dir / "iter_4.pth"))
    assert from_earlier.returncode == 2
    assert "holds checkpoints after iteration 4, which resuming from iter_4.pth would overwrite (iter_8.pth)" \
        in from_earlier.stderr
    assert _digest(work_dir) == before and _run_dirs(work_dir) == folders

    complete = posecore("train", str(config), "--work-dir", str(work_dir), "--resume", "--cfg-options",
                        "train.max_iters=8")
    assert complete.returncode == 0, complete.stderr
    assert f"the run in {work_dir} is complete at iteration 8 (train.max_iters 8)" in complete.stderr
    assert _digest(work_dir) == before and _run_dirs(work_dir) == folders

    longer = posecore("train", str(config), "--work-dir", str(work_dir), "--resume", "--cfg-options",
                      "train.max_iters=12", "checkpoint.interval=4")
    assert longer.returncode == 0, longer.stderr
    assert (work_dir / "iter_12.pth").is_file()
    assert Path((work_dir / "last_checkpoint").read_text()) == (work_dir / "iter_12.pth").resolve()


class _WatchPointer:
    """A plugin that checks at every iteration that ``last_checkpoint`` names a file that exists."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir, self.seen = work_dir, []

    @hookimpl
    def before_iter(self, run) -> None:
        pointer = self.work_dir / "last_checkpoint"
        self.seen.append(not pointer.exists() or Path(pointer.read_text()).is_file())


def test_pointers_to_deleted_checkpoints_are_removed_by_a_fresh_run(tmp_path):
    config = write_tiny_config(tmp_path)
    work_dir = tmp_path / "wd"
    assert posecore("train", str(config), "--work-dir", str(work_dir)).returncode == 0
    for path in work_dir.glob("iter_*"):
        path.unlink()
    watch = _WatchPointer(work_dir)
    run_training(work_dir, plugins={"watch": watch}, cfg_options=["plugins=['watch']"])
    assert len(watch.seen) == 4 and all(watch.seen), "last_checkpoint named a missing file during the run"


def test_a_torn_scalars_line_and_a_truncated_event_file_do_not_stop_a_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = write_tiny_config(tmp_path)
    work_dir = tmp_path / "wd"
    options = ["--plugin", "tensorboard", "--cfg-options", "train.max_iters=8", "checkpoint.interval=4",
               "train.log_interval=1"]
    assert posecore("train", str(config), "--work-dir", str(work_dir), *options).returncode == 0
    (vis_dir,) = work_dir.glob("*/vis_data")
    (events,) = vis_dir.glob("events.out.tfevents.*")
    with open(events, "r+b") as file:  # a crash during the last event's write
        file.truncate(events.stat().st_size - 7)
    with open(vis_dir / "scalars.json", "a", encoding="utf-8") as file:
        file.write('{"loss": 0.0123, "lr": 0.0')
    resumed = posecore("train", str(config), "--work-dir", str(work_dir), "--resume", *options[:-3],
                       "train.max_iters=12", "checkpoint.interval=4", "train.log_interval=1")
    assert resumed.returncode == 0, resumed.stderr
    assert "scalars.json: dropped 1 unreadable line(s)" in resumed.stderr
    records = [json.loads(line) for line in (vis_dir / "scalars.json").read_text().splitlines()]
    assert [record["step"] for record in records if "loss" in record] == list(range(1, 13))
    accumulator = EventAccumulator(str(vis_dir))
    accumulator.Reload()
    assert [event.step for event in accumulator.Scalars("loss")] == list(range(1, 13))


def _coco_with_a_corrupt_image(folder: Path, coco) -> Path:
    annotations = json.loads(coco.ann_file.read_text())
    annotations["images"][-1]["file_name"] = os.path.relpath(coco.not_an_image, coco.img_dir)
    path = folder / "with_corrupt_image.json"
    path.write_text(json.dumps(annotations))
    return path


@pytest.mark.parametrize("workers", [0, 1])
def test_an_error_in_a_data_worker_is_one_line_and_exit_2(tmp_path, synthetic_coco, workers):
    ann_file = _coco_with_a_corrupt_image(tmp_path, synthetic_coco)
    dataset = {"type": "CocoKeypoints", "ann_file": str(ann_file), "img_dir": str(synthetic_coco.img_dir)}
    config = write_tiny_config(tmp_path, train_dataloader={"batch_size": 6, "num_workers": workers, "dataset": dataset})
    result = posecore("train", str(config), "--work-dir", str(tmp_path / "wd"))
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"posecore: error: image {synthetic_coco.not_an_image}") and "cannot be decoded" in last
    assert "Traceback" not in result.stderr and "DataLoader worker" not in result.stderr


SIGNAL_SELF = '''
"""SIGINT to this process: at iteration SIGNAL_AT (a first Ctrl-C), and again in after_train (a second one,
landing while the run cleans up)."""
import os, signal, time
from posecore import hookimpl

@hookimpl
def after_iter(run, loss):
    if run.iteration == int(os.environ["SIGNAL_AT"]):
        os.kill(os.getpid(), signal.SIGINT)

@hookimpl(tryfirst=True)
def after_train(run, error):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)  # the handler runs here
'''


def test_a_second_ctrl_c_during_clean_up_still_flushes_and_closes_everything(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = write_tiny_config(tmp_path)
    work_dir = tmp_path / "wd"
    result = posecore("train", str(config), "--work-dir", str(work_dir), "--plugin", "sigself", "--plugin",
                      "tensorboard", "--cfg-options", "train.max_iters=40", "train.log_interval=1",
                      "train.val_interval=100", "checkpoint.interval=100",
                      pythonpath=[make_plugin_dist(tmp_path / "plugins", "sigself", SIGNAL_SELF)],
                      env={"SIGNAL_AT": "3"})
    assert result.returncode == 130, result.stderr
    assert f"stopped by SIGINT at iteration 3; saved {work_dir / 'iter_3.pth'}" in result.stderr
    (vis_dir,) = work_dir.glob("*/vis_data")
    accumulator = EventAccumulator(str(vis_dir))
    accumulator.Reload()
    # No validation ran, so only closing the writer (after after_train) put these on disk.
    assert [event.step for event in accumulator.Scalars("loss")] == [1, 2, 3]


def test_signal_handlers_are_restored_after_a_run_even_when_a_signal_lands_in_clean_up(tmp_path):
    before = signal.getsignal(signal.SIGINT)

    class SecondCtrlC:
        @hookimpl
        def after_train(self, run, error) -> None:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)

    recording = run_training(tmp_path, plugins={"second": SecondCtrlC()}, cfg_options=["plugins=['second']"])
    assert recording.run.iteration == 4
    assert signal.getsignal(signal.SIGINT) is before


def test_a_stop_whose_background_write_fails_reports_the_failure_not_a_saved_file(tmp_path, monkeypatch):
    from posecore import checkpoint
    from posecore.errors import CheckpointError

    real_save = checkpoint.save

    def save_failing_at_3(path: Path, state: dict) -> None:
        if path.name == "iter_3.pth":
            time.sleep(1.0)  # still in flight when the loop acts on the signal (microseconds later)
            raise OSError(28, "No space left on device")
        real_save(path, state)

    class SigtermAt3:
        @hookimpl
        def after_iter(self, run, loss) -> None:
            if run.iteration == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(checkpoint, "save", save_failing_at_3)
    with pytest.raises(CheckpointError) as failure:
        run_training(tmp_path, plugins={"term": SigtermAt3()}, cfg_options=[
            "plugins=['term']", "checkpoint.async=true", "checkpoint.interval=1", "train.max_iters=10"])
    assert str(failure.value).startswith("stopped by SIGTERM at iteration 3, but the background write of checkpoint "
                                         "iter_3.pth failed (OSError: [Errno 28] No space left on device)")
    assert Path((tmp_path / "last_checkpoint").read_text()).name == "iter_2.pth"


def test_last_checkpoint_names_only_a_complete_file_while_background_writes_are_slow(tmp_path, monkeypatch):
    from posecore import checkpoint

    real_save = checkpoint.save

    def slow_save(path: Path, state: dict) -> None:
        time.sleep(0.15)
        real_save(path, state)

    class Watch:
        def __init__(self) -> None:
            self.seen: list[str | None] = []

        @hookimpl
        def before_iter(self, run) -> None:
            path = run.last_checkpoint
            if path is not None:
                checkpoint.verify(path)  # complete and matching its checksum, or this raises
            self.seen.append(None if path is None else path.name)

    watch = Watch()
    monkeypatch.setattr(checkpoint, "save", slow_save)
    run_training(tmp_path, plugins={"watch": watch}, cfg_options=[
        "plugins=['watch']", "checkpoint.async=true", "checkpoint.interval=1", "checkpoint.max_keep=0"])
    assert watch.seen[0] is None and len(watch.seen) == 4


def test_an_error_before_the_run_starts_leaves_no_run_folder_and_names_no_missing_log(tmp_path):
    failing = make_plugin_dist(tmp_path / "plugins", "failing", '''
import os
from posecore import hookimpl

@hookimpl
def before_train(run):
    if os.environ.get("FAIL_IN") == "before_train":
        raise RuntimeError("broken plugin")

@hookimpl
def after_iter(run, loss):
    if os.environ.get("FAIL_IN") == "after_iter":
        raise RuntimeError("broken plugin")
''')
    config = write_tiny_config(tmp_path)
    early = posecore("train", str(config), "--work-dir", str(tmp_path / "early"), "--plugin", "failing",
                     pythonpath=[failing], env={"FAIL_IN": "before_train"})
    assert early.returncode == 1
    assert early.stderr.strip().splitlines()[-1] == ("posecore: error: plugin 'failing' failed in hook 'before_train': "
                                                     "RuntimeError: broken plugin (POSECORE_DEBUG=1 shows the traceback)")
    assert not (tmp_path / "early").exists() or not _run_dirs(tmp_path / "early")
    late = posecore("train", str(config), "--work-dir", str(tmp_path / "late"), "--plugin", "failing",
                    pythonpath=[failing], env={"FAIL_IN": "after_iter"})
    (run_dir,) = _run_dirs(tmp_path / "late")
    log = run_dir / f"{run_dir.name}.log"
    assert late.stderr.strip().endswith(f"RuntimeError: broken plugin (traceback in {log})")
    assert "Traceback (most recent call last)" in log.read_text()


def test_changing_save_best_on_resume_keeps_the_old_best_file(tmp_path):
    first = run_training(tmp_path, cfg_options=["checkpoint.save_best=PCK", "train.val_interval=1",
                                                "checkpoint.interval=2"])
    (old_best,) = tmp_path.glob("best_*.pth")
    assert first.run.best["file"] == old_best.name
    second = run_training(tmp_path, plugins={"resume": __import__("posecore_resume")}, cfg_options=[
        "resume=true", "checkpoint.save_best=PCK", "checkpoint.rule=less", "train.val_interval=1",
        "checkpoint.interval=2", "train.max_iters=6"])
    assert old_best.is_file(), "the best file of the earlier rule was deleted"
    assert second.run.best["rule"] == "less" and second.run.best["iteration"] >= 5
    assert (tmp_path / second.run.best["file"]).is_file()
    log = (second.run.run_dir / f"{second.run.run_dir.name}.log").read_text()
    assert f"save_best is now PCK (less), was PCK (greater): {old_best.name} is kept" in log
