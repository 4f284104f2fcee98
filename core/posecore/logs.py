"""The human log: a file per run, the console, and a one-line progress display on terminals."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Mapping, TextIO

_FORMAT = "%(asctime)s - %(levelname)s - %(message)s"
_CLEAR_LINE = "\r\033[K"


class _Console(logging.StreamHandler):
    """stderr; on a terminal each record first clears the progress line it would otherwise run into."""

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream.isatty():
            self.stream.write(_CLEAR_LINE)
        super().emit(record)


class RunLogFile(logging.Handler):
    """The run's log file. It exists only once the run has started (so a command that fails on its
    inputs leaves nothing behind): records before :meth:`open` are held, then written first."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []
        self.file: logging.FileHandler | None = None

    def open(self, path: Path) -> None:
        self.file = logging.FileHandler(path, encoding="utf-8")
        self.file.setFormatter(self.formatter)
        for record in self.held:
            self.file.handle(record)
        self.held = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is None:
            self.held.append(record)
        else:
            self.file.emit(record)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        super().close()


def setup_logger(log: logging.Logger, rank: int = 0) -> list[logging.Handler]:
    """Send ``log`` to stderr and (rank 0) to a :class:`RunLogFile`, first in the list; return the handlers
    so the run can remove them.

    Ranks other than 0 of a distributed job log warnings and errors only, to stderr.
    """
    log.setLevel(logging.INFO)
    log.propagate = False
    console = _Console(sys.stderr)
    handlers: list[logging.Handler] = [console]
    fmt = _FORMAT
    if rank != 0:
        console.setLevel(logging.WARNING)
        fmt = f"%(asctime)s - [rank {rank}] %(levelname)s - %(message)s"
    else:
        handlers.insert(0, RunLogFile())
    for handler in handlers:
        handler.setFormatter(logging.Formatter(fmt, "%Y/%m/%d %H:%M:%S"))
        log.addHandler(handler)
    return handlers


def format_scalars(scalars: Mapping[str, float]) -> str:
    return "  ".join(f"{name}: {value:.4g}" for name, value in scalars.items())


class Progress:
    """A single refreshing status line (iteration, loss, lr, it/s, ETA), for terminals only."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.figures = ""
        self.drawn = 0.0

    def update(self, iteration: int, total: int, scalars: Mapping[str, float], eta: float) -> None:
        """New figures from a logging iteration."""
        seconds = int(eta)
        self.figures = (f"/{total}  loss {scalars['loss']:.4g}  lr {scalars['lr']:.3g}  "
                        f"{1 / scalars['time']:.1f} it/s  ETA {seconds // 60}:{seconds % 60:02d}")
        self.drawn = 0.0
        self.tick(iteration)

    def tick(self, iteration: int) -> None:
        """Redraw the line at most five times a second."""
        now = time.monotonic()
        if self.figures and now - self.drawn >= 0.2:
            self.stream.write(f"{_CLEAR_LINE}[{iteration}{self.figures}")
            self.stream.flush()
            self.drawn = now

    def close(self) -> None:
        if self.figures:
            self.stream.write("\n")
            self.stream.flush()
