"""Checkpoint files: atomic writes, safe loading, the ``last_checkpoint``/``latest.pth`` pointers, pruning;
weights from MMPose's checkpoints and pretrained backbones from ImageNet files (:func:`init_from`).

A checkpoint is a plain dict of tensors and plain values, loaded with ``torch.load(weights_only=True)``
so that opening an untrusted file cannot run code. Beside each one, ``<name>.xxh128`` (its XXH3-128
checksum in the line format of ``xxhsum``, so ``xxhsum -c`` checks it too) is written after the
checkpoint is complete; loading verifies it, so a corrupt or truncated file is refused rather than
half-read. XXH3 rather than SHA-256: it detects corruption as well and costs about 4 ms instead of
35 ms on a 40 MB checkpoint here (tampering is not its job: ``weights_only`` loading is).

Weights files of MMPose/MMEngine also hold numpy arrays (the dataset metainfo in ``meta``) and, from a
training run, MMEngine's training state: :func:`read_weights` admits the first and skips the second.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import xxhash

from posecore.errors import CheckpointError, InputError

FORMAT = "posecore-checkpoint-1"
LAST_CHECKPOINT = "last_checkpoint"
LATEST = "latest.pth"
_ITER_FILE = re.compile(r"^(?:best_.+_)?iter_(\d+)\.pth$")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A crash at any point leaves either the old file or the complete new one under ``path``.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


class _HashingWriter:
    """A file wrapper that checksums what passes through (so saving reads nothing back) and starts the
    disk writeback as it goes, so the final fsync has little left to wait for."""

    _WRITEBACK_EVERY = 8 << 20

    def __init__(self, file: Any) -> None:
        self.file = file
        self.checksum = xxhash.xxh3_128()
        self.written = self.flushed = 0

    def write(self, data: Any) -> int:
        self.checksum.update(data)
        count = self.file.write(data)
        self.written += count
        if self.written - self.flushed >= self._WRITEBACK_EVERY and hasattr(os, "posix_fadvise"):
            # On Linux, DONTNEED on dirty pages starts their writeback without waiting for it.
            self.file.flush()
            os.posix_fadvise(self.file.fileno(), self.flushed, self.written - self.flushed, os.POSIX_FADV_DONTNEED)
            self.flushed = self.written
        return count

    def flush(self) -> None:
        self.file.flush()


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".xxh128")


def save(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically, then its checksum file."""
    writers = []

    def write(file: Any) -> None:
        writers.append(_HashingWriter(file))
        torch.save({"format": FORMAT, **state}, writers[0])

    atomic_write(path, write)
    line = f"{writers[0].checksum.hexdigest()}  {path.name}\n"
    atomic_write(checksum_path(path), lambda file: file.write(line.encode()))


def verify(path: Path) -> None:
    """Read ``path`` back and check it against its checksum file; a mismatch is a CheckpointError."""
    checksum = xxhash.xxh3_128()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 22):
            checksum.update(chunk)
    if checksum.hexdigest() != _expected_checksum(path):
        raise CheckpointError(f"{path}: does not match {checksum_path(path).name} after writing it; the disk or "
                              f"filesystem lost data")


class BackgroundWriter:
    """Writes checkpoints on a thread, at most one at a time; a failure is kept until :meth:`check`.

    ``submit`` waits for the write in flight before it starts the next, so the loop only ever stalls
    for the state snapshot (or, when saves come faster than the disk, for the previous write).
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._failure: tuple[str, BaseException] | None = None
        self._buffers: dict[tuple, torch.Tensor] = {}

    def snapshot(self, state: Any) -> Any:
        """``state`` with every tensor copied to host memory, so training can go on while it is written.

        Waits for the write in flight, then copies into the buffers of the previous snapshot where the
        shapes allow (fresh memory would cost page faults at every save).
        """
        self.wait()
        previous, self._buffers = self._buffers, {}

        def copy(value: Any, key: tuple) -> Any:
            if isinstance(value, torch.Tensor):
                buffer = previous.get(key)
                if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
                    buffer = torch.empty(value.shape, dtype=value.dtype, pin_memory=value.is_cuda)
                self._buffers[key] = buffer.copy_(value.detach())
                return buffer
            if isinstance(value, dict):
                return {name: copy(item, key + (name,)) for name, item in value.items()}
            if isinstance(value, (list, tuple)):
                return type(value)(copy(item, key + (index,)) for index, item in enumerate(value))
            return value

        return copy(state, ())

    def submit(self, name: str, job: Callable[[], None]) -> None:
        """Run ``job`` (writing the checkpoint ``name``) on the writer thread, after the one in flight."""
        self.wait()

        def run() -> None:
            try:
                job()
            except BaseException as err:  # kept for the loop's thread, which raises it
                self._failure = (name, err)

        self._thread = threading.Thread(target=run, name="posecore-checkpoint-writer")
        self._thread.start()

    def wait(self) -> None:
        """Block until no write is in flight, then :meth:`check`."""
        self.join()
        self.check()

    def join(self) -> None:
        """Block until no write is in flight; keep any failure for :meth:`check`."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def check(self) -> None:
        """Raise a CheckpointError if a background write failed."""
        if self._failure is not None:
            (name, err), self._failure = self._failure, None
            raise CheckpointError(f"the background write of checkpoint {name} failed ({type(err).__name__}: "
                                  f"{err}); the previous checkpoint is still the latest. Free disk space or fix "
                                  f"the work dir, then continue with --resume")


