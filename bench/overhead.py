"""Framework overhead of posecore's training loop, against a plain hand-written PyTorch loop.

    .venv/bin/python bench/overhead.py                      # null, tiny, quickstart: about 2 minutes
    .venv/bin/python bench/overhead.py --threads 1          # steadier on a busy machine
    .venv/bin/python bench/overhead.py --models null --rounds 9 --iters 1000
    .venv/bin/python bench/overhead.py --amp                # adds rows with posecore-amp / autocast
    .venv/bin/python bench/overhead.py --profile            # where posecore's per-iteration time goes

What is compared
----------------
The same model, the same loss (``posecore.pose.model.heatmap_loss``), the same optimizer (``[optim]``:
AdamW, lr 2e-3, weight decay 1e-4), the same learning rates and the same pre-built batches, trained by

* plain: a hand-written loop -- next batch, ``.to(device)`` of the three tensors it uses, set the
  learning rate (warm-up + cosine, written inline, the same values as posecore's), forward, loss,
  ``zero_grad(set_to_none=True)``, backward, step, and ``loss.item()`` every ``log_interval`` iterations;
* posecore: the real ``posecore.run.train(run)`` on a ``Run(config, plugins)`` whose config and plugins
  come from ``posecore.plugins.resolve`` with every installed plugin but amp active: seed
  (``[randomness] seed``), resume (``resume = false``: active, starts fresh) and tensorboard
  (``TensorboardVisBackend`` next to ``LocalVisBackend``). Its log lines go to the run's log file and
  to stderr, which points at /dev/null while it runs (no terminal costs; no progress line either,
  as stderr is then not a tty).

Cases (``--models``), all with ``log_interval = 50`` (the quickstart's and the schema default):

* ``null``: TINY_CONFIG's codec and batches with a stand-in model of 2 parameters (2x2 average
  pooling, one 1x1 convolution), put into the Run after ``Run.build`` (with a fresh AdamW) and used
  by the plain loop too. An iteration is a few hundred µs, so the overhead is a large part of it and
  is measured to a few µs: the row for the issue's 20 µs target (the tiny model's
  overhead is the same work, measured to tens of µs only).
* ``tiny``: ``posecore.testing.TINY_CONFIG``'s model, codec and batch size (4 crops of 32x32): what
  the tests train. Iterations take milliseconds; on a shared machine its overhead figure is only
  good to some tens of µs.
* ``quickstart``: ``examples/quickstart.toml`` as ``posecore.plugins.load_config`` validates it
  (preset ``small``, 48x64 input, batch 32). Its overhead is far below the noise of a 0.1 s
  iteration; the row shows that the overhead does not matter there. (When the config's
  ``codec.heatmap_size`` does not fit the model -- posecore itself refuses to train it -- the bench
  uses the size the model outputs and prints a note.)

amp changes the arithmetic (bfloat16 autocast on CPU), so the main comparison runs without it.
``--amp`` adds rows where posecore runs with ``amp.enabled = true`` and the plain loop runs its forward
and loss under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (no scaler: bfloat16 needs none).

The substitution (data loading is not measured)
------------------------------------------------
Each case's batches are made once, before timing, by posecore's own DataLoader (``build_loader``)
and kept in memory (8 batches, cycled). For posecore, ``run.build`` is wrapped on the instance: the
real ``Run.build`` runs, then ``run.train_loader`` is replaced by a ``MemoryLoader``, an endless
generator over the pre-built batches that carries the real loader's sampler, dataset and batch size.
Everything else is posecore's own: ``Run.train_batches`` (position bookkeeping and ``.to(device)`` of
every tensor of the batch), ``Timer.data``, the hooks through pluggy, ``Run.apply_schedule``,
``Run.log_train`` with both vis backends. The memory loader never ends an epoch, so the per-epoch
DataLoader restart is not measured (data loading, not loop machinery).

Timing
------
The loader stamps ``time.perf_counter()`` (``--clock cpu``: ``time.process_time()``) each time a batch
is asked for; two consecutive requests bracket exactly one iteration of the loop, whatever it does.
Each loop runs ``warmup + iters + 1`` iterations; only the ``iters`` after the warm-up are used.
Excluded: the warm-up, the last iteration (posecore's final log, final validation and final
checkpoint happen there) and all set-up. Validation is off in both (``val_interval = 0``: posecore
validates only at the end, outside the window) and checkpoints are off in the window
(``checkpoint.interval`` is larger than the run; only the final save happens, after the window).
``iters`` is a multiple of ``log_interval``, so both loops log equally often in the window.
``torch.set_num_threads`` is the same for both (``--threads``, default 2).

Noise
-----
``--mode lockstep`` (default): the loops alternate iteration by iteration in one process. The
in-memory loader given to posecore runs one plain iteration (timed on its own) before it hands
posecore its next batch, so both loops see the same machine state, iteration after iteration.
``--mode chunked``: whole runs alternate (plain first in even rounds, posecore first in odd ones).
On a shared 2-core machine lockstep is far steadier. Each round uses fresh models and a fresh Run.

A round's figure for a loop is robust to pre-emption spikes: the median of its ordinary iterations,
plus the median extra of its logging iterations and of the iterations right after them, divided
by ``log_interval`` (so logging is charged in full, spikes are not). In lockstep, the plain
iteration that follows posecore's logging iteration is slower (TensorBoard's writer thread and cold
caches: posecore's logging still costs); that extra is moved from plain to posecore. Overhead is
posecore - plain within a round; the table gives the medians over rounds, the lines under it the
spread (min..max), the split into every-iteration and logging work, and the same from plain window
means. ``--profile`` also runs an A/A check (the plain loop in posecore's seat): its result is the
harness's own bias, a few µs in posecore's favour.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import gc
import itertools
import math
import os
import pstats
import statistics
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from posecore.config import read_toml
from posecore.data import build_loader
from posecore.errors import PosecoreError
from posecore.plugins import load_config, resolve
from posecore.pose.model import TopDownHeatmapNet, heatmap_loss
from posecore.run import Run, train
from posecore.testing import TINY_CONFIG

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "examples" / "quickstart.toml"
LOG_INTERVAL = 50
DEFAULT_MODELS = "null,tiny,quickstart"
SEED = 2026
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK = CLOCKS["wall"]  # --clock sets it
USED_KEYS = ("img", "heatmaps", "weights")


# ------------------------------------------------------------------------------------------ data
class MemoryLoader:
    """Stands in for a DataLoader: cycles pre-built batches forever, stamping each request."""

    def __init__(self, batches: list[dict[str, torch.Tensor]], batch_size: int, stamps: list[float],
                 sampler: Any = None, dataset: Any = None) -> None:
        self.batches, self.batch_size, self.stamps = batches, batch_size, stamps
        self.sampler, self.dataset = sampler, dataset  # Run.train_batches sets their seed and position

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        batches, count, stamp, clock = self.batches, len(self.batches), self.stamps.append, CLOCK
        index = 0
        while True:
            stamp(clock())
            yield batches[index % count]
            index += 1


class ProfilingLoader(MemoryLoader):
    """A MemoryLoader that turns a profiler on at request ``start`` and off at request ``stop``."""

    def __init__(self, *args: Any, profiler: cProfile.Profile, start: int, stop: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.profiler, self.start, self.stop = profiler, start, stop

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for index, batch in zip(itertools.count(), super().__iter__()):
            if index == self.start:
                self.profiler.enable()
            elif index == self.stop:
                self.profiler.disable()
            yield batch


# ----------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    name: str
    user: dict[str, Any]      # raw config (before resolve) without the bench's settings
    config: dict[str, Any]    # resolved config, for the plain loop and the batches
    batches: list[dict[str, torch.Tensor]]
    amp: bool = False
    note: str = ""

    @property
    def label(self) -> str:
        return self.name + ("+amp" if self.amp else "")

    def model(self) -> torch.nn.Module:
        """A freshly initialised model of this case (seeded), in training mode, on the CPU."""
        torch.manual_seed(SEED)
        if self.name == "null":
            model = NullNet()
        else:
            options = self.config["model"]
            model = TopDownHeatmapNet(num_keypoints=17, preset=options["preset"],
                                      stage_channels=options.get("stage_channels"),
                                      stage_blocks=options.get("stage_blocks"),
                                      deconv_channels=options.get("deconv_channels"), dropout=options["dropout"])
        return model.train()

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """``[optim]``'s AdamW, with ``initial_lr`` in each group as posecore's schedule expects."""
        options = self.config["optim"]
        assert options["type"] == "AdamW", "the bench writes AdamW"
        optimizer = torch.optim.AdamW(model.parameters(), lr=options["lr"], weight_decay=options["weight_decay"])
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
        return optimizer


class NullNet(torch.nn.Module):
    """The null case's model: 2x2 average pooling and one 1x1 convolution to 17 heatmaps (2 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = torch.nn.AvgPool2d(2)
        self.final = torch.nn.Conv2d(3, 17, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.final(self.pool(img))

    loss = TopDownHeatmapNet.loss  # the same loss as the real model's


def bench_user(base: dict[str, Any], work_dir: str, max_iters: int, amp: bool,
               tensorboard: bool = True) -> dict[str, Any]:
    """``base`` plus the bench's settings: CPU, plugins, no validation/checkpoints in the window."""
    user = copy.deepcopy(base)
    user.pop("plugins", None)
    user["work_dir"] = work_dir
    user["device"] = "cpu"
    user["plugins"] = (["seed", "resume"] + (["tensorboard"] if tensorboard else ["no:tensorboard"])
                       + (["amp"] if amp else ["no:amp"]))
    user["randomness"] = {"seed": SEED}
    user["resume"] = False
    if amp:
        user["amp"] = {"enabled": True}
    user.setdefault("train", {}).update(max_iters=max_iters, val_interval=0, log_interval=LOG_INTERVAL)
    user["train"].pop("max_epochs", None)
    user.setdefault("checkpoint", {})["interval"] = max_iters + 1_000_000
    user.setdefault("visualizer", {})["vis_backends"] = [{"type": "LocalVisBackend"}] + (
        [{"type": "TensorboardVisBackend"}] if tensorboard else [])
    train_loader = user.setdefault("train_dataloader", {})
    train_loader["num_workers"] = 0
    # The final validation is outside the timed window; one small batch keeps it short.
    user.setdefault("val_dataloader", {})["batch_size"] = 8
    user["val_dataloader"].setdefault("dataset", {})["num_samples"] = 8
    return user


def make_case(name: str, work_dir: str, amp: bool = False, count: int = 8) -> Case:
    if name in ("null", "tiny"):
        base = {k: copy.deepcopy(TINY_CONFIG[k]) for k in ("codec", "model", "train_dataloader", "scheduler")}
        base["train_dataloader"]["dataset"] = dict(base["train_dataloader"]["dataset"], num_samples=64)
    elif name == "quickstart":
        base = read_toml(QUICKSTART)
        load_config(QUICKSTART)  # the file itself validates as it stands
    else:
        raise SystemExit(f"unknown model case {name!r}: use null, tiny or quickstart")
    config, plugins = resolve(bench_user(base, work_dir, 100, amp), lambda key: f"bench case {name}")
    note = ""
    if name == "quickstart":  # a codec that does not fit the model would stop posecore at build: fit it, say so
        probe = Case(name, base, config, [], amp).model()
        width, height = config["codec"]["input_size"]
        with torch.no_grad():
            out = probe(torch.zeros(1, 3, height, width))
        fitted = [out.shape[-1], out.shape[-2]]
        if fitted != config["codec"]["heatmap_size"]:
            note = (f"{QUICKSTART.relative_to(REPO)} as validated gives codec.heatmap_size "
                    f"{config['codec']['heatmap_size']}, but its model outputs {fitted} for input "
                    f"{config['codec']['input_size']} (posecore train stops at build); measured with {fitted}")
            base.setdefault("codec", {})["heatmap_size"] = fitted
            config, plugins = resolve(bench_user(base, work_dir, 100, amp), lambda key: f"bench case {name}")
    maker = Run(config, plugins)
    maker.seed = SEED
    loader = build_loader(maker, "train_dataloader")
    batches = [dict(batch) for batch in itertools.islice(iter(loader), count)]
    return Case(name, base, config, batches, amp, note)


def check_case(case: Case, tmp: str) -> None:
    """Raise posecore's own error when it cannot build the case (e.g. a codec that does not fit the model)."""
    run, _ = posecore_run(case, str(Path(tmp) / "check"), 1)
    with quiet_stderr(), run.session():
        run.hook.before_build(run=run)
        run.build()


@dataclass
class Variant:
    """For ``--profile``'s ablation: posecore with one piece taken out, to see what that piece costs in the loop."""

    name: str
    adjust: Callable[[Run], None] = lambda run: None
    tensorboard: bool = True


class DirectHooks:
    """Stands in for ``run.hook``: backward_step calls the core's implementation directly (after_iter, with no
    implementations, is skipped by the loop itself)."""

    def __init__(self, hook: Any) -> None:
        from posecore import builtin

        self._hook, self.backward_step = hook, builtin.backward_step

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hook, name)


