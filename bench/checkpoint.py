"""Checkpoint save cost: posecore's synchronous and asynchronous saves against plain ``torch.save``.

    .venv/bin/python bench/checkpoint.py            # 3.3 M-parameter heatmap model + Adam state (~40 MB)
    .venv/bin/python bench/checkpoint.py --rounds 9 --dir /path/on/the/disk/you/train/on

Each round, in turn and on the same state (weights and Adam moments of a model that took one step):

* plain: ``torch.save(state, path)``, no fsync, no checksum, no rename;
* sync: what ``Run.save`` does with ``checkpoint.async = false``: ``checkpoint.save`` (temporary file,
  fsync, rename, fsync of the folder, XXH3-128 checksum file written the same way) then ``update_pointers``;
* async stall: what the loop waits for with ``checkpoint.async = true``: the snapshot into host memory
  and the hand-over to the writer thread (the write itself, the read-back verification and the pointer
  update run in the background and are waited for outside the timed part).

The state is built by ``Run.state()``'s pieces that matter for size (model and optimizer state dicts);
the rest of a real checkpoint (config text, generator states, loop counters) is a few kilobytes.
Before each timed part ``os.sync()`` flushes what earlier parts left dirty (plain's file above all),
so no timing waits for another's writeback. Figures are medians over rounds; the ratios are what the performance issue sets targets for
(sync / plain within 1.1x, async stall within 10% of sync).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from posecore import checkpoint
from posecore.pose.model import TopDownHeatmapNet


def build_state() -> dict:
    model = TopDownHeatmapNet(stage_channels=[64, 128, 256], deconv_channels=[256, 256])
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3, 64, 48)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    state = build_state()
    params = sum(t.numel() for t in state["model"].values() if t.is_floating_point())
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        folder = Path(folder)
        writer = checkpoint.BackgroundWriter()
        times: dict[str, list[float]] = {"plain": [], "sync": [], "async stall": []}
        for round_ in range(args.rounds + 1):  # round 0 warms caches and allocations up; not counted
            os.sync()  # each timing starts with no other file's writeback queued on the disk
            begin = time.perf_counter()
            torch.save(state, folder / "plain.pth")
            plain = time.perf_counter() - begin

            os.sync()
            begin = time.perf_counter()
            checkpoint.save(folder / "iter_1.pth", state)
            checkpoint.update_pointers(folder, folder / "iter_1.pth")
            sync = time.perf_counter() - begin

            path = folder / "iter_2.pth"
            os.sync()
            begin = time.perf_counter()
            snapshot = writer.snapshot(state)
            writer.submit(path.name, lambda: (checkpoint.save(path, snapshot), checkpoint.verify(path),
                                              checkpoint.update_pointers(folder, path)))
            stall = time.perf_counter() - begin
            writer.wait()
            if round_:
                for name, value in zip(times, (plain, sync, stall)):
                    times[name].append(value)
        size = os.path.getsize(folder / "iter_1.pth") / 1e6
    median = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    print(f"checkpoint of {params / 1e6:.1f} M parameters + Adam state: {size:.1f} MB; {args.rounds} rounds; "
          f"python {sys.version.split()[0]}, torch {torch.__version__}, {os.cpu_count()} CPUs")
    print(f"{'':12} {'median ms':>10} {'min':>8} {'max':>8}")
    for name, values in times.items():
        print(f"{name:12} {median[name]:10.1f} {min(values) * 1e3:8.1f} {max(values) * 1e3:8.1f}")
    print(f"sync / plain:        {median['sync'] / median['plain']:.2f}x   (target <= 1.1x)")
    print(f"async stall / sync:  {median['async stall'] / median['sync']:.1%}   (target <= 10%)")


if __name__ == "__main__":
    main()
