"""The run metadata every benchmark JSON records, and write_result."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

from msgc.bench import results
from msgc.bench.results import git_state, run_metadata, write_result

REPO = Path(__file__).resolve().parents[2]


def test_run_metadata_records_commit_threads_date_and_versions() -> None:
    meta = run_metadata()
    assert meta["threads"] == torch.get_num_threads()
    date = datetime.fromisoformat(meta["date"])
    assert date.tzinfo is not None and abs(datetime.now(UTC) - date) < timedelta(minutes=5)
    assert meta["torch"] == torch.__version__ and meta["python"] and meta["platform"]
    assert meta["device"] and meta["cpu"]
    assert set(meta) >= {"commit", "dirty", "msgc", "triton", "cpu_count"}
    json.dumps(meta)


def test_git_state_of_a_checkout(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "__init__.py").write_text("x = 1\n")
    assert git_state(tmp_path) == {"commit": None, "dirty": None}  # not tracked yet
    git("add", "__init__.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    assert git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "__init__.py").write_text("x = 2\n")
    assert git_state(tmp_path) == {"commit": head, "dirty": True}


def test_git_state_outside_a_checkout(tmp_path: Path) -> None:
    assert git_state(tmp_path) == {"commit": None, "dirty": None}


def test_the_source_checkout_is_the_one_recorded() -> None:
    if not (REPO / ".git").exists():
        pytest.skip("msgc is not running from a git checkout")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    assert run_metadata()["commit"] == head


def test_write_result_adds_meta_and_makes_folders(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "run_metadata", lambda: {"threads": 7})
    path = tmp_path / "a" / "b" / "result.json"
    write_result(path, {"rows": [1, 2], "where": tmp_path})
    text = path.read_text()
    assert text.endswith("}\n") and text.startswith('{\n  "meta": {\n    "threads": 7')
    assert json.loads(text) == {"meta": {"threads": 7}, "rows": [1, 2], "where": str(tmp_path)}


def test_write_result_refuses_a_payload_with_its_own_meta(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="meta"):
        write_result(tmp_path / "x.json", {"meta": 1})
