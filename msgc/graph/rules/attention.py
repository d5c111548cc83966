"""Attention: scaled_dot_product_attention (and msgc's attention-dropout module).

Heads may grow (new heads' outputs are masked), kv heads grow with their query groups,
and the head dim stays fixed.
"""

import torch
import torch.fx as fx
import torch.nn.functional as F

from msgc.graph.dims import Analysis, where
from msgc.graph.rules.registry import module_rule, rule
from msgc.ops import AttentionDropout

aten = torch.ops.aten


@rule(F.scaled_dot_product_attention, aten.scaled_dot_product_attention.default)
def rule_sdpa(a: Analysis, node: fx.Node) -> None:
    """scaled_dot_product_attention(q, k, v): heads stay, head_dim fixed, GQA via groups."""
    q, k, v = node.args[:3]
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    qd, kd, vd = a.of(q), a.of(k), a.of(v)
    out = a.fresh(node)
    a.unify(qd[-1], kd[-1], node)
    a.unify(kd[-2], vd[-2], node)
    a.unify(out[-1], vd[-1], node)
    a.unify(out[-2], qd[-2], node)
    for atom in (qd[-1], vd[-1]):
        a.atoms.tag(atom, "head_dim")
    for i in range(len(qd) - 3):
        for other in (kd, vd, out):
            a.unify(qd[i], other[i], node)
    if len(qd) >= 3:
        _heads(a, node, qd[-3], kd[-3], vd[-3], out[-3])
    if a.is_tensor(mask):
        md = a.of(mask)
        scores = qd[:-2] + [qd[-2], kd[-2]]
        for i, atom in enumerate(md):
            target = scores[len(scores) - len(md) + i]
            if a.atoms.size(atom) == a.atoms.size(target):
                a.unify(atom, target, node)
    for d in range(len(out) - 3):
        a.carry(node, d, [(q, d)])


def _heads(a, node, q_heads, k_heads, v_heads, out_heads) -> None:
    a.unify(k_heads, v_heads, node)
    a.unify(q_heads, out_heads, node)
    a.atoms.tag(q_heads, "heads")
    a.atoms.tag(k_heads, "kv_heads")
    if a.atoms.size(q_heads) == a.atoms.size(k_heads):
        a.unify(q_heads, k_heads, node)
    else:  # enable_gqa: query head h reads kv head h // group
        group = a.atoms.new(a.atoms.size(q_heads) // a.atoms.size(k_heads))
        a.atoms.tag(group, "group")
        a.atoms.refine(q_heads, "prod", [k_heads, group], where(node))


@module_rule(AttentionDropout)
def rule_attention_module(a: Analysis, node: fx.Node) -> None:
    """msgc's attention-dropout module: attention as scaled_dot_product_attention."""
    rule_sdpa(a, node)
