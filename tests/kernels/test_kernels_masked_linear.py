"""Masked linear / SwiGLU: Triton kernels (interpreter) and fold vs a float64 reference.

Every test of a Triton kernel also checks that the kernel ran (not the torch composite the
custom op falls back to where Triton cannot run)."""

import importlib

import pytest
import torch

from msgc.kernels import (
    masked_linear_fold,
    masked_linear_reference,
    masked_linear_triton,
    masked_swiglu_fold,
    masked_swiglu_reference,
    masked_swiglu_triton,
)
from tests.kernels.cases import (
    DEVICE,
    DTYPES,
    SWIGLU_PATHS,
    expect_paths,
    linear_paths,
    make_mask,
    needs_triton,
)

ml = importlib.import_module("msgc.kernels.masked_linear")

ACTS = [None, "gelu", "gelu_tanh", "silu", "relu"]


def make_inputs(lead, n, k, dtype, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, k, generator=gen, dtype=torch.float64)
    w = torch.randn(n, k, generator=gen, dtype=torch.float64) / k**0.5
    b = torch.randn(n, generator=gen, dtype=torch.float64) if bias else None
    return x, w, b, make_mask(n, gen)


def run(fn, tensors, dtype, dy, *args):
    """Forward and backward of fn on copies of `tensors` cast to dtype."""
    dev = "cpu" if dtype == torch.float64 else DEVICE  # the exact reference stays on the CPU
    leaves = [None if t is None else t.to(dev, dtype).requires_grad_() for t in tensors[:-1]]
    y = fn(*leaves, tensors[-1].to(dev), *args)
    grads = torch.autograd.grad(y, [t for t in leaves if t is not None], dy.to(dev, dtype))
    return [y.detach().cpu(), *(g.cpu() for g in grads)]


def err(a, ref):
    return (a.double() - ref).abs().max().item()


def check_close(fn, ref_fn, tensors, dtype, factor, atol, *args):
    """Compare fn (in dtype) and the torch reference (in dtype) against fp64."""
    shape_probe = ref_fn(*[None if t is None else t for t in tensors], *args)
    dy = torch.randn(shape_probe.shape, dtype=torch.float64, generator=torch.Generator())
    exact = run(ref_fn, tensors, torch.float64, dy, *args)
    ours = run(fn, tensors, dtype, dy, *args)
    torch_same = run(ref_fn, tensors, dtype, dy, *args)
    names = ["y", "dx", "dw", "db", "d3"]
    for name, o, t, e in zip(names[: len(ours)], ours, torch_same, exact, strict=True):
        assert o.dtype == dtype and o.shape == e.shape
        scale = e.abs().max().item()
        bound = factor * err(t, e) + atol * scale + 1e-12
        assert err(o, e) <= bound, f"{name}: {err(o, e):.3e} > {bound:.3e} (torch {err(t, e):.3e})"


