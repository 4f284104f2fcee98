"""Interrupting runs at known points, and checking that a resumed run equals the run never stopped.

Kill tests must not race the run they kill: :func:`install_interrupter` installs a throwaway plugin,
``interrupt``, that stops its own run exactly where :func:`interrupt_env` says. Without those variables it
does nothing, so the uninterrupted run activates it too and every run of a comparison has the same
plugins and config.

:func:`assert_same_run` compares two work dirs checkpoint by checkpoint, entry by entry (tensors
bitwise), and their logged series (``scalars.json``, TensorBoard's).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import torch

from helpers import make_plugin_dist
from posecore import checkpoint
from posecore.config import loads

INTERRUPTER = '''
"""Stops its own run where INTERRUPT_AT / INTERRUPT_DURING / INTERRUPT_WITH say (tests/interruptions.py)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from posecore import hookimpl

AT = int(os.environ.get("INTERRUPT_AT") or 0)  # 0: never
DURING = os.environ.get("INTERRUPT_DURING", "iteration")
WITH = os.environ.get("INTERRUPT_WITH", "SIGKILL")
MARKERS = os.environ.get("INTERRUPT_MARKERS")


def interrupt(run):
    if MARKERS:
        Path(MARKERS, f"rank{run.rank}").touch()
    if WITH == "pause":  # until a signal reaches this process, or the test kills it
        deadline = time.monotonic() + 300
        while run.stopping is None:
            if time.monotonic() > deadline:
                raise RuntimeError("paused for 300 s and no signal came")
            time.sleep(0.01)
    elif WITH.startswith("group:"):
        if os.getpgid(0) != os.getpid():
            raise RuntimeError("not the leader of its own process group")
        # Sent by another process, as a shell, scancel or a container runtime sends it: DataLoader workers
        # treat a SIGTERM from their parent as a request to leave quietly, from anyone else as fatal.
        number = getattr(signal, WITH[len("group:"):])
        subprocess.run([sys.executable, "-c", f"import os; os.killpg({os.getpid()}, {int(number)})"],
                       start_new_session=True, check=True)
    else:
        os.kill(os.getpid(), getattr(signal, WITH))


class InterruptedValidation:
    """The validation loader; at iteration AT it interrupts the run after the first batch."""

    def __init__(self, run, loader):
        self._run, self._loader = run, loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def __len__(self):
        return len(self._loader)

    def __iter__(self):
        for index, batch in enumerate(self._loader):
            if index == 1 and self._run.iteration == AT:
                interrupt(self._run)
            yield batch


class InterruptingFile:
    """A file being written that interrupts the run once its first bytes are in it."""

    def __init__(self, run, file):
        self._run, self._file, self._interrupted = run, file, False

    def __getattr__(self, name):
        return getattr(self._file, name)

    def write(self, data):
        count = self._file.write(data)
        if not self._interrupted:
            self._interrupted = True
            self._file.flush()
            interrupt(self._run)
        return count


def interrupt_while_writing(run):
    """iter_AT.pth is written through an InterruptingFile (the write goes on if the run survives)."""
    from posecore import checkpoint

    atomic_write = checkpoint.atomic_write

    def write_interrupted(path, write):
        if path.name != f"iter_{AT}.pth":
            return atomic_write(path, write)
        return atomic_write(path, lambda file: write(InterruptingFile(run, file)))

    checkpoint.atomic_write = write_interrupted


