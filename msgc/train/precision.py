"""Device and compute dtype: where a run trains and under which autocast.

``train.dtype`` asks for fp32, bf16 or fp16. bf16 autocasts on a CUDA device that supports it
and on the CPU (torch's CPU autocast handles bf16); fp16 autocasts on CUDA only, with a
gradient scaler. Anything the device cannot do falls back to fp32, and ``Precision.dtype``
says what was actually used. Parameters and optimizer state stay fp32 throughout.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from msgc.errors import SpecError

__all__ = ["Precision", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a SpecError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError("train.device: cuda was asked for but no CUDA device is available; "
                        "use device: auto or cpu")
    return torch.device(name)


class Precision:
    """The autocast context and gradient scaler for `requested` ("fp32" | "bf16" | "fp16")."""

    def __init__(self, device: torch.device, requested: str) -> None:
        self.device = device
        self.dtype = self._supported(device, requested)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == "fp16")

    @staticmethod
    def _supported(device: torch.device, requested: str) -> str:
        cuda = device.type == "cuda"
        if requested == "bf16" and (not cuda or torch.cuda.is_bf16_supported()):
            return "bf16"
        if requested == "fp16" and cuda:
            return "fp16"
        return "fp32"

    def autocast(self) -> AbstractContextManager:
        """A fresh autocast context for forward passes (a no-op for fp32)."""
        if self.dtype == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.dtype == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)
