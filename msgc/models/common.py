"""Pieces shared by the reference families: a size config, activations, GPT-2 init."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch.nn as nn

from msgc.errors import SpecError

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")


@dataclass(frozen=True)
class ModelConfig:
    """The sizes of one reference Transformer; plain values, no pydantic."""

    vocab_size: int
    max_seq_len: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    layers: int
    dropout: float = 0.0
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    activation: str = "gelu"
    type_vocab_size: int = 2  # bert only
    rope_theta: float = 10000.0  # llama only

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_seq_len", "hidden", "heads", "kv_heads", "head_dim",
                     "ffn", "layers", "type_vocab_size"):
            if getattr(self, name) < 1:
                raise SpecError(f"model.{name} must be a positive integer, got "
                                f"{getattr(self, name)}")
        if self.heads % self.kv_heads:
            raise SpecError(f"model.heads ({self.heads}) must be a multiple of "
                            f"model.kv_heads ({self.kv_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise SpecError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in ACTIVATIONS:
            raise SpecError(f"model.activation must be one of {ACTIVATIONS}, "
                            f"got {self.activation!r}")

    @property
    def attn_dim(self) -> int:
        """Width of the query (and output) projection: heads * head_dim."""
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of each key/value projection: kv_heads * head_dim."""
        return self.kv_heads * self.head_dim

    @classmethod
    def from_spec(cls, spec: Any) -> ModelConfig:
        """Read the resolved sizes off a spec (any object with these attributes)."""
        values = {}
        for f in fields(cls):
            if hasattr(spec, f.name) and getattr(spec, f.name) is not None:
                values[f.name] = getattr(spec, f.name)
        return cls(**values)


def make_activation(name: str) -> nn.Module:
    """The activation module for a spec name (all four map 0 to 0)."""
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "relu":
        return nn.ReLU()
    if name == "silu":
        return nn.SiLU()
    raise SpecError(f"model.activation must be one of {ACTIVATIONS}, got {name!r}")


def init_weights(module: nn.Module) -> None:
    """GPT-2 init for one module: N(0, 0.02) weights, zero biases (norms keep 1 / 0)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def init_residual(proj: nn.Linear, layers: int) -> None:
    """Scale a residual-stream writer down by 1/sqrt(2 * layers), as GPT-2 does."""
    nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * layers))
