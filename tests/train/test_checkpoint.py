"""Checkpoint files: atomic, checksummed, pruned, and refused for another spec."""

import pytest
import torch

from msgc.errors import CheckpointError
from msgc.train.checkpoint import (
    checkpoint_dir,
    list_checkpoints,
    load_latest,
    spec_fingerprint,
    write_checkpoint,
)


def _payload(step):
    return {"step": step, "weights": {"w": torch.full((3,), float(step))},
            "rng": torch.get_rng_state(), "python": (3, (1, 2, 3), None)}


def test_newest_valid_checkpoint_is_loaded(tmp_path):
    for step in (10, 20, 30):
        write_checkpoint(tmp_path, step, _payload(step), "spec-a", keep=5)
    payload, skipped = load_latest(tmp_path, "spec-a")
    assert payload["step"] == 30 and skipped == []
    assert torch.equal(payload["weights"]["w"], torch.full((3,), 30.0))


def test_keep_last_k(tmp_path):
    for step in range(1, 6):
        write_checkpoint(tmp_path, step, _payload(step), "spec-a", keep=2)
    assert [info.step for info in list_checkpoints(tmp_path)] == [4, 5]
    assert sorted(p.name for p in checkpoint_dir(tmp_path).iterdir()) == [
        "ckpt-00000004.json", "ckpt-00000004.pt", "ckpt-00000005.json", "ckpt-00000005.pt"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_payload"])
def test_damaged_checkpoint_falls_back_to_previous(tmp_path, damage):
    write_checkpoint(tmp_path, 1, _payload(1), "spec-a", keep=3)
    newest = write_checkpoint(tmp_path, 2, _payload(2), "spec-a", keep=3)
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        newest.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    else:
        newest.unlink()
    payload, skipped = load_latest(tmp_path, "spec-a")
    assert payload["step"] == 1
    assert len(skipped) == 1 and "step 2" in skipped[0]


def test_checkpoint_without_manifest_is_ignored(tmp_path):
    write_checkpoint(tmp_path, 1, _payload(1), "spec-a", keep=3)
    (checkpoint_dir(tmp_path) / "ckpt-00000002.pt").write_bytes(b"half written")
    payload, _ = load_latest(tmp_path, "spec-a")
    assert payload["step"] == 1


def test_checkpoint_of_another_spec_is_refused(tmp_path):
    write_checkpoint(tmp_path, 1, _payload(1), "spec-a", keep=3)
    with pytest.raises(CheckpointError, match="another spec"):
        load_latest(tmp_path, "spec-b")


def test_no_checkpoint(tmp_path):
    assert load_latest(tmp_path, "spec-a") == (None, [])


def test_fingerprint_ignores_evaluation_settings():
    base = {"model": {"hidden": 8}, "growth": {}, "train": {"steps": 10, "eval_every": 5}}
    other = {"model": {"hidden": 8}, "growth": {}, "train": {"steps": 10, "eval_every": 7}}
    changed = {"model": {"hidden": 16}, "growth": {}, "train": {"steps": 10, "eval_every": 5}}
    assert spec_fingerprint(base) == spec_fingerprint(other) != spec_fingerprint(changed)


def test_fingerprint_lets_a_run_resume_with_the_fused_head_on_or_off():
    """Checkpoints from before train.fused_head existed, or with it toggled, still resume."""
    old = {"model": {"hidden": 8}, "growth": {}, "train": {"steps": 10}}
    fused = {"model": {"hidden": 8}, "growth": {}, "train": {"steps": 10, "fused_head": True}}
    plain = {"model": {"hidden": 8}, "growth": {}, "train": {"steps": 10, "fused_head": False}}
    assert spec_fingerprint(old) == spec_fingerprint(fused) == spec_fingerprint(plain)
