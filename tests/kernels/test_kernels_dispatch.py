"""The dispatcher: forcing by argument and environment, CPU fallback, measuring, caching."""

import importlib

import pytest
import torch

import msgc.kernels as K
from msgc.errors import MsgcError
from msgc.kernels import dispatch
from msgc.kernels._triton import triton_runnable
from tests.kernels.cases import NORM_PATHS, expect_paths, linear_paths

# msgc.kernels.masked_linear is also the name of a public function: use the module.
ml = importlib.import_module("msgc.kernels.masked_linear")

# These tests run Triton on CPU tensors: they need the interpreter (tests/conftest.py).
pytestmark = pytest.mark.skipif(
    not triton_runnable("cpu"), reason="needs TRITON_INTERPRET=1 for CPU tensors"
)


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv(K.ENV_VAR, raising=False)
    dispatch.clear_cache()
    yield
    dispatch.clear_cache()


def linear_args(mba_dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 17, 24, generator=gen).to(mba_dtype)
    w = torch.randn(40, 24, generator=gen).to(mba_dtype)
    b = torch.randn(40, generator=gen).to(mba_dtype)
    m = torch.rand(40, generator=gen)
    m[:10] = 0
    m[10:20] = 1
    return x, w, b, m


def norm_args():
    x, _, _, _ = linear_args()
    w = torch.rand(24) + 0.5
    m = torch.rand(24)
    m[:6] = 0
    return x, w, None, m


def test_cpu_fallback_rule():
    x, w, b, m = linear_args()
    assert K.chosen_impl("masked_linear", x, w, b, m, "gelu", True) == "fold"
    assert K.chosen_impl("masked_linear", x, w, b, m, "gelu", False) == "reference"
    assert K.chosen_impl("masked_swiglu", x, w, w, m) == "fold"
    assert K.chosen_impl("masked_norm", *norm_args(), 1e-5, "rms") == "reference"
    assert dispatch.cache_info() == {}  # nothing measured without a GPU


@pytest.mark.parametrize("impl", ["reference", "fold", "triton"])
@pytest.mark.parametrize("act, mba", [("gelu", True), ("silu", False), (None, True)])
def test_forced_impl_runs_that_impl(impl, act, mba):
    x, w, b, m = linear_args()
    expected = {"reference": "reference", "fold": "fold" if mba else "reference"}.get(impl, impl)
    assert K.chosen_impl("masked_linear", x, w, b, m, act, mba, impl=impl) == expected
    with expect_paths(**({"masked_linear": "triton"} if impl == "triton" else {})):
        y = K.masked_linear(x, w, b, m, act, mba, impl=impl)
    ref = K.masked_linear_reference(x.double(), w.double(), b.double(), m.double(), act, mba)
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4)


def test_forced_impl_reaches_the_implementation(monkeypatch):
    x, w, b, m = linear_args()
    calls = []
    for name in ("masked_linear_reference", "masked_linear_fold", "masked_linear_triton"):
        real = getattr(ml, name)

        def spy(*a, _real=real, _name=name):
            calls.append(_name)
            return _real(*a)

        monkeypatch.setattr(ml, name, spy)
    for impl in ("reference", "fold", "triton"):
        K.masked_linear(x, w, b, m, "relu", True, impl=impl)
        assert calls[-1] == f"masked_linear_{impl}"
    monkeypatch.setenv(K.ENV_VAR, "triton")
    K.masked_linear(x, w, b, m, "relu", True)
    assert calls[-1] == "masked_linear_triton"
    monkeypatch.setenv(K.ENV_VAR, "auto")
    K.masked_linear(x, w, b, m, "relu", True)
    assert calls[-1] == "masked_linear_fold"


def test_env_var_forces_and_argument_wins(monkeypatch):
    x, w, b, m = linear_args()
    monkeypatch.setenv(K.ENV_VAR, "reference")
    assert K.chosen_impl("masked_linear", x, w, b, m, "gelu") == "reference"
    assert K.chosen_impl("masked_linear", x, w, b, m, "gelu", impl="triton") == "triton"
    monkeypatch.setenv(K.ENV_VAR, "triton")
    assert K.chosen_impl("masked_norm", *norm_args()) == "triton"
    monkeypatch.setenv(K.ENV_VAR, "fold")
    assert K.chosen_impl("masked_norm", *norm_args()) == "reference"  # a norm has no fold


