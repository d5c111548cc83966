"""What the kernel tests share: the device they compare on, dtypes and tolerances, masks."""

import pytest
import torch

from msgc.kernels._triton import triton_runnable

# The comparisons run where the compiled kernels run: CUDA when the suite is started with
# TRITON_INTERPRET=0 on a GPU machine, else the CPU under the interpreter.
DEVICE = "cuda" if triton_runnable("cuda") else "cpu"

# (dtype, factor, atol): the kernel's error against fp64 may be at most `factor` times the
# error of the same-dtype torch reference, plus atol * max|reference|.
DTYPES = [
    pytest.param(torch.float32, 3.0, 1e-5, id="fp32"),
    pytest.param(torch.float16, 3.0, 2e-3, id="fp16"),
    pytest.param(torch.bfloat16, 3.0, 1e-2, id="bf16"),
]


def make_mask(n: int, gen: torch.Generator) -> torch.Tensor:
    """Exact zeros, exact ones and values in between."""
    m = torch.rand(n, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    m[: n // 4] = 0.0
    m[n // 4 : n // 2] = 1.0
    return m[torch.randperm(n, generator=gen)]
