"""Progress output: a redrawn bar in a terminal, a few plain lines anywhere else."""

from __future__ import annotations

import io
import itertools

from tqdm import tqdm

from msgc.train.progress import LogProgress, progress_display


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_steps(progress: LogProgress, steps: int, clock: Clock, seconds_per_step: float) -> None:
    with progress:
        for step in range(steps):
            clock.now += seconds_per_step
            progress.set_postfix(loss=f"{3.0 - step / steps:.3f}", stage=0)
            progress.update()


def test_an_800_step_run_writes_a_line_every_5_percent() -> None:
    stream, clock = io.StringIO(), Clock()
    run_steps(LogProgress(800, 0, "gpt-tiny", stream, clock=clock), 800, clock, 0.01)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len(lines) == 20
    assert lines[0] == "gpt-tiny: step 40/800 (5%), 0 s, loss=2.951, stage=0"
    assert lines[-1].startswith("gpt-tiny: step 800/800 (100%), 8 s")


def test_slow_steps_print_by_time_too() -> None:
    stream, clock = io.StringIO(), Clock()
    run_steps(LogProgress(10_000, 0, "run", stream, every_seconds=60, clock=clock), 100, clock,
              20)
    steps = [int(line.split()[2].split("/")[0]) for line in stream.getvalue().splitlines()]
    assert steps == [*range(3, 100, 3), 100]  # a line a minute, and the last step at exit


def test_a_resumed_run_counts_from_where_it_resumed() -> None:
    stream, clock = io.StringIO(), Clock()
    run_steps(LogProgress(100, 50, "run", stream, clock=clock), 50, clock, 0.0)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10 and lines[0].startswith("run: step 55/100 (55%)")


def test_the_display_follows_the_stream() -> None:
    not_a_terminal = io.StringIO()
    assert isinstance(progress_display(10, 0, "x", True, not_a_terminal), LogProgress)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    bar = progress_display(10, 0, "x", True, terminal)
    assert isinstance(bar, tqdm) and not bar.disable
    with bar:
        for _ in itertools.repeat(None, 10):
            bar.update()
    assert "\r" in terminal.getvalue()
    quiet = io.StringIO()
    with progress_display(10, 0, "x", False, quiet) as bar:
        bar.update()
    assert quiet.getvalue() == ""
