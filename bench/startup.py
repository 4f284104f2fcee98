"""Start-up and late-resume latency of the ``posecore`` command, each in a fresh process.

    .venv/bin/python bench/startup.py              # about a minute
    .venv/bin/python bench/startup.py --repeats 9

Measured (medians of ``--repeats`` fresh processes, wall clock from just before the process starts):

* ``posecore --help`` and ``posecore plugins`` until they exit (neither imports torch);
* ``python -c "import torch"`` until it exits: the floor every training process pays;
* ``posecore train examples/quickstart.toml`` until its first iteration starts (a throwaway plugin
  installed for the bench prints the time in ``before_iter`` and ends the process there);
* the same with 1,000,000 synthetic samples, fresh, and resumed from a checkpoint at iteration
  100,000 (epoch 3, 6,250 batches into it): resuming must cost no more than starting, since the
  sampler skips to its position instead of replaying it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from posecore import checkpoint

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import os, sys, time
from posecore import hookimpl

@hookimpl
def before_iter(run):
    print(f"FIRST_ITERATION {time.time()} {run.iteration}", flush=True)
    os._exit(0)
"""


def install_probe(folder: Path) -> Path:
    """A plugin distribution (module + dist-info with a ``posecore`` entry point) to put on PYTHONPATH."""
    folder.mkdir(parents=True)
    (folder / "posecore_first_iteration.py").write_text(PROBE)
    info = folder / "posecore_first_iteration-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: posecore-first-iteration\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[posecore]\nfirst_iteration = posecore_first_iteration\n")
    return folder


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Seconds until the process exits, or until it prints FIRST_ITERATION; and its stdout."""
    start = time.time()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    for line in result.stdout.splitlines():
        if line.startswith("FIRST_ITERATION"):
            return float(line.split()[1]) - start, line
    return time.time() - start, result.stdout


def median_of(repeats: int, command: list[str], env: dict[str, str]) -> float:
    return statistics.median(timed(command, env)[0] for _ in range(repeats))


def forge_late_checkpoint(work_dir: Path, env: dict[str, str], options: list[str]) -> int:
    """Train one iteration, then move its checkpoint's position to iteration 100,000 (as if trained so far)."""
    subprocess.run([sys.executable, "-m", "posecore", "train", "examples/quickstart.toml", "--work-dir",
                    str(work_dir), "--cfg-options", *options, "train.max_iters=1"], check=True, cwd=REPO, env=env,
                   capture_output=True)
    state = checkpoint.load(work_dir / "iter_1.pth")
    iteration, per_epoch = 100_000, 1_000_000 // 32
    state["loop"].update(iteration=iteration, epoch=iteration // per_epoch, epoch_batch=iteration % per_epoch,
                         optimizer_steps=iteration, max_iters=iteration + 10)
    state.pop("format")
    path = work_dir / f"iter_{iteration}.pth"
    checkpoint.save(path, state)
    checkpoint.update_pointers(work_dir, path)
    return iteration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    posecore = [sys.executable, "-m", "posecore"]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        env = {**os.environ, "PYTHONPATH": str(install_probe(folder / "probe"))}
        rows = [
            ("posecore --help", median_of(args.repeats, [*posecore, "--help"], env), "150 ms"),
            ("posecore plugins", median_of(args.repeats, [*posecore, "plugins"], env), "300 ms"),
        ]
        torch_import = median_of(args.repeats, [sys.executable, "-c", "import torch"], env)
        rows.append(('python -c "import torch"', torch_import, ""))
        train = [*posecore, "train", "examples/quickstart.toml", "--plugin", "first_iteration"]
        first = median_of(args.repeats, [*train, "--work-dir", str(folder / "quick")], env)
        rows.append(("train quickstart: 1st iteration", first, f"import torch + 1.5 s: {torch_import + 1.5:.2f} s"))

        big = ["train_dataloader.dataset.num_samples=1000000", "train.max_iters=100010", "train.val_interval=0"]
        fresh = median_of(args.repeats, [*train, "--work-dir", str(folder / "fresh"), "--cfg-options", *big], env)
        rows.append(("1M samples, fresh: 1st iteration", fresh, ""))
        late = folder / "late"
        iteration = forge_late_checkpoint(late, env, big)
        command = [*train, "--work-dir", str(late), "--resume", "--cfg-options", *big]
        _, line = timed(command, env)
        if int(line.split()[2]) != iteration:
            sys.exit(f"resumed at {line.split()[2]}, expected {iteration}")
        resumed = median_of(args.repeats, command, env)
        rows.append((f"1M samples, resumed at {iteration:,}", resumed, f"fresh start: {fresh:.2f} s"))
    print(f"{args.repeats} fresh processes each, medians; python {sys.version.split()[0]}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'':36} {'seconds':>8}  target")
    for name, seconds, target in rows:
        print(f"{name:36} {seconds:8.3f}  {target}")


if __name__ == "__main__":
    main()
