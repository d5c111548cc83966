"""Helpers for the compile tests: import an emitted module, lint it, compare it."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]


def import_module(path: Path):
    """The emitted file as a fresh module."""
    spec = importlib.util.spec_from_file_location(f"emitted_{path.parent.name}_{path.stem}",
                                                  path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ruff(path: Path) -> subprocess.CompletedProcess:
    """`ruff check` with the project's configuration."""
    local = Path(sys.executable).with_name("ruff")
    binary = str(local) if local.exists() else shutil.which("ruff")
    if binary is None:
        pytest.skip("ruff is not installed")
    return subprocess.run([binary, "check", "--config", str(ROOT / "pyproject.toml"), str(path)],
                          capture_output=True, text=True, timeout=120)


def assert_clean(text: str) -> None:
    """No traces of generated fx code: None assignments, getitem names, private torch."""
    lines = text.splitlines()
    assert not [line for line in lines if line.strip().endswith("= None")]
    assert not [line for line in lines if line.startswith(("import msgc", "from msgc"))]
    for fragment in ("getitem", "torch._C", "torch.ops.aten"):
        assert fragment not in text


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return out[0] if isinstance(out, tuple) else out


def assert_same_function(gm: fx.GraphModule, model: nn.Module, vocab: int) -> None:
    """Equal logits in eval mode, and equal gradients of a loss for every parameter."""
    gm.eval()
    model.eval()
    ids = torch.randint(0, vocab, (3, 11), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, vocab, (3, 11), generator=torch.Generator().manual_seed(2))
    expected, got = logits(gm, ids), logits(model, ids)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for net, out in ((gm, expected), (model, got)):
        net.zero_grad()
        F.cross_entropy(out.flatten(0, 1), targets.flatten()).backward()
    names = [n for n, _ in gm.named_parameters(remove_duplicate=False)]
    assert names
    for name in names:
        torch.testing.assert_close(model.get_parameter(name).grad, gm.get_parameter(name).grad,
                                   rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
