"""Crash-safe checkpoints: atomic writes, checksums, keep-last-K, newest-valid lookup.

A checkpoint is two files in `<run>/checkpoints/`:
- `ckpt-<step>.pt`: a torch.save payload of plain containers and tensors (it loads with
  torch.load(weights_only=True): nothing in it runs code);
- `ckpt-<step>.json`: its manifest (step, spec fingerprint, size, sha256), written last.
Each file is written to a temporary name, fsynced and renamed, so a crash leaves either
the old set of checkpoints or the new one, never a half-written file under a real name. A
checkpoint without a manifest, or whose payload's checksum does not match, is skipped
(with the reason) and the previous good one is used.
"""

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from msgc.errors import CheckpointError

NAME = re.compile(r"^ckpt-(\d{8})\.json$")


@dataclass
class CheckpointInfo:
    step: int
    payload: Path
    manifest: Path


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def write_checkpoint(run_dir: Path, step: int, payload: dict[str, Any], fingerprint: str,
                     keep: int) -> Path:
    """Write `payload` atomically as the checkpoint of `step`; prune to the newest `keep`."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    target = folder / f"ckpt-{step:08d}.pt"
    _atomic_write(target, data)
    manifest = {"step": step, "fingerprint": fingerprint, "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(), "file": target.name}
    _atomic_write(target.with_suffix(".json"), json.dumps(manifest, indent=2).encode())
    _prune(folder, keep)
    return target


def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _prune(folder: Path, keep: int) -> None:
    for info in list_checkpoints(folder.parent)[:-keep]:
        info.manifest.unlink(missing_ok=True)  # manifest first: never a payload-less manifest
        info.payload.unlink(missing_ok=True)


def list_checkpoints(run_dir: Path) -> list[CheckpointInfo]:
    """Checkpoints with a manifest, oldest first (not yet checked)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = NAME.match(path.name)
        if match:
            found.append(CheckpointInfo(int(match.group(1)), path.with_suffix(".pt"), path))
    return sorted(found, key=lambda info: info.step)


def load_latest(run_dir: Path, fingerprint: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The newest valid checkpoint's payload (or None) and why newer ones were skipped.

    A checkpoint of another spec is an error, not a skip: resuming it would mix runs.
    """
    skipped: list[str] = []
    for info in reversed(list_checkpoints(run_dir)):
        try:
            manifest = json.loads(info.manifest.read_text())
            if manifest.get("fingerprint") != fingerprint:
                raise CheckpointError(
                    f"{info.manifest}: this checkpoint belongs to another spec (its "
                    "fingerprint differs); resume with the spec the run started with, or "
                    "start a new run directory"
                )
            data = info.payload.read_bytes()
            if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
                raise _Corrupt(f"{info.payload.name}: checksum mismatch (truncated or damaged)")
            payload = torch.load(io.BytesIO(data), weights_only=True)
            return payload, skipped
        except (_Corrupt, OSError, ValueError, RuntimeError, KeyError) as exc:
            skipped.append(f"step {info.step}: {exc}")
    return None, skipped


class _Corrupt(Exception):
    """A checkpoint that fails its checksum."""


def spec_fingerprint(spec_dict: dict[str, Any]) -> str:
    """A hash of the spec's model and growth sections and the run-shaping train fields
    (``fused_head`` only changes how the loss is computed: a run may resume either way)."""
    train = {k: v for k, v in spec_dict.get("train", {}).items()
             if k not in ("eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints",
                          "device", "fused_head")}
    shaped = {"model": spec_dict.get("model"), "growth": spec_dict.get("growth"),
              "train": train}
    return hashlib.sha256(json.dumps(shaped, sort_keys=True, default=str).encode()).hexdigest()
