"""Pick the implementation of each masked op: reference, fold, triton or compiled.

Per (op, shapes, dtype, device, flags, whether a gradient is needed) the dispatcher
measures the valid candidates once on the call's own inputs, drops any whose output
disagrees with the reference, caches the fastest and uses it from then on.

* Candidates: ``triton`` only where Triton and a CUDA GPU are present (never the
  interpreter unless forced); ``fold`` where it is valid (masked_linear with the mask
  before the activation, masked_swiglu; a norm has no fold); ``reference`` always; and
  ``compiled`` (torch.compile of the reference, Inductor) when offered: by
  :func:`offer_compiled` or ``MSGC_KERNELS_COMPILED=1``, where Inductor can run.
* Without a GPU nothing is measured: ``fold`` where valid, ``reference`` otherwise;
  offering ``compiled`` measures on a CPU too (compiling each op once per new shape).
* Inside torch.compile nothing is measured either: a cached choice or that same rule, and
  ``compiled`` runs the reference for the outer compilation to trace.
* Forcing: ``impl=`` on a call, or the environment variable ``MSGC_KERNELS`` set to
  ``reference|fold|triton|compiled|auto``. A forced ``fold`` where a fold is not valid runs
  the reference arithmetic. A forced ``triton`` or ``compiled`` where it cannot run raises
  :class:`KernelUnavailableError` when asked through ``impl=``; through the environment it
  warns once and falls back to ``auto``.
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from msgc.errors import MsgcError
from msgc.kernels._triton import triton_fast, triton_runnable

# The package re-exports functions named like these modules, which shadow the module
# attributes of msgc.kernels: look the modules up by their full names.
_ml = importlib.import_module("msgc.kernels.masked_linear")
_mn = importlib.import_module("msgc.kernels.masked_norm")

IMPLS = ("reference", "fold", "triton", "compiled")
MODES = (*IMPLS, "auto")
ENV_VAR = "MSGC_KERNELS"
COMPILED_ENV_VAR = "MSGC_KERNELS_COMPILED"

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Relative (to max |reference|) error a candidate may show in the correctness check.
_CHECK_TOL = {torch.float64: 1e-8, torch.float32: 1e-2, torch.float16: 2e-2, torch.bfloat16: 5e-2}

_cache: dict[tuple, str] = {}
_timings: dict[tuple, dict[str, float]] = {}
_warned_env: set[str] = set()
_measure_on_cpu = False
_offer_compiled: bool | None = None  # None: $MSGC_KERNELS_COMPILED decides
_compiled: dict[str, Callable] = {}  # op -> torch.compile of its reference


class KernelUnavailableError(MsgcError):
    """An implementation was forced that cannot run here (e.g. triton without a GPU)."""


def clear_cache() -> None:
    """Forget every measured choice and compiled candidate."""
    _cache.clear()
    _timings.clear()
    _compiled.clear()


def cache_info() -> dict[tuple, str]:
    """A copy of the cache: key -> chosen implementation."""
    return dict(_cache)


def timings() -> dict[tuple, dict[str, float]]:
    """Measured median seconds per candidate, per key."""
    return {k: dict(v) for k, v in _timings.items()}


def set_measure_on_cpu(flag: bool) -> bool:
    """Measure candidates on a CPU too (for tests and benchmarks); returns the old value."""
    global _measure_on_cpu
    old, _measure_on_cpu = _measure_on_cpu, bool(flag)
    return old


def offer_compiled(flag: bool | None) -> bool | None:
    """Make ``compiled`` a measured candidate (True), not one (False), or leave it to
    ``$MSGC_KERNELS_COMPILED`` (None); returns the old setting."""
    global _offer_compiled
    old, _offer_compiled = _offer_compiled, None if flag is None else bool(flag)
    return old


def _compiled_offered() -> bool:
    if _offer_compiled is not None:
        return _offer_compiled
    return os.environ.get(COMPILED_ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on")


def inductor_runnable(device: torch.device) -> bool:
    """Whether torch.compile's Inductor can generate kernels for ``device`` here: Triton
    and a CUDA GPU, or a C++ compiler for a CPU."""
    if device.type == "cuda":
        return triton_fast(device)
    return device.type == "cpu" and _has_cxx()


@functools.cache
def _has_cxx() -> bool:
    """A C++ compiler on PATH (looked up once: the dispatcher asks on every call)."""
    return any(shutil.which(cc) for cc in ("g++", "clang++", "c++"))


def _compiled_reference(op: str, reference: Callable) -> Callable:
    """torch.compile of ``reference``, one per op (shapes recompile, then go dynamic);
    inside another torch.compile the reference itself, for that compilation to trace."""

    def run(*args):
        if torch.compiler.is_compiling():
            return reference(*args)
        if op not in _compiled:
            _compiled[op] = torch.compile(reference)
        return _compiled[op](*args)

    return run


def requested_mode(impl: str | None = None) -> tuple[str, bool]:
    """(mode, explicit): ``impl`` if given, else ``$MSGC_KERNELS``, else ``auto``."""
    if impl is not None:
        if impl not in MODES:
            raise KernelUnavailableError(
                f"unknown kernel implementation {impl!r}; use one of {', '.join(MODES)}"
            )
        return impl, True
    env = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if env not in MODES:
        raise KernelUnavailableError(
            f"{ENV_VAR}={env!r} is not understood; set it to one of {', '.join(MODES)}"
        )
    return env, False


def _triton_ok(tensors: list[Tensor | None]) -> bool:
    """Inputs the Triton kernels take: one floating dtype for the data and parameters
    (the mask, last, may have any floating dtype)."""
    *data, mask = tensors
    x = data[0]
    return (
        x.dtype in _FLOATS
        and mask.is_floating_point()
        and all(t.dtype == x.dtype for t in data if t is not None)
    )


def _needs_grad(tensors: list[Tensor | None]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _signature(t: Tensor | None) -> tuple | None:
    return None if t is None else (tuple(t.shape), t.dtype)


# A forced implementation that may not run here: (can it run on a device, what it needs).
_NEEDS = {
    "triton": (lambda d: triton_runnable(d),
               "triton and a CUDA GPU, or TRITON_INTERPRET=1 for CPU tensors"),
    "compiled": (lambda d: inductor_runnable(d),
                 "Inductor: triton and a CUDA GPU, or a C++ compiler"),
}


def _choose(
    op: str,
    impl: str | None,
    tensors: list[Tensor | None],
    flags: tuple,
    fold_valid: bool,
    run: Callable[[str, list[Tensor | None]], Tensor],
) -> str:
    mode, explicit = requested_mode(impl)
    x = tensors[0]
    if mode in _NEEDS:
        runnable, needs = _NEEDS[mode]
        if runnable(x.device):
            return mode
        msg = (
            f"{op}: the {mode} implementation cannot run on {x.device} here (it needs "
            f"{needs}); use impl='auto' or impl='fold'"
        )
        if explicit:
            raise KernelUnavailableError(msg)
        if msg not in _warned_env:
            _warned_env.add(msg)
            warnings.warn(f"{ENV_VAR}={mode} ignored: {msg}", stacklevel=3)
        mode = "auto"
    if mode == "fold":
        return "fold" if fold_valid else "reference"
    if mode == "reference":
        return "reference"

    grad = _needs_grad(tensors)
    compiled = _compiled_offered() and inductor_runnable(x.device)
    key = (op, x.device.type, x.device.index, *map(_signature, tensors), flags, grad, compiled)
    hit = _cache.get(key)
    if hit is not None:
        return hit
    static = "fold" if fold_valid else "reference"
    candidates = []
    if triton_fast(x.device) and _triton_ok(tensors):
        candidates.append("triton")
    if compiled:
        candidates.append("compiled")
    if fold_valid:
        candidates.append("fold")
    candidates.append("reference")
    measurable = x.device.type == "cuda" or _measure_on_cpu or compiled
    if torch.compiler.is_compiling() or not measurable or len(candidates) == 1:
        return static
    choice = _measure(key, candidates, tensors, grad, run)
    _cache[key] = choice
    return choice


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(
    key: tuple,
    candidates: list[str],
    tensors: list[Tensor | None],
    grad: bool,
    run: Callable[[str, list[Tensor | None]], Tensor],
    reps: int = 5,
) -> str:
    """Median time of each candidate on (detached copies of) the call's inputs."""
    device = tensors[0].device
    leaves = [
        None if t is None else t.detach().requires_grad_(grad and t.requires_grad) for t in tensors
    ]
    dy = None

    def once(name: str) -> Tensor:
        nonlocal dy
        with torch.enable_grad() if grad else torch.no_grad():
            out = run(name, leaves)
            if grad:
                if dy is None:
                    dy = torch.ones_like(out)  # no draw: leave the RNG state alone
                params = [t for t in leaves if t is not None and t.requires_grad]
                torch.autograd.grad(out, params, dy)
        return out.detach()

    with torch.no_grad():
        ref = run("reference", [None if t is None else t.detach() for t in tensors])
    scale = ref.abs().max().item() if ref.numel() else 0.0
    tol = _CHECK_TOL.get(ref.dtype, 5e-2) * max(scale, 1e-6)
    times: dict[str, float] = {}
    for name in candidates:
        try:
            out = once(name)  # warm-up (compiles / autotunes Triton kernels)
            if out.numel() and (out.double() - ref.double()).abs().max().item() > tol:
                continue  # wrong here: never chosen
            samples = []
            for _ in range(reps):
                _sync(device)
                t0 = time.perf_counter()
                once(name)
                _sync(device)
                samples.append(time.perf_counter() - t0)
            times[name] = statistics.median(samples)
        except Exception as err:  # noqa: BLE001 - a failing candidate is just not chosen
            warnings.warn(f"{key[0]}: {name} failed while measuring ({err})", stacklevel=4)
    _timings[key] = times
    if not times:
        return "reference"
    return min(times, key=times.get)


