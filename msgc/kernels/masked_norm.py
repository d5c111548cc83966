"""Masked LayerNorm / RMSNorm over the last dim, with masked statistics, output * m.

With S = sum(m) (taken as 1 where every channel is masked out):

* layer: mu = sum(m x) / S, var = sum(m (x - mu)^2) / S,
  y = ((x - mu) / sqrt(var + eps) * w + b) * m
* rms:   y = (x / sqrt(sum(m x^2) / S + eps) * w + b) * m   (eps unscaled; b usually None)

``weight`` and ``bias`` may each be None. Two implementations share one signature:
``masked_norm_reference`` (torch, statistics in fp32 or fp64, the oracle) and
``masked_norm_triton``, the custom op ``msgc::masked_norm`` with one-pass row-wise Triton
kernels: the forward keeps each row in registers for both reductions and saves
(mean, rstd); the backward computes dx in one pass per row and accumulates dw / db
partial sums per program in registers (one partial row per program, summed on the
host, the second stage of Triton tutorial 05). A weight fold does not apply to a norm.

Backward with xhat = (x - mu) rstd, g = dy m w:
  layer: dx = rstd (g - m / S (sum g + xhat sum(g xhat)))
  rms:   dx = rstd (g - m / S xhat sum(g xhat))
  dw = sum_rows dy m xhat, db = sum_rows dy m.
"""

from __future__ import annotations

import torch
from torch import Tensor

from msgc.kernels._triton import HAS_TRITON, INTERPRET, acc_dtype, next_pow2, num_sms
from msgc.kernels._triton import triton_runnable as _triton_runnable
from msgc.kernels.paths import record

if HAS_TRITON:
    import triton
    import triton.language as tl

NORM_KINDS = ("layer", "rms")
#: Widest row the Triton kernels keep in registers; wider rows use the torch path.
MAX_TRITON_N = 32768


def _check_kind(kind: str) -> None:
    if kind not in NORM_KINDS:
        raise ValueError(f"masked_norm: unknown kind {kind!r}; use 'layer' or 'rms'")


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _stats_torch(x: Tensor, m: Tensor, eps: float, kind: str) -> tuple[Tensor, Tensor, Tensor]:
    """(xhat, mean, rstd) in the accumulator dtype; mean is None-like zeros for rms."""
    s = m.sum()
    s = torch.where(s > 0, s, torch.ones_like(s))
    if kind == "layer":
        mean = (x * m).sum(-1) / s
        xc = x - mean[..., None]
        var = (xc * xc * m).sum(-1) / s
        rstd = torch.rsqrt(var + eps)
        return xc * rstd[..., None], mean, rstd
    rstd = torch.rsqrt((x * x * m).sum(-1) / s + eps)
    return x * rstd[..., None], torch.zeros_like(rstd), rstd


def masked_norm_reference(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mask: Tensor,
    eps: float = 1e-5,
    kind: str = "layer",
) -> Tensor:
    """The oracle, in plain differentiable torch (statistics in fp32, or fp64 for fp64)."""
    _check_kind(kind)
    acc = _acc(x.dtype)
    m = mask.detach().to(device=x.device, dtype=acc)
    xhat, _, _ = _stats_torch(x.to(acc), m, eps, kind)
    y = xhat
    if weight is not None:
        y = y * weight.to(acc)
    if bias is not None:
        y = y + bias.to(acc)
    return (y * m).to(x.dtype)


