"""Progress of a training run, shaped for where it goes.

In a terminal: a tqdm bar redrawn in place. Anywhere else (a CI log, ``> file``, ``nohup``)
a redrawn bar would write one carriage-return frame per step, so `LogProgress` prints a
plain line every `every_percent` of the run or every `every_seconds`, whichever comes first,
and one at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from tqdm import tqdm


class Progress(Protocol):
    """What the trainer calls on its progress display."""

    def __enter__(self) -> Progress: ...
    def __exit__(self, *exc: object) -> None: ...
    def update(self) -> None: ...
    def set_postfix(self, refresh: bool = ..., **fields: Any) -> None: ...


class LogProgress:
    """Progress as occasional plain lines: ``name: step 40/800 (5%), 12 s, loss=3.456``."""

    def __init__(self, total: int, initial: int, desc: str, stream: TextIO,
                 every_percent: float = 5.0, every_seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.step, self.desc, self.stream = total, initial, desc, stream
        self.every_steps = max(1, round(total * every_percent / 100))
        self.every_seconds, self.clock = every_seconds, clock
        self.start = self.last_time = clock()
        self.last_step = initial
        self.fields: dict[str, Any] = {}

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.step != self.last_step:
            self._print()

    def update(self) -> None:
        """One step done; print a line if a step or time mark was passed."""
        self.step += 1
        due_by_steps = self.step // self.every_steps > self.last_step // self.every_steps
        if due_by_steps or self.clock() - self.last_time >= self.every_seconds:
            self._print()

    def set_postfix(self, refresh: bool = False, **fields: Any) -> None:
        """Figures shown at the end of the next line (tqdm's signature)."""
        self.fields = fields

    def _print(self) -> None:
        now = self.clock()
        figures = "".join(f", {key}={value}" for key, value in self.fields.items())
        print(f"{self.desc}: step {self.step}/{self.total} ({self.step / self.total:.0%}), "
              f"{now - self.start:.0f} s{figures}", file=self.stream, flush=True)
        self.last_step, self.last_time = self.step, now


def progress_display(total: int, initial: int, desc: str, enabled: bool,
                     stream: TextIO | None = None) -> Progress:
    """A redrawn bar where `stream` (default stderr) is a terminal, plain lines elsewhere."""
    stream = stream or sys.stderr
    if enabled and not stream.isatty():
        return LogProgress(total, initial, desc, stream)
    return tqdm(total=total, initial=initial, desc=desc, file=stream, disable=not enabled,
                dynamic_ncols=True, leave=False)
