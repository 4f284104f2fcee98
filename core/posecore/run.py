"""The training run: what plugins receive as ``run``, and the loop (``train``) that drives it.

    posecore train examples/quickstart.toml
    posecore train examples/quickstart.toml --cfg-options train.max_iters=200
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from posecore import __version__, checkpoint, data, dist, evaluation, rng, vis
from posecore.config import dumps, loads
from posecore.data import build_loader
from posecore.errors import CheckpointError, ConfigError, PosecoreError, StopRun
from posecore.logs import Progress, format_scalars, setup_logger
from posecore.plugins import PluginSet, call_each, call_one


def train(run: Run) -> None:
    """Build everything, then run the loop; every plugin sees each step through its hooks."""
    hook = run.hook
    with run.session():
        hook.before_build(run=run)
        run.build()
        hook.before_train(run=run)
        run.claim_work_dir()
        if run.iteration >= run.max_iters:
            run.log.info("the run in %s is complete at iteration %d (train.max_iters %d): nothing to train; raise "
                         "train.max_iters to go on", run.work_dir, run.iteration, run.max_iters)
            return
        run.open_run_dir()
        run.wrap_model()
        run.start_vis()
        batches = run.train_batches()
        loss_of = run.model.loss
        forward = hook.forward_context(run=run) or contextlib.nullcontext()
        # Hooks nobody implements are skipped outright and the core's own called directly, so the loop
        # costs what a plain loop costs.
        before_iter, backward_step, after_iter = (run.plugins.per_iteration(name) for name in
                                                  ("before_iter", "backward_step", "after_iter"))
        log_every, val_every = run.config["train"]["log_interval"], run.config["train"]["val_interval"]
        save_every = run.config["checkpoint"]["interval"]
        run.timer.reset(time.perf_counter())
        while run.iteration < run.max_iters and not run.stop_agreed():
            if before_iter is not None:
                before_iter(run=run)
            batch = run.timer.data(batches)
            with forward:
                loss = loss_of(run.train_model(batch["img"]), batch)
            run.apply_schedule()
            backward_step(run=run, loss=loss)
            run.iteration += 1
            if after_iter is not None:
                after_iter(run=run, loss=loss)
            done = run.iteration == run.max_iters
            if run.progress is not None:
                run.progress.tick(run.iteration)
            if run.iteration % log_every == 0 or done:
                run.log_train(loss)
            if (val_every and run.iteration % val_every == 0) or done:
                run.validate(forward)
            if run.iteration % save_every == 0 or done:
                run.save()
        if run.stop_agreed():  # also a stop that arrived during the last iteration, on every rank alike
            run.stop()


def load_model(config: str | Path | Mapping[str, Any], weights: str | Path | None, device: str) -> torch.nn.Module:
    """``posecore.load_model``: build the config's model without a run folder, hooks or seeding, load weights."""
    from posecore.plugins import load_config, resolve

    if isinstance(config, Mapping):
        settings, plugins = resolve(copy.deepcopy(dict(config)), lambda key: "the config given to load_model")
    else:
        settings, plugins = load_config(Path(config))
    run = Run({**settings, "device": device}, plugins)
    run.build_model()
    if weights is not None:
        run.load_weights(weights)
    return run.model.eval()


def evaluate(run: Run, weights: Path) -> dict[str, float]:
    """``posecore test``: score ``weights`` on the validation data; COCO results go to the run folder."""
    with run.session():
        run.hook.before_build(run=run)
        run.build(training=False)
        run.load_weights(weights)
        run.open_run_dir()
        metrics, results = evaluation.score(run, run.hook.forward_context(run=run) or contextlib.nullcontext())
        if results:
            path = run.run_dir / getattr(run.metric, "results_file", "predictions.json")
            path.write_text(json.dumps(results), encoding="utf-8")
            run.log.info("predictions written to %s", path)
        run.log.info("Test %s  %s", weights, format_scalars(metrics))
    return metrics