def remove(path: Path) -> None:
    """Delete a checkpoint and its checksum file."""
    path.unlink(missing_ok=True)
    checksum_path(path).unlink(missing_ok=True)


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint; anything that is not a complete posecore checkpoint is a CheckpointError."""
    state = _read(Path(path))
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a posecore checkpoint (no 'model' entry)")
    return state


class _NotLoaded:
    """Stands in for MMEngine's training state (``message_hub``'s HistoryBuffer, whose pickle calls
    ``getattr(HistoryBuffer, 'min')``): not weights, so neither imported nor built; the stand-ins do nothing."""

    def __init__(self, *args: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _numpy_globals() -> list[Any]:
    """What pickled numpy arrays, scalars and their dtypes need, of booleans, integers and floats only, under the
    names of numpy 1.x (``numpy.core``) and 2.x (``numpy._core``): the functions and classes that rebuild them
    from raw bytes, nothing that can import or call anything else."""
    reconstruct, scalar = np.zeros(0).__reduce__()[0], np.float64(0).__reduce__()[0]
    kinds = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.float16,
             np.float32, np.float64)
    return [*((function, f"{package}.multiarray.{function.__name__}") for function in (reconstruct, scalar)
              for package in ("numpy.core", "numpy._core")),
            np.ndarray, np.dtype, *(type(np.dtype(kind)) for kind in kinds)]


_FOREIGN_GLOBALS: Sequence[Any] = (*_numpy_globals(), (_NotLoaded, "mmengine.logging.history_buffer.HistoryBuffer"),
                                  (_NotLoaded, "builtins.getattr"))
"""What :func:`read_weights` admits beyond torch's ``weights_only`` defaults, for MMPose's and MMEngine's files:
the numpy types of ``meta['dataset_meta']`` (and of the numpy scalars MMEngine logs), and inert stand-ins for
MMEngine's training state."""


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """Model weights from a posecore checkpoint with the config it recorded (TOML), or from a file holding a
    plain state_dict or MMPose's ``{"meta": ..., "state_dict": ...}`` (config None).

    An MMEngine training checkpoint loads too: its numpy values come back as numpy, its ``message_hub`` holds
    stand-ins that do nothing. Any other pickled object is refused, by the name of its global.
    """
    state = _read(Path(path), _FOREIGN_GLOBALS)
    weights = _weights_in(state)
    if weights is None:
        raise CheckpointError(f"{path}: holds no model weights (neither a posecore checkpoint nor a state_dict)")
    recorded = state.get("config") if weights is not state else None
    return weights, recorded if isinstance(recorded, str) else None


