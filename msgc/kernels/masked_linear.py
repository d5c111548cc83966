"""Masked linear layers: y = act((x W^T + b) * m) or y = act(x W^T + b) * m, and SwiGLU.

Three implementations share one signature:

* ``masked_linear_reference``: plain torch (F.linear, a separate mul, the activation);
  the oracle of the tests and the fallback everywhere.
* ``masked_linear_fold``: the output mask is a row scale of W and b, so
  ``(x W^T + b) * m == F.linear(x, m[:, None] * W, m * b)``: one O(N K) scale and one
  cuBLAS GEMM. Only valid for a mask *before* the activation; with
  ``mask_before_act=False`` the fold path applies the mask after the activation as a
  separate mul (it is then the reference and the dispatcher does not offer it).
* ``masked_linear_triton``: a tiled Triton GEMM with bias, mask and activation in the
  epilogue, exposed as the custom op ``msgc::masked_linear`` (returns ``(y, pre)``, where
  ``pre`` is the activation's argument, saved for the backward when needed) with the
  backward op ``msgc::masked_linear_backward``. The backward recomputes act'(pre) in a
  fused elementwise Triton kernel (which also reduces db) and runs the two GEMMs on
  cuBLAS; without an activation it needs no elementwise pass at all:
  dx = dy (m W), dW = m * (dy^T x), db = m * sum(dy).

Masks are schedule values: they never receive a gradient.
Where Triton cannot run on the tensors' device, the custom ops compute the same math
with torch, so graphs that contain them (torch.export, torch.compile) run anywhere.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from msgc.kernels._triton import (
    HAS_TRITON,
    INTERPRET,
    acc_dtype,
    fp32_input_precision,
    next_pow2,
    num_sms,
    triton_runnable,
)
from msgc.kernels.paths import record

if HAS_TRITON:
    import triton
    import triton.language as tl

ACTIVATIONS: dict[str | None, int] = {
    None: 0,
    "none": 0,
    "gelu": 1,
    "gelu_tanh": 2,
    "silu": 3,
    "relu": 4,
}

_SQRT1_2 = 0.7071067811865476
_SQRT2_PI = 0.7978845608028654  # sqrt(2 / pi)
_INV_SQRT_2PI = 0.3989422804014327  # 1 / sqrt(2 pi)


def _act_name(act: str | None) -> str:
    if act not in ACTIVATIONS:
        raise ValueError(
            f"masked_linear: unknown activation {act!r}; use one of None, 'gelu', "
            "'gelu_tanh', 'silu', 'relu'"
        )
    return "none" if act is None else act


# ---------------------------------------------------------------------------------------
# torch math (reference, fold, and the custom ops' fallback)
# ---------------------------------------------------------------------------------------


def _act_torch(z: Tensor, act: str) -> Tensor:
    if act == "none":
        return z
    if act == "gelu":
        return F.gelu(z)
    if act == "gelu_tanh":
        return F.gelu(z, approximate="tanh")
    if act == "silu":
        return F.silu(z)
    return F.relu(z)


def _act_grad_torch(z: Tensor, act: str) -> Tensor:
    """d act / dz, elementwise (same formulas as the Triton kernels)."""
    if act == "none":
        return torch.ones_like(z)
    if act == "gelu":
        cdf = 0.5 * (1.0 + torch.erf(z * _SQRT1_2))
        return cdf + z * _INV_SQRT_2PI * torch.exp(-0.5 * z * z)
    if act == "gelu_tanh":
        z2 = z * z
        t = torch.tanh(_SQRT2_PI * z * (1.0 + 0.044715 * z2))
        return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * _SQRT2_PI * (1.0 + 3 * 0.044715 * z2)
    if act == "silu":
        s = torch.sigmoid(z)
        return s * (1.0 + z * (1.0 - s))
    return (z > 0).to(z.dtype)


def masked_linear_reference(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor,
    act: str | None = None,
    mask_before_act: bool = True,
) -> Tensor:
    """The oracle: ``act((x W^T + b) * m)`` or ``act(x W^T + b) * m`` in plain torch."""
    act = _act_name(act)
    z = F.linear(x, weight, bias)
    m = mask.detach().to(z.dtype)
    if mask_before_act:
        return _act_torch(z * m, act)
    return _act_torch(z, act) * m


def masked_linear_fold(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor,
    act: str | None = None,
    mask_before_act: bool = True,
) -> Tensor:
    """Weight fold: scale W's rows and b by m, then one F.linear (cuBLAS).

    With ``mask_before_act=False`` a fold is not valid (the mask sits after a
    nonlinearity); the mask is then applied after the activation as a separate mul.
    """
    act = _act_name(act)
    m = mask.detach().to(weight.dtype)
    if not mask_before_act:
        return _act_torch(F.linear(x, weight, bias), act) * m.to(x.dtype)
    w = weight * m[:, None]
    b = bias * m.to(bias.dtype) if bias is not None else None
    return _act_torch(F.linear(x, w, b), act)


def masked_swiglu_reference(x: Tensor, w_gate: Tensor, w_up: Tensor, mask: Tensor) -> Tensor:
    """``silu((x Wg^T) * m) * (x Wu^T)`` in plain torch."""
    gate = F.linear(x, w_gate)
    return F.silu(gate * mask.detach().to(gate.dtype)) * F.linear(x, w_up)


def masked_swiglu_fold(x: Tensor, w_gate: Tensor, w_up: Tensor, mask: Tensor) -> Tensor:
    """SwiGLU with the gate mask folded into W_gate's rows."""
    wg = w_gate * mask.detach().to(w_gate.dtype)[:, None]
    return F.silu(F.linear(x, wg)) * F.linear(x, w_up)