class Timer:
    """Wall and data-loading time between logging iterations (no device sync)."""

    def __init__(self) -> None:
        self.reset(time.perf_counter())

    def reset(self, now: float) -> None:
        self.start, self.data_seconds = now, 0.0

    def data(self, batches: Iterator[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        begin = time.perf_counter()
        batch = next(batches)
        self.data_seconds += time.perf_counter() - begin
        return batch


class Run:
    """One training run: config, plugins, model, optimizer, data, counters and the work dir.

    Plugins read and set these attributes in their hooks; ``save()``, ``restore()`` and ``load_weights()`` write and read
    checkpoints. ``iteration`` counts finished iterations; ``epoch``/``epoch_batch`` give the data
    position; ``optimizer_steps`` is the learning-rate schedule's position (a skipped step does not
    advance it); ``seed`` is the data seed (set by a seeding plugin in ``before_build``, else drawn; the
    same on every rank), and ``rank_seeds`` makes augmentation differ per rank (seed + rank).
    Under torchrun ``rank``/``world_size`` say which process this is; ``model`` is the bare network and
    ``train_model`` what the training step calls (DistributedDataParallel around it, or the model itself).
    """

    def __init__(self, config: dict[str, Any], plugins: PluginSet) -> None:
        self.config = config
        self.plugins = plugins
        self.hook = plugins.hook
        self.work_dir = Path(config["work_dir"])
        self.run_dir = self.vis_dir = Path()
        self.log = logging.getLogger("posecore")
        self.device = _pick_device(config["device"])
        self.layout = plugins.layout(config["val_dataloader"]["dataset"])
        self.codec = plugins.build("codec", config["codec"])
        self.metric: Any = None
        self.seed: int | None = None
        self._seed_drawn = False
        self.rank_seeds = False
        self.rank, self.world_size = 0, 1
        self.iteration = self.epoch = self.epoch_batch = self.optimizer_steps = 0
        self.max_iters = 0
        self.iters_per_epoch = 1
        self.best: dict[str, Any] = {}
        self.last_checkpoint: Path | None = None
        """The newest checkpoint complete on disk (a background write counts once it is verified)."""
        self._told: Path | None = None  # the last_checkpoint the backends were told of (checkpointed)
        self.last_metrics: dict[str, float] | None = None
        """The metrics of this run's latest validation (None before the first)."""
        self.resumed_from: Path | None = None
        self.model: torch.nn.Module | None = None
        self.train_model: torch.nn.Module | None = None
        self._parameters_of: torch.nn.Module | None = None
        self._parameter_list: list[torch.nn.Parameter] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.train_loader = self.val_loader = None
        self._train_pass: Iterator[dict[str, torch.Tensor]] | None = None
        self._log_file: Any = None
        self._saved_at: int | None = None  # the iteration of the last save() (its file may still be on its way)
        self.stopping: tuple[str, int] | None = None
        self.progress: Progress | None = None
        self.backends: list[Any] = []
        self._vis_states: dict[str, Any] = {}  # a resumed checkpoint's backend states, by backend type
        self.timer = Timer()
        self.writer = checkpoint.BackgroundWriter()
        self.plugin_data: dict[str, Any] = {}
        """Per-run objects of plugins, keyed by plugin name (plugin modules keep no state of their own)."""

    # ----------------------------------------------------------------------------------- set-up
    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Join the distributed job (under torchrun), set up logging and signal handlers; call ``after_train``,
        close backends and loaders and leave the job at the end, also after an error. The run folder is made
        later, by :meth:`open_run_dir`, once the inputs have been checked."""
        self.device = dist.setup(self.device, self.config["dist"]["timeout"])
        self.rank, self.world_size = dist.rank(), dist.world_size()
        try:
            with self._logged():
                yield
            dist.barrier()  # leave together: with gloo, fewer finished jobs aborted at shutdown (see cli.main)
        finally:
            dist.teardown()

    @contextlib.contextmanager
    def _logged(self) -> Iterator[None]:
        main = self.rank == 0
        handlers = setup_logger(self.log, self.rank)
        self._log_file = handlers[0] if main else None
        self.progress = Progress(sys.stderr) if main and sys.stderr.isatty() else None
        self.log.info("posecore %s, torch %s, device %s%s, %s", __version__, torch.__version__, self.device,
                      f", {self.world_size} processes" if self.world_size > 1 else "", self.plugins.header())
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        error: BaseException | None = None
        try:
            yield
            self.writer.wait()  # a run is over when its last checkpoint is on disk
        except BaseException as err:
            error = err
            if main and not isinstance(err, (PosecoreError, KeyboardInterrupt)):
                handlers[0].handle(self.log.makeRecord(self.log.name, logging.ERROR, __file__, 0, "run failed",
                                                       (), sys.exc_info()))
            raise
        finally:
            # The clean-up runs to its end: a further signal now is only noted (raised, it would skip the rest:
            # after_train, flushing the backends, restoring the handlers), and each step runs even if one fails.
            for sig in previous:
                signal.signal(sig, self._note_signal)
            with contextlib.ExitStack() as cleanup:  # callbacks run last-in first-out
                for sig, handler in previous.items():
                    cleanup.callback(signal.signal, sig, handler)
                for handler in handlers:
                    cleanup.callback(handler.close)
                    cleanup.callback(self.log.removeHandler, handler)
                if self.progress is not None:
                    cleanup.callback(self.progress.close)
                for backend in self.backends:
                    cleanup.callback(backend.close)
                cleanup.callback(self.hook.after_train, run=self, error=error)
                cleanup.callback(self._close_loaders)
                cleanup.callback(self._end_vis, error)
                cleanup.callback(self.writer.join)  # never leave a checkpoint half-written

    def open_run_dir(self) -> None:
        """Create the run folder and its log, once the inputs are checked: a command that fails on them
        leaves nothing behind. ``vis_dir`` is the run folder's ``vis_data``, unless a resumed run continues
        its earlier one's."""
        self.run_dir = dist.broadcast(self._new_run_dir() if self.rank == 0 else None)
        if not self.vis_dir.parts:
            self.vis_dir = self.run_dir / "vis_data"
        if self._log_file is not None:
            self._log_file.open(self.run_dir / f"{self.run_dir.name}.log")
        self.log.info("work dir %s, run folder %s", self.work_dir, self.run_dir)

    def _new_run_dir(self) -> Path:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d_%H%M%S")
        run_dir, suffix = self.work_dir / stamp, 1
        while run_dir.exists():  # two runs started within one second
            suffix += 1
            run_dir = self.work_dir / f"{stamp}_{suffix}"
        run_dir.mkdir()
        return run_dir

    def claim_work_dir(self) -> None:
        """Refuse a work dir where this run would overwrite or prune checkpoints it does not continue.

        A fresh run needs a work dir without checkpoints; a resumed run may share it only with the run it
        continues, and one resumed from a named file (``load_from``) only up to that file's iteration. (The
        newest checkpoint that loads is found by a plugin; later files failed to load and may be replaced.)
        Pointers to files that are gone are removed.
        """
        found = sorted(checkpoint.checkpoints_in(self.work_dir), key=lambda p: (checkpoint.iteration_of(p), p.name))
        if self.resumed_from is None:
            others = found
            problem = "holds checkpoints of an earlier run"
        elif self.resumed_from.resolve().parent != self.work_dir.resolve():
            others = found
            problem = f"holds checkpoints of another run than {self.resumed_from}"
        else:
            named = self.config.get("load_from") is not None
            others = [p for p in found if named and checkpoint.iteration_of(p) > self.iteration]
            problem = f"holds checkpoints after iteration {self.iteration}, which resuming from " \
                      f"{self.resumed_from.name} would overwrite"
        if others:
            names = ", ".join(p.name for p in others[:3]) + (f" and {len(others) - 3} more" if others[3:] else "")
            how = "continue it with --resume, " if self.resumed_from is None else ""
            raise ConfigError(f"work dir {self.work_dir} {problem} ({names}); {how}train into another --work-dir, "
                              f"or move those files away")
        if self.rank == 0:
            checkpoint.drop_stale_pointers(self.work_dir)

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Only set a flag: the loop saves and stops at the next iteration boundary. A second
        # Ctrl-C interrupts at once.
        if self.stopping is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._note_signal(signum, frame)

    def _note_signal(self, signum: int, frame: Any) -> None:
        if self.stopping is None or self.stopping[1] == 0:  # a signal's exit code wins over a plugin's stop
            self.stopping = (f"stopped by {signal.Signals(signum).name}", 128 + signum)

    def request_stop(self, reason: str) -> None:
        """End the run early and successfully: at the next iteration boundary, save a checkpoint and stop."""
        self.stopping = (reason, 0)

    def build(self, training: bool = True) -> None:
        """Build model, optimizer and loaders (after plugins' ``before_build`` seeded the generators); not
        ``training`` (``posecore test``): only the model and the validation loader."""
        if self.seed is None:
            self.seed, self._seed_drawn = dist.broadcast(secrets.randbits(31)), True
            if training:
                self.log.info("seed not set: drew seed %d; set randomness.seed=%d (posecore-seed) to repeat the data "
                              "order and augmentation", self.seed, self.seed)
        self.val_loader = build_loader(self, "val_dataloader")
        self.metric = self.plugins.build("metric", self.config["val_evaluator"], layout=self.layout,
                                         dataset=self.config["val_dataloader"]["dataset"])
        self.build_model(log_size=training)
        if not training:
            return
        self.train_loader = build_loader(self, "train_dataloader")
        self.optimizer = _build_optimizer(self.config["optim"], self.model, self._lr_scale())
        self.iters_per_epoch = self.train_loader.sampler.usable // self.train_loader.sampler.global_batch
        train_cfg = self.config["train"]
        self.max_iters = train_cfg.get("max_iters") or train_cfg["max_epochs"] * self.iters_per_epoch

    def build_model(self, log_size: bool = False) -> None:
        """Build the config's model for its keypoint layout and check that the codec can decode its output; with
        ``log_size`` (a training run's first lines) log its parameters and GFLOPs of one crop (multiply-adds, as MMPose
        counts them)."""
        from torch.utils.flop_counter import FlopCounterMode

        options = self.config["model"]
        self.model = self.plugins.build("model", options, num_keypoints=self.layout.num_keypoints)
        if options["norm"] == "group":
            _to_group_norm(self.model)
        self.model.to(self.device)
        if options["channels_last"]:
            self.model.to(memory_format=torch.channels_last)
            # The crops too, as the model is called: the data pipeline and the batches stay as they are.
            self.model.register_forward_pre_hook(
                lambda module, args: (args[0].contiguous(memory_format=torch.channels_last), *args[1:]))
        self.train_model = self.model
        width, height = self.codec.input_size
        self.model.eval()  # a shape probe: no BatchNorm statistics, no dropout draws
        # Counting decomposes ops in Python (about 1 s for HRNet-W32): only where the count is logged.
        counting = FlopCounterMode(display=False) if log_size else contextlib.nullcontext()
        with torch.no_grad(), counting:
            output = self.model(torch.zeros(1, 3, height, width, device=self.device))
        self.model.train()
        self.codec.check_output(output)
        if not log_size:
            return
        self.log.info("model %s: %s parameters, %.3g GFLOPs at %dx%d (multiply-adds of one crop)", options["type"],
                      f"{sum(p.numel() for p in self.model.parameters()):,}", counting.get_total_flops() / 2e9, width,
                      height)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The module validation scores and checkpoints keep as ``model``: a plugin's (hook ``eval_model``, e.g. an
        average of the weights), else the trained ``model``."""
        return self.hook.eval_model(run=self) or self.model

    def _lr_scale(self) -> float:
        """``auto_scale_lr``: the learning rate times (batch_size x processes) / base_batch_size, as MMPose does."""
        options = self.config["auto_scale_lr"]
        if not options["enable"]:
            return 1.0
        factor = self.train_loader.sampler.global_batch / options["base_batch_size"]
        self.log.info("auto_scale_lr: total batch %d, base %d: learning rate x %.4g",
                      self.train_loader.sampler.global_batch, options["base_batch_size"], factor)
        return factor

    def wrap_model(self) -> None:
        """Under torchrun: DistributedDataParallel around the model as loaded or resumed (and SyncBatchNorm
        for ``model.norm = "sync_batch"``); a single process trains the model itself. ``model.compile``: what
        trains is ``torch.compile`` of that; ``model`` stays the bare module (checkpoints keep its keys)."""
        options = self.config["model"]
        if self.world_size > 1:
            if options["norm"] == "sync_batch":
                if self.device.type != "cuda":
                    raise ConfigError('model.norm = "sync_batch" needs CUDA; use "batch" or "group" on CPU')
                # The converted layers take over the same parameter tensors, so the optimizer still holds them.
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if not options["compile"]:
            return
        if self.device.type == "cpu":  # else the first step fails deep in TorchInductor, with pages of traceback
            import sysconfig

            try:
                from torch._inductor.cpp_builder import get_cpp_compiler  # private: another torch may lack it

                get_cpp_compiler()
            except ImportError:
                pass
            except RuntimeError:
                raise ConfigError("model.compile = true needs a C++ compiler on a CPU (TorchInductor builds its "
                                  "kernels with it) and none works here; install g++ (or set CXX to one), or set "
                                  "model.compile = false") from None
            headers = Path(sysconfig.get_path("include"))
            if not (headers / "Python.h").is_file():
                raise ConfigError(f"model.compile = true needs Python's headers on a CPU (TorchInductor builds its "
                                  f"kernels against them) and {headers} has no Python.h; install them (e.g. the "
                                  f"python3-dev package), or set model.compile = false")
        self.train_model = torch.compile(self.train_model)

    def _close_loaders(self) -> None:
        """End the data workers: the pass in progress, and persistent ones."""
        if self._train_pass is not None:
            self._train_pass.close()
        data.close(self.train_loader)
        data.close(self.val_loader)

    def start_vis(self) -> None:
        """Open the vis backends and dump the config as this run uses it (drawn or resumed seed included).

        A resumed run continues the ``vis_data`` of the run it resumes, from the checkpoint's step on, so
        its scalars form one series with no repeated steps.
        """
        self._told = self.last_checkpoint  # the checkpoint resumed from is no news to a backend
        if self.rank != 0:
            return
        self.vis_dir.mkdir(parents=True, exist_ok=True)
        after = self.iteration if self.resumed_from is not None else None
        self.backends = []
        for entry in self.config["visualizer"]["vis_backends"]:
            saved = self._vis_states.get(entry["type"])  # e.g. the id of a tracker run to continue
            extra = {} if saved is None else {"resume_state": saved}
            self.backends.append(self.plugins.type_of("vis_backend", entry["type"])(self.vis_dir, resume_step=after,
                                                                                  **extra, **_options(entry)))
        text = dumps(self.config)
        (self.vis_dir / "config.toml").write_text(text, encoding="utf-8")
        for backend in self.backends:
            backend.add_config(text)

    def train_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """Batches from the current position (epoch, batch in epoch) onwards, moved to the device."""
        loader = self.train_loader
        loader.sampler.seed = self.seed
        loader.dataset.seed = self.seed + self.rank if self.rank_seeds else self.seed
        on_cpu = self.device.type == "cpu"  # the loader's tensors are there already: no .to() dispatch
        while True:
            loader.sampler.set_position(self.epoch, self.epoch_batch * loader.sampler.global_batch)
            if loader.dataset.set_epoch(self.epoch) and self.rank == 0:
                self.log.info("augmentation switched at epoch %d", loader.dataset.switch[0])
            self._train_pass = data.iterate(loader)
            for batch in self._train_pass:
                self.epoch_batch += 1
                yield batch if on_cpu else {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            self.epoch += 1
            self.epoch_batch = 0

    # ------------------------------------------------------------------------------ each step
    def apply_schedule(self) -> None:
        """Set the learning rate for the next optimizer step from ``optimizer_steps``."""
        factor = lr_factor(self.config["scheduler"], self.optimizer_steps, self.max_iters, self.iters_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    def parameters(self) -> list[torch.nn.Parameter]:
        """The model's parameters, listed once per model (walking the modules each time costs ~30 µs)."""
        if self._parameters_of is not self.model:
            self._parameters_of, self._parameter_list = self.model, list(self.model.parameters())
        return self._parameter_list

    def clip_gradients(self) -> None:
        """Clip the global gradient norm when ``optim.clip_grad_norm`` is set (call after unscaling)."""
        max_norm = self.config["optim"].get("clip_grad_norm")
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm)

    def stop_agreed(self) -> bool:
        """Whether the loop stops now. Under torchrun the ranks decide together (a signal or a plugin's
        request may reach one rank an iteration before another); a single process just reads ``stopping``."""
        self.writer.check()  # a failed background checkpoint write ends the run here, with its reason
        if self.last_checkpoint is not self._told:  # a background write finished (tested inline: every iteration)
            self._tell_checkpointed()
        if self.world_size == 1:
            return self.stopping is not None
        code = dist.max_int(-1 if self.stopping is None else self.stopping[1])
        if code >= 0 and self.stopping is None:
            self.stopping = ("stopped together with another rank", code)
        return code >= 0

    def stop(self) -> None:
        """Act on ``stopping``: save (unless this iteration is saved), wait until the file is on disk, then end;
        a signal's stop raises StopRun. A failed write is raised instead, on every rank."""
        reason, exit_code = self.stopping
        if self._saved_at != self.iteration:
            self.save()
        failure = None
        if self.rank == 0:
            try:
                self.writer.wait()
            except CheckpointError as err:
                failure = str(err)
        failure = dist.broadcast(failure)
        if failure is not None:
            raise CheckpointError(f"{reason} at iteration {self.iteration}, but {failure}")
        path = self.last_checkpoint
        if exit_code:
            raise StopRun(f"{reason} at iteration {self.iteration}; saved {path}", exit_code)
        self.log.info("%s; stopping at iteration %d (checkpoint %s)", reason, self.iteration, path)

    # ------------------------------------------------------------------------- logging, val
    def log_train(self, loss: torch.Tensor) -> None:
        """Log loss, learning rate, gradient norm, timings and plugins' scalars (syncs the device)."""
        now = time.perf_counter()
        interval = self.config["train"]["log_interval"]
        steps = interval if self.iteration % interval == 0 else self.iteration % interval
        value = dist.mean(loss.item())
        if not math.isfinite(value):
            self.require_finite_weights(f"loss is {value}")
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        scalars = {
            "loss": value,
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": torch.nn.utils.get_total_norm(grads).item() if grads else 0.0,
            "time": (now - self.timer.start) / steps,
            "data_time": self.timer.data_seconds / steps,
        }
        scalars["samples_per_s"] = self.train_loader.sampler.global_batch / scalars["time"]  # all processes
        if self.device.type == "cuda":
            scalars["memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        for extra in self.hook.collect_scalars(run=self):
            scalars.update(extra)
        eta = scalars["time"] * (self.max_iters - self.iteration)
        self.write_scalars(scalars)
        line = f"Iter(train) [{self.iteration:>{len(str(self.max_iters))}}/{self.max_iters}]  " \
               f"eta: {_clock(eta)}  {format_scalars(scalars)}"
        self.log.info(line)
        if self.progress is not None:
            self.progress.update(self.iteration, self.max_iters, scalars, eta)
        self.timer.reset(time.perf_counter())

    def write_scalars(self, scalars: dict[str, float]) -> None:
        for backend in self.backends:
            backend.add_scalars(scalars, self.iteration)

    def validate(self, forward: Any = contextlib.nullcontext()) -> dict[str, float]:
        """Score the model on the validation data, log it with the backends' prediction images, call
        ``after_val``, keep the best checkpoint."""
        metrics, _ = evaluation.score(self, forward)
        self.last_metrics = metrics
        self.hook.after_val(run=self, metrics=metrics)
        self.write_scalars({f"val/{name}": value for name, value in metrics.items()})
        vis.add_predictions(self)
        for backend in self.backends:
            backend.flush()
        self.log.info("Iter(val) [%d]  %s", self.iteration, format_scalars(metrics))
        self._keep_best(metrics)
        self.timer.reset(time.perf_counter())
        return metrics

    def _keep_best(self, metrics: dict[str, float]) -> None:
        name = self.config["checkpoint"].get("save_best")
        if name is None:
            return
        if name not in metrics:
            raise ConfigError(f"checkpoint.save_best is '{name}' but validation gives {', '.join(metrics)}")
        value, rule = metrics[name], self.config["checkpoint"]["rule"]
        if self.best and (self.best["metric"], self.best.get("rule", rule)) != (name, rule):
            # The resumed run's record measured something else: it cannot be compared, and its file stays.
            self.log.info("save_best is now %s (%s), was %s (%s): %s is kept and a new best record starts", name,
                          rule, self.best["metric"], self.best.get("rule", "?"), self.best["file"])
            self.best = {}
        better = (value > self.best["value"] if rule == "greater" else value < self.best["value"]) if self.best else True
        if not better:
            return
        old = self.best.get("file")
        path = self.work_dir / f"best_{name}_iter_{self.iteration}.pth"
        self.best = {"metric": name, "rule": rule, "value": value, "iteration": self.iteration, "file": path.name}

        def replace_old() -> None:
            if old and old != path.name:
                checkpoint.remove(self.work_dir / old)
            self.log.info("best %s %.4f at iteration %d: %s", name, value, self.iteration, path)

        self._write(path, self.state(), replace_old)

    # ----------------------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, Any]:
        """The checkpoint contents: tensors and plain values only (under torchrun every rank must call it)."""
        evaluated = self.eval_model
        return {
            "model": evaluated.state_dict(),
            **({} if evaluated is self.model else {"train_model": self.model.state_dict()}),
            "optimizer": self.optimizer.state_dict(),
            "loop": {"iteration": self.iteration, "epoch": self.epoch, "epoch_batch": self.epoch_batch,
                     "global_batch": self.train_loader.sampler.global_batch,
                     "optimizer_steps": self.optimizer_steps, "max_iters": self.max_iters},
            "seed": self.seed,
            "rng": dist.gather(rng.capture()),  # one entry per rank
            "vis_dir": str(self.vis_dir.resolve()),
            "vis": {entry["type"]: backend.state() for entry, backend in
                    zip(self.config["visualizer"]["vis_backends"], self.backends) if hasattr(backend, "state")},
            "best": dict(self.best),
            "config": dumps(self.config),
            "meta": {"posecore": __version__, "torch": str(torch.__version__), "time": time.time(),
                     "plugins": self.plugins.versions()},
            "plugins": call_each(self.plugins.pm, "save_state", run=self),
        }

    def require_finite_weights(self, finding: str) -> None:
        """Stop the run when inf/NaN reached the weights (a skipped AMP step leaves them finite): a device sync."""
        finite = torch.stack([torch.isfinite(p).all() for p in self.parameters()]).all().item()
        if not finite:
            raise PosecoreError(f"{finding} at iteration {self.iteration} and the weights are no longer finite; "
                                f"stopping. The last good checkpoint is "
                                f"{self.last_checkpoint or 'none (no checkpoint saved yet)'}")

    def save(self) -> Path:
        """Write ``iter_<N>.pth`` atomically (never with inf/NaN weights), move the pointers, prune old ones
        (with ``checkpoint.async``: in the background, see ``_write``)."""
        self.require_finite_weights("about to save a checkpoint")
        path = self.work_dir / f"iter_{self.iteration}.pth"

        def publish() -> None:
            checkpoint.update_pointers(self.work_dir, path)
            self.last_checkpoint = path
            checkpoint.prune(self.work_dir, self.config["checkpoint"]["max_keep"])
            self.log.info("saved checkpoint %s", path)

        self._write(path, self.state(), publish)
        self._saved_at = self.iteration
        if self.rank != 0:  # rank 0 writes; a failure is raised there, and on every rank by stop()
            self.last_checkpoint = path
        self._tell_checkpointed()
        return path

    def _tell_checkpointed(self) -> None:
        """Call ``checkpointed(step)`` on the backends that have it when ``last_checkpoint`` has moved."""
        if self.last_checkpoint is self._told:
            return
        self._told = self.last_checkpoint
        step = checkpoint.iteration_of(self._told)
        for backend in self.backends:
            if hasattr(backend, "checkpointed"):
                backend.checkpointed(step)

    def _end_vis(self, error: BaseException | None) -> None:
        """At the end, once no checkpoint write is in flight: tell the backends the last checkpoint, and after a
        successful run that validated, ``summarize`` it."""
        self._tell_checkpointed()
        if error is not None or self.last_metrics is None:
            return
        settings = vis.hparams(self)
        for backend in self.backends:
            if hasattr(backend, "summarize"):
                backend.summarize(settings, self.last_metrics, self.iteration)

    def _write(self, path: Path, state: dict[str, Any], then: Callable[[], None]) -> None:
        """Rank 0 writes ``state`` to ``path`` and then calls ``then`` (which moves pointers: only after a
        complete write). With ``checkpoint.async`` the loop waits only for a host-memory snapshot; the
        writer thread writes, reads the file back against its checksum, then calls ``then``."""
        background = self.config["checkpoint"]["async"]
        if self.rank == 0 and background:
            snapshot = self.writer.snapshot(state)

            def job() -> None:
                checkpoint.save(path, snapshot)
                checkpoint.verify(path)
                then()

            self.writer.submit(path.name, job)
        elif self.rank == 0:
            checkpoint.save(path, state)
            then()
        if not background:
            dist.barrier()  # no rank goes on (or reads it) before the file is complete

    def load_weights(self, path: str | Path) -> None:
        """Initialise the model from a checkpoint's (or a state_dict file's) weights; ``load_strict`` applies."""
        strict = self.config["load_strict"]
        weights, recorded_config = checkpoint.read_weights(path)
        self.warn_if_trained_otherwise(_recorded(recorded_config), path)
        skipped = checkpoint.load_model_weights(self.model, weights, path, strict)
        self.log.info("loaded model weights from %s%s", path,
                      f" (load_strict = false: skipped {', '.join(skipped)})" if skipped else "")

    def warn_if_trained_otherwise(self, recorded: dict[str, Any] | None, path: str | Path) -> None:
        """Warn, in one line, when the config a checkpoint recorded differs from this run's in what the weights
        mean (model, codec, keypoint layout): such weights often load without an error and predict nonsense."""
        try:
            then = _trained_for(recorded, self.plugins.layout) if recorded else None
        except (KeyError, ValueError):  # written by another version: nothing to compare
            then = None
        if then is None:
            return
        now = _trained_for(self.config, self.plugins.layout)
        changed = [f"{key} {_brief(then.get(key))} -> {_brief(now.get(key))}" for key in dict.fromkeys([*then, *now])
                   if then.get(key) != now.get(key)]
        if changed and self.rank == 0:  # every rank loads it; one line says it
            self.log.warning("%s was trained for another model, codec or keypoint layout than this config: %s", path,
                             "; ".join(changed))

    def _log_config_changes(self, recorded: dict[str, Any] | None, path: Path) -> None:
        """Log, in one block, every key this config changes against the checkpoint's; refuse a change of
        optimizer type (its state would be another optimizer's)."""
        from posecore.compose import config_changes

        if recorded is None:
            return
        changes = [(key, old, new) for key, old, new in config_changes(recorded, self.config)
                   if key not in ("resume", "load_from")]
        for key, old, new in changes:
            if key == "optim.type":
                raise CheckpointError(f"{path}: cannot resume with optim.type {old} -> {new}: its optimizer state is "
                                      f"another optimizer's; keep optim.type = \"{old}\", or start from its weights "
                                      f"with load_from (without resume)")
        if changes and self.rank == 0:
            self.log.info("resume: this config differs from the one %s was saved with:\n%s", path.name,
                          "\n".join(f"  {key}: {_brief(old)} -> {_brief(new)}" for key, old, new in changes))

    def restore(self, state: dict[str, Any], path: Path) -> None:
        """Continue from a loaded checkpoint: weights, optimizer, position, best record, plugins' and RNG state."""
        lacking = [key for key in ("optimizer", "loop", "seed", "best", "rng") if key not in state]
        if lacking:
            raise CheckpointError(f"{path}: cannot resume from it: it has no {', '.join(lacking)} (a weights-only "
                                  f"file?); use load_from without resume to start from its weights")
        recorded = _recorded(state.get("config"))
        self._log_config_changes(recorded, path)
        self.warn_if_trained_otherwise(recorded, path)
        checkpoint.load_model_weights(self.model, state.get("train_model", state["model"]), path)
        # This config's hyper-parameters (learning rate, weight decay, ...) apply from the resumed step on;
        # the checkpoint gives the optimizer's state (moments, step counts).
        settings = [{key: value for key, value in group.items() if key != "params"}
                    for group in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as err:
            regrouped = " (optim.paramwise decides the groups: keep the values it was saved with)" \
                if "parameter groups" in str(err) else ""
            raise CheckpointError(f"{path}: its optimizer state does not fit this run's optimizer ({err}){regrouped}; "
                                  f"check [optim] against the run that saved it") from None
        for group, own in zip(self.optimizer.param_groups, settings):
            group.update(own)
        loop = state["loop"]
        self.iteration, self.epoch, self.optimizer_steps = loop["iteration"], loop["epoch"], loop["optimizer_steps"]
        # The position is kept in samples, so a job resumed with another number of processes goes on
        # from the same place in the epoch (to within one total batch).
        global_batch = self.train_loader.sampler.global_batch
        self.epoch_batch = loop["epoch_batch"] * loop.get("global_batch", global_batch) // global_batch
        if self._seed_drawn:  # the seed build() drew and logged gives way to the checkpoint's
            self.log.info("resume: continuing with the checkpoint's seed %d", state["seed"])
        self.seed, self.best = state["seed"], dict(state["best"])
        saved = state.get("plugins", {})
        for name in saved:
            if self.plugins.pm.has_plugin(name):
                call_one(self.plugins.pm, "load_state", name, run=self, state=saved[name])
        evaluated = self.eval_model
        if evaluated is not self.model and "train_model" in state:  # the plugin's module, e.g. averaged weights
            checkpoint.load_model_weights(evaluated, state["model"], path)
        stateful = {impl.plugin_name for impl in self.hook.save_state.get_hookimpls()}
        for names, how in ((sorted(set(saved) - stateful), "are not active now; their saved state is left out"),
                           (sorted(stateful - set(saved)), "have no state in the checkpoint; they start fresh")):
            if names:
                self.log.info("resume: plugins %s %s", ", ".join(names), how)
        # Last, so that nothing above draws from the restored streams. Ranks beyond those that saved (a job
        # resumed with more processes) start new streams from (seed, rank, iteration).
        states = state["rng"]
        if self.rank < len(states):
            rng.restore(states[self.rank])
        else:
            rng.seed_globals(self.seed, self.rank, self.iteration)
        if len(states) != self.world_size:
            self.log.warning("resume: %s was saved by %d process(es), this job has %d: the data position and "
                             "schedule continue, the run is not bitwise the uninterrupted one", path, len(states),
                             self.world_size)
        self.last_checkpoint = self.resumed_from = Path(path)
        self.log.info("resumed from %s at iteration %d", path, self.iteration)
        if loop.get("max_iters", self.max_iters) != self.max_iters:
            self.log.warning("resume: the run is now %d iterations long, was %d: the learning-rate schedule is "
                             "recomputed for the new length from iteration %d on", self.max_iters, loop["max_iters"],
                             self.iteration)
        self._vis_states = dict(state.get("vis", {}))
        if state.get("vis_dir") and Path(state["vis_dir"]).is_dir():
            self.vis_dir = Path(state["vis_dir"])
            self.log.info("continuing the scalars in %s", self.vis_dir)


def lr_factor(schedule: dict[str, Any], step: int, total: int, per_epoch: int = 1) -> float:
    """Learning-rate multiplier after ``step`` optimizer steps of ``total``: linear warm-up, then the decay
    (``per_epoch``: iterations in an epoch, for a schedule given ``by_epoch``)."""
    warmup = schedule["warmup_iters"]
    if step < warmup:  # MMEngine's LinearLR: from the ratio at step 0 to 1 at step warmup - 1
        ratio = schedule["warmup_ratio"]
        return ratio + (1 - ratio) * step / max(1, warmup - 1)
    kind, unit = schedule["type"], per_epoch if schedule["by_epoch"] else 1
    if kind == "cosine":
        begin = max(warmup, schedule["begin"] * unit)  # flat from the warm-up's end to begin
        progress = min(1.0, max(0, step - begin) / max(1, total - begin))
        low = schedule["min_lr_ratio"]
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "step":
        return schedule["gamma"] ** sum(step >= m * unit for m in schedule["milestones"])
    return 1.0


def _build_optimizer(options: dict[str, Any], model: torch.nn.Module, lr_scale: float) -> torch.optim.Optimizer:
    kind, lr, decay = options["type"], options["lr"] * lr_scale, options["weight_decay"]
    groups = [{"params": params, "weight_decay": decay * mult}
              for mult, params in _decay_groups(model, options["paramwise"]).items()]
    if kind == "SGD":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=options["momentum"], weight_decay=decay)
    else:
        optimizer = getattr(torch.optim, kind)(groups, lr=lr, weight_decay=decay)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return optimizer


_NORMS = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.instancenorm._InstanceNorm, torch.nn.GroupNorm,
          torch.nn.LayerNorm)


