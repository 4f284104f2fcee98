"""Speed of ``model.channels_last``, ``model.compile`` and ``--amp`` against eager float32 on HRNet-W32 (or
RTMPose-m) training steps.

    .venv/bin/python bench/compute.py                          # batch 8 at 192x256: eager, channels_last,
                                                               # compile, both; then the resume check
    .venv/bin/python bench/compute.py --batch 4 --iters 2 --rounds 3 --threads 2
    .venv/bin/python bench/compute.py --variants eager,compile --no-resume-check
    .venv/bin/python bench/compute.py --model rtmpose-m --batch 256 --iters 20    # on a GPU
    .venv/bin/python bench/compute.py --variants eager,amp,amp_bf16 --no-resume-check

The model, codec and loss are those of ``--model``'s example config (``hrnet-w32``:
``examples/mmpose/td-hm_hrnet-w32_8xb64-210e_coco-256x192.toml``, MSRAHeatmap targets 48x64, ``KeypointMSELoss``;
``rtmpose-m``: ``examples/mmpose/rtmpose-m_8xb256-420e_coco-256x192.toml``, SimCCLabel, ``KLDiscretLoss``), randomly
initialised (``init_from`` dropped), on 192x256 crops, AdamW. ``--device`` defaults to CUDA where there is one; there
the table adds each variant's peak memory (``torch.cuda.max_memory_allocated`` over its steps). ``amp`` is
posecore-amp with ``dtype = "auto"`` (float16 with loss scaling on CUDA, bfloat16 on a CPU), ``amp_bf16`` with
bfloat16 (no scaler). Each variant is a ``Run``
built as ``posecore train`` builds it (``Run.build``, then ``Run.wrap_model``, which compiles) and trained
by the loop's own step: ``run.train_model`` forward and ``run.model.loss`` in the plugins' forward context
(autocast, with amp), then ``backward_step`` (posecore-amp's scaled one, with amp). All
variants train on one batch of synthetic figures, kept in memory (data loading is not measured).

First step: the first training step of each variant, which for ``compile`` includes Dynamo's tracing
and TorchInductor's kernel builds (an empty ``TORCHINDUCTOR_CACHE_DIR`` measures a cold build; the
default cache in /tmp makes later runs of the bench warm). Then rounds: each variant runs ``--iters``
steps in turn, in the same order every round; steps/s per round, the median over rounds, and each
variant's ratio to eager (the median of the per-round ratios).

Resume check (tiny config, inductor-compiled): a 4-iteration compiled run, and a compiled run resumed from
its iteration-2 checkpoint; prints the checkpoint entries in which their iteration-4 checkpoints differ
(none: bitwise resumable).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import posecore_amp
import torch

from posecore.plugins import module_plugin, resolve
from posecore.run import Run

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"eager": {}, "channels_last": {"model": {"channels_last": True}},
            "compile": {"model": {"compile": True}}, "both": {"model": {"channels_last": True, "compile": True}},
            "amp": {"amp": {"enabled": True}}, "amp_bf16": {"amp": {"enabled": True, "dtype": "bfloat16"}}}
"""Each variant's config sections, over the example's."""
MODELS = {"hrnet-w32": REPO / "examples" / "mmpose" / "td-hm_hrnet-w32_8xb64-210e_coco-256x192.toml",
          "rtmpose-m": REPO / "examples" / "mmpose" / "rtmpose-m_8xb256-420e_coco-256x192.toml"}


def _without_init(table: Any) -> Any:
    """``table`` without its ``init_from`` keys (pretrained weights are downloads; the speed does not need them)."""
    if isinstance(table, dict):
        return {key: _without_init(value) for key, value in table.items() if key != "init_from"}
    return table


def make_run(model: str, variant: dict[str, Any], batch_size: int, device: str, work_dir: str) -> Run:
    example = tomllib.loads(MODELS[model].read_text())
    user = {"work_dir": work_dir, "device": device, "plugins": [], "codec": example["codec"],
            "model": {**_without_init(example["model"]), "flip_test": False, **variant.get("model", {})},
            **({"amp": variant["amp"]} if "amp" in variant else {}),
            "train_dataloader": {"batch_size": batch_size, "num_workers": 0,
                                 "dataset": {"num_samples": batch_size, "image_size": [256, 256]}},
            "val_dataloader": {"batch_size": 1, "dataset": {"num_samples": 1}},
            "train": {"max_iters": 1000}}
    config, plugins = resolve(user, lambda key: "bench", installed=[], extra=[module_plugin("amp", posecore_amp)])
    run = Run(config, plugins)
    run.seed = 2026
    run.hook.before_build(run=run)
    run.build()
    run.wrap_model()
    return run


def steps(run: Run, batch: dict[str, torch.Tensor], count: int) -> float:
    """Seconds for ``count`` training steps of the loop's own kind."""
    forward = run.hook.forward_context(run=run) or contextlib.nullcontext()
    start = time.perf_counter()
    for _ in range(count):
        with forward:
            loss = run.model.loss(run.train_model(batch["img"]), batch)
        run.hook.backward_step(run=run, loss=loss)
    if batch["img"].is_cuda:
        torch.cuda.synchronize()  # the steps' kernels run asynchronously
    return time.perf_counter() - start


