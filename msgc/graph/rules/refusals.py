"""Ops computed as they are: what no growing dim may reach, and why.

An op without a rule of its own still runs: its output dims are fresh and every dim it
touches is fixed. Position tables, rotary sin/cos, ALiBi distances, attention masks and
routing scores are built from such ops on dims that never grow, so they need no rule; a
growing dim that reaches one is refused before anything is returned, naming the op.
"""

import torch
import torch.fx as fx

from msgc.graph.dims import Analysis, flat_atoms, op_name
from msgc.graph.rules.registry import Rule, refuse

aten = torch.ops.aten

NO_RULE = "{op}, which has no growth rule (`msgc ops` lists the ops that have one),"


def fixed(why: str) -> Rule:
    """A rule for an op whose dims cannot grow: fresh output dims, every dim fixed."""

    def rule_fixed(a: Analysis, node: fx.Node) -> None:
        reason = why.format(op=op_name(node))
        outputs = _fresh_outputs(a, node)
        touched = flat_atoms(outputs)
        for value in node.all_input_nodes:  # tensors, and tuples of them (a split's pieces)
            touched += flat_atoms(a.dims.get(value, []))
        for atom in touched:
            a.forbid(node, atom, reason)

    return rule_fixed


def _fresh_outputs(a: Analysis, node: fx.Node) -> list[list[int]]:
    """New atoms for each tensor the node returns (one tensor, or a tuple of them)."""
    meta = node.meta["tensor_meta"]
    if hasattr(meta, "shape"):
        return [a.fresh(node)]
    pieces = [[a.atoms.new(int(s)) for s in m.shape] for m in meta]
    a.dims[node] = pieces
    a.element_carries[node] = [{} for _ in pieces]
    return pieces


refuse("a data-dependent selection (sort, top-k, arg-max), whose output depends on which "
       "entries exist,",
       aten.sort.default, aten.topk.default, aten.argmax.default, aten.argmin.default,
       aten.max.dim, aten.min.dim, aten.nonzero.default, aten.randperm.default)
refuse("a data-dependent scatter, index write or index read,",
       aten.scatter.src, aten.scatter.value, aten.scatter_add.default,
       aten.scatter_reduce.two, aten.index_put.default, aten.masked_scatter.default,
       aten.select_scatter.default, aten.slice_scatter.default, aten.index_select.default,
       aten._embedding_bag.default, aten.embedding_dense_backward.default)
refuse("a spatial op (pooling, padding, resampling, windowed convolution), whose windows "
       "are not channels (msgc grows the channels of linear layers and 2-D convolutions),",
       aten._adaptive_avg_pool2d.default, aten._adaptive_avg_pool3d.default,
       aten.adaptive_avg_pool1d.default, aten.avg_pool1d.default, aten.avg_pool2d.default,
       aten.avg_pool3d.default, aten.max_pool2d_with_indices.default,
       aten.max_pool3d_with_indices.default, aten.col2im.default, aten.constant_pad_nd.default,
       aten.reflection_pad1d.default, aten.reflection_pad2d.default,
       aten.reflection_pad3d.default, aten.replication_pad2d.default,
       aten.replication_pad3d.default, aten.upsample_bilinear2d.vec,
       aten.upsample_nearest2d.vec, aten.grid_sampler_2d.default, aten.convolution.default,
       aten.flip.default)
refuse("a backward op (msgc grows forward graphs: trace the model, not its gradient),",
       aten._adaptive_avg_pool2d_backward.default, aten.avg_pool2d_backward.default,
       aten.max_pool2d_with_indices_backward.default, aten.convolution_backward.default,
       aten.native_group_norm_backward.default, aten.native_layer_norm_backward.default)
refuse("a batch or group normalisation, whose statistics mix the channels that would grow "
       "(LayerNorm and RMSNorm grow),",
       aten._native_batch_norm_legit.default, aten._native_batch_norm_legit.no_stats,
       aten._native_batch_norm_legit_no_training.default, aten.native_group_norm.default)
refuse("the decomposed form of layer_norm, with mean and rstd outputs (msgc grows layer_norm "
       "itself, which torch.export keeps),", aten.native_layer_norm.default)
refuse("a random draw, which makes new entries non-zero,",
       aten.rand.default, aten.randn.default, aten.native_dropout.default)
refuse("a strided or raw-memory view or resize (use view, reshape or slicing),",
       aten.as_strided.default, aten.empty_strided.default, aten.diagonal.default,
       aten.copy.default, aten.resize_.default)
refuse("a frequency-domain transform, which mixes every entry,",
       aten._fft_c2r.default, aten._fft_r2c.default)
refuse("a pairwise distance over whole rows,", aten._cdist_forward.default,
       aten._pdist_forward.default)
refuse("a reduction to one value (prod, any),", aten.prod.default, aten.any.default)
refuse("a read of a scalar or a size,", aten._local_scalar_dense.default,
       aten.sym_numel.default, aten.sym_size.int, aten.sym_storage_offset.default,
       aten.sym_stride.int, aten.sym_is_contiguous.default)
