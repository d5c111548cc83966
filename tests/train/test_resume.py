"""Exact resume: a run stopped anywhere in its schedule continues bitwise identically."""

from __future__ import annotations

import os
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


def test_sigkill_anywhere_then_resume(text_file, cache, tmp_path, reference):
    """A real subprocess killed with SIGKILL at chosen steps, resumed by the CLI."""
    spec = _spec(text_file)
    spec_path = tmp_path / "spec.yaml"
    spec.dump(spec_path)
    run_dir = tmp_path / "run"
    # the reference ran in this process: same thread count, same float rounding
    env = dict(os.environ, MSGC_CACHE=str(cache), OMP_NUM_THREADS=str(TEST_THREADS))
    command = [sys.executable, "-m", "msgc", "train", str(spec_path)]
    killed_at = []
    for index, stop in enumerate([4, 7, 11]):
        flag = ["--out", str(run_dir)] if index == 0 else ["--resume", str(run_dir)]
        process = subprocess.Popen(command + flag, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        while _rows(run_dir) < stop and process.poll() is None:  # the row, or the end
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed_at.append(_rows(run_dir))
    assert main(["train", str(spec_path), "--resume", str(run_dir)]) == 0
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(STEPS)), killed_at
    assert _losses(rows) == reference, killed_at


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