# ---------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _tanh(u):
        # tanh through exp (libdevice is unavailable under the interpreter); saturates
        # correctly at +-inf.
        return 1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)

    @triton.jit
    def _act_fwd(z, ACT: tl.constexpr):
        out = z
        if ACT == 1:
            out = 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))
        elif ACT == 2:
            t = _tanh(0.7978845608028654 * z * (1.0 + 0.044715 * z * z))
            out = 0.5 * z * (1.0 + t)
        elif ACT == 3:
            out = z * tl.sigmoid(z)
        elif ACT == 4:
            out = tl.where(z > 0, z, 0.0)
        return out

    @triton.jit
    def _act_bwd(z, ACT: tl.constexpr):
        d = tl.full(z.shape, 1.0, z.dtype)
        if ACT == 1:
            cdf = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476))
            d = cdf + z * 0.3989422804014327 * tl.exp(-0.5 * z * z)
        elif ACT == 2:
            z2 = z * z
            t = _tanh(0.7978845608028654 * z * (1.0 + 0.044715 * z2))
            d = 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * 0.7978845608028654 * (
                1.0 + 0.134145 * z2
            )
        elif ACT == 3:
            s = tl.sigmoid(z)
            d = s * (1.0 + z * (1.0 - s))
        elif ACT == 4:
            d = tl.where(z > 0, 1.0, 0.0).to(z.dtype)
        return d

    def _gemm_configs(two_acc: bool = False):
        if INTERPRET:
            # One config (autotuning needs a GPU); large tiles keep the program count
            # low, BLOCK_K=32 keeps the K loop exercised on small test shapes.
            return [
                triton.Config(
                    {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 2},
                    num_warps=4,
                    num_stages=1,
                )
            ]
        # Hopper / Ampere tile configs (bf16 tensor cores, fp32 accumulators).
        shapes = [
            (128, 256, 64, 3, 8),
            (256, 128, 64, 3, 8),
            (128, 128, 64, 4, 8),
            (128, 128, 64, 3, 4),
            (128, 64, 64, 4, 4),
            (64, 128, 64, 4, 4),
            (128, 128, 32, 4, 4),
        ]
        if two_acc:  # two accumulators per tile: keep register pressure sane
            shapes = [s for s in shapes if s[0] * s[1] <= 128 * 128]
        return [
            triton.Config(
                {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                num_warps=w,
                num_stages=s,
            )
            for bm, bn, bk, s, w in shapes
        ]

    @triton.jit
    def _tile_ids(
        pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr
    ):
        # Grouped ordering: GROUP_M row-tiles share the W tiles they read (L2 reuse).
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        num_pid_in_group = GROUP_M * num_pid_n
        group_id = pid // num_pid_in_group
        first_pid_m = group_id * GROUP_M
        group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
        pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
        pid_n = (pid % num_pid_in_group) // group_size_m
        return pid_m, pid_n

    @triton.autotune(configs=_gemm_configs(), key=["M", "N", "K"])
    @triton.jit
    def _masked_linear_fwd_kernel(
        x_ptr,
        w_ptr,
        b_ptr,
        m_ptr,
        y_ptr,
        pre_ptr,
        M,
        N,
        K,
        stride_xm,
        stride_xk,
        stride_wn,
        stride_wk,
        stride_ym,
        HAS_BIAS: tl.constexpr,
        ACT: tl.constexpr,
        MASK_BEFORE_ACT: tl.constexpr,
        SAVE_PRE: tl.constexpr,
        ACC_DTYPE: tl.constexpr,
        DOT_FP32: tl.constexpr,
        INPUT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr,
    ):
        pid_m, pid_n = _tile_ids(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        m_in = offs_m < M
        n_in = offs_n < N
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
        # A (BLOCK_K, BLOCK_N) tile of W^T.
        w_ptrs = w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            k_left = K - k * BLOCK_K
            a = tl.load(x_ptrs, mask=m_in[:, None] & (offs_k[None, :] < k_left), other=0.0)
            b = tl.load(w_ptrs, mask=(offs_k[:, None] < k_left) & n_in[None, :], other=0.0)
            if DOT_FP32:  # the interpreter's half-precision dot is wrong: widen first
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
            x_ptrs += BLOCK_K * stride_xk
            w_ptrs += BLOCK_K * stride_wk
        # Epilogue: bias, mask, activation, all on the accumulator.
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n, mask=n_in, other=0.0).to(ACC_DTYPE)[None, :]
        mvals = tl.load(m_ptr + offs_n, mask=n_in, other=0.0).to(ACC_DTYPE)[None, :]
        if MASK_BEFORE_ACT:
            pre = acc * mvals
            y = _act_fwd(pre, ACT)
        else:
            pre = acc
            y = _act_fwd(pre, ACT) * mvals
        out_off = offs_m[:, None] * stride_ym + offs_n[None, :]
        out_mask = m_in[:, None] & n_in[None, :]
        if SAVE_PRE:
            tl.store(pre_ptr + out_off, pre.to(pre_ptr.dtype.element_ty), mask=out_mask)
        tl.store(y_ptr + out_off, y.to(y_ptr.dtype.element_ty), mask=out_mask)

    def _tma_configs():
        if INTERPRET:
            return [
                triton.Config(
                    {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 2},
                    num_warps=4,
                    num_stages=1,
                )
            ]
        shapes = [
            (128, 256, 64, 3, 8),
            (128, 128, 64, 4, 8),
            (128, 128, 64, 3, 4),
            (128, 64, 64, 4, 4),
            (64, 128, 64, 4, 4),
        ]
        return [
            triton.Config(
                {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                num_warps=w,
                num_stages=s,
            )
            for bm, bn, bk, s, w in shapes
        ]

    @triton.autotune(configs=_tma_configs(), key=["M", "N", "K"])
    @triton.jit
    def _masked_linear_fwd_tma_kernel(
        x_ptr,
        w_ptr,
        b_ptr,
        m_ptr,
        y_ptr,
        pre_ptr,
        M,
        N,
        K,
        HAS_BIAS: tl.constexpr,
        ACT: tl.constexpr,
        MASK_BEFORE_ACT: tl.constexpr,
        SAVE_PRE: tl.constexpr,
        ACC_DTYPE: tl.constexpr,
        DOT_FP32: tl.constexpr,
        INPUT_PRECISION: tl.constexpr,
        NUM_PROGRAMS: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr,
    ):
        # Persistent: NUM_PROGRAMS programs walk the output tiles; operands come in through
        # tensor descriptors (TMA on Hopper; out-of-bounds reads are zeros, stores clip).
        x_desc = tl.make_tensor_descriptor(
            x_ptr, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, BLOCK_K]
        )
        w_desc = tl.make_tensor_descriptor(
            w_ptr, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, BLOCK_K]
        )
        y_desc = tl.make_tensor_descriptor(
            y_ptr, shape=[M, N], strides=[N, 1], block_shape=[BLOCK_M, BLOCK_N]
        )
        if SAVE_PRE:
            pre_desc = tl.make_tensor_descriptor(
                pre_ptr, shape=[M, N], strides=[N, 1], block_shape=[BLOCK_M, BLOCK_N]
            )
        num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
        k_tiles = tl.cdiv(K, BLOCK_K)
        for tile in tl.range(tl.program_id(0), num_tiles, NUM_PROGRAMS, flatten=True):
            pid_m, pid_n = _tile_ids(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
            row0 = pid_m * BLOCK_M
            col0 = pid_n * BLOCK_N
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
            for ki in range(k_tiles):
                a = x_desc.load([row0, ki * BLOCK_K])
                b = w_desc.load([col0, ki * BLOCK_K])
                if DOT_FP32:
                    a = a.to(tl.float32)
                    b = b.to(tl.float32)
                acc = tl.dot(a, b.T, acc, input_precision=INPUT_PRECISION)
            offs_n = col0 + tl.arange(0, BLOCK_N)
            n_in = offs_n < N
            if HAS_BIAS:
                acc += tl.load(b_ptr + offs_n, mask=n_in, other=0.0).to(ACC_DTYPE)[None, :]
            mvals = tl.load(m_ptr + offs_n, mask=n_in, other=0.0).to(ACC_DTYPE)[None, :]
            if MASK_BEFORE_ACT:
                pre = acc * mvals
                y = _act_fwd(pre, ACT)
            else:
                pre = acc
                y = _act_fwd(pre, ACT) * mvals
            if SAVE_PRE:
                pre_desc.store([row0, col0], pre.to(pre_ptr.dtype.element_ty))
            y_desc.store([row0, col0], y.to(y_ptr.dtype.element_ty))

    @triton.jit
    def _masked_linear_bwd_g_kernel(
        dy_ptr,
        pre_ptr,
        m_ptr,
        g_ptr,
        dbp_ptr,
        M,
        N,
        stride_dym,
        stride_pm,
        stride_gm,
        rows_per_prog,
        ACT: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        ACC_DTYPE: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        # g = dy * act'(pre) * m over a strip of rows; db partial sums per program.
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        c_in = cols < N
        mvals = tl.load(m_ptr + cols, mask=c_in, other=0.0).to(ACC_DTYPE)
        db = tl.zeros((BLOCK_N,), dtype=ACC_DTYPE)
        row_start = pid_m * rows_per_prog
        row_end = tl.minimum(row_start + rows_per_prog, M)
        for r in range(row_start, row_end, BLOCK_M):
            rows = r + tl.arange(0, BLOCK_M)
            msk = (rows < row_end)[:, None] & c_in[None, :]
            dy = tl.load(dy_ptr + rows[:, None] * stride_dym + cols[None, :], mask=msk, other=0.0)
            p = tl.load(pre_ptr + rows[:, None] * stride_pm + cols[None, :], mask=msk, other=0.0)
            g = dy.to(ACC_DTYPE) * _act_bwd(p.to(ACC_DTYPE), ACT) * mvals[None, :]
            tl.store(
                g_ptr + rows[:, None] * stride_gm + cols[None, :],
                g.to(g_ptr.dtype.element_ty),
                mask=msk,
            )
            if HAS_BIAS:
                db += tl.sum(tl.where(msk, g, 0.0), axis=0)
        if HAS_BIAS:
            tl.store(dbp_ptr + pid_m * N + cols, db, mask=c_in)

    @triton.autotune(configs=_gemm_configs(two_acc=True), key=["M", "N", "K"])
    @triton.jit
    def _masked_swiglu_fwd_kernel(
        x_ptr,
        wg_ptr,
        wu_ptr,
        m_ptr,
        y_ptr,
        a_ptr,
        u_ptr,
        M,
        N,
        K,
        stride_xm,
        stride_xk,
        stride_wgn,
        stride_wgk,
        stride_wun,
        stride_wuk,
        stride_ym,
        SAVE_PRE: tl.constexpr,
        ACC_DTYPE: tl.constexpr,
        DOT_FP32: tl.constexpr,
        INPUT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr,
    ):
        pid_m, pid_n = _tile_ids(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        m_in = offs_m < M
        n_in = offs_n < N
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
        wg_ptrs = wg_ptr + offs_n[None, :] * stride_wgn + offs_k[:, None] * stride_wgk
        wu_ptrs = wu_ptr + offs_n[None, :] * stride_wun + offs_k[:, None] * stride_wuk
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
        acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            k_left = K - k * BLOCK_K
            a = tl.load(x_ptrs, mask=m_in[:, None] & (offs_k[None, :] < k_left), other=0.0)
            wmask = (offs_k[:, None] < k_left) & n_in[None, :]
            bg = tl.load(wg_ptrs, mask=wmask, other=0.0)
            bu = tl.load(wu_ptrs, mask=wmask, other=0.0)
            if DOT_FP32:
                a = a.to(tl.float32)
                bg = bg.to(tl.float32)
                bu = bu.to(tl.float32)
            acc_g = tl.dot(a, bg, acc_g, input_precision=INPUT_PRECISION)
            acc_u = tl.dot(a, bu, acc_u, input_precision=INPUT_PRECISION)
            x_ptrs += BLOCK_K * stride_xk
            wg_ptrs += BLOCK_K * stride_wgk
            wu_ptrs += BLOCK_K * stride_wuk
        mvals = tl.load(m_ptr + offs_n, mask=n_in, other=0.0).to(ACC_DTYPE)[None, :]
        gate = acc_g * mvals
        y = gate * tl.sigmoid(gate) * acc_u
        out_off = offs_m[:, None] * stride_ym + offs_n[None, :]
        out_mask = m_in[:, None] & n_in[None, :]
        if SAVE_PRE:
            tl.store(a_ptr + out_off, gate.to(a_ptr.dtype.element_ty), mask=out_mask)
            tl.store(u_ptr + out_off, acc_u.to(u_ptr.dtype.element_ty), mask=out_mask)
        tl.store(y_ptr + out_off, y.to(y_ptr.dtype.element_ty), mask=out_mask)

    @triton.jit
    def _masked_swiglu_bwd_kernel(
        dy_ptr,
        a_ptr,
        u_ptr,
        m_ptr,
        dg_ptr,
        du_ptr,
        M,
        N,
        stride,
        ACC_DTYPE: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        # dgate_raw = dy * u * silu'(a) * m, dup = dy * silu(a)  (a = gate * m).
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        c_in = cols < N
        msk = (rows < M)[:, None] & c_in[None, :]
        off = rows[:, None] * stride + cols[None, :]
        mvals = tl.load(m_ptr + cols, mask=c_in, other=0.0).to(ACC_DTYPE)
        dy = tl.load(dy_ptr + off, mask=msk, other=0.0).to(ACC_DTYPE)
        a = tl.load(a_ptr + off, mask=msk, other=0.0).to(ACC_DTYPE)
        u = tl.load(u_ptr + off, mask=msk, other=0.0).to(ACC_DTYPE)
        s = tl.sigmoid(a)
        dg = dy * u * s * (1.0 + a * (1.0 - s)) * mvals[None, :]
        du = dy * a * s
        tl.store(dg_ptr + off, dg.to(dg_ptr.dtype.element_ty), mask=msk)
        tl.store(du_ptr + off, du.to(du_ptr.dtype.element_ty), mask=msk)


def _launch_meta(x: Tensor) -> dict:
    half = x.dtype in (torch.float16, torch.bfloat16)
    if x.dtype == torch.float32:
        precision = fp32_input_precision()
    else:
        precision = None
    return {
        "ACC_DTYPE": acc_dtype(x.dtype),
        "DOT_FP32": bool(INTERPRET and half),
        "INPUT_PRECISION": precision,
    }


def _acc_torch_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _use_triton(*tensors: Tensor) -> bool:
    x = tensors[0]
    return (
        triton_runnable(x.device)
        and x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        and all(t.dtype == x.dtype for t in tensors if t is not None)
    )


def _as_2d(t: Tensor) -> Tensor:
    t2 = t.reshape(-1, t.shape[-1])
    if t2.stride(-1) != 1:
        t2 = t2.contiguous()
    return t2


def _linear_fwd_triton(
    x2: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor,
    act_id: int,
    mask_before_act: bool,
    save_pre: bool,
) -> tuple[Tensor, Tensor]:
    M, K = x2.shape
    N = weight.shape[0]
    y = torch.empty((M, N), dtype=x2.dtype, device=x2.device)
    pre = torch.empty((M, N) if save_pre else (0,), dtype=x2.dtype, device=x2.device)
    if M == 0 or N == 0:
        return y, pre
    if K == 0:
        return _linear_fwd_torch(x2, weight, bias, mask, act_id, mask_before_act, save_pre)
    m = mask.to(device=x2.device, dtype=_acc_torch_dtype(x2.dtype)).contiguous()
    b = bias.contiguous() if bias is not None else m
    flags = {
        "HAS_BIAS": bias is not None,
        "ACT": act_id,
        "MASK_BEFORE_ACT": mask_before_act,
        "SAVE_PRE": save_pre,
        **_launch_meta(x2),
    }
    record("masked_linear", "triton")
    if _gemm_variant(x2, weight) == "tma":
        _set_tma_allocator(x2.device)
        n_prog = 2 if INTERPRET else num_sms(x2.device.index or 0)

        def pgrid(meta):
            tiles = triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"])
            return (min(n_prog, tiles),)

        _masked_linear_fwd_tma_kernel[pgrid](
            x2, weight, b, m, y, pre if save_pre else y, M, N, K, NUM_PROGRAMS=n_prog, **flags
        )
        return y, pre

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    _masked_linear_fwd_kernel[grid](
        x2,
        weight,
        b,
        m,
        y,
        pre if save_pre else y,
        M,
        N,
        K,
        x2.stride(0),
        x2.stride(1),
        weight.stride(0),
        weight.stride(1),
        y.stride(0),
        **flags,
    )
    return y, pre


#: Which Triton GEMM the forward uses: "auto" (the persistent TMA kernel on Hopper or
#: newer when the operands allow it, the tiled kernel otherwise), "tma" or "tiled".
GEMM_VARIANT = os.environ.get("MSGC_TRITON_GEMM", "auto")


def _gemm_variant(x2: Tensor, weight: Tensor) -> str:
    """The persistent TMA kernel needs contiguous rows and 16-byte aligned rows/bases."""
    es = x2.element_size()
    K, N = x2.shape[1], weight.shape[0]
    fits = (
        x2.is_contiguous()
        and weight.is_contiguous()
        and x2.dtype != torch.float64
        and (K * es) % 16 == 0
        and (N * es) % 16 == 0
        and x2.data_ptr() % 16 == 0
        and weight.data_ptr() % 16 == 0
    )
    if GEMM_VARIANT == "tiled" or not fits:
        return "tiled"
    if GEMM_VARIANT == "tma":
        return "tma"
    if INTERPRET or x2.device.type != "cuda":
        return "tiled"
    return "tma" if torch.cuda.get_device_capability(x2.device)[0] >= 9 else "tiled"


_allocator_set = False


def _set_tma_allocator(device: torch.device) -> None:
    """Device-side tensor descriptors need scratch memory from a Triton allocator."""
    global _allocator_set
    if _allocator_set:
        return

    def alloc(size: int, alignment: int, stream):
        return torch.empty(size, dtype=torch.int8, device=device)

    triton.set_allocator(alloc)
    _allocator_set = True


def _linear_fwd_torch(x2, weight, bias, mask, act_id, mask_before_act, save_pre):
    record("masked_linear", "torch")
    act = _ACT_NAMES[act_id]
    z = F.linear(x2, weight, bias)
    m = mask.to(_acc_torch_dtype(z.dtype))
    if mask_before_act:
        pre = (z * m).to(z.dtype)
        y = _act_torch(pre, act)
    else:
        pre = z
        y = (_act_torch(z, act) * m).to(z.dtype)
    if not save_pre:
        pre = z.new_empty((0,))
    return y, pre


_ACT_NAMES = {0: "none", 1: "gelu", 2: "gelu_tanh", 3: "silu", 4: "relu"}


def _elementwise_grid(M: int, N: int, block_n: int, block_m: int) -> tuple[int, int, int]:
    """(programs along rows, rows per program, programs along columns)."""
    n_col = triton.cdiv(N, block_n)
    if INTERPRET:
        target = 1
    else:
        target = max(1, (4 * num_sms()) // n_col)
    rows_per_prog = triton.cdiv(triton.cdiv(M, target), block_m) * block_m
    return triton.cdiv(M, rows_per_prog), rows_per_prog, n_col


def _linear_grad_pre_triton(dy2: Tensor, pre: Tensor, mask: Tensor, act_id: int, has_bias: bool):
    """g = dy * act'(pre) * m (dtype of dy) and db = sum_rows g (accumulator dtype)."""
    M, N = dy2.shape
    acc = _acc_torch_dtype(dy2.dtype)
    g = torch.empty_like(dy2, memory_format=torch.contiguous_format)
    if M == 0:
        return g, torch.zeros(N, dtype=acc, device=dy2.device)
    block_n = min(128, next_pow2(N)) if not INTERPRET else min(256, next_pow2(N))
    block_m = 32 if not INTERPRET else 64
    n_row, rows_per_prog, n_col = _elementwise_grid(M, N, block_n, block_m)
    dbp = torch.empty((n_row, N) if has_bias else (0,), dtype=acc, device=dy2.device)
    m = mask.to(device=dy2.device, dtype=acc).contiguous()
    record("masked_linear_backward", "triton")
    _masked_linear_bwd_g_kernel[(n_row, n_col)](
        dy2,
        pre,
        m,
        g,
        dbp if has_bias else g,
        M,
        N,
        dy2.stride(0),
        pre.stride(0),
        g.stride(0),
        rows_per_prog,
        ACT=act_id,
        HAS_BIAS=has_bias,
        ACC_DTYPE=acc_dtype(dy2.dtype),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        num_warps=4,
    )
    db = dbp.sum(0) if has_bias else dbp
    return g, db


def _linear_bwd(
    dy: Tensor,
    x: Tensor,
    weight: Tensor,
    bias_dtype: torch.dtype | None,
    mask: Tensor,
    pre: Tensor,
    act_id: int,
    mask_before_act: bool,
    need_dx: bool,
    need_dw: bool,
    use_triton: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    N, K = weight.shape
    x2 = _as_2d(x)
    dy2 = _as_2d(dy)
    acc = _acc_torch_dtype(dy2.dtype)
    has_bias = bias_dtype is not None
    empty = dy2.new_empty((0,))
    if act_id == 0:
        # No elementwise pass: the mask rides on the (small) weight and on dW's rows.
        record("masked_linear_backward", "torch")
        m = mask.to(device=dy2.device, dtype=acc)
        dx = dy2 @ (weight * m.to(weight.dtype)[:, None]) if need_dx else empty
        dw = (dy2.t() @ x2).mul_(m.to(dy2.dtype)[:, None]) if need_dw else empty
        db = (dy2.sum(0, dtype=acc) * m).to(bias_dtype) if has_bias else empty
    else:
        if pre.numel() == 0 and dy2.numel() != 0:
            raise RuntimeError(
                "msgc::masked_linear backward: the pre-activation was not saved; call the "
                "forward with save_pre=True when a gradient is needed"
            )
        pre2 = _as_2d(pre)
        if use_triton:
            g, db = _linear_grad_pre_triton(dy2, pre2, mask, act_id, has_bias)
        else:
            record("masked_linear_backward", "torch")
            m = mask.to(device=dy2.device, dtype=acc)
            g32 = dy2.to(acc) * _act_grad_torch(pre2.to(acc), _ACT_NAMES[act_id]) * m
            db = g32.sum(0) if has_bias else empty
            g = g32.to(dy2.dtype)
        db = db.to(bias_dtype) if has_bias else empty
        dx = g @ weight if need_dx else empty
        dw = g.t() @ x2 if need_dw else empty
    if need_dx:
        dx = dx.reshape(*x.shape[:-1], K)
    return dx, dw, db


# ---------------------------------------------------------------------------------------
# custom ops
# ---------------------------------------------------------------------------------------


@torch.library.custom_op("msgc::masked_linear", mutates_args=())
def masked_linear_op(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor,
    act: str,
    mask_before_act: bool,
    save_pre: bool,
) -> tuple[Tensor, Tensor]:
    """Fused masked linear. Returns ``(y, pre)``; ``pre`` (the activation's argument) is
    a 0-element tensor unless ``save_pre`` (needed for the backward when ``act`` is set).
    """
    act_id = ACTIVATIONS[_act_name(act)]
    save_pre = bool(save_pre and act_id != 0)
    N, K = weight.shape
    x2 = _as_2d(x)
    if _use_triton(x, weight, bias):
        y, pre = _linear_fwd_triton(x2, weight, bias, mask, act_id, mask_before_act, save_pre)
    else:
        y, pre = _linear_fwd_torch(x2, weight, bias, mask, act_id, mask_before_act, save_pre)
    out_shape = (*x.shape[:-1], N)
    return y.reshape(out_shape), (pre.reshape(out_shape) if save_pre else pre)


@masked_linear_op.register_fake
def _(x, weight, bias, mask, act, mask_before_act, save_pre):
    out_shape = (*x.shape[:-1], weight.shape[0])
    save = bool(save_pre and ACTIVATIONS[_act_name(act)] != 0)
    return x.new_empty(out_shape), x.new_empty(out_shape if save else (0,))


@torch.library.custom_op("msgc::masked_linear_backward", mutates_args=())
def masked_linear_backward_op(
    dy: Tensor,
    x: Tensor,
    weight: Tensor,
    mask: Tensor,
    pre: Tensor,
    act: str,
    mask_before_act: bool,
    has_bias: bool,
    need_dx: bool,
    need_dw: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dx, dW, db) of ``msgc::masked_linear``; unneeded ones are 0-element."""
    act_id = ACTIVATIONS[_act_name(act)]
    return _linear_bwd(
        dy,
        x,
        weight,
        weight.dtype if has_bias else None,
        mask,
        pre,
        act_id,
        mask_before_act,
        need_dx,
        need_dw,
        _use_triton(dy, x, weight),
    )


@masked_linear_backward_op.register_fake
def _(dy, x, weight, mask, pre, act, mask_before_act, has_bias, need_dx, need_dw):
    empty = dy.new_empty((0,))
    return (
        x.new_empty(x.shape) if need_dx else empty,
        weight.new_empty(weight.shape) if need_dw else empty,
        weight.new_empty((weight.shape[0],)) if has_bias else empty,
    )


def _linear_setup_context(ctx, inputs, output):
    x, weight, bias, mask, act, mask_before_act, save_pre = inputs
    _, pre = output
    ctx.mark_non_differentiable(pre)
    ctx.save_for_backward(x, weight, mask, pre)
    ctx.act = act
    ctx.mask_before_act = mask_before_act
    ctx.has_bias = bias is not None


def _linear_backward(ctx, dy, _dpre):
    x, weight, mask, pre = ctx.saved_tensors
    need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
    dx, dw, db = torch.ops.msgc.masked_linear_backward(
        dy, x, weight, mask, pre, ctx.act, ctx.mask_before_act, ctx.has_bias, need_dx, need_dw
    )
    return (
        dx if need_dx else None,
        dw if need_dw else None,
        db if (ctx.has_bias and need_db) else None,
        None,
        None,
        None,
        None,
    )


masked_linear_op.register_autograd(_linear_backward, setup_context=_linear_setup_context)


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def masked_linear_triton(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor,
    act: str | None = None,
    mask_before_act: bool = True,
) -> Tensor:
    """The fused path (``msgc::masked_linear``): Triton kernels where they can run."""
    act = _act_name(act)
    save = act != "none" and _needs_grad(x, weight, bias)
    y, _ = torch.ops.msgc.masked_linear(
        x, weight, bias, mask.detach(), act, bool(mask_before_act), save
    )
    return y


# ---------------------------------------------------------------------------------------
# SwiGLU
# ---------------------------------------------------------------------------------------


def _swiglu_fwd_torch(x2, w_gate, w_up, mask, save_pre):
    record("masked_swiglu", "torch")
    acc = _acc_torch_dtype(x2.dtype)
    a = (F.linear(x2, w_gate) * mask.to(acc)).to(x2.dtype)
    u = F.linear(x2, w_up)
    y = (F.silu(a.to(acc)) * u.to(acc)).to(x2.dtype)
    if not save_pre:
        a = u = x2.new_empty((0,))
    return y, a, u


def _swiglu_fwd_triton(x2, w_gate, w_up, mask, save_pre):
    M, K = x2.shape
    N = w_gate.shape[0]
    y = torch.empty((M, N), dtype=x2.dtype, device=x2.device)
    shape = (M, N) if save_pre else (0,)
    a = torch.empty(shape, dtype=x2.dtype, device=x2.device)
    u = torch.empty(shape, dtype=x2.dtype, device=x2.device)
    if M == 0 or N == 0 or K == 0:
        return _swiglu_fwd_torch(x2, w_gate, w_up, mask, save_pre)
    m = mask.to(device=x2.device, dtype=_acc_torch_dtype(x2.dtype)).contiguous()
    record("masked_swiglu", "triton")

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    _masked_swiglu_fwd_kernel[grid](
        x2,
        w_gate,
        w_up,
        m,
        y,
        a if save_pre else y,
        u if save_pre else y,
        M,
        N,
        K,
        x2.stride(0),
        x2.stride(1),
        w_gate.stride(0),
        w_gate.stride(1),
        w_up.stride(0),
        w_up.stride(1),
        y.stride(0),
        SAVE_PRE=save_pre,
        **_launch_meta(x2),
    )
    return y, a, u


@torch.library.custom_op("msgc::masked_swiglu", mutates_args=())
def masked_swiglu_op(
    x: Tensor, w_gate: Tensor, w_up: Tensor, mask: Tensor, save_pre: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Fused ``silu((x Wg^T) * m) * (x Wu^T)``. Returns ``(y, gate * m, up)``; the last
    two are 0-element unless ``save_pre``."""
    x2 = _as_2d(x)
    N = w_gate.shape[0]
    if _use_triton(x, w_gate, w_up):
        y, a, u = _swiglu_fwd_triton(x2, w_gate, w_up, mask, save_pre)
    else:
        y, a, u = _swiglu_fwd_torch(x2, w_gate, w_up, mask, save_pre)
    shape = (*x.shape[:-1], N)
    if save_pre:
        a, u = a.reshape(shape), u.reshape(shape)
    return y.reshape(shape), a, u


@masked_swiglu_op.register_fake
def _(x, w_gate, w_up, mask, save_pre):
    shape = (*x.shape[:-1], w_gate.shape[0])
    pshape = shape if save_pre else (0,)
    return x.new_empty(shape), x.new_empty(pshape), x.new_empty(pshape)


@torch.library.custom_op("msgc::masked_swiglu_backward", mutates_args=())
def masked_swiglu_backward_op(
    dy: Tensor,
    x: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    mask: Tensor,
    a: Tensor,
    u: Tensor,
    need_dx: bool,
    need_dw: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dx, dWg, dWu) of ``msgc::masked_swiglu``."""
    N, K = w_gate.shape
    x2, dy2 = _as_2d(x), _as_2d(dy)
    a2, u2 = _as_2d(a), _as_2d(u)
    M = dy2.shape[0]
    acc = _acc_torch_dtype(dy2.dtype)
    if _use_triton(dy, x, w_gate, w_up) and M > 0:
        record("masked_swiglu_backward", "triton")
        dg = torch.empty((M, N), dtype=dy2.dtype, device=dy2.device)
        du = torch.empty_like(dg)
        block_m, block_n = (64, 128) if INTERPRET else (32, 128)
        block_n = min(block_n, next_pow2(N))
        if not (dy2.stride(0) == a2.stride(0) == u2.stride(0) == N):
            dy2, a2, u2 = dy2.contiguous(), a2.contiguous(), u2.contiguous()
        _masked_swiglu_bwd_kernel[(triton.cdiv(M, block_m), triton.cdiv(N, block_n))](
            dy2,
            a2,
            u2,
            mask.to(device=dy2.device, dtype=acc).contiguous(),
            dg,
            du,
            M,
            N,
            N,
            ACC_DTYPE=acc_dtype(dy2.dtype),
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            num_warps=4,
        )
    else:
        record("masked_swiglu_backward", "torch")
        a32, u32, dy32 = a2.to(acc), u2.to(acc), dy2.to(acc)
        s = torch.sigmoid(a32)
        dg = (dy32 * u32 * s * (1 + a32 * (1 - s)) * mask.to(acc)).to(dy2.dtype)
        du = (dy32 * a32 * s).to(dy2.dtype)
    empty = dy2.new_empty((0,))
    if need_dx:
        dx = torch.addmm(dg @ w_gate, du, w_up).reshape(*x.shape[:-1], K)
    else:
        dx = empty
    dwg = dg.t() @ x2 if need_dw else empty
    dwu = du.t() @ x2 if need_dw else empty
    return dx, dwg, dwu


@masked_swiglu_backward_op.register_fake
def _(dy, x, w_gate, w_up, mask, a, u, need_dx, need_dw):
    empty = dy.new_empty((0,))
    return (
        x.new_empty(x.shape) if need_dx else empty,
        w_gate.new_empty(w_gate.shape) if need_dw else empty,
        w_up.new_empty(w_up.shape) if need_dw else empty,
    )


def _swiglu_setup_context(ctx, inputs, output):
    x, w_gate, w_up, mask, _save = inputs
    _, a, u = output
    ctx.mark_non_differentiable(a, u)
    ctx.save_for_backward(x, w_gate, w_up, mask, a, u)


def _swiglu_backward(ctx, dy, _da, _du):
    x, w_gate, w_up, mask, a, u = ctx.saved_tensors
    need_dx = ctx.needs_input_grad[0]
    need_dw = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
    dx, dwg, dwu = torch.ops.msgc.masked_swiglu_backward(
        dy, x, w_gate, w_up, mask, a, u, need_dx, need_dw
    )
    return (
        dx if need_dx else None,
        dwg if ctx.needs_input_grad[1] else None,
        dwu if ctx.needs_input_grad[2] else None,
        None,
        None,
    )


masked_swiglu_op.register_autograd(_swiglu_backward, setup_context=_swiglu_setup_context)


def masked_swiglu_triton(x: Tensor, w_gate: Tensor, w_up: Tensor, mask: Tensor) -> Tensor:
    """The fused SwiGLU path (``msgc::masked_swiglu``)."""
    save = _needs_grad(x, w_gate, w_up)
    y, _, _ = torch.ops.msgc.masked_swiglu(x, w_gate, w_up, mask.detach(), save)
    return y
