"""Exact resume: a run stopped anywhere in its schedule continues bitwise identically."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from msgc.cli import main
from msgc.errors import TrainingDivergedError
from msgc.train.checkpoint import list_checkpoints
from msgc.train.data import prepare_data
from msgc.train.metrics import read_metrics
from msgc.train.trainer import Trainer
from tests.conftest import TEST_THREADS
from tests.train.test_trainer import make_spec

# growth at 4 (width + heads) and 10 (ffn + depth), ramp 3: folds at the start of 7 and 13;
# the learning-rate multiplier halves over the first ramp (a resume mid-ramp must get it)
STAGES = [{"step": 4, "hidden": 48, "heads": 3, "lr_scale": 0.5},
          {"step": 10, "ffn": 96, "layers": 3}]
STEPS = 16


def _spec(text_file, **train):
    return make_spec(text_file, stages=STAGES, steps=STEPS, checkpoint_every=1,
                     keep_checkpoints=2, **train)


def _trainer(spec, cache, out, resume=False):
    tokenizer, data = prepare_data(spec.train.data, "byte", 260, cache)
    return Trainer(spec, tokenizer, data, out, progress=False, resume=resume)


def _losses(rows):
    return {row["step"]: row["loss"] for row in rows}


@pytest.fixture(scope="module")
def reference(text_file, tmp_path_factory):
    """The uninterrupted run's loss at every step (computed once for the module)."""
    folder = tmp_path_factory.mktemp("reference")
    spec = _spec(text_file)
    return _losses(_trainer(spec, folder / "cache", folder / "run").run().rows)


@pytest.mark.parametrize("stop", [3, 4, 5, 7, 10, 12])  # before/at growth, mid-ramp, fold
def test_resume_is_bitwise_exact(stop, text_file, cache, tmp_path, reference):
    spec = _spec(text_file)
    first = _trainer(spec, cache, tmp_path / "run")
    for _ in range(stop):
        first.train_step()
    del first
    resumed = _trainer(spec, cache, tmp_path / "run", resume=True)
    assert resumed.resumed_from == stop
    result = resumed.run()
    assert _losses(result.rows) == reference  # every step, bitwise
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(STEPS))


def test_corrupted_newest_checkpoint_falls_back(text_file, cache, tmp_path, reference):
    spec = _spec(text_file)
    first = _trainer(spec, cache, tmp_path / "run")
    for _ in range(6):
        first.train_step()
    newest = list_checkpoints(tmp_path / "run")[-1]
    newest.payload.write_bytes(newest.payload.read_bytes()[:1000])
    resumed = _trainer(spec, cache, tmp_path / "run", resume=True)
    assert resumed.resumed_from == 5
    assert _losses(resumed.run().rows) == reference


KILLS = [4, 7, 11]  # rows written before each SIGKILL: before growth, mid-ramp, second ramp
POLLS = 60_000  # x 10 ms: a hang guard (at least 10 minutes), not a speed target
RESUMING = re.compile(r"resuming .* at step (\d+)")


def test_sigkill_mid_run_then_resume(text_file, cache, tmp_path, reference, capsys):
    """Real subprocesses killed with SIGKILL mid-run, each after writing rows and before the
    end; each resumes from a checkpoint after step 0 and writes rows past the previous kill;
    the last run, by the CLI in-process, ends bitwise as the uninterrupted run."""
    spec = _spec(text_file)
    spec_path = tmp_path / "spec.yaml"
    spec.dump(spec_path)
    run_dir = tmp_path / "run"
    # the reference ran in this process: same thread count, same float rounding
    env = dict(os.environ, MSGC_CACHE=str(cache), OMP_NUM_THREADS=str(TEST_THREADS))
    command = [sys.executable, "-m", "msgc", "train", str(spec_path)]
    killed = 0  # rows written when the last kill landed
    for index, stop in enumerate(KILLS):
        flag = ["--out", str(run_dir)] if index == 0 else ["--resume", str(run_dir)]
        log = tmp_path / f"run-{index}.log"
        with log.open("w") as out:
            process = subprocess.Popen(command + flag, env=env, stdout=out,
                                       stderr=subprocess.STDOUT)
            _wait_for_rows(process, run_dir, max(stop, killed + 1), log)
            process.send_signal(signal.SIGKILL)
            process.wait()
        output = log.read_text()
        assert process.returncode == -signal.SIGKILL, (
            f"run {index} exited with {process.returncode}, not killed mid-run:\n{output}")
        if index:
            _assert_resumed(output, killed)
        killed = _rows(run_dir)
        assert stop <= killed < STEPS, f"run {index} killed after {killed} rows:\n{output}"
    assert main(["train", str(spec_path), "--resume", str(run_dir)]) == 0
    _assert_resumed(capsys.readouterr().err, killed)
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(STEPS))
    assert _losses(rows) == reference


def _wait_for_rows(process: subprocess.Popen, run_dir: Path, rows: int, log: Path) -> None:
    """Poll until the run has written `rows` metrics rows; fail if it exits or hangs first."""
    for _ in range(POLLS):
        if _rows(run_dir) >= rows:
            return
        if process.poll() is not None:
            pytest.fail(f"the training subprocess exited with {process.returncode} before "
                        f"writing row {rows}:\n{log.read_text()}")
        time.sleep(0.01)
    process.kill()
    process.wait()
    pytest.fail(f"the training subprocess wrote no row {rows} in {POLLS} polls (hung?):\n"
                f"{log.read_text()}")


def _assert_resumed(output: str, killed: int) -> None:
    """The run said it resumed from a checkpoint past step 0, at most at the kill's row."""
    match = RESUMING.search(output)
    assert match, f"the run did not resume:\n{output}"
    assert 0 < int(match.group(1)) <= killed, f"resumed at {match.group(1)} after {killed} rows"


def _rows(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_checkpoint_of_another_spec_is_refused(text_file, cache, tmp_path, capsys):
    spec = _spec(text_file)
    first = _trainer(spec, cache, tmp_path / "run")
    first.train_step()
    other = make_spec(text_file, stages=STAGES, steps=STEPS, lr=5e-4)
    other_path = tmp_path / "other.yaml"
    other.dump(other_path)
    assert main(["train", str(other_path), "--resume", str(tmp_path / "run")]) == 2
    assert "another spec" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_the_last_checkpoint(text_file, cache, tmp_path):
    spec = make_spec(text_file, stages=[], steps=30, lr=1e6, grad_clip=0.0, warmup_steps=0,
                     checkpoint_every=1)
    trainer = _trainer(spec, cache, tmp_path / "run")
    with pytest.raises(TrainingDivergedError, match=r"at step \d+.*checkpoint \(step \d+\)"):
        trainer.run()
    good = list_checkpoints(tmp_path / "run")[-1].step
    assert good == trainer.state.step
    assert torch.isfinite(torch.tensor([r["loss"] for r in trainer.state.metrics.rows])).all()
