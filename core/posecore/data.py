"""Data loading: every random choice is a function of (seed, epoch, index), never of a shared stream.

The sampler's order comes from (seed, epoch) and each sample's augmentation from (seed, epoch, index),
so results do not depend on ``num_workers`` and a resumed run only needs its position: the sampler
skips indices, it never loads or augments the skipped samples.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from posecore.config import Key
from posecore.errors import ConfigError, PosecoreError
from posecore.rng import init_worker, mixed_rng
from posecore.pose import photometric
from posecore.pose.transforms import TopDownTransform


class KeyedDataset(Dataset):
    """Top-down samples addressed by ``(epoch, index)``; augmentation drawn from (seed, epoch, index).

    With ``switch`` (epoch, transform), samples of that epoch and later use that transform instead (MMPose's
    PipelineSwitchHook): chosen by each key's epoch, so it holds in every worker and in a resumed run alike.
    """

    def __init__(self, source: Any, transform: TopDownTransform, seed: int,
                 switch: tuple[int, TopDownTransform] | None = None) -> None:
        self.source = source
        self.transform = transform
        self.switch = switch
        self.seed = seed
        self.epoch = 0  # the epoch whose workers start next (for seeding their global generators)
        self._switched = False

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, np.ndarray]:
        epoch, index = key
        transform = self.transform_at(epoch)
        rng = mixed_rng(self.seed, epoch, index) if transform.train else None
        record = self.source.load(index)
        sample = transform(record, rng)
        sample.update({key: record[key] for key in ("image_id", "score") if key in record})  # for COCO results
        sample["index"] = index  # to put the validation shards of several processes back in order
        return sample

    def transform_at(self, epoch: int) -> TopDownTransform:
        """The transform of ``epoch``'s samples."""
        if self.switch is not None and epoch >= self.switch[0]:
            return self.switch[1]
        return self.transform

    def set_epoch(self, epoch: int) -> bool:
        """Set the epoch whose workers start next; True at the first such epoch of this process that uses the
        switched transform (to say so once)."""
        self.epoch = epoch
        starts = self.transform_at(epoch) is not self.transform and not self._switched
        self._switched = self._switched or starts
        return starts


class EpochSampler(Sampler):
    """Yields this rank's ``(epoch, index)`` keys for one epoch, starting ``start`` samples into it.

    The order is a permutation drawn from (seed, epoch) (or 0..N-1 without shuffling), the same on every
    rank. It is cut into total batches of ``batch_size x world_size``; rank r takes the r-th slice of
    each, so a job of W processes sees exactly the batches one process would with a W times larger
    batch. Only whole total batches are used: every epoch has ``usable // global_batch`` of them.
    """

    def __init__(self, size: int, batch_size: int, seed: int, shuffle: bool, rank: int = 0,
                 world_size: int = 1) -> None:
        self.size = size
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.global_batch = batch_size * world_size
        self.usable = size // self.global_batch * self.global_batch
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        """Begin at sample ``start`` (a multiple of ``global_batch``) of ``epoch``."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return (self.usable - self.start) // self.world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = mixed_rng(self.seed, self.epoch).permutation(self.size) if self.shuffle else np.arange(self.size)
        mine = order[self.start:self.usable].reshape(-1, self.world_size, self.batch_size)[:, self.rank]
        epoch = self.epoch
        return ((epoch, int(i)) for i in mine.ravel())


class ShardSampler(Sampler):
    """Validation: every sample once, rank r taking indices r, r + W, r + 2W, ..."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, size, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((0, i) for i in self.indices)


def build_transform(run: Any, layout: Any, train: bool, augment: dict[str, Any] | None = None) -> TopDownTransform:
    """The top-down transform that the run's codec, the augmentation options ``augment`` (default: the run's
    ``[augment]``, without its switch) and the data's keypoint ``layout`` (flip pairs, upper body for the half body)
    describe (no augmentation and no targets unless ``train``)."""
    augment = run.config["augment"] if augment is None else augment
    geometric = {key: value for key, value in augment.items() if key not in photometric.KEYS and key != "switch"}
    return TopDownTransform(run.codec, flip_pairs=layout.flip_pairs, train=train, upper_body=layout.upper_body,
                            photometric=photometric.PhotometricAugmentation.from_options(augment) if train else None,
                            **geometric)


def build_switch(run: Any, layout: Any) -> tuple[int, TopDownTransform] | None:
    """The training transform from ``augment.switch.epoch`` on: ``[augment]`` with the switch's keys replaced (None
    without a switch)."""
    switch = dict(run.config["augment"]["switch"])
    if not switch:
        return None
    epoch = switch.pop("epoch")
    return epoch, build_transform(run, layout, True, {**run.config["augment"], **switch})


