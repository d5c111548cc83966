"""Two processes (torchrun, gloo on the CPU) train the same curve as one, across growth events.

Each distributed run is a real ``torchrun --standalone --nproc_per_node 2 -m msgc train``
subprocess, bounded by a timeout. The reference is one process with the same global batch.
Dropout is 0: ranks draw their own dropout masks, so with dropout the curves would only agree
in distribution.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from msgc.spec import Spec, parse_spec
from msgc.train.checkpoint import list_checkpoints
from msgc.train.data import prepare_data
from msgc.train.metrics import read_metrics
from msgc.train.trainer import Trainer
from tests.train.test_trainer import MODELS, STAGES

RTOL = 1e-4
TIMEOUT = 180  # seconds per torchrun
STEPS = 12  # growth at 4 and 8, ramp 3: folds at the start of 7 and 11
ROOT = Path(__file__).resolve().parents[2]


def _fsdp_available() -> bool:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return True


NEEDS_FSDP2 = pytest.mark.skipif(
    not _fsdp_available(), reason="this torch has no FSDP2 (torch.distributed.fsdp.fully_shard)")


def _spec(text_file: Path, family: str) -> Spec:
    return parse_spec({
        "name": f"dist-{family}",
        "model": MODELS[family] | {"vocab_size": 260, "max_seq_len": 32, "dropout": 0.0},
        "growth": {"ramp_steps": 3, "stages": STAGES},
        "train": {"steps": STEPS, "batch_size": 4, "seq_len": 32, "warmup_steps": 2,
                  "grad_accum_steps": 2, "eval_every": 4, "eval_batches": 2,
                  "checkpoint_every": 1, "keep_checkpoints": STEPS, "tokenizer": "byte",
                  "data": str(text_file)},
    })


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def cache(work: Path) -> Path:
    return work / "cache"


def _trainer(spec: Spec, cache: Path, out: Path, resume: bool = False) -> Trainer:
    tokenizer, data = prepare_data(spec.train.data, "byte", 260, cache)
    return Trainer(spec, tokenizer, data, out, progress=False, resume=resume)


def _torchrun(spec: Spec, mode: str, cache: Path, out: Path, resume: bool = False) -> None:
    """`msgc train` on two processes; fails the test if it fails or outlives TIMEOUT."""
    done = _torchrun_process(spec, mode, cache, out, resume)
    assert done.returncode == 0, done.stderr[-4000:]


def _torchrun_process(spec: Spec, mode: str, cache: Path, out: Path,
                      resume: bool = False) -> subprocess.CompletedProcess:
    """The finished `torchrun ... msgc train` subprocess (bounded by TIMEOUT)."""
    spec_path = out.parent / f"{out.name}.yaml"
    spec.dump(spec_path)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "msgc", "train", str(spec_path),
               "--resume" if resume else "--out", str(out), "--distributed", mode]
    env = os.environ | {"MSGC_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)


def _assert_same_curve(rows: list[dict], reference: list[dict]) -> None:
    """Same steps, and every loss (training, and validation/test where logged) within RTOL."""
    assert [row["step"] for row in rows] == [row["step"] for row in reference]
    for row, ref in zip(rows, reference, strict=True):
        for key in ("loss", "val_loss", "test_loss", "loss_before", "loss_after"):
            assert (key in row) == (key in ref), (row["step"], key)
            if key in ref:
                assert row[key] == pytest.approx(ref[key], rel=RTOL), (row["step"], key)


def _keep_until(run_dir: Path, step: int) -> None:
    """Delete the run's checkpoints after `step`, as if it had stopped there."""
    for info in list_checkpoints(run_dir):
        if info.step > step:
            info.manifest.unlink()
            info.payload.unlink()


@pytest.fixture(scope="module")
def reference(text_file: Path, cache: Path, work: Path) -> dict[str, Path]:
    """One process per family, with its run directory (metrics and checkpoints)."""
    runs = {}
    for family in ("gpt2", "bert"):
        runs[family] = work / f"one-{family}"
        _trainer(_spec(text_file, family), cache, runs[family]).run()
    return runs


@pytest.fixture(scope="module")
def two_process_runs(text_file: Path, cache: Path, work: Path, reference) -> dict:
    """Run directories of two-process runs, made on first use, by (mode, family)."""
    runs: dict[tuple[str, str], Path] = {}

    def run(mode: str, family: str) -> Path:
        if (mode, family) not in runs:
            runs[mode, family] = work / f"two-{mode}-{family}"
            _torchrun(_spec(text_file, family), mode, cache, runs[mode, family])
        return runs[mode, family]

    return run


@pytest.mark.parametrize(("mode", "family"), [
    ("ddp", "gpt2"), pytest.param("fsdp", "gpt2", marks=NEEDS_FSDP2), ("ddp", "bert")])
def test_two_processes_train_the_one_process_curve(mode, family, reference, two_process_runs):
    run_dir = two_process_runs(mode, family)
    rows = read_metrics(run_dir / "metrics.jsonl")  # rank 0 alone writes: one row per step
    _assert_same_curve(rows, read_metrics(reference[family] / "metrics.jsonl"))
    assert sum("grow_seconds" in row for row in rows) == 2
    assert (run_dir / "model.safetensors").is_file()
    assert [info.step for info in list_checkpoints(run_dir)] == list(range(1, STEPS + 1))


@pytest.mark.parametrize("mode", ["ddp", pytest.param("fsdp", marks=NEEDS_FSDP2)])
def test_two_process_checkpoint_resumes_on_one(mode, text_file, cache, work, reference,
                                               two_process_runs):
    run_dir = work / f"resume-2to1-{mode}"
    shutil.copytree(two_process_runs(mode, "gpt2"), run_dir)
    _keep_until(run_dir, 6)  # mid-ramp of the first growth
    trainer = _trainer(_spec(text_file, "gpt2"), cache, run_dir, resume=True)
    assert trainer.resumed_from == 6
    rows = trainer.run().rows
    _assert_same_curve(rows, read_metrics(reference["gpt2"] / "metrics.jsonl"))


def test_one_process_checkpoint_resumes_on_two(text_file, cache, work, reference):
    run_dir = work / "resume-1to2"
    shutil.copytree(reference["gpt2"], run_dir)
    _keep_until(run_dir, 9)  # mid-ramp of the second growth
    _torchrun(_spec(text_file, "gpt2"), "ddp", cache, run_dir, resume=True)
    rows = read_metrics(run_dir / "metrics.jsonl")
    _assert_same_curve(rows, read_metrics(reference["gpt2"] / "metrics.jsonl"))


def test_two_processes_refuse_to_overwrite_a_run_or_resume_none(text_file, cache, work,
                                                                reference):
    """Every rank refuses, the run's files are untouched, and a typo trains nothing."""
    spec = _spec(text_file, "gpt2")
    metrics = reference["gpt2"] / "metrics.jsonl"
    before = metrics.read_bytes()
    over = _torchrun_process(spec, "ddp", cache, reference["gpt2"])
    assert over.returncode != 0
    assert f"error: --out {reference['gpt2']} holds a run" in over.stderr
    assert "--resume" in over.stderr and "--overwrite" in over.stderr
    assert metrics.read_bytes() == before
    typo = work / "no-such-run"
    missing = _torchrun_process(spec, "ddp", cache, typo, resume=True)
    assert missing.returncode != 0
    assert f"error: --resume {typo}: no such run directory" in missing.stderr
    assert not typo.exists()
