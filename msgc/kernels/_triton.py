"""Triton availability helpers shared by the kernel files.

Triton is optional: without it (or without a CUDA GPU and without the interpreter) the
kernel modules still import, and the custom ops run their torch composite instead.
``TRITON_INTERPRET=1`` must be set before this module is first imported for the
interpreter to take effect (``@triton.jit`` reads it at decoration time).
"""

from __future__ import annotations

import functools
import os

import torch

try:  # pragma: no cover - exercised through HAS_TRITON
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # noqa: BLE001 - any import failure means "no triton"
    triton = None
    tl = None
    HAS_TRITON = False

#: Whether the kernels were decorated in interpreter mode (fixed at import time).
INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_runnable(device: torch.device | str) -> bool:
    """True when the Triton kernels can execute on tensors living on ``device``.

    On a CUDA device that needs triton and compiled (non-interpreted) kernels; on any
    other device it needs the interpreter (which runs kernels on host memory).
    """
    if not HAS_TRITON:
        return False
    device = torch.device(device)
    if INTERPRET:
        return device.type == "cpu"
    return device.type == "cuda" and torch.cuda.is_available()


def triton_fast(device: torch.device | str) -> bool:
    """True when the Triton kernels are a real (compiled, GPU) candidate for speed."""
    return HAS_TRITON and not INTERPRET and triton_runnable(device)


@functools.cache
def num_sms(device_index: int = 0) -> int:
    """Streaming multiprocessors on a CUDA device (a small constant when there is none)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(device_index).multi_processor_count
    return 4


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def tl_dtype(dtype: torch.dtype):
    """The Triton element type for a torch floating dtype."""
    return {
        torch.float16: tl.float16,
        torch.bfloat16: tl.bfloat16,
        torch.float32: tl.float32,
        torch.float64: tl.float64,
    }[dtype]


def acc_dtype(dtype: torch.dtype):
    """Accumulator element type: fp64 for fp64 inputs (gradcheck), fp32 otherwise."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def fp32_input_precision() -> str:
    """``tl.dot`` input precision for fp32 operands that matches torch's matmul setting."""
    if INTERPRET:
        return "ieee"
    if torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"