def _no_moves(run: Run) -> None:
    run.train_batches = lambda: iter(run.train_loader)  # type: ignore[method-assign]


def _untimed_data(run: Run) -> None:
    run.timer.data = next  # type: ignore[method-assign]


def _direct_hooks(run: Run) -> None:
    run.hook = DirectHooks(run.hook)


def _schedule_table(run: Run) -> None:
    # The same learning rates, looked up instead of computed: a no-op would change the arithmetic
    # (a constant lr makes the steps measurably cheaper than the decaying one the plain loop uses).
    from posecore.run import lr_factor

    table: list[float] = []

    def apply() -> None:
        if not table:
            table.extend(lr_factor(run.config["scheduler"], step, run.max_iters, run.iters_per_epoch)
                         for step in range(run.max_iters + 1))
        factor = table[run.optimizer_steps]
        for group in run.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    run.apply_schedule = apply  # type: ignore[method-assign]


def _no_log(run: Run) -> None:
    run.log_train = lambda loss: None  # type: ignore[method-assign]


def _all_out(run: Run) -> None:
    for adjust in (_no_moves, _untimed_data, _direct_hooks, _schedule_table, _no_log):
        adjust(run)


ABLATIONS = [
    Variant("posecore as measured"),
    Variant("Run.train_batches -> iter(train_loader): no .to() of every tensor", _no_moves),
    Variant("Timer.data -> next: no data timing", _untimed_data),
    Variant("hook.backward_step / after_iter -> direct calls: no pluggy", _direct_hooks),
    Variant("Run.apply_schedule -> look up the same lr in a table", _schedule_table),
    Variant("without TensorboardVisBackend", tensorboard=False),
    Variant("Run.log_train -> no-op (the plain loop still calls .item())", _no_log),
    Variant("all of the above out: the loop's own bookkeeping", _all_out, tensorboard=False),
]


