"""Compile to a module: the emitted source loads in a fresh Python without msgc."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import msgc
from msgc.errors import GraphError
from msgc.interop.emit import emit_module
from msgc.models import build_model

LOADER = """
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from model import load
model = load().eval()
ids = torch.tensor(json.loads(sys.argv[2]))
with torch.no_grad():
    out = model(ids)
print(json.dumps({"msgc_imported": any(m.startswith("msgc") for m in sys.modules),
                  "logits": out.tolist()}))
"""


def _spec(family):
    spec = dict(family=family, vocab_size=53, max_seq_len=16, hidden=16, heads=2, kv_heads=2,
                head_dim=8, ffn=32, layers=2, dropout=0.0, tie_embeddings=True,
                norm_eps=1e-5, activation="gelu", type_vocab_size=2)
    if family == "llama":
        spec.update(kv_heads=1, activation="silu", tie_embeddings=False)
    return SimpleNamespace(**spec)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_emitted_grown_model_runs_without_msgc(family, tmp_path):
    torch.manual_seed(0)
    ids = torch.randint(0, 53, (2, 8))
    grown = msgc.grow(build_model(_spec(family)), (ids,), hidden=32, ffn=64, heads=4, layers=3)
    grown.set_masks(1.0)
    folded = msgc.fold(grown).eval()
    emit_module(folded, tmp_path)
    result = subprocess.run([sys.executable, "-c", LOADER, str(tmp_path),
                             json.dumps(ids.tolist())], capture_output=True, text=True,
                            check=True, timeout=120)
    loaded = json.loads(result.stdout)
    assert not loaded["msgc_imported"]
    with torch.no_grad():
        expected = folded(ids)
    torch.testing.assert_close(torch.tensor(loaded["logits"]), expected, rtol=1e-5, atol=1e-5)
    assert "def forward" in (tmp_path / "model.py").read_text()


def test_emit_refuses_unfolded_graph(tmp_path):
    ids = torch.randint(0, 53, (2, 8))
    grown = msgc.grow(build_model(_spec("gpt2")), (ids,), hidden=32)
    with pytest.raises(GraphError, match="fold it first"):
        emit_module(grown, tmp_path)