class TornWrites:
    """scalars.json while the record of iteration AT is written: half of it reaches the file, then the
    interruption (the rest follows if the run survives)."""

    def __init__(self, run, file):
        self._run, self._file = run, file

    def __getattr__(self, name):
        return getattr(self._file, name)

    def write(self, text):
        if self._run.iteration != AT:
            return self._file.write(text)
        self._file.write(text[:len(text) // 2])
        self._file.flush()
        interrupt(self._run)
        return len(text) // 2 + self._file.write(text[len(text) // 2:])


@hookimpl
def before_build(run):
    if WITH.startswith("group:"):
        os.setpgid(0, 0)  # a group of its own, which its DataLoader workers join: the signal spares pytest


@hookimpl
def before_train(run):
    if AT and DURING == "validation":
        run.val_loader = InterruptedValidation(run, run.val_loader)
    elif AT and DURING == "checkpoint_write":
        interrupt_while_writing(run)


@hookimpl
def after_iter(run, loss):
    if run.iteration != AT:
        return
    if DURING == "iteration":
        interrupt(run)
    elif DURING == "scalars_write":  # the record of this iteration is written next
        from posecore.vis import LocalVisBackend

        for backend in run.backends:
            if isinstance(backend, LocalVisBackend):
                backend.file = TornWrites(run, backend.file)
'''

DURING = ("iteration", "validation", "checkpoint_write", "scalars_write")


def install_interrupter(root: Path) -> Path:
    """Install the ``interrupt`` plugin into ``root``; put ``root`` on PYTHONPATH and pass ``--plugin interrupt``."""
    return make_plugin_dist(root, "interrupt", INTERRUPTER)


def interrupt_env(at: int, by: str = "SIGKILL", during: str = "iteration", markers: Path | None = None
                  ) -> dict[str, str]:
    """The environment that makes ``interrupt`` stop the run at iteration ``at``.

    ``during``: ``iteration`` (right after that iteration's optimizer step, before it is logged, validated
    or saved), ``validation`` (after the first validation batch of that iteration) or ``checkpoint_write``
    (once the first bytes of ``iter_<at>.pth`` are written, on whichever thread writes it) or
    ``scalars_write`` (with half of that iteration's ``scalars.json`` record written). ``by``: a signal the process sends itself (``SIGKILL``,
    ``SIGTERM``, ``SIGINT``), ``group:SIGTERM`` (to its whole process group, DataLoader workers too: the run
    makes itself a group of its own first), or ``pause`` (wait there until a signal arrives or the test
    kills the process). ``markers``: a folder where each rank touches ``rank<N>`` when it gets there.
    """
    assert during in DURING, during
    env = {"INTERRUPT_AT": str(at), "INTERRUPT_WITH": by, "INTERRUPT_DURING": during}
    if markers is not None:
        env["INTERRUPT_MARKERS"] = str(markers)
    return env


# Entries that differ between two runs doing the same work: when and where they ran, and how they were
# started (the resumed one with posecore-resume active).
IGNORED = frozenset({("meta", "time"), ("vis_dir",), ("config", "work_dir"), ("config", "resume"),
                     ("config", "load_from"), ("meta", "plugins", "resume")})

TIMINGS = frozenset({"time", "data_time", "samples_per_s", "memory_mb"})
"""scalars.json keys that measure speed, not the run."""


def differences(first: Any, second: Any, ignored: Iterable[tuple] = IGNORED, where: tuple = ()) -> list[str]:
    """Where two checkpoints (or parts of them) differ: every entry recursively, tensors bitwise.

    The ``config`` entry is compared as the TOML it holds, key by key, so that ``ignored`` can name keys in it.
    """
    ignored = frozenset(ignored)
    name = ".".join(map(str, where)) or "the checkpoint"
    if where in ignored:
        return []
    if where == ("config",) and isinstance(first, str) and isinstance(second, str):
        first, second = loads(first), loads(second)
    if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor):
        if (first.dtype, first.shape) != (second.dtype, second.shape):
            return [f"{name}: {first.dtype}{list(first.shape)} vs {second.dtype}{list(second.shape)}"]
        return [] if torch.equal(_bits(first), _bits(second)) else [f"{name}: tensors differ"]
    if isinstance(first, dict) and isinstance(second, dict):
        found = [f"{name}: only in the first: {key!r}" for key in first if key not in second and
                 (*where, key) not in ignored]
        found += [f"{name}: only in the second: {key!r}" for key in second if key not in first and
                  (*where, key) not in ignored]
        for key in first.keys() & second.keys():
            found += differences(first[key], second[key], ignored, (*where, key))
        return found
    if isinstance(first, (list, tuple)) and isinstance(second, (list, tuple)) and type(first) is type(second):
        if len(first) != len(second):
            return [f"{name}: {len(first)} vs {len(second)} items"]
        return [found for index, (a, b) in enumerate(zip(first, second))
                for found in differences(a, b, ignored, (*where, index))]
    same_nan = isinstance(first, float) and isinstance(second, float) and math.isnan(first) and math.isnan(second)
    if type(first) is not type(second) or (first != second and not same_nan):
        return [f"{name}: {first!r} vs {second!r}"]
    return []


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes: bitwise equality (-0.0 is not 0.0, NaN equals the same NaN)."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def assert_same_checkpoint(first: Path, second: Path, ignored: Iterable[tuple] = IGNORED) -> None:
    """Both files verify against their checksums and hold the same entries (see :func:`differences`)."""
    found = differences(checkpoint.load(first), checkpoint.load(second), ignored)
    assert not found, f"{first} and {second} differ:\n  " + "\n  ".join(found[:20])


def checkpoint_names(work_dir: Path) -> list[str]:
    """The checkpoint files in ``work_dir`` (``iter_*.pth``, ``best_*.pth``; not the ``latest.pth`` link)."""
    return sorted(path.name for path in work_dir.glob("*.pth") if not path.is_symlink())


def assert_same_checkpoints(expected: Path, actual: Path, ignored: Iterable[tuple] = IGNORED) -> None:
    """Every checkpoint in ``expected`` is in ``actual`` with the same entries, and the pointers name the
    same one. ``actual`` may hold more: a signal's stop saves where the uninterrupted run did not."""
    names = checkpoint_names(expected)
    assert names, f"no checkpoints in {expected}"
    missing = sorted(set(names) - set(checkpoint_names(actual)))
    assert not missing, f"{actual} lacks {missing}"
    for name in names:
        assert_same_checkpoint(expected / name, actual / name, ignored)
    assert (actual / checkpoint.LATEST).resolve().name == (expected / checkpoint.LATEST).resolve().name


def scalar_series(work_dir: Path) -> list[dict[str, Any]]:
    """The run's ``scalars.json`` records (one ``vis_data`` in ``work_dir``: a resumed run continues it),
    without the timings."""
    paths = list(work_dir.glob("*/vis_data/scalars.json"))
    assert len(paths) == 1, f"expected one scalars.json in {work_dir}, found {paths}"
    records = [json.loads(line) for line in paths[0].read_text(encoding="utf-8").splitlines()]
    return [{key: value for key, value in record.items() if key not in TIMINGS} for record in records]


def tensorboard_series(work_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of the run's TensorBoard event files, ``{tag: [(step, value), ...]}``, without the timings."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (vis_dir,) = work_dir.glob("*/vis_data")
    events = EventAccumulator(str(vis_dir))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)]
            for tag in events.Tags()["scalars"] if tag not in TIMINGS}


def assert_same_run(expected: Path, actual: Path, ignored: Iterable[tuple] = IGNORED) -> None:
    """:func:`assert_same_checkpoints`, and the same logged series (``scalars.json``, and TensorBoard's when
    the expected run wrote event files), step by step and value by value."""
    assert_same_checkpoints(expected, actual, ignored)
    want, got = scalar_series(expected), scalar_series(actual)
    steps = [r["step"] for r in want]
    assert [r["step"] for r in got] == steps, f"scalars.json steps differ: {[r['step'] for r in got]} vs {steps}"
    different = [(w["step"], w, g) for w, g in zip(want, got) if w != g]
    assert not different, f"scalars.json differs first at step {different[0][0]}: {different[0][1]} vs " \
                          f"{different[0][2]}"
    if any(expected.glob("*/vis_data/events.out.tfevents.*")):
        want_events, got_events = tensorboard_series(expected), tensorboard_series(actual)
        assert got_events.keys() == want_events.keys(), "TensorBoard tags differ"
        for tag, series in want_events.items():
            first = next((i for i, (w, g) in enumerate(zip(series, got_events[tag])) if w != g),
                         min(len(series), len(got_events[tag])))
            assert got_events[tag] == series, f"TensorBoard series {tag!r} differs first at item {first}: " \
                                              f"{series[first:first + 3]} vs {got_events[tag][first:first + 3]}"
