"""Masked Layer/RMS norm: Triton kernels (interpreter) vs a float64 reference.

Every test of the Triton kernels also checks that they ran (not the torch composite the
custom op falls back to where Triton cannot run)."""

import pytest
import torch

from msgc.kernels import masked_norm_reference, masked_norm_triton
from tests.kernels.cases import DEVICE, DTYPES, NORM_PATHS, expect_paths, make_mask, needs_triton


def make_inputs(lead, n, weight=True, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, n, generator=gen, dtype=torch.float64) * 2.0 + 0.5
    w = 1.0 + 0.2 * torch.randn(n, generator=gen, dtype=torch.float64) if weight else None
    b = 0.3 * torch.randn(n, generator=gen, dtype=torch.float64) if bias else None
    return x, w, b, make_mask(n, gen)


def run(fn, x, w, b, m, dtype, dy, kind, eps=1e-5):
    dev = "cpu" if dtype == torch.float64 else DEVICE  # the exact reference stays on the CPU
    leaves = [None if t is None else t.to(dev, dtype).requires_grad_() for t in (x, w, b)]
    y = fn(*leaves, m.to(dev), eps, kind)
    grads = torch.autograd.grad(y, [t for t in leaves if t is not None], dy.to(dev, dtype))
    return [y.detach().cpu(), *(g.cpu() for g in grads)]


def err(a, ref):
    return (a.double() - ref).abs().max().item()


def check_close(tensors, dtype, factor, atol, kind):
    x = tensors[0]
    dy = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = run(masked_norm_reference, *tensors, torch.float64, dy, kind)
    with expect_paths(**NORM_PATHS):
        ours = run(masked_norm_triton, *tensors, dtype, dy, kind)
    same = run(masked_norm_reference, *tensors, dtype, dy, kind)
    for i, (o, t, e) in enumerate(zip(ours, same, exact, strict=True)):
        assert o.dtype == dtype and o.shape == e.shape
        bound = factor * err(t, e) + atol * e.abs().max().item() + 1e-12
        assert err(o, e) <= bound, f"output {i}: {err(o, e):.3e} > {bound:.3e}"


@needs_triton
@pytest.mark.parametrize("dtype, factor, atol", DTYPES)
@pytest.mark.parametrize("kind", ["layer", "rms"])
@pytest.mark.parametrize(
    "lead, n, weight, bias",
    [((130,), 96, True, True), ((2, 37), 80, True, False), ((53,), 48, False, False)],
)
def test_triton_matches_reference(dtype, factor, atol, kind, lead, n, weight, bias):
    check_close(make_inputs(lead, n, weight, bias), dtype, factor, atol, kind)


def _on_device(*tensors):
    return [None if t is None else t.to(DEVICE) for t in tensors]


@needs_triton
def test_reference_matches_unmasked_torch_norms():
    """At mask 1 the masked norms are the ordinary LayerNorm / RMSNorm."""
    x, w, b, _ = _on_device(*make_inputs((7,), 32))
    ones = torch.ones(32, dtype=torch.float64, device=DEVICE)
    ln = torch.nn.functional.layer_norm(x, (32,), w, b, 1e-5)
    rms = torch.nn.functional.rms_norm(x, (32,), w, 1e-5)
    for fn, paths in ((masked_norm_reference, {}), (masked_norm_triton, {"masked_norm": "triton"})):
        with expect_paths(**paths):
            torch.testing.assert_close(fn(x, w, b, ones, 1e-5, "layer"), ln)
            torch.testing.assert_close(fn(x, w, None, ones, 1e-5, "rms"), rms)


@needs_triton
def test_masked_channels_do_not_matter():
    """Channels with m = 0 get y = 0, dx = 0 and do not move the statistics."""
    x, w, b, m = _on_device(*make_inputs((9,), 40, seed=2))
    x2 = x.clone()
    x2[:, m == 0] += 100.0
    for kind in ("layer", "rms"):
        xa = x.clone().requires_grad_()
        with expect_paths(**NORM_PATHS):
            y = masked_norm_triton(xa, w, b, m, 1e-5, kind)
            y.pow(2).sum().backward()
            moved = masked_norm_triton(x2, w, b, m, 1e-5, kind)
        torch.testing.assert_close(y, moved)
        assert torch.all(y[:, m == 0] == 0)
        assert torch.all(xa.grad[:, m == 0] == 0)


@needs_triton
def test_all_masked_row_is_zero_not_nan():
    x, w, b, _ = _on_device(*make_inputs((5,), 24))
    zeros = torch.zeros(24, dtype=torch.float64, device=DEVICE)
    for fn, paths in ((masked_norm_reference, {}), (masked_norm_triton, {"masked_norm": "triton"})):
        for kind in ("layer", "rms"):
            with expect_paths(**paths):
                assert torch.equal(fn(x, w, b, zeros, 1e-5, kind), torch.zeros_like(x))


@needs_triton
@pytest.mark.parametrize("kind", ["layer", "rms"])
@pytest.mark.parametrize("weight, bias", [(True, True), (False, False)])
def test_gradcheck_fp64(kind, weight, bias):
    x, w, b, m = _on_device(*make_inputs((3, 4), 12, weight, bias, seed=3))
    present = [t.clone().requires_grad_() for t in (x, w, b) if t is not None]

    def f(*ts):
        it = iter(ts)
        xx = next(it)
        ww = next(it) if weight else None
        bb = next(it) if bias else None
        return masked_norm_triton(xx, ww, bb, m, 1e-5, kind)

    with expect_paths(**NORM_PATHS):
        assert torch.autograd.gradcheck(f, present)


@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_opcheck(kind):
    x, w, b, m = (t.float() for t in make_inputs((3, 5), 24, seed=4))
    torch.library.opcheck(
        torch.ops.msgc.masked_norm.default,
        (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), m, 1e-5, kind),
    )
    _, mean, rstd = torch.ops.msgc.masked_norm(x, w, b, m, 1e-5, kind)
    torch.library.opcheck(
        torch.ops.msgc.masked_norm_backward.default,
        (torch.randn_like(x), x.detach(), w.detach(), m, mean, rstd, kind, True),
    )


@needs_triton
def test_torch_compile():
    """Compiled, the op still runs its Triton kernels and matches the torch reference."""
    x, w, b, m = (t.to(DEVICE, torch.float32) for t in make_inputs((2, 6), 32, seed=5))
    compiled = torch.compile(
        lambda x, w: masked_norm_triton(x, w, b, m, 1e-5, "rms"), backend="aot_eager",
        fullgraph=True,
    )  # fmt: skip
    xa, wa = x.clone().requires_grad_(), w.clone().requires_grad_()
    with expect_paths(**NORM_PATHS):
        y = compiled(xa, wa)
        y.sum().backward()
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    yr = masked_norm_reference(xr, wr, b, m, 1e-5, "rms")
    yr.sum().backward()
    torch.testing.assert_close(y, yr)
    torch.testing.assert_close(xa.grad, xr.grad)
    torch.testing.assert_close(wa.grad, wr.grad)