# ---------------------------------------------------------------------------------------
# public ops
# ---------------------------------------------------------------------------------------


def _run_linear(act, mba):
    impls = {
        "reference": _ml.masked_linear_reference,
        "fold": _ml.masked_linear_fold,
        "triton": _ml.masked_linear_triton,
        "compiled": _compiled_reference("masked_linear", _ml.masked_linear_reference),
    }

    def run(name, t):
        return impls[name](t[0], t[1], t[2], t[3], act, mba)

    return run


def masked_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor,
    act: str | None = None,
    mask_before_act: bool = True,
    *,
    impl: str | None = None,
) -> Tensor:
    """``act((x W^T + b) * m)`` (``mask_before_act``) or ``act(x W^T + b) * m``.

    x (..., K), weight (N, K), bias (N,) or None, mask (N,) (no gradient); act in
    {None, "gelu", "gelu_tanh", "silu", "relu"}. ``impl`` forces an implementation.
    """
    _ml._act_name(act)
    run = _run_linear(act, bool(mask_before_act))
    tensors = [x, weight, bias, mask]
    name = _choose(
        "masked_linear", impl, tensors, (act, bool(mask_before_act)), bool(mask_before_act), run
    )
    return run(name, tensors)


def _run_swiglu(name, t):
    impls = {
        "reference": _ml.masked_swiglu_reference,
        "fold": _ml.masked_swiglu_fold,
        "triton": _ml.masked_swiglu_triton,
        "compiled": _compiled_reference("masked_swiglu", _ml.masked_swiglu_reference),
    }
    return impls[name](t[0], t[1], t[2], t[3])


