"""A run directory is never lost by accident.

A new run (`--out DIR`) refuses a directory that holds a run unless told to replace it
(`--overwrite`), which then removes that run's outputs and keeps everything else in DIR. A
resume (`--resume DIR`) refuses a directory that does not exist, rather than train from
step 0 into a typo.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from msgc.errors import RunDirError

RUN_OUTPUTS = ("spec.yaml", "metrics.jsonl", "checkpoints", "model.safetensors", "model.json",
               "summary.json", "loss.png", "hf", "model")
"""What `msgc train` writes into a run directory (any one of them marks a run)."""


def prepare_run_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Check `out_dir` for a new run or a resume; with `overwrite`, clear the old run."""
    if resume:
        if not out_dir.is_dir():
            raise RunDirError(f"--resume {out_dir}: no such run directory; check the path, "
                              f"or start a new run with --out {out_dir}")
        return
    found = [name for name in RUN_OUTPUTS if (out_dir / name).exists()]
    if found and not overwrite:
        raise RunDirError(f"--out {out_dir} holds a run ({', '.join(found)}); continue it "
                          f"with --resume {out_dir}, replace it with --overwrite, or choose "
                          "another --out")
    for name in found:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
