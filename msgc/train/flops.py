"""Training compute: parameters and FLOPs per token of a reference-family architecture.

Shared by ``msgc info`` (the schedule's estimate) and the trainer (FLOPs so far, per step).
"""

from __future__ import annotations

import torch
from torch import nn

from msgc.models import build_model, count_parameters
from msgc.spec import FamilyModelSpec
from msgc.train.data import MLM_PROB

__all__ = ["build_on_meta", "matmul_parameters", "stage_cost", "train_flops_per_token"]


def build_on_meta(arch: FamilyModelSpec) -> nn.Module:
    """The reference model for `arch`, on the meta device (shapes only, instant)."""
    with torch.device("meta"):
        return build_model(arch)


def stage_cost(arch: FamilyModelSpec, seq_len: int) -> tuple[int, int]:
    """(parameters, training FLOPs per token) of the reference model for `arch`."""
    model = build_on_meta(arch)
    return count_parameters(model), train_flops_per_token(model, arch, seq_len)


def matmul_parameters(model: nn.Module) -> int:
    """Parameters other than pure embedding lookups (a head tied to an embedding counts).

    Norm weights and biases are included; they are a rounding error next to the matmuls.
    """
    lookups = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    used_by_other_modules = {
        id(p)
        for module in model.modules()
        if not isinstance(module, nn.Embedding)
        for p in module.parameters(recurse=False)
    }
    return sum(
        p.numel()
        for p in model.parameters()
        if id(p) not in lookups or id(p) in used_by_other_modules
    )


def train_flops_per_token(model: nn.Module, arch: FamilyModelSpec, seq_len: int) -> int:
    """Training FLOPs per token: 6 N + 6 L T d_attn (causal) or 6 N + 12 L T d_attn (bert).

    The Kaplan et al. (2020) / PaLM (Chowdhery et al., 2022) count: a forward pass costs
    2 FLOPs per matmul parameter and token, N = `matmul_parameters` (embedding lookups
    excluded, the output head included), plus the attention score and value matmuls,
    4 T d_attn per layer and token with d_attn = heads * head_dim, T = seq_len. A causal
    model (gpt2, llama) computes half of those on average. A bert runs its MLM head at the
    predicted positions alone (``MLM_PROB`` of the tokens), so the head counts that share.
    Backward costs twice the forward, so training costs 3x the forward. `model` must be the
    reference model built from `arch` (its modules tell embeddings from matmuls).
    """
    attention = 4 * arch.layers * seq_len * arch.heads * arch.head_dim
    matmuls = matmul_parameters(model)
    if arch.family == "bert":  # the MLM head runs at the predicted positions alone
        matmuls -= round((1 - MLM_PROB) * matmul_parameters(model.head))
    else:
        attention //= 2
    return 3 * (2 * matmuls + attention)