# ---------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _masked_norm_fwd_kernel(
        x_ptr,
        w_ptr,
        b_ptr,
        m_ptr,
        y_ptr,
        mean_ptr,
        rstd_ptr,
        M,
        N,
        stride_xm,
        stride_ym,
        eps,
        HAS_W: tl.constexpr,
        HAS_B: tl.constexpr,
        IS_RMS: tl.constexpr,
        ACC_DTYPE: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        r_in = rows < M
        c_in = cols < N
        msk = r_in[:, None] & c_in[None, :]
        m = tl.load(m_ptr + cols, mask=c_in, other=0.0).to(ACC_DTYPE)
        s = tl.sum(m, axis=0)
        s = tl.where(s > 0, s, 1.0)
        x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=msk, other=0.0)
        x = x.to(ACC_DTYPE)
        if IS_RMS:
            rstd = 1.0 / tl.sqrt(tl.sum(m[None, :] * x * x, axis=1) / s + eps)
            xhat = x * rstd[:, None]
        else:
            mean = tl.sum(m[None, :] * x, axis=1) / s
            xc = x - mean[:, None]
            var = tl.sum(m[None, :] * xc * xc, axis=1) / s
            rstd = 1.0 / tl.sqrt(var + eps)
            xhat = xc * rstd[:, None]
            tl.store(mean_ptr + rows, mean, mask=r_in)
        tl.store(rstd_ptr + rows, rstd, mask=r_in)
        y = xhat
        if HAS_W:
            y = y * tl.load(w_ptr + cols, mask=c_in, other=0.0).to(ACC_DTYPE)[None, :]
        if HAS_B:
            y = y + tl.load(b_ptr + cols, mask=c_in, other=0.0).to(ACC_DTYPE)[None, :]
        y = y * m[None, :]
        tl.store(
            y_ptr + rows[:, None] * stride_ym + cols[None, :],
            y.to(y_ptr.dtype.element_ty),
            mask=msk,
        )

    @triton.jit
    def _masked_norm_bwd_kernel(
        dy_ptr,
        x_ptr,
        w_ptr,
        m_ptr,
        mean_ptr,
        rstd_ptr,
        dx_ptr,
        dwp_ptr,
        dbp_ptr,
        M,
        N,
        stride_dym,
        stride_xm,
        stride_dxm,
        rows_per_prog,
        HAS_W: tl.constexpr,
        HAS_B: tl.constexpr,
        IS_RMS: tl.constexpr,
        ACC_DTYPE: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK_N)
        c_in = cols < N
        m = tl.load(m_ptr + cols, mask=c_in, other=0.0).to(ACC_DTYPE)
        s = tl.sum(m, axis=0)
        s = tl.where(s > 0, s, 1.0)
        if HAS_W:
            w = tl.load(w_ptr + cols, mask=c_in, other=0.0).to(ACC_DTYPE)
        dw = tl.zeros((BLOCK_N,), dtype=ACC_DTYPE)
        db = tl.zeros((BLOCK_N,), dtype=ACC_DTYPE)
        row_start = pid * rows_per_prog
        row_end = tl.minimum(row_start + rows_per_prog, M)
        for r in range(row_start, row_end, BLOCK_M):
            rows = r + tl.arange(0, BLOCK_M)
            r_in = rows < row_end
            msk = r_in[:, None] & c_in[None, :]
            x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=msk, other=0.0)
            dy = tl.load(dy_ptr + rows[:, None] * stride_dym + cols[None, :], mask=msk, other=0.0)
            x = x.to(ACC_DTYPE)
            dym = dy.to(ACC_DTYPE) * m[None, :]
            rstd = tl.load(rstd_ptr + rows, mask=r_in, other=0.0)
            if IS_RMS:
                xhat = x * rstd[:, None]
            else:
                mean = tl.load(mean_ptr + rows, mask=r_in, other=0.0)
                xhat = (x - mean[:, None]) * rstd[:, None]
                xhat = tl.where(msk, xhat, 0.0)
            if HAS_W:
                g = dym * w[None, :]
            else:
                g = dym
            c1 = tl.sum(g * xhat, axis=1) / s
            if IS_RMS:
                dx = rstd[:, None] * (g - m[None, :] * xhat * c1[:, None])
            else:
                c2 = tl.sum(g, axis=1) / s
                dx = rstd[:, None] * (g - m[None, :] * (c2[:, None] + xhat * c1[:, None]))
            tl.store(
                dx_ptr + rows[:, None] * stride_dxm + cols[None, :],
                dx.to(dx_ptr.dtype.element_ty),
                mask=msk,
            )
            if HAS_W:
                dw += tl.sum(dym * xhat, axis=0)
            if HAS_B:
                db += tl.sum(dym, axis=0)
        if HAS_W:
            tl.store(dwp_ptr + pid * N + cols, dw, mask=c_in)
        if HAS_B:
            tl.store(dbp_ptr + pid * N + cols, db, mask=c_in)


