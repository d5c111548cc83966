"""What the kernel tests share: the device they compare on, dtypes and tolerances, masks,
and the check that a block ran the Triton kernels (not the torch composite)."""

import contextlib
from collections.abc import Iterator

import pytest
import torch

from msgc.kernels import kernel_paths
from msgc.kernels._triton import HAS_TRITON, triton_runnable

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


needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable")


@contextlib.contextmanager
def expect_paths(**expected: str) -> Iterator[None]:
    """Fail unless the block ran exactly the fused ops named, each by the path given
    ("triton" or "torch"; see msgc.kernels.paths), and no other fused op."""
    with kernel_paths() as ran:
        yield
    assert set(ran) == set(expected.items()), (
        f"expected the fused paths {expected}, ran {sorted(set(ran))} (on CPU tensors the "
        "Triton kernels need TRITON_INTERPRET=1 set before msgc is imported)"
    )


def linear_paths(act: str | None) -> dict[str, str]:
    """The Triton paths of a masked linear's forward and backward: without an activation
    the backward is two matmuls in torch (there is no elementwise kernel to run)."""
    return {"masked_linear": "triton", "masked_linear_backward": "triton" if act else "torch"}


SWIGLU_PATHS = {"masked_swiglu": "triton", "masked_swiglu_backward": "triton"}
NORM_PATHS = {"masked_norm": "triton", "masked_norm_backward": "triton"}