def build_loader(run: Any, section: str) -> DataLoader:
    """A DataLoader over ``run.config[section]``: the records of its dataset type, cropped and encoded by the run's
    codec; this rank's share, from an :class:`EpochSampler` (training) or a :class:`ShardSampler` (validation)."""
    options = run.config[section]
    train = section == "train_dataloader"
    world_size = run.world_size
    dataset_type = run.plugins.type_of("dataset", options["dataset"]["type"])
    for key, spec in dataset_type.options.keys.items():
        value = options["dataset"].get(key)
        if isinstance(spec, Key) and spec.input_path and value is not None and not Path(value).exists():
            raise ConfigError(f"{section}.dataset.{key}: {Path(value).absolute()} does not exist (a relative path is "
                              f"from the config file's folder, or from the current directory on the command line)")
    source = run.plugins.build("dataset", options["dataset"], train=train)
    layout = run.plugins.layout(options["dataset"])
    dataset = KeyedDataset(source, build_transform(run, layout, train), run.seed,
                           build_switch(run, layout) if train else None)
    batch_size = options["batch_size"]
    if train and len(dataset) < batch_size * world_size:
        raise ConfigError(f"{section}.dataset has {len(dataset)} samples, fewer than batch_size {batch_size} x "
                          f"{world_size} process(es)")
    if not train and len(dataset) < world_size:
        raise ConfigError(f"{section}.dataset has {len(dataset)} samples, fewer than the {world_size} processes")
    sampler = (EpochSampler(len(dataset), batch_size, run.seed, shuffle=True, rank=run.rank, world_size=world_size)
               if train else ShardSampler(len(dataset), run.rank, world_size))
    workers = options["num_workers"]
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      persistent_workers=workers > 0 and options["persistent_workers"],
                      pin_memory=options["pin_memory"] and run.device.type == "cuda",
                      worker_init_fn=init_worker if workers > 0 else None,
                      # Its own generator: an iterator must not draw its base seed from the global RNG,
                      # or a resumed run's dropout stream would be one draw off.
                      generator=torch.Generator().manual_seed(run.seed))


_HELD_BACK = {signal.SIGINT, signal.SIGTERM}


def iterate(loader: DataLoader) -> Iterator[dict[str, Any]]:
    """The batches of ``loader``, for one pass.

    Its worker processes are started with SIGINT and SIGTERM blocked and then ignore them
    (:func:`posecore.rng.init_worker`): a signal to the whole process group (``scancel``, a container
    stop, Ctrl-C) reaches only the main process, which finishes the iteration and saves while the
    workers keep serving it; it ends them when it is done. An error raised in a worker comes back as
    the worker raised it, one line (the worker's traceback stays attached for the run's log).
    Closed early, the pass ends its workers at once (persistent ones too: see :func:`close`).
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_BACK)  # forked workers inherit the mask
    try:
        iterator = iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD_BACK)  # a signal that came meanwhile is handled now
    try:
        yield from iterator
    except BaseException as err:  # an error, or closed early (GeneratorExit)
        _shutdown(loader, iterator)
        own = _as_raised_in_worker(err)
        if own is err:
            raise
        raise own from err


def close(loader: DataLoader | None) -> None:
    """End ``loader``'s persistent workers (call when the run is over)."""
    if loader is not None:
        _shutdown(loader, getattr(loader, "_iterator", None))


def _shutdown(loader: DataLoader, iterator: Any) -> None:
    # torch's own shutdown: a sentinel to each worker, join, terminate the ones still busy after 5 s.
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    if getattr(loader, "_iterator", None) is iterator:  # persistent workers: never reuse ended ones
        loader._iterator = None


def _as_raised_in_worker(err: BaseException) -> BaseException:
    """torch re-raises a worker's error with the worker's whole traceback as its message; give it its own
    one-line message back (the last line of that traceback, less the exception's name)."""
    text = str(err)
    if not (text.startswith("Caught ") and "DataLoader worker process" in text.partition("\n")[0]):
        return err
    line = text.rstrip().splitlines()[-1]
    kind = type(err)
    for name in (f"{kind.__module__}.{kind.__qualname__}", kind.__qualname__):
        if line.startswith(name + ": "):
            line = line[len(name) + 2:]
            break
    try:
        return kind(line)
    except Exception:  # an exception type that wants other arguments
        return err if isinstance(err, PosecoreError) else RuntimeError(f"in a DataLoader worker: {line}")