def _block_m(block_n: int) -> tuple[int, int]:
    """(rows per block, num_warps) for a row width of block_n elements."""
    if INTERPRET:  # few, large programs
        return max(1, min(128, 16384 // block_n)), 4
    rows = max(1, min(16, 4096 // block_n))
    elems = rows * block_n
    warps = 4 if elems <= 2048 else (8 if elems <= 8192 else 16)
    return rows, warps


def _use_triton(x: Tensor, *others: Tensor | None) -> bool:
    return (
        _triton_runnable(x.device)
        and x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        and x.shape[-1] <= MAX_TRITON_N
        and all(t.dtype == x.dtype for t in others if t is not None)
    )


def _as_2d(t: Tensor) -> Tensor:
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _norm_fwd_triton(x2, weight, bias, mask, eps, kind):
    M, N = x2.shape
    acc = _acc(x2.dtype)
    y = torch.empty((M, N), dtype=x2.dtype, device=x2.device)
    mean = torch.empty(M if kind == "layer" else 0, dtype=acc, device=x2.device)
    rstd = torch.empty(M, dtype=acc, device=x2.device)
    if M == 0 or N == 0:
        return y, mean.zero_(), rstd.zero_()
    m = mask.to(device=x2.device, dtype=acc).contiguous()
    block_n = next_pow2(N)
    block_m, warps = _block_m(block_n)
    record("masked_norm", "triton")
    _masked_norm_fwd_kernel[(triton.cdiv(M, block_m),)](
        x2,
        weight if weight is not None else m,
        bias if bias is not None else m,
        m,
        y,
        mean if kind == "layer" else rstd,
        rstd,
        M,
        N,
        x2.stride(0),
        y.stride(0),
        float(eps),
        HAS_W=weight is not None,
        HAS_B=bias is not None,
        IS_RMS=kind == "rms",
        ACC_DTYPE=acc_dtype(x2.dtype),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        num_warps=warps,
    )
    return y, mean, rstd


def _norm_fwd_torch(x2, weight, bias, mask, eps, kind):
    record("masked_norm", "torch")
    acc = _acc(x2.dtype)
    m = mask.to(device=x2.device, dtype=acc)
    xhat, mean, rstd = _stats_torch(x2.to(acc), m, eps, kind)
    y = xhat
    if weight is not None:
        y = y * weight.to(acc)
    if bias is not None:
        y = y + bias.to(acc)
    if kind == "rms":
        mean = mean.new_empty((0,))
    return (y * m).to(x2.dtype), mean, rstd


def _norm_bwd_triton(dy2, x2, weight, mask, mean, rstd, kind, has_bias):
    M, N = x2.shape
    acc = _acc(x2.dtype)
    dx = torch.empty((M, N), dtype=x2.dtype, device=x2.device)
    m = mask.to(device=x2.device, dtype=acc).contiguous()
    block_n = next_pow2(N)
    block_m, warps = _block_m(block_n)
    target = 1 if INTERPRET else 2 * num_sms()
    rows_per_prog = triton.cdiv(triton.cdiv(M, target), block_m) * block_m
    n_prog = triton.cdiv(M, rows_per_prog)
    has_w = weight is not None
    dwp = torch.empty((n_prog, N) if has_w else (0,), dtype=acc, device=x2.device)
    dbp = torch.empty((n_prog, N) if has_bias else (0,), dtype=acc, device=x2.device)
    record("masked_norm_backward", "triton")
    _masked_norm_bwd_kernel[(n_prog,)](
        dy2,
        x2,
        weight if has_w else m,
        m,
        mean if kind == "layer" else rstd,
        rstd,
        dx,
        dwp if has_w else dx,
        dbp if has_bias else dx,
        M,
        N,
        dy2.stride(0),
        x2.stride(0),
        dx.stride(0),
        rows_per_prog,
        HAS_W=has_w,
        HAS_B=has_bias,
        IS_RMS=kind == "rms",
        ACC_DTYPE=acc_dtype(x2.dtype),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        num_warps=warps,
    )
    dw = dwp.sum(0) if has_w else dwp
    db = dbp.sum(0) if has_bias else dbp
    return dx, dw, db


def _norm_bwd_torch(dy2, x2, weight, mask, mean, rstd, kind, has_bias):
    record("masked_norm_backward", "torch")
    acc = _acc(x2.dtype)
    m = mask.to(device=x2.device, dtype=acc)
    s = m.sum()
    s = torch.where(s > 0, s, torch.ones_like(s))
    x = x2.to(acc)
    xhat = (x * rstd[:, None]) if kind == "rms" else (x - mean[:, None]) * rstd[:, None]
    dym = dy2.to(acc) * m
    g = dym * weight.to(acc) if weight is not None else dym
    c1 = (g * xhat).sum(-1, keepdim=True) / s
    if kind == "rms":
        dx = rstd[:, None] * (g - m * xhat * c1)
    else:
        c2 = g.sum(-1, keepdim=True) / s
        dx = rstd[:, None] * (g - m * (c2 + xhat * c1))
    dw = (dym * xhat).sum(0) if weight is not None else x2.new_empty((0,), dtype=acc)
    db = dym.sum(0) if has_bias else x2.new_empty((0,), dtype=acc)
    return dx.to(x2.dtype), dw, db


# ---------------------------------------------------------------------------------------
# custom ops
# ---------------------------------------------------------------------------------------


@torch.library.custom_op("msgc::masked_norm", mutates_args=())
def masked_norm_op(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mask: Tensor,
    eps: float,
    kind: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fused masked norm. Returns ``(y, mean, rstd)``; mean and rstd have the shape of
    ``x.shape[:-1]`` in fp32 (fp64 for fp64 inputs); mean is 0-element for ``rms``."""
    _check_kind(kind)
    x2 = _as_2d(x)
    if _use_triton(x, weight, bias):
        y, mean, rstd = _norm_fwd_triton(x2, weight, bias, mask, eps, kind)
    else:
        y, mean, rstd = _norm_fwd_torch(x2, weight, bias, mask, eps, kind)
    lead = x.shape[:-1]
    mean = mean.reshape(lead) if kind == "layer" else mean
    return y.reshape(x.shape), mean, rstd.reshape(lead)


@masked_norm_op.register_fake
def _(x, weight, bias, mask, eps, kind):
    acc = _acc(x.dtype)
    lead = x.shape[:-1]
    mean = x.new_empty(lead if kind == "layer" else (0,), dtype=acc)
    return x.new_empty(x.shape), mean, x.new_empty(lead, dtype=acc)


@torch.library.custom_op("msgc::masked_norm_backward", mutates_args=())
def masked_norm_backward_op(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    mask: Tensor,
    mean: Tensor,
    rstd: Tensor,
    kind: str,
    has_bias: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dx, dw, db) of ``msgc::masked_norm``; dw / db are 0-element when the
    weight / bias is absent."""
    x2, dy2 = _as_2d(x), _as_2d(dy)
    mean2 = mean.reshape(-1)
    rstd2 = rstd.reshape(-1)
    if _use_triton(x, dy, weight) and x2.shape[0] > 0:
        dx, dw, db = _norm_bwd_triton(dy2, x2, weight, mask, mean2, rstd2, kind, has_bias)
    else:
        dx, dw, db = _norm_bwd_torch(dy2, x2, weight, mask, mean2, rstd2, kind, has_bias)
    pdtype = weight.dtype if weight is not None else x.dtype
    return dx.reshape(x.shape), dw.to(pdtype), db.to(pdtype)


@masked_norm_backward_op.register_fake
def _(dy, x, weight, mask, mean, rstd, kind, has_bias):
    pdtype = weight.dtype if weight is not None else x.dtype
    n = x.shape[-1]
    return (
        x.new_empty(x.shape),
        x.new_empty((n,) if weight is not None else (0,), dtype=pdtype),
        x.new_empty((n,) if has_bias else (0,), dtype=pdtype),
    )


def _norm_setup_context(ctx, inputs, output):
    x, weight, bias, mask, eps, kind = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, weight, mask, mean, rstd)
    ctx.kind = kind
    ctx.has_bias = bias is not None


def _norm_backward(ctx, dy, _dmean, _drstd):
    x, weight, mask, mean, rstd = ctx.saved_tensors
    dx, dw, db = torch.ops.msgc.masked_norm_backward(
        dy, x, weight, mask, mean, rstd, ctx.kind, ctx.has_bias
    )
    need = ctx.needs_input_grad
    return (
        dx if need[0] else None,
        dw if (weight is not None and need[1]) else None,
        db if (ctx.has_bias and need[2]) else None,
        None,
        None,
        None,
    )


masked_norm_op.register_autograd(_norm_backward, setup_context=_norm_setup_context)


def masked_norm_triton(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mask: Tensor,
    eps: float = 1e-5,
    kind: str = "layer",
) -> Tensor:
    """The fused path (``msgc::masked_norm``): Triton kernels where they can run."""
    _check_kind(kind)
    y, _, _ = torch.ops.msgc.masked_norm(x, weight, bias, mask.detach(), float(eps), kind)
    return y
