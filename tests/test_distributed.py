"""Distributed training under torchrun (gloo on CPU): the same maths as one process, exact resume, per-rank seeds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import make_plugin_dist, posecore, torchrun, write_tiny_config
from interruptions import assert_same_run, checkpoint_names, install_interrupter, interrupt_env
from posecore.data import EpochSampler

COMMON = ["train.log_interval=1", "randomness.seed=5", "checkpoint.max_keep=0"]

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def test_ranks_split_each_total_batch_of_the_single_process_order():
    single = list(EpochSampler(40, 8, seed=3, shuffle=True))
    ranks = [list(EpochSampler(40, 4, seed=3, shuffle=True, rank=r, world_size=2)) for r in range(2)]
    for batch in range(5):
        whole = single[batch * 8:(batch + 1) * 8]
        assert ranks[0][batch * 4:(batch + 1) * 4] + ranks[1][batch * 4:(batch + 1) * 4] == whole
    resumed = EpochSampler(40, 4, seed=3, shuffle=True, rank=1, world_size=2)
    resumed.set_position(0, 16)  # after two total batches
    assert list(resumed) == ranks[1][8:] and len(resumed) == 12


def scalars(work_dir: Path) -> list[dict]:
    (path,) = work_dir.glob("*/vis_data/scalars.json")
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_total_batch(tmp_path):
    """With GroupNorm the maths is the same: DDP averages the two halves' gradients of the mean loss.
    (BatchNorm, the default, normalises each process's half by its own statistics, so it differs.)"""
    config = write_tiny_config(tmp_path)
    options = [*COMMON, "train.max_iters=8", 'model.norm="group"', "train.val_interval=4", "checkpoint.interval=4"]
    single = posecore("train", str(config), "--work-dir", str(tmp_path / "one"), "--cfg-options", *options,
                      "train_dataloader.batch_size=4")
    assert single.returncode == 0, single.stderr
    double = torchrun("train", str(config), "--work-dir", str(tmp_path / "two"), "--cfg-options", *options,
                      "train_dataloader.batch_size=2")
    assert double.returncode == 0, double.stderr
    one = torch.load(tmp_path / "one" / "iter_8.pth", weights_only=True)
    two = torch.load(tmp_path / "two" / "iter_8.pth", weights_only=True)
    assert two["loop"]["global_batch"] == 4 and len(two["rng"]) == 2
    for name, tensor in one["model"].items():
        torch.testing.assert_close(two["model"][name], tensor, rtol=1e-4, atol=1e-6, msg=name)
    first, second = scalars(tmp_path / "one"), scalars(tmp_path / "two")
    losses = [(a["loss"], b["loss"]) for a, b in zip(first, second) if "loss" in a]
    assert len(losses) == 8
    np.testing.assert_allclose(*zip(*losses), rtol=1e-4)  # rank-averaged loss = the total batch's loss
    assert [a["val/PCK"] for a in first if "val/PCK" in a] == [b["val/PCK"] for b in second if "val/PCK" in b]
    # Only rank 0 writes: one run folder with one log; the other rank prints nothing but errors.
    assert len(list((tmp_path / "two").glob("*/*.log"))) == 1
    assert "[rank 1]" not in double.stderr and "Iter(train) [8/8]" in double.stderr


PROBE = '''
import hashlib, json, os
import torch
from posecore import hookimpl

@hookimpl
def after_iter(run, loss):
    if run.iteration == 1 and "PROBE_DIR" in os.environ:
        # What this rank's training augmentation makes of sample 0 in epoch 0, and its next dropout draw.
        sample = run.train_loader.dataset[(0, 0)]
        record = {"img": hashlib.sha256(sample["img"].tobytes()).hexdigest(), "draw": torch.rand(3).tolist(),
                  "seed": run.seed}
        with open(os.path.join(os.environ["PROBE_DIR"], f"rank{run.rank}.json"), "w") as out:
            json.dump(record, out)
    if run.iteration == 2 and str(run.rank) == os.environ.get("PROBE_FAIL_RANK"):
        raise RuntimeError(f"boom on rank {run.rank}")
'''


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    return make_plugin_dist(tmp_path_factory.mktemp("probe"), "probe", PROBE)


@pytest.mark.slow
@pytest.mark.parametrize("seed, diff_rank_seed", [(5, False), (5, True), (None, False)])
def test_diff_rank_seed_decides_whether_ranks_augment_alike(tmp_path, probe, seed, diff_rank_seed):
    config = write_tiny_config(tmp_path)
    options = ["train.log_interval=1", "train.max_iters=1", "randomness.seed=" + ("None" if seed is None else str(seed)),
               f"randomness.diff_rank_seed={diff_rank_seed}"]
    result = torchrun("train", str(config), "--work-dir", str(tmp_path / "wd"), "--plugin", "probe", "--cfg-options",
                      *options, pythonpath=[probe], env={"PROBE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert rank0["seed"] == rank1["seed"]  # one seed for the job: configured, or drawn on rank 0 and broadcast
    if seed is not None:
        assert rank0["seed"] == seed
    assert (rank0["img"] != rank1["img"]) is diff_rank_seed
    assert (rank0["draw"] != rank1["draw"]) is diff_rank_seed


@pytest.mark.slow
def test_amp_and_gradient_clipping_under_torchrun(tmp_path):
    config = write_tiny_config(tmp_path)
    result = torchrun("train", str(config), "--work-dir", str(tmp_path / "wd"), "--amp", "--cfg-options", *COMMON,
                      "train.max_iters=4", "optim.clip_grad_norm=0.01")
    assert result.returncode == 0, result.stderr
    state = torch.load(tmp_path / "wd" / "iter_4.pth", weights_only=True)
    assert "amp" in state["plugins"] and state["loop"]["optimizer_steps"] <= 4
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    norms = [line["grad_norm"] for line in scalars(tmp_path / "wd") if "grad_norm" in line]
    assert len(norms) == 4 and max(norms) <= 0.01 + 1e-6  # the all-reduced gradients, clipped


@pytest.mark.slow
def test_a_failing_rank_brings_the_job_down_with_its_error(tmp_path, probe):
    config = write_tiny_config(tmp_path)
    started = time.monotonic()
    result = torchrun("train", str(config), "--work-dir", str(tmp_path / "wd"), "--plugin", "probe", "--cfg-options",
                      *COMMON, "train.max_iters=20", "dist.timeout=30", pythonpath=[probe],
                      env={"PROBE_FAIL_RANK": "1"}, timeout=180)
    assert result.returncode != 0
    assert "plugin 'probe' failed in hook 'after_iter': RuntimeError: boom on rank 1 (rank 1;" in result.stderr
    assert time.monotonic() - started < 120
    assert not (tmp_path / "wd" / "iter_20.pth").exists()


@pytest.fixture(scope="module")
def interrupter(tmp_path_factory) -> Path:
    return install_interrupter(tmp_path_factory.mktemp("interrupter"))


def _wait_until_paused(proc, markers: Path, ranks: int = 2) -> None:
    """Until every rank waits at the ``interrupt`` plugin's pause (each touches its marker there)."""
    deadline = time.monotonic() + 120
    while len(list(markers.glob("rank*"))) < ranks:
        if proc.poll() is not None:
            raise AssertionError(f"the job ended (exit code {proc.returncode}) before every rank paused:\n"
                                 f"{proc.communicate()[1]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"only {sorted(p.name for p in markers.glob('rank*'))} paused within 2 minutes")
        time.sleep(0.02)


def _kill_job(proc) -> None:
    """SIGKILL torchrun and its workers (each in its own session, so a signal to torchrun's group misses them)."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    for pid in [proc.pid, *map(int, children)]:
        os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)


@pytest.mark.slow
def test_sigterm_to_torchrun_saves_on_every_rank_together_and_stops(tmp_path, interrupter):
    """Preemption (SLURM, Kubernetes): torchrun passes SIGTERM on; the ranks agree on one iteration to stop at.
    Both wait in iteration 5 until the signal reaches them."""
    config, markers = write_tiny_config(tmp_path), tmp_path / "markers"
    markers.mkdir()
    proc = torchrun("train", str(config), "--work-dir", str(tmp_path / "wd"), "--plugin", "interrupt",
                    "--cfg-options", *COMMON, "train.max_iters=20", "checkpoint.interval=100", popen=True,
                    pythonpath=[interrupter], env=interrupt_env(5, "pause", markers=markers))
    _wait_until_paused(proc, markers)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert "stopped by SIGTERM at iteration 5" in stderr and "--resume" in stderr.rsplit("continue with: ", 1)[-1]
    assert [p.name for p in (tmp_path / "wd").glob("iter_*.pth")] == ["iter_5.pth"]
    assert torch.load(tmp_path / "wd" / "iter_5.pth", weights_only=True)["loop"]["iteration"] == 5


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to find torchrun's workers")
def test_a_killed_job_resumed_under_torchrun_continues_exactly(tmp_path, interrupter):
    """Dropout and per-rank seeds make every rank's generators matter; the checkpoint keeps each rank's.
    Both ranks wait in iteration 6 (after checkpoint 4, before validation 6) while the job is killed."""
    config, markers = write_tiny_config(tmp_path), tmp_path / "markers"
    markers.mkdir()
    options = ["--plugin", "interrupt", "--cfg-options", *COMMON, "train.max_iters=12", "checkpoint.interval=4",
               "train.val_interval=6", "model.dropout=0.3", "randomness.diff_rank_seed=true"]
    straight = torchrun("train", str(config), "--work-dir", str(tmp_path / "straight"), *options,
                        pythonpath=[interrupter])
    assert straight.returncode == 0, straight.stderr
    killed_dir = tmp_path / "killed"
    proc = torchrun("train", str(config), "--work-dir", str(killed_dir), *options, popen=True,
                    pythonpath=[interrupter], env=interrupt_env(6, "pause", markers=markers))
    _wait_until_paused(proc, markers)
    _kill_job(proc)
    assert checkpoint_names(killed_dir) == ["iter_4.pth"]
    shutil.copytree(killed_dir, tmp_path / "fewer")
    resumed = torchrun("train", str(config), "--work-dir", str(killed_dir), "--resume", *options,
                       pythonpath=[interrupter])
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {killed_dir / 'iter_4.pth'} at iteration 4" in resumed.stderr
    assert_same_run(tmp_path / "straight", killed_dir)

    # One process goes on from the same place in the data: 2 x 4 samples per iteration became 4, so the
    # 1 batch done of epoch 1 counts as 2, and 8 more iterations end 4 batches into epoch 2 (6 per epoch).
    alone = posecore("train", str(config), "--work-dir", str(tmp_path / "fewer"), "--resume", *options,
                     pythonpath=[interrupter])
    assert alone.returncode == 0, alone.stderr
    assert "was saved by 2 process(es), this job has 1" in alone.stderr
    assert "resumed from" in alone.stderr and "at iteration 4" in alone.stderr
    state = torch.load(tmp_path / "fewer" / "iter_12.pth", weights_only=True)
    assert (state["loop"]["global_batch"], state["loop"]["epoch"], state["loop"]["epoch_batch"]) == (4, 2, 4)


@pytest.mark.slow
def test_posecore_test_under_torchrun_scores_the_whole_set_like_one_process(tmp_path, synthetic_coco):
    """Each rank predicts a share of the persons; rank 0 scores them all: the same COCO AP table."""
    from helpers import coco_sample_config

    config = str(coco_sample_config(tmp_path, synthetic_coco))  # the generated persons, scored on their GT boxes
    trained = posecore("train", config, "--work-dir", str(tmp_path / "wd"), "--cfg-options", "train.max_iters=30",
                       "train.val_interval=0")
    assert trained.returncode == 0, trained.stderr
    checkpoint = str(tmp_path / "wd" / "iter_30.pth")
    one = posecore("test", config, "--checkpoint", checkpoint, "--work-dir", str(tmp_path / "one"))
    two = torchrun("test", config, "--checkpoint", checkpoint, "--work-dir", str(tmp_path / "two"))
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    table = one.stdout.strip().splitlines()
    assert table[0].split() == ["metric", "value"] and len(table) == 11
    assert two.stdout.strip().splitlines() == table  # printed once, by rank 0
    assert float(table[1].split()[1]) > 0.5  # an AP that an ordering mistake would change
    (written,) = (tmp_path / "two").glob("*/predictions.keypoints.json")
    (single,) = (tmp_path / "one").glob("*/predictions.keypoints.json")
    ours, theirs = json.loads(written.read_text()), json.loads(single.read_text())
    assert [r["image_id"] for r in ours] == [r["image_id"] for r in theirs]  # the same persons, in the same order
    # Half the batch on each rank takes other CPU kernels: equal to float rounding.
    np.testing.assert_allclose([r["keypoints"] for r in ours], [r["keypoints"] for r in theirs], rtol=1e-4, atol=1e-3)
