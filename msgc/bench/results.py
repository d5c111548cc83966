"""What every benchmark JSON records about its run, and the one function that writes it.

`write_result(path, payload)` writes ``{"meta": run_metadata(), **payload}``: the commit
of msgc's source checkout (and whether it had uncommitted changes), torch's thread count,
the date, the versions and the machine, so that a figure can be traced to what made it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

import msgc

SOURCE_DIR = Path(msgc.__file__).resolve().parent
"""The folder of msgc's own source; its git checkout, if any, is the one recorded."""


def run_metadata() -> dict[str, Any]:
    """The commit, thread count, date, versions and machine of this run."""
    return {
        **git_state(SOURCE_DIR),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
        "msgc": msgc.__version__,
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device_name(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
    }


def write_result(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` as JSON to `path` with a leading "meta" entry of `run_metadata()`.

    Parent folders are created; values JSON has no type for (paths, dtypes) are written
    as strings.
    """
    if "meta" in payload:
        raise ValueError("the payload has its own 'meta' entry; write_result adds that one")
    text = json.dumps({"meta": run_metadata(), **payload}, indent=2, default=str)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")


def git_state(folder: Path) -> dict[str, Any]:
    """``{"commit": HEAD, "dirty": bool}`` of the git checkout `folder`'s files are tracked
    in; both None when they are not (an installed package, no git)."""
    if _git(folder, "ls-files", "--error-unmatch", "__init__.py") is None:
        return {"commit": None, "dirty": None}
    status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    return {"commit": _git(folder, "rev-parse", "HEAD"),
            "dirty": None if status is None else bool(status)}


def _git(folder: Path, *args: str) -> str | None:
    """The stripped output of ``git -C folder args``, or None if it fails."""
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                              text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def package_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None when it is not installed."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def device_name(device: torch.device | None = None) -> str:
    """The GPU's name for a CUDA device, else the CPU's model name.

    Without `device`: the current CUDA GPU where one is available, else the CPU.
    """
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        if line.startswith("model name") and ":" in line:
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"