def _decay_groups(model: torch.nn.Module, paramwise: dict[str, float]) -> dict[float, list[torch.nn.Parameter]]:
    """The parameters by weight-decay multiplier, as MMEngine's ``paramwise_cfg`` gives it: ``norm_decay_mult`` for
    normalisation layers' weights and biases, ``bias_decay_mult`` for other biases, 1 for the rest. One group when
    all are 1 (so the optimizer state keeps its layout)."""
    groups: dict[float, list[torch.nn.Parameter]] = {}
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:  # shared between modules: listed once
                continue
            seen.add(id(param))
            mult = (paramwise["norm_decay_mult"] if isinstance(module, _NORMS)
                    else paramwise["bias_decay_mult"] if name == "bias" else 1.0)
            groups.setdefault(float(mult), []).append(param)
    return groups


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device '{name}' is not a device name; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for but CUDA is not available here; use device = \"auto\"")
    return device


_NOT_IN_THE_WEIGHTS = ("flip_test", "init_weights", "init_from", "dropout", "channels_last", "compile")
"""Model keys (at any depth, e.g. ``model.backbone.init_from``) that do not change what trained weights compute."""


def _trained_for(config: dict[str, Any], layout_of: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """What a model's weights mean under ``config``: model, codec and keypoint layout, as flat keys."""
    from posecore.compose import leaves

    layout = layout_of(config["val_dataloader"]["dataset"])
    return {**{f"model.{key}": value for key, value in leaves(config["model"])
               if key.rsplit(".", 1)[-1] not in _NOT_IN_THE_WEIGHTS},
            **{f"codec.{key}": value for key, value in leaves(config["codec"])},
            "keypoints": list(layout.names), "flip_pairs": [list(pair) for pair in layout.flip_pairs]}


def _to_group_norm(module: torch.nn.Module) -> None:
    """``model.norm = "group"``: every BatchNorm2d made a GroupNorm of up to 32 groups."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            setattr(module, name, torch.nn.GroupNorm(math.gcd(32, child.num_features), child.num_features))
        else:
            _to_group_norm(child)


def _recorded(text: str | None) -> dict[str, Any] | None:
    """The config a checkpoint recorded, parsed; None when it has none or it does not parse."""
    try:
        return loads(text) if text else None
    except ConfigError:
        return None


def _brief(value: Any) -> str:
    """A value for a one-line message: long arrays cut to their first items and their length."""
    if value is None:
        return "unset"
    if isinstance(value, list):
        return "[" + ", ".join(map(_brief, value[:3])) + (f", ... {len(value)} in all" if len(value) > 3 else "") + "]"
    return str(value)


def _options(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "type"}


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