def test_bad_names_are_msgc_errors(monkeypatch):
    x, w, b, m = linear_args()
    with pytest.raises(MsgcError, match="unknown kernel implementation"):
        K.masked_linear(x, w, b, m, impl="cuda")
    monkeypatch.setenv(K.ENV_VAR, "fastest")
    with pytest.raises(MsgcError, match="MSGC_KERNELS"):
        K.masked_linear(x, w, b, m)


def test_triton_unavailable(monkeypatch):
    """Without a runnable Triton: a forced impl= raises, a forced env var falls back."""
    monkeypatch.setattr(dispatch, "triton_runnable", lambda device: False)
    x, w, b, m = linear_args()
    with pytest.raises(K.KernelUnavailableError, match="triton"):
        K.masked_linear(x, w, b, m, "gelu", impl="triton")
    monkeypatch.setenv(K.ENV_VAR, "triton")
    dispatch._warned_env.clear()
    with pytest.warns(UserWarning, match="MSGC_KERNELS=triton ignored"):
        name = K.chosen_impl("masked_linear", x, w, b, m, "gelu")
    assert name == "fold"


def test_custom_op_falls_back_to_torch_without_triton(monkeypatch):
    """The custom op itself runs anywhere (the torch composite where Triton cannot run)."""
    monkeypatch.setattr(ml, "triton_runnable", lambda device: False)
    x, w, b, m = linear_args()
    xa = x.clone().requires_grad_()
    with expect_paths(masked_linear="torch", masked_linear_backward="torch"):
        y = K.masked_linear_triton(xa, w, b, m, "gelu_tanh", False)
        y.sum().backward()
    xr = x.clone().requires_grad_()
    yr = K.masked_linear_reference(xr, w, b, m, "gelu_tanh", False)
    yr.sum().backward()
    torch.testing.assert_close(y, yr)
    torch.testing.assert_close(xa.grad, xr.grad)


def test_measures_once_and_caches(monkeypatch):
    old = dispatch.set_measure_on_cpu(True)
    try:
        x, w, b, m = linear_args()
        counted = []
        real = ml.masked_linear_fold
        monkeypatch.setattr(ml, "masked_linear_fold", lambda *a: counted.append(1) or real(*a))
        y1 = K.masked_linear(x, w, b, m, "gelu", True)
        n_first = len(counted)
        info = dispatch.cache_info()
        assert len(info) == 1 and next(iter(info.values())) in ("fold", "reference")
        (times,) = dispatch.timings().values()
        assert set(times) == {"fold", "reference"}
        K.masked_linear(x, w, b, m, "gelu", True)
        assert len(dispatch.cache_info()) == 1  # same key: no new measurement
        assert len(counted) <= n_first + 1
        # another shape, or needing a gradient, is another key
        K.masked_linear(x[:, :5], w, b, m, "gelu", True)
        K.masked_linear(x, w.clone().requires_grad_(), b, m, "gelu", True)
        assert len(dispatch.cache_info()) == 3
        torch.testing.assert_close(y1, K.masked_linear_reference(x, w, b, m, "gelu"))
    finally:
        dispatch.set_measure_on_cpu(old)


def test_wrong_candidate_is_never_chosen(monkeypatch):
    old = dispatch.set_measure_on_cpu(True)
    try:
        x, w, b, m = linear_args()
        real = ml.masked_linear_fold
        monkeypatch.setattr(ml, "masked_linear_fold", lambda *a: real(*a) + 1.0)
        assert K.chosen_impl("masked_linear", x, w, b, m, "relu", True) == "reference"
        (times,) = dispatch.timings().values()
        assert "fold" not in times
    finally:
        dispatch.set_measure_on_cpu(old)


