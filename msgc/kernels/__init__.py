"""Masked kernels: masked linear (+ activation), masked SwiGLU, masked Layer/RMS norm.

The public functions go through the dispatcher (:mod:`msgc.kernels.dispatch`), which
picks the reference, weight-fold, Triton or (when offered) torch.compile'd implementation
per shape, dtype and device; ``impl=`` or ``$MSGC_KERNELS`` forces one. The custom ops
``msgc::masked_linear``, ``msgc::masked_swiglu`` and ``msgc::masked_norm`` (with their
``*_backward`` ops) are registered on import, with fake and autograd implementations.

Note: ``msgc.kernels.masked_linear`` / ``msgc.kernels.masked_norm`` are the public
functions; the modules of the same names are reached with
``importlib.import_module("msgc.kernels.masked_linear")``.

:func:`kernel_paths` shows which path the fused ops took: their Triton kernels or torch.
"""

from msgc.kernels.dispatch import (
    COMPILED_ENV_VAR,
    ENV_VAR,
    IMPLS,
    KernelUnavailableError,
    chosen_impl,
    clear_cache,
    masked_linear,
    masked_norm,
    masked_swiglu,
    offer_compiled,
)
from msgc.kernels.masked_linear import (
    ACTIVATIONS,
    masked_linear_fold,
    masked_linear_reference,
    masked_linear_triton,
    masked_swiglu_fold,
    masked_swiglu_reference,
    masked_swiglu_triton,
)
from msgc.kernels.masked_norm import NORM_KINDS, masked_norm_reference, masked_norm_triton
from msgc.kernels.paths import kernel_paths

__all__ = [
    "ACTIVATIONS",
    "COMPILED_ENV_VAR",
    "ENV_VAR",
    "IMPLS",
    "NORM_KINDS",
    "KernelUnavailableError",
    "chosen_impl",
    "clear_cache",
    "kernel_paths",
    "masked_linear",
    "masked_linear_fold",
    "masked_linear_reference",
    "masked_linear_triton",
    "masked_norm",
    "masked_norm_reference",
    "masked_norm_triton",
    "masked_swiglu",
    "masked_swiglu_fold",
    "masked_swiglu_reference",
    "masked_swiglu_triton",
    "offer_compiled",
]
