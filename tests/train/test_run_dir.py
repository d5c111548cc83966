"""A run directory is never lost by accident: `msgc train --out` over a finished run and
`--resume` of a directory that does not exist are refused; `--overwrite` replaces a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from msgc.cli import main
from msgc.errors import RunDirError
from msgc.spec import parse_spec
from msgc.train.run_dir import RUN_OUTPUTS, prepare_run_dir
from tests.train.test_trainer import MODELS


@pytest.fixture
def spec_file(tmp_path: Path, text_file: Path) -> Path:
    """A 4-step spec of the gpt2 family with one growth event."""
    spec = parse_spec({
        "name": "run-dir",
        "model": MODELS["gpt2"] | {"vocab_size": 260, "max_seq_len": 16},
        "growth": {"ramp_steps": 1, "stages": [{"step": 2, "ffn": 96}]},
        "train": {"steps": 4, "batch_size": 2, "seq_len": 16, "eval_every": 4,
                  "eval_batches": 1, "tokenizer": "byte", "data": str(text_file)},
    })
    path = tmp_path / "spec.yaml"
    spec.dump(path)
    return path


def train(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str]:
    status = main(["train", *(str(a) for a in argv)])
    return status, capsys.readouterr().err


def test_a_finished_run_is_refused_then_replaced_with_overwrite(
        spec_file: Path, tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert train(capsys, spec_file, "--out", run)[0] == 0
    notes = run / "notes.txt"  # the user's own file in the run directory
    notes.write_text("mine")
    metrics = (run / "metrics.jsonl").read_bytes()
    status, err = train(capsys, spec_file, "--out", run)
    assert status == 2 and "Traceback" not in err
    assert err.startswith(f"error: --out {run} holds a run (spec.yaml, metrics.jsonl")
    assert f"--resume {run}" in err and "--overwrite" in err
    assert (run / "metrics.jsonl").read_bytes() == metrics
    (run / "metrics.jsonl").write_text("")  # so the replacement's rows can be told apart
    assert train(capsys, spec_file, "--out", run, "--overwrite")[0] == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4
    assert notes.read_text() == "mine"


def test_resuming_a_missing_directory_is_refused(
        spec_file: Path, tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    typo = tmp_path / "rnu"
    status, err = train(capsys, spec_file, "--resume", typo)
    assert status == 2
    assert err.startswith(f"error: --resume {typo}: no such run directory; check the path, "
                          f"or start a new run with --out {typo}")
    assert not typo.exists()


def test_overwrite_removes_only_the_runs_outputs(tmp_path: Path) -> None:
    for name in RUN_OUTPUTS:
        if name in ("checkpoints", "hf", "model"):
            (tmp_path / name).mkdir()
        else:
            (tmp_path / name).write_text("x")
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(RunDirError, match="holds a run"):
        prepare_run_dir(tmp_path, resume=False, overwrite=False)
    prepare_run_dir(tmp_path, resume=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_a_folder_without_a_run_is_a_new_run(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("text")
    prepare_run_dir(tmp_path, resume=False, overwrite=False)
    prepare_run_dir(tmp_path / "new", resume=False, overwrite=False)
    assert (tmp_path / "data.txt").exists()