def test_public_norm_and_swiglu_match_references():
    x, w, _, m = norm_args()
    b = torch.randn(24)
    for kind in ("layer", "rms"):
        for impl in (None, "triton", "reference"):  # on a CPU, None runs the reference
            with expect_paths(**({"masked_norm": "triton"} if impl == "triton" else {})):
                y = K.masked_norm(x, w, b, m, 1e-5, kind, impl=impl)
            torch.testing.assert_close(y, K.masked_norm_reference(x, w, b, m, 1e-5, kind))
    x, wg, _, mm = linear_args()
    wu = torch.randn_like(wg)
    for impl in (None, "triton", "reference", "fold"):  # on a CPU, None runs the fold
        with expect_paths(**({"masked_swiglu": "triton"} if impl == "triton" else {})):
            y = K.masked_swiglu(x, wg, wu, mm, impl=impl)
        torch.testing.assert_close(y, K.masked_swiglu_reference(x, wg, wu, mm),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", [None, "triton"])
def test_public_functions_compile_fullgraph(impl):
    """Compiled, the dispatched ops match the torch references (and a forced triton runs the
    Triton kernels; on a CPU the default is the fold and the reference, no fused op)."""
    x, w, b, m = linear_args()
    xn, wn, _, mn = norm_args()

    def f(x, w):
        y = K.masked_linear(x, w, b, m, "gelu", impl=impl)
        return y.sum(-1) + K.masked_norm(x, wn, None, mn, 1e-5, "rms", impl=impl).sum(-1)

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    xa, wa = x.clone().requires_grad_(), w.clone().requires_grad_()
    with expect_paths(**(linear_paths("gelu") | NORM_PATHS if impl == "triton" else {})):
        out = compiled(xa, wa)
        out.sum().backward()
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref = (K.masked_linear_reference(xr, wr, b, m, "gelu").sum(-1)
           + K.masked_norm_reference(xr, wn, None, mn, 1e-5, "rms").sum(-1))
    ref.sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(xa.grad, xr.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(wa.grad, wr.grad, rtol=1e-4, atol=1e-4)


def test_triton_is_a_measured_candidate_where_fast(monkeypatch):
    """Where Triton is fast (a GPU), it is measured alongside fold and reference, also with
    an fp32 mask on half-precision data; here the interpreter stands in for the GPU."""
    monkeypatch.setattr(dispatch, "triton_fast", lambda device: True)
    old = dispatch.set_measure_on_cpu(True)
    try:
        x, w, b, m = linear_args(torch.float16)
        with expect_paths(masked_linear="triton"):  # measured: it ran
            name = K.chosen_impl("masked_linear", x, w, b, m.float(), "silu", True)
        (times,) = dispatch.timings().values()
        assert set(times) == {"triton", "fold", "reference"} and name in times
        assert dispatch._triton_ok([x, w, None, m.double()])
        assert not dispatch._triton_ok([x, w.float(), b, m])  # mixed data dtypes
    finally:
        dispatch.set_measure_on_cpu(old)


def test_compiled_is_a_measured_candidate_when_offered(monkeypatch):
    """Offered, torch.compile of the reference is measured beside the others, also on a
    CPU; forced, it matches the reference in output and gradient; not offered, it is
    never tried (nor measured on a CPU)."""
    x, w, _, m = norm_args()
    assert K.chosen_impl("masked_norm", x, w.requires_grad_(), None, m) == "reference"
    assert dispatch.timings() == {}
    monkeypatch.setenv(K.COMPILED_ENV_VAR, "1")
    name = K.chosen_impl("masked_norm", x, w, None, m)
    (times,) = dispatch.timings().values()
    assert set(times) == {"compiled", "reference"} and name in times
    old = K.offer_compiled(False)  # the function wins over the environment
    try:
        assert K.chosen_impl("masked_norm", x, w, None, m) == "reference"
    finally:
        K.offer_compiled(old)
    xa, wa = x.clone().requires_grad_(), w.detach().clone().requires_grad_()
    y = K.masked_norm(xa, wa, None, m, 1e-5, "layer", impl="compiled")
    y.square().sum().backward()
    xr, wr = x.clone().requires_grad_(), w.detach().clone().requires_grad_()
    yr = K.masked_norm_reference(xr, wr, None, m, 1e-5, "layer")
    yr.square().sum().backward()
    torch.testing.assert_close(y, yr)
    torch.testing.assert_close(xa.grad, xr.grad)
    torch.testing.assert_close(wa.grad, wr.grad)


def test_compiled_unavailable(monkeypatch):
    monkeypatch.setattr(dispatch, "inductor_runnable", lambda device: False)
    x, w, b, m = linear_args()
    with pytest.raises(K.KernelUnavailableError, match="compiled implementation"):
        K.masked_linear(x, w, b, m, "gelu", impl="compiled")
