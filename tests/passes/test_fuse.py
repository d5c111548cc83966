"""The fuse pass: fused kernels give the grown model's outputs and gradients mid-ramp."""

import copy
from types import SimpleNamespace

import pytest
import torch

import msgc
from msgc import kernels, ops
from msgc.kernels._triton import triton_runnable
from msgc.models import build_model


def _spec(family: str) -> SimpleNamespace:
    spec = dict(family=family, vocab_size=61, max_seq_len=16, hidden=16, heads=2, kv_heads=2,
                head_dim=8, ffn=32, layers=2, dropout=0.0, tie_embeddings=True, norm_eps=1e-5,
                activation="gelu", type_vocab_size=2)
    if family == "llama":
        spec.update(kv_heads=1, activation="silu", tie_embeddings=False)
    return SimpleNamespace(**spec)


def _targets(gm) -> list:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def _outputs_and_grads(model, ids):
    model.zero_grad()
    out = model(ids)
    out.pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.detach(), grads


def _forward_paths(ran: list[tuple[str, str]]) -> set[str]:
    """The paths the fused ops' forwards took (a backward may have no kernel to run)."""
    return {path for op, path in ran if not op.endswith("_backward")}


@pytest.mark.parametrize("impl", ["auto", "triton"])
@pytest.mark.parametrize("family", ["gpt2", "bert", "llama"])
def test_fused_matches_unfused_mid_ramp(family, impl, monkeypatch):
    """auto: on a CPU the dispatcher runs the fold and the reference (no fused op); triton,
    forced: every fused op's forward runs its Triton kernel."""
    if impl == "triton" and not triton_runnable("cpu"):
        pytest.skip("needs triton and TRITON_INTERPRET=1 to run Triton on CPU tensors")
    monkeypatch.setenv(kernels.ENV_VAR, impl)
    torch.manual_seed(0)
    model = build_model(_spec(family))
    ids = torch.randint(0, 61, (2, 8))
    grown = msgc.grow(model, (ids,), hidden=24, ffn=48, heads=4, init_std=0.5)
    fused = msgc.fuse(copy.deepcopy(grown))
    assert fused.record.fused > 0
    assert kernels.masked_linear in _targets(fused)
    for module in (grown, fused):
        module.set_masks(0.3)
    expected, expected_grads = _outputs_and_grads(grown, ids)
    with kernels.kernel_paths() as ran:
        actual, actual_grads = _outputs_and_grads(fused, ids)
    assert _forward_paths(ran) == ({"triton"} if impl == "triton" else set()), ran
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(actual_grads[name], grad, rtol=1e-4, atol=1e-6)


def test_fused_norm_replaces_masked_layer_norm():
    torch.manual_seed(0)
    model = build_model(_spec("gpt2"))
    ids = torch.randint(0, 61, (2, 8))
    fused = msgc.fuse(msgc.grow(model, (ids,), hidden=24))
    targets = _targets(fused)
    assert kernels.masked_norm in targets
    assert ops.masked_layer_norm not in targets


def test_fold_removes_fused_ops():
    torch.manual_seed(0)
    model = build_model(_spec("gpt2"))
    ids = torch.randint(0, 61, (2, 8))
    fused = msgc.fuse(msgc.grow(model, (ids,), hidden=24, ffn=48))
    fused.set_masks(1.0)
    fused.eval()
    plain = msgc.fold(fused)
    targets = _targets(plain)
    assert kernels.masked_linear not in targets and kernels.masked_norm not in targets
    with torch.no_grad():
        torch.testing.assert_close(plain(ids), fused(ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_fused_then_folded_model_grows_again_in_depth(family):
    # fold's plain ops keep their blocks' module paths, so the blocks still deepen
    torch.manual_seed(0)
    model = build_model(_spec(family))
    ids = torch.randint(0, 61, (2, 8))
    fused = msgc.fuse(msgc.grow(model, (ids,), ffn=48))
    fused.set_masks(1.0)
    plain = msgc.fold(fused).eval()
    deeper = msgc.grow(plain, (ids,), layers=3, verify=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(deeper(ids), plain(ids), rtol=1e-5, atol=1e-5)
