"""Compile to a module: nanoGPT-shaped source (one class per block, a loop over them, ruff
clean) that loads the weights and computes what the graph computes, and trains."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import msgc
from msgc.errors import GraphError
from msgc.graph.trace import to_ir
from msgc.interop.commands import stage_module
from msgc.interop.emit import emit_module
from msgc.models import build_model
from msgc.spec import FamilyModelSpec, load_spec
from tests.interop.emitted import ROOT, assert_clean, assert_same_function, import_module, ruff

VOCAB = 4096  # the specs' vocabulary

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


def _emitted(gm, folder, **kwargs):
    path = emit_module(gm, folder, **kwargs)
    return path, import_module(path).load()


def _stage(name: str, stage: int, mask: float | None = None):
    gm, _ = stage_module(load_spec(ROOT / "specs" / f"{name}.yaml"), stage, mask=mask)
    return gm


@pytest.mark.parametrize("name, stage", [("gpt-tiny", 0), ("gpt-tiny", 3), ("bert-tiny", 2),
                                         ("llama-tiny", 2), ("llama-tiny", 3)])
def test_a_stage_compiles_to_blocks_in_a_loop_and_computes_the_same(name, stage, tmp_path):
    gm = _stage(name, stage)
    path, model = _emitted(gm, tmp_path)
    text = path.read_text()
    lint = ruff(path)
    assert lint.returncode == 0, lint.stdout
    assert len(text.splitlines()) < 200
    assert_clean(text)
    assert text.count("(nn.Module):") == 2  # one block class and the model
    assert "for block in self." in text and "# (B, T, " in text
    assert_same_function(gm, model, VOCAB)


@pytest.mark.parametrize("family", ["gpt2", "bert", "llama"])
def test_depth_adds_no_lines(family, tmp_path):
    texts = {}
    for layers in (4, 24):
        arch = FamilyModelSpec(family=family, vocab_size=64, max_seq_len=16, hidden=32,
                               heads=2, head_dim=16, ffn=64, layers=layers)
        gm = to_ir(build_model(arch).eval(), (torch.randint(0, 64, (2, 8)),))
        path, model = _emitted(gm, tmp_path / str(layers))
        texts[layers] = path.read_text()
        assert f"range({layers})" in texts[layers]
        assert_same_function(gm, model, 64)
    assert len(texts[24].splitlines()) <= len(texts[4].splitlines()) + 2


@pytest.mark.parametrize("name, stage", [("gpt-tiny", 1), ("bert-tiny", 1), ("llama-tiny", 1),
                                         ("llama-tiny", 3)])
def test_a_masked_stage_keeps_its_masks_and_ramps_like_the_grown_module(name, stage, tmp_path):
    grown = _stage(name, stage, mask=0.5)
    path, model = _emitted(grown, tmp_path, masked=True)
    text = path.read_text()
    lint = ruff(path)
    assert lint.returncode == 0, lint.stdout
    assert len(text.splitlines()) < 200
    assert_clean(text)
    assert "self.masks = Masks(" in text and ("* m0" in text or "depth_mix(" in text)
    assert float(model.masks.value) == 0.5
    assert_same_function(grown, model, VOCAB)
    for c in (0.0, 0.25, 1.0):
        grown.set_masks(c)
        model.masks.set(c)
        assert_same_function(grown, model, VOCAB)


@pytest.mark.parametrize("name, stage, mask", [("llama-tiny", 1, None), ("gpt-tiny", 1, 0.5)])
def test_the_compiled_model_trains(name, stage, mask, tmp_path):
    _, model = _emitted(_stage(name, stage, mask), tmp_path, masked=mask is not None)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters())


class _TwoLayers(nn.Module):
    """No repeated blocks: the emitted forward is flat."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4, bias=False)
        self.scale = nn.Parameter(torch.full((4,), 2.0))

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))) * self.scale


def test_a_model_without_blocks_is_flat_and_clean(tmp_path):
    x = torch.randn(3, 8)
    gm = to_ir(_TwoLayers(), (x,))
    path, model = _emitted(gm, tmp_path)
    text = path.read_text()
    assert ruff(path).returncode == 0
    assert_clean(text)
    assert "nn.Linear(8, 16)" in text and "nn.ModuleList" not in text
    assert "import torch.nn.functional" not in text  # unused imports are left out
    with torch.no_grad():
        assert torch.equal(model(x), gm(x))


def test_an_exported_graph_reads_as_torch_calls(tmp_path):
    from examples.parallel_gpt import build  # torch.fx cannot trace it: torch.export does

    torch.manual_seed(0)
    original = build(vocab_size=64, max_seq_len=16, hidden=32, heads=2, head_dim=16, ffn=48,
                     layers=3).eval()
    ids = torch.randint(0, 64, (2, 16))
    path, model = _emitted(to_ir(original, (ids,)), tmp_path)
    text = path.read_text()
    assert ruff(path).returncode == 0
    assert_clean(text)
    assert "class ParallelBlock(nn.Module):" in text and "range(3)" in text
    with torch.no_grad():
        assert torch.equal(model.eval()(ids), original(ids))


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
