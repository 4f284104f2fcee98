"""Peak memory of a posecore training run against a plain PyTorch loop on the same model, data and optimizer.

    .venv/bin/python bench/memory.py                  # the quickstart, 60 iterations each, about a minute
    .venv/bin/python bench/memory.py --iters 200

Peak resident memory can only be read per process, so each loop runs in its own fresh process (the
script starts itself twice) and reports ``ru_maxrss`` (and, on CUDA, ``torch.cuda.max_memory_allocated``):

* plain: the quickstart's model, AdamW and learning rate, batches from posecore's own DataLoader
  (``build_loader``: the same data pipeline and workers), forward, loss, backward, step, ``loss.item()``
  every 50 iterations, one ``torch.save`` of model and optimizer at the end;
* posecore: ``posecore.run.train`` on ``examples/quickstart.toml`` with every installed plugin but amp
  active (seed, resume, tensorboard), validation at the end, checkpoints as configured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "examples" / "quickstart.toml"


def overrides(iters: int, work_dir: str) -> list[str]:
    return [f"train.max_iters={iters}", "train.val_interval=0", f"checkpoint.interval={iters}",
            "randomness.seed=0", "resume=false", f'work_dir="{work_dir}"',
            'visualizer.vis_backends=[{type="LocalVisBackend"}, {type="TensorboardVisBackend"}]']


def run_posecore(iters: int, work_dir: str) -> None:
    from posecore.plugins import load_config
    from posecore.run import Run, train

    config, plugins = load_config(CONFIG, overrides(iters, work_dir), [])
    train(Run(config, plugins))


def run_plain(iters: int, work_dir: str) -> None:
    import torch

    from posecore.data import build_loader
    from posecore.plugins import load_config
    from posecore.pose.model import TopDownHeatmapNet
    from posecore.run import Run

    config, plugins = load_config(CONFIG, overrides(iters, work_dir), [])
    torch.manual_seed(0)
    maker = Run(config, plugins)
    maker.seed = 0
    loader = build_loader(maker, "train_dataloader")
    model = TopDownHeatmapNet(preset=config["model"]["preset"])
    optim = config["optim"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim["lr"], weight_decay=optim["weight_decay"])
    loader.sampler.set_position(0, 0)
    batches = iter(loader)
    for iteration in range(1, iters + 1):
        batch = next(batches)
        loss = model.loss(model(batch["img"]), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if iteration % 50 == 0:
            loss.item()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, Path(work_dir) / "plain.pth")


def child(which: str, iters: int) -> None:
    import torch

    with tempfile.TemporaryDirectory() as work_dir:
        (run_plain if which == "plain" else run_posecore)(iters, work_dir)
    peak = {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        peak["cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("PEAK " + json.dumps(peak))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--child", choices=("plain", "posecore"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.iters)
        return
    peaks = {}
    for which in ("plain", "posecore"):
        result = subprocess.run([sys.executable, __file__, "--child", which, "--iters", str(args.iters)],
                                capture_output=True, text=True, cwd=REPO)
        if result.returncode != 0:
            sys.exit(f"{which} failed:\n{result.stderr[-2000:]}")
        peaks[which] = json.loads(result.stdout.split("PEAK ", 1)[1])
    print(f"quickstart, {args.iters} iterations, each loop in a fresh process; {os.cpu_count()} CPUs")
    for key in peaks["plain"]:
        plain, ours = peaks["plain"][key], peaks["posecore"][key]
        print(f"peak {key:8} plain {plain:8.1f}  posecore {ours:8.1f}  ratio {ours / plain:.3f}   (target <= 1.1)")


if __name__ == "__main__":
    main()