def _weights_in(state: Any) -> dict[str, torch.Tensor] | None:
    """The state_dict in a posecore (``model``) or MMEngine (``state_dict``) checkpoint, or ``state`` itself."""
    weights = state.get("model", state.get("state_dict", state)) if isinstance(state, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        return None
    return weights


def _read(path: Path, allowed: Sequence[Any] = ()) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    data = path.read_bytes()
    expected = _expected_checksum(path)
    if expected is not None and xxhash.xxh3_128(data).hexdigest() != expected:
        raise CheckpointError(f"{path}: checksum mismatch with {checksum_path(path).name}: the file is corrupt or "
                              f"was cut short; use an older checkpoint")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:
        reason = first_line(err)
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            named = re.search(r"GLOBAL (\S+)", str(err))
            reason = "it contains pickled Python objects, which posecore refuses to load (they could run code)" + \
                     (f": {named.group(1)}" if named else "")
        raise CheckpointError(f"{path}: not a loadable checkpoint: {reason}") from None
    return state


def first_line(err: Exception) -> str:
    """The first line of ``err``'s message, or its type's name when it has none: the reason in a one-line error."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _expected_checksum(path: Path) -> str | None:
    try:
        text = checksum_path(path).read_text(encoding="utf-8")
    except FileNotFoundError:  # written by hand or by an older version: nothing to verify against
        return None
    return text.split()[0] if text.split() else ""


def load_model_weights(model: torch.nn.Module, weights: dict[str, Any], path: str | Path,
                       strict: bool = True) -> list[str]:
    """Load a state_dict; mismatched keys or shapes are a CheckpointError listing the first few.

    Not ``strict``: load what fits and return the names of the keys left out.
    """
    own = model.state_dict()
    missing, unexpected, wrong = _mismatches(own, weights)
    problems = [f"{label}: {_first_few(keys)}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", wrong))
                if keys]
    if problems and strict:
        raise CheckpointError(f"{path}: weights do not fit this model ({'; '.join(problems)}); check [model] "
                              f"and [codec] against the run that saved it, or set load_strict = false")
    model.load_state_dict({k: v for k, v in weights.items() if k in own and k not in wrong}, strict=False)
    return missing + unexpected + wrong


def _mismatches(own: dict[str, Any], weights: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """The keys of ``own`` that ``weights`` lacks, those it has beyond ``own``, and those of another shape."""
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    wrong = [k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, wrong


def _first_few(keys: Sequence[str]) -> str:
    return f"{', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"


PRETRAINED: dict[str, str] = {
    **{f"torchvision://{name}": f"https://download.pytorch.org/models/{name}-{digest}.pth" for name, digest in (
        ("resnet18", "f37072fd"), ("resnet34", "b627a593"), ("resnet50", "0676ba61"), ("resnet101", "63fe2227"),
        ("resnet152", "394f9c45"))},
    **{f"open-mmlab://msra/{name}": f"https://download.openmmlab.com/pretrain/third_party/{name}-{digest}.pth"
       for name, digest in (("hrnetv2_w18_small", "b5a04e21"), ("hrnetv2_w18", "00eb2006"),
                            ("hrnetv2_w32", "dc9eeb4f"), ("hrnetv2_w40", "ed0b031c"), ("hrnetv2_w48", "d2186c55"))},
    **{f"mmcls://resnet{depth}_v1d": f"https://download.openmmlab.com/mmclassification/v0/resnet/"
                                     f"resnetv1d{depth}_b32x8_imagenet_20210531-{digest}.pth"
       for depth, digest in (("50", "db14775a"), ("101", "6e13bcd3"), ("152", "278cf22a"))},
}
"""The ImageNet weights that MMPose's configs name, by their MMEngine names, as MMEngine resolves them
(``torchvision://resnet50`` is torchvision's IMAGENET1K_V1 file)."""


def init_from(module: torch.nn.Module, source: str, log: logging.Logger) -> None:
    """Load pretrained weights into a backbone, not strictly, as MMEngine's ``Pretrained`` init does.

    ``source`` is a local file, an http(s) URL or a name of :data:`PRETRAINED` (downloaded into torch.hub's
    cache). The file may be a plain state_dict (torchvision's, with the ``fc.*`` the backbone lacks) or
    ``{"state_dict": ...}`` (MMPose's/MMEngine's); a ``module.`` prefix is dropped, and from keys under
    ``backbone.`` (a whole model's, or mmcls's) only those are taken. Missing and unexpected keys are logged, a
    file of which nothing fits is a CheckpointError.
    """
    path = _pretrained_file(source, log)
    weights = _weights_in(_read(path, _FOREIGN_GLOBALS))
    if weights is None:
        raise CheckpointError(f"init_from {source}: {path} holds no state_dict")
    weights = {key[len("module."):] if key.startswith("module.") else key: value for key, value in weights.items()}
    own = module.state_dict()
    part = ""
    if any(key.startswith("backbone.") for key in weights) and not any(key.startswith("backbone.") for key in own):
        weights, part = {key[len("backbone."):]: value for key, value in weights.items()
                         if key.startswith("backbone.")}, " (its backbone.* entries)"
    missing, unexpected, wrong = _mismatches(own, weights)
    if len(missing) + len(wrong) == len(own):
        raise CheckpointError(f"init_from {source}: no weight of {path}{part} fits {type(module).__name__} (it has "
                              f"{_first_few(list(weights))}; the module {_first_few(list(own))}): a file for another "
                              f"architecture?")
    load_model_weights(module, weights, path, strict=False)
    log.info("initialised %s from %s%s: %d of its %d tensors", type(module).__name__, source, part,
             len(own) - len(missing) - len(wrong), len(own))
    # BatchNorm's num_batches_tracked matters only with momentum None, and older files lack it: not worth a warning.
    missing = [key for key in missing if not key.endswith(".num_batches_tracked")]
    for keys, level, what in ((missing, logging.WARNING, "left as initialised, missing from the file"),
                              (wrong, logging.WARNING, "left as initialised, of another shape in the file"),
                              (unexpected, logging.INFO, "in the file but not in the module, ignored")):
        if keys:
            log.log(level, "init_from %s: %d %s: %s", source, len(keys), what, _first_few(keys))


def _pretrained_file(source: str, log: logging.Logger) -> Path:
    forms = f"a local file, an http(s) URL or one of {', '.join(PRETRAINED)}"
    url = PRETRAINED.get(source, source)
    if url.startswith(("http://", "https://")):
        return hub_file(url, f"init_from {source}", log, "; or set init_from to the path of a local copy")
    if "://" in source:
        raise InputError(f"init_from {source}: unknown name; init_from takes {forms}")
    path = Path(source).expanduser()
    if not path.is_file():
        raise CheckpointError(f"init_from {source}: file not found; init_from takes {forms}")
    return path


def hub_file(url: str, where: str, log: logging.Logger, otherwise: str = "") -> Path:
    """The file of ``url`` in torch.hub's cache (``checkpoints`` in ``torch.hub.get_dir()``), downloaded there
    first if missing. A failed download is an InputError that begins with ``where`` and says where to get the
    file and where to put it, then ``otherwise``."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    target = folder / url.rsplit("/", 1)[-1]
    if target.is_file():
        return target
    log.info("downloading %s into %s", url, folder)
    hashed = torch.hub.HASH_REGEX.search(target.name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), hashed.group(1) if hashed else None,
                                       progress=sys.stderr.isatty())
    except Exception as err:  # offline, a proxy, an HTTP error, a wrong hash: the remedy is the same
        raise InputError(f"{where}: {target.name} is not in torch.hub's cache and the download failed "
                         f"({first_line(err)}): download {url} into {folder} (TORCH_HOME moves the cache)"
                         f"{otherwise}") from None
    return target


def iteration_of(path: Path) -> int | None:
    match = _ITER_FILE.match(path.name)
    return int(match.group(1)) if match else None


def update_pointers(work_dir: Path, checkpoint: Path) -> None:
    """Point ``last_checkpoint`` (a text file holding the path) and ``latest.pth`` at ``checkpoint``."""
    atomic_write(work_dir / LAST_CHECKPOINT, lambda file: file.write(str(checkpoint.resolve()).encode()))
    link = work_dir / LATEST
    tmp = work_dir / f".{LATEST}.tmp{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        tmp.symlink_to(checkpoint.name)
    except OSError:  # no symlinks here (some Windows or network filesystems): keep a hard link instead
        os.link(checkpoint, tmp)
    os.replace(tmp, link)


def checkpoints_in(work_dir: Path) -> list[Path]:
    """The run checkpoints in ``work_dir``: ``iter_*.pth`` and ``best_*_iter_*.pth``."""
    return [p for p in work_dir.glob("*.pth") if iteration_of(p) is not None]


def pointed_to(work_dir: Path) -> Path | None:
    """The checkpoint ``last_checkpoint`` names, or None without one. It is read as a file name in
    ``work_dir``: it only ever names a checkpoint there, and a work dir that was copied or moved must go
    on with its own files, not the ones at the path it was written with."""
    pointer = work_dir / LAST_CHECKPOINT
    return work_dir / Path(pointer.read_text(encoding="utf-8").strip()).name if pointer.is_file() else None


def drop_stale_pointers(work_dir: Path) -> None:
    """Remove ``last_checkpoint`` and ``latest.pth`` when the file they name is gone."""
    target, link = pointed_to(work_dir), work_dir / LATEST
    if target is not None and not target.is_file():
        (work_dir / LAST_CHECKPOINT).unlink()
    if link.is_symlink() and not link.exists():
        link.unlink()


def prune(work_dir: Path, max_keep: int) -> None:
    """Delete all but the ``max_keep`` newest ``iter_*.pth`` (0 keeps all)."""
    if max_keep <= 0:
        return
    files = sorted((p for p in work_dir.glob("iter_*.pth") if iteration_of(p) is not None), key=iteration_of)
    for old in files[:-max_keep]:
        remove(old)