def resume_check() -> list[str]:
    """Where a compiled tiny run resumed at iteration 2 differs from the uninterrupted one, at iteration 4."""
    import posecore_resume
    import posecore_seed

    from posecore import checkpoint
    from posecore.testing import run_training

    sys.path.insert(0, str(REPO / "tests"))
    from interruptions import IGNORED, differences

    plugins = {"seed": posecore_seed, "resume": posecore_resume}
    options = ["randomness.seed=5", "model.dropout=0.2", "model.compile=true"]
    with tempfile.TemporaryDirectory() as tmp:
        straight, resumed = Path(tmp, "straight"), Path(tmp, "resumed")
        run_training(straight, plugins=plugins, cfg_options=options)
        run_training(resumed, plugins=plugins,
                     cfg_options=[*options, "resume=true", f"load_from={straight / 'iter_2.pth'}"])
        return differences(checkpoint.load(straight / "iter_4.pth"), checkpoint.load(resumed / "iter_4.pth"),
                           IGNORED)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=tuple(MODELS), default="hrnet-w32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=3, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--variants", default=",".join(VARIANTS), help="from " + ", ".join(VARIANTS))
    parser.add_argument("--no-resume-check", dest="resume_check", action="store_false")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.variants.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or "eager" not in names:
        raise SystemExit(f"--variants: eager and any of {', '.join(VARIANTS)} (not {', '.join(unknown)})")
    cuda = args.device.startswith("cuda")
    where = torch.cuda.get_device_name(args.device) if cuda else f"CPU, {args.threads} threads"
    print(f"{args.model} training steps, batch {args.batch} at 192x256, torch {torch.__version__}, {where}")
    with tempfile.TemporaryDirectory() as tmp:
        runs, first, peak = {}, {}, {}
        for name in names:
            runs[name] = make_run(args.model, VARIANTS[name], args.batch, args.device, tmp)
            batch = {key: value.to(args.device) if isinstance(value, torch.Tensor) else value
                     for key, value in next(iter(runs[name].train_loader)).items()}
            first[name] = steps(runs[name], batch, 1)
            print(f"  {name:14s} first step {first[name]:7.1f} s", flush=True)
        rates: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.rounds):
            for name, run in runs.items():
                if cuda:
                    torch.cuda.reset_peak_memory_stats(args.device)
                rates[name].append(args.iters / steps(run, batch, args.iters))
                if cuda:
                    peak[name] = max(peak.get(name, 0.0), torch.cuda.max_memory_allocated(args.device) / 2**30)
    memory = " peak GiB |" if cuda else ""
    print(f"\n| variant | first step (s) | steps/s, median of {args.rounds} (min..max) | samples/s | ratio to eager |"
          + memory)
    print("|---|---:|---|---:|---:|" + ("---:|" if cuda else ""))
    for name in names:
        ratio = statistics.median(r / e for r, e in zip(rates[name], rates["eager"]))
        rate = statistics.median(rates[name])
        print(f"| {name} | {first[name]:.1f} | {rate:.3f} ({min(rates[name]):.3f}..{max(rates[name]):.3f}) | "
              f"{rate * args.batch:.1f} | {ratio:.2f}x |" + (f" {peak[name]:.2f} |" if cuda else ""))
    if args.resume_check:
        found = resume_check()
        print("\ncompiled tiny run resumed at iteration 2 vs uninterrupted, iteration 4: "
              + ("bitwise equal" if not found else "differs in " + "; ".join(found[:10])))


if __name__ == "__main__":
    main()