# ----------------------------------------------------------------------------------------- loops
class PlainLoop:
    """The hand-written loop, one iteration per ``step()`` call (so it can also run in lockstep)."""

    def __init__(self, case: Case, total: int, stamps: list[float],
                 make_loader: Callable[..., MemoryLoader] = MemoryLoader) -> None:
        config = case.config
        schedule = config["scheduler"]
        assert schedule["type"] == "cosine", "the plain loop writes warm-up + cosine"
        self.device = torch.device("cpu")
        self.model = case.model().to(self.device)
        self.optimizer = case.optimizer(self.model)
        self.base_lr = config["optim"]["lr"]
        self.warmup_iters, self.warmup_ratio = schedule["warmup_iters"], schedule["warmup_ratio"]
        self.min_ratio, self.total = schedule["min_lr_ratio"], total
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16) if case.amp else None
        self.batches = iter(make_loader(case.batches, config["train_dataloader"]["batch_size"], stamps))
        self.logged: list[float] = []

    def step(self, step: int) -> None:
        batch = next(self.batches)
        device = self.device
        img = batch["img"].to(device, non_blocking=True)
        target = batch["heatmaps"].to(device, non_blocking=True)
        weights = batch["weights"].to(device, non_blocking=True)
        if step < self.warmup_iters:
            factor = self.warmup_ratio + (1 - self.warmup_ratio) * step / self.warmup_iters
        else:
            progress = min(1.0, (step - self.warmup_iters) / max(1, self.total - self.warmup_iters))
            factor = self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        optimizer = self.optimizer
        for group in optimizer.param_groups:
            group["lr"] = self.base_lr * factor
        if self.autocast is None:
            loss = heatmap_loss(self.model(img), target, weights)
        else:
            with self.autocast:
                loss = heatmap_loss(self.model(img), target, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % LOG_INTERVAL == 0:
            self.logged.append(loss.item())


def plain_loop(case: Case, warmup: int, iters: int,
               make_loader: Callable[..., MemoryLoader] = MemoryLoader) -> list[float]:
    """Run the plain loop alone; returns its request stamps (warmup + iters + 1 of them)."""
    stamps: list[float] = []
    total = warmup + iters + 1
    loop = PlainLoop(case, total, stamps, make_loader)
    gc.collect()
    for step in range(total):
        loop.step(step)
    return stamps


class LockstepLoader(MemoryLoader):
    """posecore's train_loader in lockstep mode: before handing posecore a batch, run (and time) one
    plain iteration. ``stamps`` gets posecore's request times, ``starts`` the times its batch left."""

    def __init__(self, *args: Any, plain: PlainLoop, plain_times: list[float], starts: list[float],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plain, self.plain_times, self.starts = plain, plain_times, starts

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        batches, count, clock = self.batches, len(self.batches), CLOCK
        stamp, start, plain_time, plain = self.stamps.append, self.starts.append, self.plain_times.append, self.plain
        for index in itertools.count():
            stamp(clock())  # posecore's previous iteration ends here
            if index < plain.total:
                begin = clock()
                plain.step(index)
                plain_time(clock() - begin)
            start(clock())
            yield batches[index % count]


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """posecore logs to stderr (a handler made at session start): send it to /dev/null meanwhile."""
    saved = sys.stderr
    with open(os.devnull, "w") as sink:
        sys.stderr = sink
        try:
            yield
        finally:
            sys.stderr = saved


def posecore_run(case: Case, work_dir: str, max_iters: int,
                 make_loader: Callable[..., MemoryLoader] = MemoryLoader,
                 variant: Variant | None = None) -> tuple[Run, list[float]]:
    """A Run as ``posecore train`` builds it, whose train_loader is swapped for the in-memory one."""
    user = bench_user(case.user, work_dir, max_iters, case.amp, tensorboard=variant is None or variant.tensorboard)
    config, plugins = resolve(user, lambda key: "bench")
    run = Run(config, plugins)
    if variant is not None:
        variant.adjust(run)
    stamps: list[float] = []
    real_build = run.build

    def build() -> None:
        real_build()
        if case.name == "null":  # the same model and optimizer as the plain loop's
            run.model = run.train_model = case.model().to(run.device)
            run.optimizer = case.optimizer(run.model)
        real = run.train_loader
        run.train_loader = make_loader(case.batches, real.batch_size, stamps, sampler=real.sampler,
                                       dataset=real.dataset)

    run.build = build  # the instance attribute shadows the method; train() calls run.build()
    return run, stamps


def posecore_loop(case: Case, work_dir: str, warmup: int, iters: int) -> list[float]:
    """Run posecore's loop alone; returns its request stamps (warmup + iters + 1 of them)."""
    run, stamps = posecore_run(case, work_dir, warmup + iters + 1)
    gc.collect()
    with quiet_stderr():
        train(run)
    assert run.iteration == warmup + iters + 1 and len(stamps) == warmup + iters + 1, (run.iteration, len(stamps))
    return stamps


def lockstep(case: Case, work_dir: str, warmup: int, iters: int,
             variant: Variant | None = None) -> tuple[list[float], list[float]]:
    """Both loops alternating iteration by iteration; returns (plain, posecore) iteration times in µs."""
    total = warmup + iters + 1
    plain_times: list[float] = []
    starts: list[float] = []
    plain = PlainLoop(case, total, [])

    def loader(*args: Any, **kwargs: Any) -> MemoryLoader:
        return LockstepLoader(*args, plain=plain, plain_times=plain_times, starts=starts, **kwargs)

    run, stamps = posecore_run(case, work_dir, total, loader, variant)
    gc.collect()
    with quiet_stderr():
        train(run)
    assert run.iteration == total and len(plain_times) == total, (run.iteration, len(plain_times))
    core = [(stamps[i + 1] - starts[i]) * 1e6 for i in range(total - 1)]
    return [t * 1e6 for t in plain_times[:total - 1]], core


# ------------------------------------------------------------------------------------ statistics
@dataclass
class Sample:
    steady: float       # µs: median of the other iterations
    log_extra: float    # µs: median of the logging iterations minus ``steady``
    after_extra: float  # µs: median of the iterations right after a logging one, minus ``steady``
    mean: float         # µs/iter: window time / iterations

    @property
    def robust(self) -> float:
        """µs/iter: the steady-state iteration plus the logging (and after-logging) extra, spread over the interval."""
        return self.steady + (self.log_extra + self.after_extra) / LOG_INTERVAL


def from_stamps(stamps: list[float]) -> list[float]:
    """Iteration times in µs from request stamps (iteration i lies between stamps i and i + 1)."""
    return [(b - a) * 1e6 for a, b in zip(stamps, stamps[1:])]


def summarise(durations: list[float], warmup: int, iters: int) -> Sample:
    """Figures of iterations ``warmup .. warmup + iters - 1`` (0-based; iteration i logs when (i+1) % 50 == 0)."""
    window = range(warmup, warmup + iters)
    logging = [durations[i] for i in window if (i + 1) % LOG_INTERVAL == 0]
    after = [durations[i] for i in window if i % LOG_INTERVAL == 0]
    steady = [durations[i] for i in window if (i + 1) % LOG_INTERVAL != 0 and i % LOG_INTERVAL != 0]
    base = statistics.median(steady)
    return Sample(base, statistics.median(logging) - base, statistics.median(after) - base,
                  statistics.fmean(durations[i] for i in window))


def charge_spill(plain: Sample, core: Sample) -> tuple[Sample, Sample]:
    """Lockstep: the plain iteration that follows posecore's logging iteration runs while posecore's
    logging is still costing (TensorBoard's writer thread, cold caches); move that extra to posecore."""
    spill = plain.after_extra
    return (Sample(plain.steady, plain.log_extra, 0.0, plain.mean - spill / LOG_INTERVAL),
            Sample(core.steady, core.log_extra, core.after_extra + spill, core.mean + spill / LOG_INTERVAL))


def spread(values: list[float]) -> str:
    return f"{min(values):.0f}..{max(values):.0f}"


# ------------------------------------------------------------------------------------- benchmark
def case_sizes(name: str, args: argparse.Namespace) -> tuple[int, int]:
    """(warm-up, timed iterations) per round for a case; timed is a multiple of the log interval."""
    iters, warmup = {"null": (4 * args.iters, args.warmup), "tiny": (args.iters, args.warmup),
                     "quickstart": (args.quickstart_iters, max(3, args.warmup // 10))}[name]
    return warmup, max(LOG_INTERVAL, iters // LOG_INTERVAL * LOG_INTERVAL)


def bench(args: argparse.Namespace) -> None:
    global CLOCK
    CLOCK = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    print(f"posecore overhead bench, {date.today()}: torch {torch.__version__}, {os.cpu_count()} CPUs "
          f"(load average {load:.1f}), torch threads {torch.get_num_threads()}, {args.mode}, {args.clock} clock, "
          f"{args.rounds} rounds, log_interval {LOG_INTERVAL}", flush=True)
    if args.threads > 1 and load > (os.cpu_count() or 1) - 1:
        print(f"  note: the machine is busy; {args.threads} OpenMP threads per loop get descheduled at every "
              "parallel region, which makes large kernels slow and erratic. --threads 1 is steadier here.",
              flush=True)
    names = args.models.split(",")
    results = []
    with tempfile.TemporaryDirectory(prefix="posecore-bench-") as tmp:
        cases = [make_case(name, tmp, amp) for name in names for amp in ((False, True) if args.amp else (False,))]
        for case in cases:
            warmup, iters = case_sizes(case.name, args)
            plain: list[Sample] = []
            core: list[Sample] = []
            started = time.perf_counter()
            if case.note:
                print(f"  {case.label}: note: {case.note}", flush=True)
            try:
                check_case(case, tmp)
            except PosecoreError as err:
                print(f"  {case.label}: skipped, posecore cannot train it: {err}", flush=True)
                continue
            for r in range(args.rounds):
                work_dir = str(Path(tmp) / f"{case.label}-{r}")
                if args.mode == "lockstep":
                    plain_times, core_times = lockstep(case, work_dir, warmup, iters)
                    p, c = charge_spill(summarise(plain_times, warmup, iters), summarise(core_times, warmup, iters))
                    plain.append(p)
                    core.append(c)
                    continue
                for which in ("plain", "posecore") if r % 2 == 0 else ("posecore", "plain"):
                    if which == "plain":
                        plain.append(summarise(from_stamps(plain_loop(case, warmup, iters)), warmup, iters))
                    else:
                        core.append(summarise(from_stamps(posecore_loop(case, work_dir, warmup, iters)), warmup, iters))
            results.append((case, plain, core))
            print(f"  {case.label}: {args.rounds} rounds x {iters} timed iterations per loop (+{warmup} warm-up): "
                  f"{time.perf_counter() - started:.0f} s", flush=True)

    median = statistics.median
    print()
    print("| model | plain µs/iter | posecore µs/iter | overhead µs/iter | ratio posecore/plain |")
    print("|---|---:|---:|---:|---:|")
    for case, plain, core in results:
        overhead = [c.robust - p.robust for c, p in zip(core, plain)]
        ratio = [c.robust / p.robust for c, p in zip(core, plain)]
        print(f"| {case.label} | {median(s.robust for s in plain):.0f} | {median(s.robust for s in core):.0f} | "
              f"{median(overhead):.1f} | {median(ratio):.4f} |")
    print()
    print(f"Spread over the {args.rounds} rounds (min..max; overhead = posecore - plain within each round, µs/iter):")
    for case, plain, core in results:
        overhead = [c.robust - p.robust for c, p in zip(core, plain)]
        steady = [c.steady - p.steady for c, p in zip(core, plain)]
        logging_ = [(c.log_extra + c.after_extra - p.log_extra - p.after_extra) / LOG_INTERVAL
                    for c, p in zip(core, plain)]
        means = [c.mean - p.mean for c, p in zip(core, plain)]
        print(f"  {case.label}: overhead {spread(overhead)} (rounds: {', '.join(f'{o:.0f}' for o in overhead)})")
        print(f"    of which every-iteration work {median(steady):.1f} ({spread(steady)}), logging every "
              f"{LOG_INTERVAL} iterations {median(logging_):.1f} ({spread(logging_)}) per iteration")
        print(f"    plain {spread([s.robust for s in plain])}, posecore {spread([s.robust for s in core])}; "
              f"from window means instead: overhead {median(means):.0f} ({spread(means)})")
    for case, plain, core in results:
        if case.amp:
            continue
        if case.name in ("null", "tiny"):
            o = median(c.robust - p.robust for c, p in zip(core, plain))
            print(f"Target (performance issue): overhead under 20 µs/iter; {case.label}: {o:.1f} µs/iter "
                  f"({'meets' if o < 20 else 'misses'} it)")
        else:
            ratio = median(c.robust / p.robust for c, p in zip(core, plain))
            print(f"Target (performance issue): within 1.01x; {case.label}: {ratio:.4f}x "
                  f"({'meets' if ratio <= 1.01 else 'misses'} it)")


# ---------------------------------------------------------------------------------------- profile


def _where(key: tuple[str, int, str]) -> str:
    filename, line, function = key
    if filename == "~":
        return function
    parts = Path(filename).parts
    for anchor in ("posecore", "site-packages", "python3.11"):
        if anchor in parts:
            parts = parts[len(parts) - 1 - parts[::-1].index(anchor) + (anchor != "posecore"):]
            break
    return f"{'/'.join(parts[-2:])}:{line}({function})"


def _profile(case: Case, tmp: str, warmup: int, iters: int, which: str) -> dict[Any, tuple[float, float, float]]:
    """cProfile one loop's timed window: {function: (calls/iter, self µs/iter, cumulative µs/iter)}."""
    profiler = cProfile.Profile()

    def loader(*args: Any, **kwargs: Any) -> MemoryLoader:
        return ProfilingLoader(*args, profiler=profiler, start=warmup, stop=warmup + iters, **kwargs)

    if which == "posecore":
        run, _ = posecore_run(case, str(Path(tmp) / "profile"), warmup + iters + 1, loader)
        with quiet_stderr():
            train(run)
    else:
        plain_loop(case, warmup, iters, loader)
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    return {key: (calls / iters, tottime * 1e6 / iters, cumtime * 1e6 / iters)
            for key, (_, calls, tottime, cumtime, _) in stats.items()}


def _timeit(function: Callable[[], Any], number: int, repeat: int = 7) -> float:
    """Median over ``repeat`` runs of the µs one call of ``function`` takes."""
    results = []
    for _ in range(repeat):
        begin = time.perf_counter()
        for _ in range(number):
            function()
        results.append((time.perf_counter() - begin) * 1e6 / number)
    return statistics.median(results)


class _NoOp:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def components(case: Case, tmp: str) -> list[tuple[str, float, float]]:
    """Time posecore's per-iteration pieces in isolation: (what, µs per call, µs per iteration)."""
    run, _ = posecore_run(case, str(Path(tmp) / "components"), 10)
    rows: list[tuple[str, float, float]] = []
    with quiet_stderr(), run.session():
        run.hook.before_build(run=run)
        run.build()
        run.hook.before_train(run=run)
        for opener in ("start_vis", "record_config"):  # what train() calls next (the core's name has changed)
            if hasattr(run, opener):
                getattr(run, opener)()
                break
        batches = run.train_batches()
        batch = run.timer.data(batches)
        loss = run.model.loss(run.model(batch["img"]), batch)
        run.hook.backward_step(run=run, loss=loss)
        plain_batches = iter(MemoryLoader(case.batches, 1, []))

        def plain_data() -> None:
            b = next(plain_batches)
            for key in USED_KEYS:
                b[key].to(run.device, non_blocking=True)

        data = _timeit(lambda: run.timer.data(batches), 20000)
        plain = _timeit(plain_data, 20000)
        rows.append(("Timer.data + Run.train_batches (.to() on all "
                     f"{len(case.batches[0])} tensors), minus plain next() + 3 .to()", data - plain, data - plain))
        run.optimizer_steps = 10_000
        schedule = _timeit(run.apply_schedule, 20000)
        rows.append(("Run.apply_schedule (lr_factor + param groups; plain loop does the same inline)",
                     schedule, schedule))
        fake = types.SimpleNamespace(optimizer=_NoOp(), clip_gradients=run.clip_gradients, optimizer_steps=0)
        fake_loss = _NoOp()
        step = _timeit(lambda: run.hook.backward_step(run=fake, loss=fake_loss), 20000)
        rows.append(("hook.backward_step dispatch + core body (optimizer/backward stubbed)", step, step))
        after = _timeit(lambda: run.hook.after_iter(run=run, loss=loss), 20000)
        rows.append(("hook.after_iter (no implementations)", after, after))
        log = _timeit(lambda: run.log_train(loss), 200)
        rows.append((f"Run.log_train, whole (every {LOG_INTERVAL} iterations)", log, log / LOG_INTERVAL))
        writers = [backend.writer for backend in run.backends if hasattr(backend, "writer")]
        if writers:
            def drained() -> float:
                begin = time.perf_counter()
                for _ in range(200):
                    run.log_train(loss)
                for writer in writers:
                    writer.flush()  # waits for TensorBoard's writer thread to write out the queue
                return (time.perf_counter() - begin) * 1e6 / 200
            drain = statistics.median(drained() for _ in range(5))
            rows.append(("  the same, with TensorBoard's writer thread's work (queue drained)", drain,
                         drain / LOG_INTERVAL))
        grads = [p.grad for p in run.model.parameters() if p.grad is not None]
        norm = _timeit(lambda: torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item(), 500)
        rows.append((f"  of which grad_norm ({len(grads)} vector_norm + stack + item)", norm, norm / LOG_INTERVAL))
        scalars = {"loss": 0.1, "lr": 0.002, "grad_norm": 1.0, "time": 0.01, "data_time": 0.0, "samples_per_s": 400.0}
        for backend in run.backends:
            cost = _timeit(lambda: backend.add_scalars(scalars, run.iteration), 200)
            rows.append((f"  of which {type(backend).__name__}.add_scalars ({len(scalars)} scalars)",
                         cost, cost / LOG_INTERVAL))
        line = "Iter(train) [ 50/551]  eta: 0:00:01  " + "  ".join(f"{k}: {v:.4g}" for k, v in scalars.items())
        info = _timeit(lambda: run.log.info(line), 500)
        rows.append(("  of which log.info (file + console handlers, console to /dev/null)", info, info / LOG_INTERVAL))
        collect = _timeit(lambda: run.hook.collect_scalars(run=run), 2000)
        rows.append(("  of which hook.collect_scalars", collect, collect / LOG_INTERVAL))
    return rows


def harness_bias(case: Case, warmup: int, iters: int) -> float:
    """Lockstep's bias: a plain loop in posecore's place minus the plain loop (µs/iter; ideally 0)."""
    total = warmup + iters + 1
    inner, outer = PlainLoop(case, total, []), PlainLoop(case, total, [])
    stamps: list[float] = []
    starts: list[float] = []
    times: list[float] = []
    outer.batches = iter(LockstepLoader(case.batches, 1, stamps, plain=inner, plain_times=times, starts=starts))
    gc.collect()
    for step in range(total):
        outer.step(step)
    next(outer.batches)
    outer_times = [(stamps[i + 1] - starts[i]) * 1e6 for i in range(total - 1)]
    p, c = charge_spill(summarise([t * 1e6 for t in times[:total - 1]], warmup, iters),
                        summarise(outer_times, warmup, iters))
    return c.robust - p.robust


def profile(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    name = "tiny" if args.models == DEFAULT_MODELS else args.models.split(",")[0]
    iters = max(LOG_INTERVAL, args.iters // LOG_INTERVAL * LOG_INTERVAL)
    warmup = args.warmup
    with tempfile.TemporaryDirectory(prefix="posecore-bench-") as tmp:
        case = make_case(name, tmp)
        core = _profile(case, tmp, warmup, iters, "posecore")
        plain = _profile(case, tmp, warmup, iters, "plain")
        parts = components(case, tmp)
        ablation = []
        bias: list[float] = []
        if not args.no_ablation:
            ab_case = case if case.name == "null" else make_case("null", tmp)
            warm, n = case_sizes("null", args)
            results: dict[str, list[float]] = {variant.name: [] for variant in ABLATIONS}
            for r in range(args.rounds):  # variants interleaved within each round, against drift
                for k, variant in enumerate(ABLATIONS):
                    p, c = lockstep(ab_case, str(Path(tmp) / f"ablation-{k}-{r}"), warm, n, variant)
                    p, c = charge_spill(summarise(p, warm, n), summarise(c, warm, n))
                    results[variant.name].append(c.robust - p.robust)
                bias.append(harness_bias(ab_case, warm, n))
                print(f"  ablation round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
            ablation = list(results.items())

    print(f"cProfile of the {name} model, {iters} iterations (cProfile adds ~0.3-1 µs per Python call, so "
          "these figures are inflated; the calibrated figures follow)")
    print("\nFunctions posecore calls more often than the plain loop (extra calls/iter, extra self µs/iter):")
    extra = []
    for key, (calls, tottime, cumtime) in core.items():
        plain_calls = plain.get(key, (0.0, 0.0, 0.0))[0]
        if calls - plain_calls > 1e-6:
            share = (calls - plain_calls) / calls
            extra.append((tottime * share, calls - plain_calls, cumtime * share, key))
    extra.sort(reverse=True)
    print(f"  {'self µs/it':>10} {'cum µs/it':>10} {'calls/it':>9}  function")
    for tottime, calls, cumtime, key in extra[:args.top]:
        print(f"  {tottime:10.2f} {cumtime:10.2f} {calls:9.2f}  {_where(key)}")
    total_core = sum(t for _, t, _ in core.values())
    total_plain = sum(t for _, t, _ in plain.values())
    print(f"  (profiled total: posecore {total_core:.0f}, plain {total_plain:.0f} µs/iter)")

    print("\nCalibrated, without a profiler (median of 7 repeats of each piece in isolation):")
    print(f"  {'µs/call':>8} {'µs/iter':>8}  piece")
    for what, per_call, per_iter in parts:
        print(f"  {per_call:8.1f} {per_iter:8.2f}  {what}")
    if ablation:
        _, base = ablation[0]
        print(f"\nIn the loop (null model, lockstep against the plain loop, {args.rounds} rounds): overhead with one "
              "piece taken out of posecore; 'saves' is what that piece costs in place:")
        print(f"  {'overhead':>8} {'spread':>9} {'saves':>6}  variant")
        for name, overheads in ablation:
            saved = statistics.median(b - o for b, o in zip(base, overheads))
            print(f"  {statistics.median(overheads):8.1f} {spread(overheads):>9} {saved:6.1f}  {name}")
        print(f"  {statistics.median(bias):8.1f} {spread(bias):>9} {'':>6}  A/A check: the plain loop in posecore's place "
              "(the harness's own bias)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per model, fresh models each (default 5)")
    parser.add_argument("--iters", type=int, default=500,
                        help="timed iterations per loop and round for the tiny model; the null model runs 4x "
                             "as many (default 500; rounded down to a multiple of 50)")
    parser.add_argument("--quickstart-iters", type=int, default=50,
                        help="timed iterations per loop and round, quickstart model (default 50)")
    parser.add_argument("--warmup", type=int, default=50,
                        help="untimed iterations first (default 50 for tiny; a tenth, at least 3, for quickstart)")
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help="comma-separated cases: null, tiny, quickstart (default: all three)")
    parser.add_argument("--mode", choices=("lockstep", "chunked"), default="lockstep",
                        help="lockstep: the loops alternate every iteration (default); chunked: whole runs "
                             "alternate, plain first in even rounds")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="wall: time.perf_counter (default); cpu: time.process_time, the CPU time of "
                             "all threads of this process (blind to time spent descheduled)")
    parser.add_argument("--amp", action="store_true", help="also measure with posecore-amp (bfloat16 autocast)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for both loops (default 2; 1 with --profile, which is steadier "
                             "on a busy machine)")
    parser.add_argument("--profile", action="store_true",
                        help="instead: profile posecore's per-iteration path (the tiny model, or the first of --models) "
                             "and take its pieces out one at a time in the loop (null model)")
    parser.add_argument("--no-ablation", action="store_true", help="--profile: skip the in-loop ablation")
    parser.add_argument("--top", type=int, default=15, help="--profile: functions to list (default 15)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.threads is None:
        args.threads = 1 if args.profile else 2
    (profile if args.profile else bench)(args)


if __name__ == "__main__":
    main()
