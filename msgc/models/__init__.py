"""Reference Transformer families built from a spec: GPT-2, BERT and Llama."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from msgc.errors import SpecError
from msgc.models.bert import Bert
from msgc.models.common import ModelConfig
from msgc.models.gpt2 import GPT2
from msgc.models.llama import Llama

FAMILIES: dict[str, type[nn.Module]] = {"gpt2": GPT2, "bert": Bert, "llama": Llama}


def build_model(spec: Any) -> nn.Module:
    """The reference model for spec.family ("gpt2" | "bert" | "llama"), freshly initialised.

    spec is any object with the resolved model sizes as attributes (see ModelConfig);
    call torch.manual_seed first for a deterministic init.
    """
    family = getattr(spec, "family", None)
    if family not in FAMILIES:
        raise SpecError(f"model.family must be one of {sorted(FAMILIES)}, got {family!r}")
    return FAMILIES[family](ModelConfig.from_spec(spec))


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters, each shared (tied) tensor counted once."""
    unique = {id(p): p for _, p in model.named_parameters(remove_duplicate=False)}
    return sum(p.numel() for p in unique.values())


__all__ = [
    "FAMILIES",
    "GPT2",
    "Bert",
    "Llama",
    "ModelConfig",
    "build_model",
    "count_parameters",
]
