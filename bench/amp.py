"""Speed of ``--amp`` against float32 on the quickstart model at a GPU-sized input and batch.

    .venv/bin/python bench/amp.py                 # CUDA when available (float16), else CPU (bfloat16)
    .venv/bin/python bench/amp.py --batch 64 --input 192 256 --iters 50

Both variants run posecore's own training step (autocast from posecore-amp's forward_context, loss
scaling through its backward_step), interleaved round by round in one process on the same batch, so
only the arithmetic differs. Prints samples/s for each and the ratio amp/float32.
"""

from __future__ import annotations

import argparse
import statistics
import time

import posecore_amp
import torch

from posecore.plugins import module_plugin, resolve
from posecore.run import Run
from posecore.testing import TINY_CONFIG


def make_run(amp: bool, args: argparse.Namespace, work_dir: str) -> Run:
    width, height = args.input
    user = {**TINY_CONFIG, "work_dir": work_dir, "device": "auto",
            "codec": {"input_size": [width, height], "heatmap_size": [width // 2, height // 2], "sigma": 2.0},
            "model": {"preset": "small"}, "train_dataloader": {"batch_size": args.batch, "num_workers": 0,
                                                               "dataset": {"num_samples": args.batch}},
            "plugins": ["amp"] if amp else []}
    config, plugins = resolve(user, lambda key: "bench", installed=[], extra=[module_plugin("amp", posecore_amp)])
    run = Run(config, plugins)
    run.hook.before_build(run=run)
    run.build()
    return run


def timed_steps(run: Run, batch: dict[str, torch.Tensor], iters: int) -> float:
    forward = run.hook.forward_context(run=run) or torch.autocast(run.device.type, enabled=False)
    start = time.perf_counter()
    for _ in range(iters):
        with forward:
            loss = run.model.loss(run.model(batch["img"]), batch)
        run.hook.backward_step(run=run, loss=loss)
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    return iters * batch["img"].shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--input", type=int, nargs=2, default=[192, 256], metavar=("W", "H"))
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        runs = {"float32": make_run(False, args, tmp), "amp": make_run(True, args, tmp)}
        batch = {k: v.to(runs["amp"].device) for k, v in next(iter(runs["amp"].train_loader)).items()}
        for run in runs.values():
            timed_steps(run, batch, 3)  # warm-up: kernels, allocator, cuDNN autotuning
        rates = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                rates[name].append(timed_steps(run, batch, args.iters))
    device = runs["amp"].device
    dtype = str(runs["amp"].plugin_data["amp"].dtype).replace("torch.", "")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}, batch {args.batch}, input {args.input[0]}x{args.input[1]}, amp dtype {dtype}")
    medians = {k: statistics.median(v) for k, v in rates.items()}
    for key, value in medians.items():
        print(f"{key:8s} {value:9.1f} samples/s  (rounds: {', '.join(f'{r:.1f}' for r in rates[key])})")
    print(f"amp / float32: {medians['amp'] / medians['float32']:.2f}x")


if __name__ == "__main__":
    main()