def masked_swiglu(
    x: Tensor, w_gate: Tensor, w_up: Tensor, mask: Tensor, *, impl: str | None = None
) -> Tensor:
    """``silu((x Wg^T) * m) * (x Wu^T)``; weights (N, K), no biases, mask (N,)."""
    tensors = [x, w_gate, w_up, mask]
    name = _choose("masked_swiglu", impl, tensors, (), True, _run_swiglu)
    return _run_swiglu(name, tensors)


def _run_norm(eps, kind):
    impls = {
        "reference": _mn.masked_norm_reference,
        "triton": _mn.masked_norm_triton,
        "compiled": _compiled_reference("masked_norm", _mn.masked_norm_reference),
    }

    def run(name, t):
        return impls[name](t[0], t[1], t[2], t[3], eps, kind)

    return run


def masked_norm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mask: Tensor,
    eps: float = 1e-5,
    kind: str = "layer",
    *,
    impl: str | None = None,
) -> Tensor:
    """Masked LayerNorm (``kind="layer"``) or RMSNorm (``kind="rms"``) over the last dim,
    statistics over the channels weighted by ``mask``, output times ``mask``.
    A forced ``fold`` runs the reference (a norm has no fold)."""
    _mn._check_kind(kind)
    run = _run_norm(float(eps), kind)
    tensors = [x, weight, bias, mask]
    name = _choose("masked_norm", impl, tensors, (float(eps), kind), False, run)
    return run(name, tensors)


def chosen_impl(op: str, *args, impl: str | None = None, **kwargs) -> str:
    """Which implementation a call of ``op`` with these arguments would run."""
    if op == "masked_linear":
        params = dict(zip(("act", "mask_before_act"), args[4:], strict=False), **kwargs)
        act, mba = params.get("act"), bool(params.get("mask_before_act", True))
        return _choose(
            "masked_linear", impl, list(args[:4]), (act, mba), mba, _run_linear(act, mba)
        )
    if op == "masked_swiglu":
        return _choose("masked_swiglu", impl, list(args[:4]), (), True, _run_swiglu)
    if op == "masked_norm":
        params = dict(zip(("eps", "kind"), args[4:], strict=False), **kwargs)
        eps, kind = float(params.get("eps", 1e-5)), params.get("kind", "layer")
        return _choose(
            "masked_norm", impl, list(args[:4]), (eps, kind), False, _run_norm(eps, kind)
        )
    raise ValueError(f"unknown op {op!r}")