@needs_triton
@pytest.mark.parametrize("dtype, factor, atol", DTYPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("mask_before_act", [True, False])
def test_triton_matches_reference(dtype, factor, atol, act, mask_before_act):
    tensors = make_inputs((130,), 96, 80, dtype)
    with expect_paths(**linear_paths(act)):
        check_close(
            masked_linear_triton,
            masked_linear_reference,
            tensors,
            dtype,
            factor,
            atol,
            act,
            mask_before_act,
        )


@needs_triton
@pytest.mark.parametrize("dtype, factor, atol", DTYPES)
@pytest.mark.parametrize(
    "lead, n, k, act, bias",
    [
        ((37,), 48, 40, "gelu", False),
        ((2, 33), 72, 64, "silu", True),
        ((3, 19), 50, 41, None, False),
    ],
)
def test_triton_ragged_3d_nobias(dtype, factor, atol, lead, n, k, act, bias):
    tensors = make_inputs(lead, n, k, dtype, bias=bias, seed=1)
    for mba in (True, False):
        with expect_paths(**linear_paths(act)):
            check_close(masked_linear_triton, masked_linear_reference, tensors, dtype, factor,
                        atol, act, mba)


@needs_triton
@pytest.mark.parametrize("dtype, factor, atol", DTYPES)
@pytest.mark.parametrize("act, mba", [(None, True), ("gelu", True), ("silu", False)])
def test_persistent_tma_gemm(monkeypatch, dtype, factor, atol, act, mba):
    """The persistent tensor-descriptor (TMA) forward, forced (the default on Hopper)."""
    monkeypatch.setattr(ml, "GEMM_VARIANT", "tma")
    tensors = make_inputs((2, 65), 96, 80, dtype, seed=10)
    x, w = tensors[0].to(dtype), tensors[1].to(dtype)
    assert ml._gemm_variant(x.reshape(-1, 80), w) == "tma"
    assert ml._gemm_variant(x[..., :41].reshape(-1, 41), w[:, :41]) == "tiled"  # unaligned
    with expect_paths(**linear_paths(act)):
        check_close(
            masked_linear_triton, masked_linear_reference, tensors, dtype, factor, atol, act, mba
        )


@pytest.mark.parametrize("dtype, factor, atol", DTYPES)
@pytest.mark.parametrize("act", [None, "gelu_tanh", "relu"])
def test_fold_matches_reference(dtype, factor, atol, act):
    tensors = make_inputs((2, 29), 64, 48, dtype, seed=2)
    for mba in (True, False):
        with expect_paths():  # plain torch: no fused op
            check_close(masked_linear_fold, masked_linear_reference, tensors, dtype, factor,
                        atol, act, mba)


@needs_triton
def test_mask_zero_channels_are_exactly_zero_and_mask_gets_no_grad():
    x, w, b, m = (t.to(DEVICE, torch.float32) for t in make_inputs((45,), 64, 40,
                                                                   torch.float32, seed=3))
    m.requires_grad_()
    for fn, paths in ((masked_linear_triton, linear_paths("gelu")), (masked_linear_fold, {}),
                      (masked_linear_reference, {})):
        with expect_paths(**paths):
            y = fn(x, w.clone().requires_grad_(), b, m, "gelu", True)
            assert torch.all(y[:, m.detach() == 0] == 0)
            y.sum().backward()
        assert m.grad is None


@needs_triton
@pytest.mark.parametrize("dtype, factor, atol", DTYPES)
def test_swiglu(dtype, factor, atol):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 45, 56, generator=gen, dtype=torch.float64)
    wg = torch.randn(88, 56, generator=gen, dtype=torch.float64) / 56**0.5
    wu = torch.randn(88, 56, generator=gen, dtype=torch.float64) / 56**0.5
    m = make_mask(88, gen)
    for fn, paths in ((masked_swiglu_triton, SWIGLU_PATHS), (masked_swiglu_fold, {})):
        with expect_paths(**paths):
            check_close(fn, masked_swiglu_reference, [x, wg, wu, m], dtype, factor, atol)


@pytest.mark.parametrize(
    "act, mba, bias",
    [(None, True, True), ("gelu", True, False), ("gelu_tanh", False, True),
     ("silu", False, True), ("relu", True, True)],
)  # fmt: skip
@pytest.mark.parametrize("fn", [pytest.param(masked_linear_triton, marks=needs_triton, id="triton"),
                                pytest.param(masked_linear_fold, id="fold")])
def test_gradcheck_fp64(fn, act, mba, bias):
    x, w, b, m = make_inputs((2, 5), 9, 7, torch.float64, bias=bias, seed=5)
    inputs = [t.to(DEVICE).requires_grad_() for t in (x, w) + ((b,) if bias else ())]
    m = m.to(DEVICE)

    def f(*ts):
        return fn(ts[0], ts[1], ts[2] if bias else None, m, act, mba)

    with expect_paths(**(linear_paths(act) if fn is masked_linear_triton else {})):
        assert torch.autograd.gradcheck(f, inputs, fast_mode=True)


@needs_triton
def test_gradcheck_fp64_full_triton():
    x, w, b, m = (t.to(DEVICE) for t in make_inputs((4,), 6, 5, torch.float64, seed=6))
    inputs = [t.requires_grad_() for t in (x, w, b)]
    with expect_paths(**linear_paths("gelu")):
        assert torch.autograd.gradcheck(
            lambda x, w, b: masked_linear_triton(x, w, b, m, "gelu", True), inputs
        )


@needs_triton
def test_gradcheck_fp64_swiglu():
    gen = torch.Generator().manual_seed(7)
    x, wg, wu = (torch.randn(*shape, generator=gen, dtype=torch.float64).to(DEVICE)
                 .requires_grad_() for shape in ((6, 5), (7, 5), (7, 5)))
    m = make_mask(7, gen).to(DEVICE)
    for fn, paths in ((masked_swiglu_triton, SWIGLU_PATHS), (masked_swiglu_fold, {})):
        with expect_paths(**paths):
            assert torch.autograd.gradcheck(lambda x, wg, wu, f=fn: f(x, wg, wu, m), [x, wg, wu])


def _opcheck_args(dtype=torch.float32):
    x, w, b, m = make_inputs((3, 11), 20, 12, dtype, seed=8)
    return x.to(dtype), w.to(dtype), b.to(dtype), m.float()


@pytest.mark.parametrize("act, bias", [("gelu", True), ("none", False)])
def test_opcheck_masked_linear(act, bias):
    x, w, b, m = _opcheck_args()
    args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_() if bias else None, m)
    torch.library.opcheck(torch.ops.msgc.masked_linear.default, (*args, act, True, True))
    dy = torch.randn(3, 11, 20)
    pre = torch.randn(3, 11, 20) if act != "none" else torch.empty(0)
    torch.library.opcheck(
        torch.ops.msgc.masked_linear_backward.default,
        (dy, x.detach(), w.detach(), m, pre, act, False, bias, True, True),
    )


def test_opcheck_masked_swiglu():
    x, w, _, m = _opcheck_args()
    wu = torch.randn_like(w)
    torch.library.opcheck(
        torch.ops.msgc.masked_swiglu.default,
        (x.requires_grad_(), w.requires_grad_(), wu.requires_grad_(), m, True),
    )
    _, a, u = torch.ops.msgc.masked_swiglu(x, w, wu, m, True)
    torch.library.opcheck(
        torch.ops.msgc.masked_swiglu_backward.default,
        (torch.randn_like(a), x.detach(), w.detach(), wu.detach(), m, a, u, True, True),
    )


@needs_triton
def test_torch_compile_and_export_see_the_op():
    """Compiled, the op still runs its Triton kernels and matches the torch reference."""
    x, w, b, m = (t.to(DEVICE, torch.float32)
                  for t in make_inputs((2, 9), 24, 16, torch.float32, seed=9))
    compiled = torch.compile(lambda x, w, b: masked_linear_triton(x, w, b, m, "silu", False),
                             backend="aot_eager", fullgraph=True)
    xs = [t.clone().requires_grad_() for t in (x, w, b)]
    with expect_paths(**linear_paths("silu")):
        y = compiled(*xs)
        y.sum().backward()
    ys = [t.clone().requires_grad_() for t in (x, w, b)]
    y_ref = masked_linear_reference(*ys, m, "silu", False)
    y_ref.sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    for a, e in zip(xs, ys, strict=True):
        torch.testing.assert_close(a.grad, e.grad, rtol=1e-4, atol=1e-5)

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(w)
            self.register_buffer("m", m)

        def forward(self, x):
            return masked_linear_triton(x, self.w, None, self.m, "gelu", True)

    ep = torch.export.export(Layer(), (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "msgc.masked_linear.default" in targets
    with expect_paths(masked_linear="triton"):
        y = ep.module()(x)
    torch.testing.assert_close(y, masked_linear_reference(x, w, None, m, "gelu"),
                               rtol=1e-4, atol=1e-5)
